"""SERVE_DIR: a quantized model packed for integer serving (DESIGN §2.6).

``export(qdir, out_dir)`` turns a QDIR (fake-quant model, float weights) into a SERVE_DIR;
``load_served(serve_dir)`` gives back an ``OSDFace`` whose quantized layers are
:mod:`~quantface_jax.serve.layers`' integer layers, so ``model.restore`` and ``make_restore_fn``
work on it unchanged. A SERVE_DIR holds three files, written atomically (``fileio.atomic_directory``):

- ``config.json``: the base model's ``OSDFaceConfig``.
- ``weights.safetensors``: every array of the serving model under its dotted NNX path. Integer
  layers: ``<layer path>.<name>`` with the names, shapes and dtypes of ``serve.layers._IntLayer``
  (uint8 packed int4 / int8 codes, float32 per-channel scales, int32 widths and zero points,
  float32 smoothing scales, int8 rotation signs, float32 low-rank factors). Everything else (VRE,
  embedding_change, norms, ...) is the base model's float32 ``nnx.Param`` under the keys of
  ``checkpoint.py``'s ``model.safetensors``.
- ``manifest.json``: ``format`` ("quantface-serve"), ``version``, ``layers`` (path ->
  ``IntLayerSpec`` as a dict: kind, kernel shape, stride/padding, widths and modes), ``bits``
  (path -> [w_bits, a_bits]), the source QDIR's ``recipe``, ``calibration`` and
  ``base_checkpoint``, and ``account``: :func:`packed_account` of the written file.

Loading is strict: a missing, unexpected, mis-shaped or mis-typed key raises ValueError naming it,
as does a manifest layer that is not a matching Linear/Conv2d of the base model.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping

import jax
import numpy as np
import safetensors.numpy
from flax import nnx

from quantface_jax import checkpoint
from quantface_jax.fileio import atomic_directory
from quantface_jax.models.configs import OSDFaceConfig
from quantface_jax.models.layers import Conv2d, Linear
from quantface_jax.models.osdface import OSDFace, abstract, count_params
from quantface_jax.quant import rules as rules_lib
from quantface_jax.quant.api import quant_layers
from quantface_jax.quant.export import load_quantized
from quantface_jax.quant.export import read_manifest as read_qdir_manifest
from quantface_jax.quant.recipes import Recipe, recipe_from_dict, recipe_to_dict
from quantface_jax.serve.layers import INT_LAYERS, IntConv2d, IntLayerSpec, IntLinear, int_layer

SERVE_FORMAT = "quantface-serve"
SERVE_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
# Arrays that make up a layer's stored weight (codes, scales, zero-point column sums).
_WEIGHT_ARRAYS = ("weight", "w_scale", "w_colsum")


def serve_model(model: OSDFace, *, backend: str = "auto", inplace: bool = False) -> OSDFace:
  """``model`` (quantized, e.g. from ``load_quantized``) with every quantized layer replaced by its
  integer serving layer (cloned first unless ``inplace``). ``backend``: see ``kernels.dispatch``."""
  model = model if inplace else nnx.clone(model)
  for path, layer in quant_layers(model).items():
    rules_lib.set_module(model, path, int_layer(layer, path=path, backend=backend))
  return model


def _int_layers(model: nnx.Module) -> dict[str, IntLinear | IntConv2d]:
  return dict(rules_lib.iter_layers(model, INT_LAYERS))


def save_served(
  model: OSDFace,
  out_dir: str | os.PathLike,
  *,
  recipe: Recipe,
  base_ckpt: str,
  calibration_info: Mapping | None = None,
  source: str | None = None,
  overwrite: bool = True,
) -> pathlib.Path:
  """Writes the SERVE_DIR of a serving ``model`` (from :func:`serve_model`); returns it."""
  out_dir = pathlib.Path(out_dir).absolute()
  layers = _int_layers(model)
  tensors = {
    k: np.asarray(jax.device_get(v)) for k, v in checkpoint.flat_params(model, ...).items()
  }
  manifest = dict(
    format=SERVE_FORMAT,
    version=SERVE_VERSION,
    layers={p: m.spec.to_dict() for p, m in layers.items()},
    bits={p: [m.spec.w_bits, int(m.a_bits[...])] for p, m in layers.items()},
    recipe=recipe_to_dict(recipe),
    calibration=dict(calibration_info or {}),
    base_checkpoint=str(base_ckpt),
    source=source,
  )
  with atomic_directory(out_dir, overwrite=overwrite) as tmp:
    (tmp / CONFIG_FILE).write_text(model.config.to_json())
    # One metadata key: safetensors writes metadata in hash-map order, so two keys would make the
    # header (and the byte-exact round trip) vary from run to run. The recipe is in the manifest.
    safetensors.numpy.save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": SERVE_FORMAT})
    manifest["account"] = _account(tmp / WEIGHTS_FILE, manifest["layers"], model.config)
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
  return out_dir


def export(
  qdir: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = True
) -> pathlib.Path:
  """The SERVE_DIR of a QDIR (``quantface quantize`` / ``train`` output), written to ``out_dir``."""
  manifest = read_qdir_manifest(qdir)
  model = serve_model(load_quantized(qdir), inplace=True)
  return save_served(
    model,
    out_dir,
    recipe=recipe_from_dict(manifest["recipe"]),
    base_ckpt=manifest["base_checkpoint"],
    calibration_info=manifest["calibration"],
    source=str(pathlib.Path(qdir).absolute()),
    overwrite=overwrite,
  )


def is_serve_dir(path: str | os.PathLike) -> bool:
  """Whether ``path`` holds a SERVE_DIR manifest (as opposed to a QDIR's, or none)."""
  manifest = pathlib.Path(path) / MANIFEST_FILE
  return manifest.is_file() and json.loads(manifest.read_text()).get("format") == SERVE_FORMAT


def read_manifest(serve_dir: str | os.PathLike) -> dict:
  return checkpoint.read_manifest(
    serve_dir, fmt=SERVE_FORMAT, version=SERVE_VERSION, name=MANIFEST_FILE
  )


def _skeleton(
  config: OSDFaceConfig, layers: Mapping[str, dict], backend: str, where: pathlib.Path
) -> OSDFace:
  """The abstract base model with an abstract integer layer at every manifest path."""
  model = abstract(config)
  for path, spec_dict in layers.items():
    spec = IntLayerSpec.from_dict(spec_dict)
    try:
      base = rules_lib.get_module(model, path)
    except (AttributeError, IndexError):
      base = None
    fp_type = Conv2d if spec.kind == "conv" else Linear
    if (
      not isinstance(base, fp_type)
      or tuple(base.kernel.shape) != spec.kernel_shape
      or (spec.kind == "conv" and (base.stride, base.padding) != (spec.stride, spec.padding))
    ):
      raise ValueError(
        f"{where}: layer {path!r} ({spec.kind} {spec.kernel_shape}) does not match "
        f"the base model ({type(base).__name__ if base is not None else 'absent'})"
      )
    cls = IntConv2d if spec.kind == "conv" else IntLinear
    rules_lib.set_module(model, path, nnx.eval_shape(lambda: cls(spec, backend=backend)))
  return model


def load_served(serve_dir: str | os.PathLike, *, backend: str = "auto") -> OSDFace:
  """The serving model of a SERVE_DIR; ``backend`` picks the integer kernels (``"auto"``,
  ``"xla"``, ``"pallas"``, ``"interpret"``; see ``kernels.dispatch``).

  Raises ValueError naming every missing, unexpected, mis-shaped or mis-typed key.
  """
  serve_dir = pathlib.Path(serve_dir)
  manifest = read_manifest(serve_dir)
  config = OSDFaceConfig.from_dict(json.loads((serve_dir / CONFIG_FILE).read_text()))
  model = _skeleton(config, manifest["layers"], backend, serve_dir / MANIFEST_FILE)
  weights = serve_dir / WEIGHTS_FILE
  tensors = safetensors.numpy.load_file(str(weights))
  return checkpoint.fill_strict(model, tensors, weights, check_dtypes=True)


def _tensor_bytes(weights_file: pathlib.Path) -> dict[str, int]:
  """Bytes of each tensor as stored, from the safetensors header (u64 length + JSON)."""
  with open(weights_file, "rb") as f:
    header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
  return {
    k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"
  }


def _account(weights_file: pathlib.Path, layers: Mapping[str, dict], config: OSDFaceConfig) -> dict:
  sizes = _tensor_bytes(weights_file)
  by_bits: dict[str, dict] = {}
  for path, spec in layers.items():
    row = by_bits.setdefault(str(spec["w_bits"]), dict(layers=0, packed_bytes=0, bf16_bytes=0))
    row["layers"] += 1
    row["packed_bytes"] += sum(sizes.get(f"{path}.{name}", 0) for name in _WEIGHT_ARRAYS)
    row["bf16_bytes"] += 2 * math.prod(spec["kernel_shape"])
  for row in by_bits.values():
    row["ratio"] = row["packed_bytes"] / row["bf16_bytes"]
  bf16_model = 2 * count_params(abstract(config))
  return dict(
    weights_by_bits=by_bits,
    file_bytes=sum(sizes.values()),
    bf16_model_bytes=bf16_model,
    file_ratio_vs_bf16=sum(sizes.values()) / bf16_model,
  )


def packed_account(serve_dir: str | os.PathLike) -> dict:
  """Bytes of a SERVE_DIR's packed file against bf16, from its safetensors header:
  ``weights_by_bits`` (w_bits -> layers, packed_bytes = stored codes + per-channel scales +
  zero-point column sums, bf16_bytes = 2 per FP kernel element, ratio), ``file_bytes`` (every
  tensor), ``bf16_model_bytes`` (the base model's parameters at 2 bytes) and their ratio."""
  serve_dir = pathlib.Path(serve_dir)
  config = OSDFaceConfig.from_dict(json.loads((serve_dir / CONFIG_FILE).read_text()))
  return _account(serve_dir / WEIGHTS_FILE, read_manifest(serve_dir)["layers"], config)
