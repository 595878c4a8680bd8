"""QDIR: a quantized model on disk, rebuilt by ``load_quantized`` (docs/design.md §2.6).

A QDIR is a directory of three files, written atomically (a temporary directory, then renamed):

- ``config.json``: the base model's ``OSDFaceConfig``;
- ``quant_state.safetensors``: every NNX variable of the quantized model under its dotted path
  (``unet.conv_in.kernel``), in its own dtype: ``nnx.Param`` (FP weights, low-rank factors L1/L2,
  biases), ``QuantState`` (smoothing scales, rotation signs, static ranges, the enable flag) and
  ``QuantBits`` (int32 widths). A quantized layer's residual kernel R is stored as what the model
  computes with, its weight codes and scales (:func:`weight_codes`): ``<path>.kernel_codes`` in
  the serving layout (``kernels.pack_weight``: two codes a byte up to 4 bits, int8 up to 8) and
  ``<path>.kernel_scale`` float32 per output channel, instead of ``kernel`` and ``w_clip``; so
  the file's size follows the widths. Layers whose weights are not symmetric integer codes
  (quantization off, asymmetric weights) keep the float kernel. Safetensors rather than Orbax:
  one self-describing file, no sharding is needed at these sizes, and ``checkpoint.py``'s
  ``model.safetensors`` uses the same key convention;
- ``manifest.json``: format/version, the recipe (name and every setting, so the layer swap can be
  replayed), the base checkpoint, calibration info, per-layer widths (path -> [w_bits, a_bits])
  and the size/BOPs account of :func:`quantface_jax.quant.account`.

Loading rebuilds the structure (the base config's abstract model with the recipe's layers
swapped in), decodes the codes into R = codes·scale with clip ratios that reproduce those scales
(so the loaded layer quantizes R back to the same codes), then fills it strictly: a missing,
unexpected or mis-shaped key raises, naming it. Version 1 QDIRs (float kernels) still load.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx

from quantface_jax import checkpoint, kernels
from quantface_jax.fileio import atomic_directory
from quantface_jax.models.configs import OSDFaceConfig
from quantface_jax.models.layers import Conv2d
from quantface_jax.models.osdface import OSDFace, abstract
from quantface_jax.quant import quantizers
from quantface_jax.quant import rules as rules_lib
from quantface_jax.quant.account import account
from quantface_jax.quant.api import get_bits, quant_layers
from quantface_jax.quant.layers import QuantConv2d, QuantLinear
from quantface_jax.quant.recipes import Recipe, recipe_from_dict, recipe_to_dict
from quantface_jax.quant.rules import LayerQuantConfig

QDIR_FORMAT = "quantface-qdir"
QDIR_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # 1: float kernels
CONFIG_FILE = "config.json"
STATE_FILE = "quant_state.safetensors"
MANIFEST_FILE = "manifest.json"
_ACCOUNT_KEYS = (
  "param_bits",
  "fp32_bits",
  "bf16_bits",
  "weight_bits",
  "fp32_weight_bits",
  "bits_by_dtype",
  "bops",
  "fp32_bops",
  "param_reduction_vs_fp32",
  "param_reduction_vs_bf16",
  "weight_reduction",
  "bops_reduction",
  "resolution",
)


def save_quantized(
  model: OSDFace,
  recipe: Recipe,
  out_dir: str | os.PathLike,
  *,
  base_ckpt: str,
  calibration_info: Mapping | None = None,
  overwrite: bool = True,
) -> pathlib.Path:
  """Writes the QDIR of ``model`` (quantized with ``recipe``) to ``out_dir``; returns it."""
  out_dir = pathlib.Path(out_dir).absolute()
  report = account(model)
  manifest = dict(
    format=QDIR_FORMAT,
    version=QDIR_VERSION,
    recipe=recipe_to_dict(recipe),
    base_checkpoint=str(base_ckpt),
    calibration=dict(calibration_info or {}),
    bits={p: list(b) for p, b in get_bits(model).items()},
    account={k: report[k] for k in _ACCOUNT_KEYS},
  )
  tensors = {
    k: np.asarray(jax.device_get(v)) for k, v in checkpoint.flat_params(model, ...).items()
  }
  _encode_kernels(model, tensors)
  with atomic_directory(out_dir, overwrite=overwrite) as tmp:
    (tmp / CONFIG_FILE).write_text(model.config.to_json())
    safetensors.numpy.save_file(
      tensors, str(tmp / STATE_FILE), metadata={"format": QDIR_FORMAT}
    )  # one key: see serve/export.py
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
  return out_dir


def weight_codes(layer: QuantLinear | QuantConv2d) -> tuple[np.ndarray, np.ndarray] | None:
  """(codes int8 of the kernel's shape, scales float32 of the clip ratios' shape) of the layer's
  quantized weight, exactly as ``layer.quant_weight`` rounds it; None where the weight is not
  symmetric integer codes (quantization off, asymmetric weights, a width outside 2..8)."""
  w_bits = int(layer.w_bits[...])
  if not (bool(layer.enabled[...]) and layer.config.w_symmetric and 2 <= w_bits <= 8):
    return None
  layout = tuple(layer.config.weight_quantizer.layout.items())
  codes, scale = _symmetric_codes(layer.kernel[...], layer.w_clip[...], w_bits, layout=layout)
  return np.asarray(codes, np.int8), np.asarray(scale, np.float32)


# Compiled once per kernel shape and layout: a model's export is tens of small programs instead of
# a thousand op-by-op dispatches. Widths are traced, as everywhere in the quantizers; the scale
# groups' layout (`QuantizerConfig.layout`) is static, as its items.
@functools.partial(jax.jit, static_argnames=("layout",))
def _symmetric_codes(kernel, clip_ratio, bits, *, layout):
  scale, zero = quantizers.qparams_from_range(
    *quantizers.range_stats(kernel, **dict(layout)), bits, symmetric=True, clip_ratio=clip_ratio
  )
  return quantizers.quantize_int(kernel, scale, zero, bits, symmetric=True), scale


@functools.partial(jax.jit, static_argnames=("shape", "layout"))
def _decoded_kernel(stored, scale, *, shape, layout):
  """(R = codes·scale of ``shape``, its per-group absmax) from the GEMM storage format."""
  codes = kernels.unpack_weight(stored, math.prod(shape[:-1])).T.reshape(shape)
  kernel = quantizers.dequantize(codes, scale, 0.0)
  return kernel, quantizers.reduce_groups(jnp.abs(kernel), jnp.max, **dict(layout))


_pack_weight = jax.jit(kernels.pack_weight, static_argnums=1)


@jax.jit
def _symmetric_scale(absmax, bits, clip_ratio):
  return quantizers.qparams_from_range(
    -absmax, absmax, bits, symmetric=True, clip_ratio=clip_ratio
  )[0]


def _encode_kernels(model: OSDFace, tensors: dict[str, np.ndarray]) -> None:
  """Replaces each quantized layer's ``kernel`` and ``w_clip`` in ``tensors`` by its codes and
  scales (``<path>.kernel_codes`` / ``.kernel_scale``), in place."""
  for path, layer in quant_layers(model).items():
    encoded = weight_codes(layer)
    if encoded is None:
      continue
    codes, scale = encoded
    del tensors[f"{path}.kernel"], tensors[f"{path}.w_clip"]
    tensors[f"{path}.kernel_codes"] = np.asarray(
      _pack_weight(codes.reshape(-1, codes.shape[-1]), int(layer.w_bits[...]))
    )
    tensors[f"{path}.kernel_scale"] = scale


def _decode_kernels(model: OSDFace, tensors: dict[str, np.ndarray], source: pathlib.Path) -> None:
  """Inverse of :func:`_encode_kernels` on the skeleton ``model``'s shapes: R = codes·scale and
  the clip ratios that give the stored scales back (:func:`_exact_clip_ratio`), so quantizing R
  gives the stored codes back."""
  layers = quant_layers(model)
  for key in [k for k in tensors if k.endswith(".kernel_codes")]:
    path = key.removesuffix(".kernel_codes")
    scale_key, bits_key = f"{path}.kernel_scale", f"{path}.w_bits"
    if path not in layers or scale_key not in tensors or bits_key not in tensors:
      raise ValueError(f"{source}: {key} has no quantized layer with a scale and a width")
    layer, stored, scale = layers[path], tensors.pop(key), tensors.pop(scale_key)
    shape, bits = tuple(layer.kernel.shape), int(tensors[bits_key])
    k, n = math.prod(shape[:-1]), shape[-1]
    if stored.shape != ((n, -(-k // 2)) if bits <= 4 else (n, k)):
      raise ValueError(f"{source}: {key} has shape {stored.shape}, not that of W{bits} {shape}")
    layout = tuple(layer.config.weight_quantizer.layout.items())
    kernel, absmax = _decoded_kernel(stored, scale, shape=shape, layout=layout)
    tensors[f"{path}.kernel"], absmax = np.asarray(kernel), np.asarray(absmax)
    tensors[f"{path}.w_clip"] = _exact_clip_ratio(absmax, scale, bits)


def _exact_clip_ratio(absmax: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
  """Clip ratios with which ``quantizers.qparams_from_range`` gives back ``scale`` from a weight
  of per-group ``absmax``: bit for bit where float32 allows it, else within an ulp (XLA divides by
  qmax through a reciprocal, whose products miss some float32 values). A quantized network is
  discontinuous, so an ulp of scale can flip codes downstream. Searched among the float32
  neighbours of qmax·scale/absmax, checked with ``qparams_from_range`` itself; 1 where absmax is
  0 (all codes 0: every scale gives 0)."""
  absmax, scale = absmax.astype(np.float32), np.asarray(scale, np.float32)
  positive = absmax > 0
  qmax = 2 ** (bits - 1) - 1
  guess = (qmax * scale.astype(np.float64) / np.where(positive, absmax, 1.0)).astype(np.float32)
  candidates, up, down = [guess], guess, guess
  for _ in range(8):  # the guess, then 1, 2, ... ulps either way
    up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(0))
    candidates += [up, down]
  candidates = np.stack(candidates)
  exact = np.asarray(_symmetric_scale(absmax, bits, candidates)) == scale
  first = np.argmax(exact, axis=0)  # the closest exact candidate (the guess when none is)
  ratio = np.take_along_axis(candidates, first[None], axis=0)[0]
  return np.where(positive, ratio, np.float32(1.0)).astype(np.float32)


def read_qdir_manifest(qdir: str | os.PathLike) -> dict:
  manifest = json.loads((pathlib.Path(qdir) / MANIFEST_FILE).read_text())
  if manifest.get("format") != QDIR_FORMAT or manifest.get("version") not in _READABLE_VERSIONS:
    raise ValueError(f"{qdir}: not a {QDIR_FORMAT} v{QDIR_VERSION} directory")
  return manifest


def quantized_skeleton(config: OSDFaceConfig, recipe: Recipe) -> OSDFace:
  """The quantized model's structure: abstract FP layers outside the recipe's scope, and
  zero-filled quantized layers of the right shapes inside it (nothing is computed)."""
  model = abstract(config)
  for path, layer in list(rules_lib.iter_layers(model, rules_lib.FP_LAYERS)):
    layer_config = rules_lib.match(recipe.rules, path)
    if layer_config is not None:
      rules_lib.set_module(model, path, _empty_quant_layer(layer, layer_config))
  return model


def _empty_quant_layer(layer: nnx.Module, config: LayerQuantConfig) -> QuantLinear | QuantConv2d:
  *taps, d_in, d_out = layer.kernel.shape
  rows = math.prod(taps) * d_in
  rank = min(config.low_rank, rows, d_out)
  kwargs = dict(
    config=config,
    smooth=jnp.ones(d_in) if config.smooth else None,
    rotation_signs=np.ones(d_in, np.float32) if config.rotate else None,
    low_rank=(jnp.zeros((rows, rank)), jnp.zeros((rank, d_out))) if rank else None,
  )
  kernel = jnp.zeros(layer.kernel.shape)
  bias = None if layer.bias is None else jnp.zeros((d_out,))
  if isinstance(layer, Conv2d):
    return QuantConv2d(kernel, bias, stride=layer.stride, padding=layer.padding, **kwargs)
  return QuantLinear(kernel, bias, **kwargs)


def load_quantized(qdir: str | os.PathLike) -> OSDFace:
  """The quantized model of a QDIR, ready for ``make_restore_fn``.

  Raises ValueError naming every missing, unexpected or mis-shaped key (`checkpoint.fill_strict`).
  """
  qdir = pathlib.Path(qdir)
  manifest = read_qdir_manifest(qdir)
  config = OSDFaceConfig.from_dict(json.loads((qdir / CONFIG_FILE).read_text()))
  model = quantized_skeleton(config, recipe_from_dict(manifest["recipe"]))
  tensors = safetensors.numpy.load_file(str(qdir / STATE_FILE))
  _decode_kernels(model, tensors, qdir / STATE_FILE)
  return checkpoint.fill_strict(model, tensors, qdir / STATE_FILE)
