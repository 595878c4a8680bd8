"""QDIR: a quantized model on disk, rebuilt by ``load_quantized`` (DESIGN §2.6).

A QDIR is a directory of three files, written atomically (a temporary directory, then renamed):

- ``config.json``: the base model's ``OSDFaceConfig``;
- ``quant_state.safetensors``: every NNX variable of the quantized model under its dotted path
  (``unet.conv_in.kernel``), in its own dtype: ``nnx.Param`` (FP weights, residual kernels R,
  low-rank factors L1/L2, biases), ``QuantState`` (smoothing scales, rotation signs, clip ratios,
  static ranges, the enable flag) and ``QuantBits`` (int32 widths). Safetensors rather than Orbax:
  one self-describing file, no sharding is needed at these sizes, and ``checkpoint.py``'s
  ``model.safetensors`` uses the same key convention;
- ``manifest.json``: format/version, the recipe (name and every setting, so the layer swap can be
  replayed), the base checkpoint, calibration info, per-layer widths (path -> [w_bits, a_bits])
  and the size/BOPs account of :func:`quantface_jax.quant.account`.

Loading rebuilds the structure (the base config's abstract model with the recipe's layers
swapped in), then fills it strictly: a missing, unexpected or mis-shaped key raises, naming it.
"""

from __future__ import annotations

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

from quantface_jax import checkpoint
from quantface_jax.fileio import atomic_directory
from quantface_jax.models.configs import OSDFaceConfig
from quantface_jax.models.layers import Conv2d
from quantface_jax.models.osdface import OSDFace, abstract
from quantface_jax.quant import rules as rules_lib
from quantface_jax.quant.account import account
from quantface_jax.quant.api import get_bits
from quantface_jax.quant.layers import QuantConv2d, QuantLinear
from quantface_jax.quant.recipes import Recipe, recipe_from_dict, recipe_to_dict
from quantface_jax.quant.rules import LayerQuantConfig

QDIR_FORMAT = "quantface-qdir"
QDIR_VERSION = 1
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
  with atomic_directory(out_dir, overwrite=overwrite) as tmp:
    (tmp / CONFIG_FILE).write_text(model.config.to_json())
    safetensors.numpy.save_file(
      tensors, str(tmp / STATE_FILE), metadata={"format": QDIR_FORMAT}
    )  # one key: see serve/export.py
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
  return out_dir


def read_manifest(qdir: str | os.PathLike) -> dict:
  return checkpoint.read_manifest(qdir, fmt=QDIR_FORMAT, version=QDIR_VERSION, name=MANIFEST_FILE)


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
  manifest = read_manifest(qdir)
  config = OSDFaceConfig.from_dict(json.loads((qdir / CONFIG_FILE).read_text()))
  model = quantized_skeleton(config, recipe_from_dict(manifest["recipe"]))
  tensors = safetensors.numpy.load_file(str(qdir / STATE_FILE))
  return checkpoint.fill_strict(model, tensors, qdir / STATE_FILE)
