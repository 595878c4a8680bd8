"""SERVE_DIR: a quantized model packed for integer serving (docs/design.md §2.6).

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

Packing (``export(..., packing=Packing(...))``, recorded in the manifest): ``half_floats`` stores
every float32 tensor that float16 holds exactly as float16 (lossless: the FP parts of a model
converted from float16 weights); ``low_rank_bits=8`` stores each low-rank factor as int8 codes
with one float32 scale per rank (``<name>`` int8 and ``<name>_scale``), and ``rank_fraction``
keeps the top ``ceil(fraction · min(K, N))`` singular pairs of each layer's low-rank branch (its
best approximation at that rank), so the branch's bytes follow the layer's width. Loading decodes
both back to float32 before the strict fill.

A SERVE_DIR shipped in the package (``quantface_jax/assets/<name>``, e.g. ``mini-w4a4``) is
found by its name wherever a path is accepted (:func:`served_dir`).

Loading is strict: a missing, unexpected, mis-shaped or mis-typed key raises ValueError naming it,
as does a manifest layer that is not a matching Linear/Conv2d of the base model.
"""

from __future__ import annotations

import dataclasses
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
from quantface_jax.quant.export import load_quantized, read_qdir_manifest
from quantface_jax.quant.layers import low_rank_split
from quantface_jax.quant.recipes import Recipe, recipe_from_dict, recipe_to_dict
from quantface_jax.serve.layers import INT_LAYERS, IntConv2d, IntLayerSpec, IntLinear, int_layer

SERVE_FORMAT = "quantface-serve"
SERVE_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
# Arrays that make up a layer's stored weight (codes, scales, zero-point column sums).
_WEIGHT_ARRAYS = ("weight", "w_scale", "w_colsum")
_LOW_RANK = ("low_rank_down", "low_rank_up")
_SCALE_SUFFIX = "_scale"
ASSETS_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets"


@dataclasses.dataclass(frozen=True)
class Packing:
  """How a SERVE_DIR stores what is not integer codes (module docstring); the default is exact."""

  half_floats: bool = False  # float32 tensors that float16 holds exactly, as float16
  low_rank_bits: int | None = None  # 8: int8 low-rank factors with per-rank scales
  rank_fraction: float | None = None  # keep ceil(fraction * min(K, N)) pairs of each branch

  def __post_init__(self):
    if self.low_rank_bits not in (None, 8):
      raise ValueError(f"low_rank_bits must be None or 8, got {self.low_rank_bits}")
    if self.rank_fraction is not None and not 0 < self.rank_fraction <= 1:
      raise ValueError(f"rank_fraction must be in (0, 1], got {self.rank_fraction}")


def served_dir(name_or_path: str | os.PathLike) -> pathlib.Path:
  """``name_or_path`` as a directory: itself if it exists, else the SERVE_DIR of that name
  shipped in the package (``quantface_jax/assets/<name>``) if there is one."""
  path = pathlib.Path(name_or_path)
  shipped = ASSETS_DIR / str(name_or_path)
  if not path.exists() and path.name == str(name_or_path) and (shipped / MANIFEST_FILE).is_file():
    return shipped
  return path


def shipped_models() -> list[str]:
  """Names of the SERVE_DIRs shipped in the package."""
  return sorted(
    p.parent.name for p in ASSETS_DIR.glob(f"*/{MANIFEST_FILE}") if is_serve_dir(p.parent)
  )


def truncate_low_rank(model: OSDFace, rank_fraction: float) -> OSDFace:
  """``model`` (quantized) with each layer's low-rank branch L1·L2 (taps·d_in × d_out) cut to its
  best approximation of rank ceil(rank_fraction · min(taps·d_in, d_out)) where that is lower (in
  place; the factors are rebalanced as U·S^½, S^½·Vᵀ)."""
  for layer in quant_layers(model).values():
    if layer.low_rank_down is None:
      continue
    down, up = np.asarray(layer.low_rank_down[...]), np.asarray(layer.low_rank_up[...])
    rank = math.ceil(rank_fraction * min(down.shape[0], up.shape[1]))
    if rank >= down.shape[1]:
      continue
    _, new_down, new_up = low_rank_split(down.astype(np.float64) @ up, rank)
    layer.low_rank_down = nnx.Param(new_down)
    layer.low_rank_up = nnx.Param(new_up)
  return model


def _pack_tensors(tensors: dict[str, np.ndarray], packing: Packing) -> None:
  """Applies ``packing``'s storage to a SERVE_DIR's tensors (in place)."""
  for key in list(tensors):
    value = tensors[key]
    if packing.low_rank_bits and key.rsplit(".", 1)[-1] in _LOW_RANK:
      axis = 0 if key.endswith("down") else 1  # one scale per rank
      scale = np.maximum(np.abs(value).max(axis=axis, keepdims=True), 1e-30) / 127.0
      tensors[key] = np.clip(np.round(value / scale), -127, 127).astype(np.int8)
      tensors[key + _SCALE_SUFFIX] = scale.astype(np.float32)
    elif packing.half_floats and value.dtype == np.float32:
      half = value.astype(np.float16)
      if np.array_equal(half.astype(np.float32), value):
        tensors[key] = half


def _unpack_tensors(tensors: dict[str, np.ndarray]) -> None:
  """Inverse of :func:`_pack_tensors`: float16 and int8 low-rank factors back to float32."""
  for key in list(tensors):
    if (
      key.endswith(_SCALE_SUFFIX)
      and key.removesuffix(_SCALE_SUFFIX).rsplit(".", 1)[-1] in _LOW_RANK
    ):
      codes_key = key.removesuffix(_SCALE_SUFFIX)
      tensors[codes_key] = tensors[codes_key].astype(np.float32) * tensors.pop(key)
  for key, value in tensors.items():
    if value.dtype == np.float16:
      tensors[key] = value.astype(np.float32)


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
  packing: Packing = Packing(),
) -> pathlib.Path:
  """Writes the SERVE_DIR of a serving ``model`` (from :func:`serve_model`), its float parts
  stored as ``packing`` says; returns it."""
  out_dir = pathlib.Path(out_dir).absolute()
  layers = _int_layers(model)
  tensors = {
    k: np.asarray(jax.device_get(v)) for k, v in checkpoint.flat_params(model, ...).items()
  }
  _pack_tensors(tensors, packing)
  manifest = dict(
    format=SERVE_FORMAT,
    version=SERVE_VERSION,
    layers={p: m.spec.to_dict() for p, m in layers.items()},
    bits={p: [m.spec.w_bits, int(m.a_bits[...])] for p, m in layers.items()},
    recipe=recipe_to_dict(recipe),
    calibration=dict(calibration_info or {}),
    base_checkpoint=str(base_ckpt),
    source=source,
    packing=dataclasses.asdict(packing),
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
  qdir: str | os.PathLike,
  out_dir: str | os.PathLike,
  *,
  overwrite: bool = True,
  packing: Packing = Packing(),
) -> pathlib.Path:
  """The SERVE_DIR of a QDIR (``quantface quantize`` / ``train`` output), written to ``out_dir``
  and stored as ``packing`` says (its ``rank_fraction`` cuts the branches before serving)."""
  manifest = read_qdir_manifest(qdir)
  quantized = load_quantized(qdir)
  if packing.rank_fraction is not None:
    truncate_low_rank(quantized, packing.rank_fraction)
  model = serve_model(quantized, inplace=True)
  return save_served(
    model,
    out_dir,
    recipe=recipe_from_dict(manifest["recipe"]),
    base_ckpt=manifest["base_checkpoint"],
    calibration_info=manifest["calibration"],
    source=str(pathlib.Path(qdir).absolute()),
    overwrite=overwrite,
    packing=packing,
  )


def is_serve_dir(path: str | os.PathLike) -> bool:
  """Whether ``path`` (or a shipped model's name) holds a SERVE_DIR manifest (as opposed to a
  QDIR's, or none)."""
  manifest = served_dir(path) / MANIFEST_FILE
  return manifest.is_file() and json.loads(manifest.read_text()).get("format") == SERVE_FORMAT


def read_serve_manifest(serve_dir: str | os.PathLike) -> dict:
  return checkpoint.read_checked_manifest(
    served_dir(serve_dir), fmt=SERVE_FORMAT, version=SERVE_VERSION, name=MANIFEST_FILE
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
  serve_dir = served_dir(serve_dir)
  manifest = read_serve_manifest(serve_dir)
  config = OSDFaceConfig.from_dict(json.loads((serve_dir / CONFIG_FILE).read_text()))
  model = _skeleton(config, manifest["layers"], backend, serve_dir / MANIFEST_FILE)
  weights = serve_dir / WEIGHTS_FILE
  tensors = safetensors.numpy.load_file(str(weights))
  _unpack_tensors(tensors)
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
  serve_dir = served_dir(serve_dir)
  config = OSDFaceConfig.from_dict(json.loads((serve_dir / CONFIG_FILE).read_text()))
  return _account(serve_dir / WEIGHTS_FILE, read_serve_manifest(serve_dir)["layers"], config)
