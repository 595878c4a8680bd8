"""The OSDFace release -> an `OSDFace` model, every key accounted for (docs/design.md §1, "Release
files"; convert/README.md).

Sources: the SD-2.1-base diffusers folder (``unet/``, ``vae/``), ``pytorch_lora_weights.safetensors``
(merged into the UNet), ``associate_2.ckpt`` (a PyTorch Lightning checkpoint, read by a restricted
unpickler that executes nothing), ``embedding_change_weights.pth``. Reading ``.bin``/``.ckpt``/``.pth``
needs torch (the ``torch`` extra); nothing else of the PyTorch world is imported.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from quantface_jax.convert.torch_to_nnx import (
  ConversionError,
  ConversionReport,
  load_torch_state_dict,
  to_numpy,
)
from quantface_jax.models.configs import (
  OSDFaceConfig,
  VREConfig,
  unet_config_from_diffusers,
  vae_config_from_diffusers,
)
from quantface_jax.models.osdface import OSDFace, abstract

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
LORA_FILE = "pytorch_lora_weights.safetensors"
VRE_FILE = "associate_2.ckpt"
EMBEDDING_CHANGE_FILE = "embedding_change_weights.pth"
VRE_PREFIX = "vqvae_LQ."
# Ours -> OSDFace's. Its attention block (`MultiHeadAttnBlock`) holds two GroupNorms; self-attention
# normalizes with ``norm1`` only, which is our block's one ``norm``.
VRE_RENAMES = {"conv_shortcut": "nin_shortcut", "norm": "norm1"}
# Entries of associate_2.ckpt's LQ branch that OSDFace's VRE never reads: (fullmatch pattern, why).
VRE_UNUSED = (
  (
    re.compile(r"vqvae_LQ\.(decoder|post_quant_conv)\..*"),
    "LQ decoder / post_quant_conv: the VRE uses the encoder only",
  ),
  (
    re.compile(r"vqvae_LQ\.encoder\.(down\.\d+\.attn\.\d+|mid\.attn_1)\.norm2\.(weight|bias)"),
    "MultiHeadAttnBlock.norm2 normalizes a second (cross-attention) input; self-attention uses norm1",
  ),
  (
    re.compile(r"vqvae_LQ\.quantize\.pos_embedding"),
    "position table of use_pos_embedding, which OSDFace's inference leaves off",
  ),
)
# Old diffusers VAE attention names (still in some hub checkpoints) -> current ones.
_VAE_LEGACY_ATTENTION = re.compile(
  r"((?:en|de)coder\.mid_block\.attentions\.0)\.(query|key|value|proj_attn)\."
)
_VAE_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
DEFAULT_LORA_ALPHA = 16.0


# ---------------------------------------------------------------------------------------------- files


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
  """A plain weights file: ``.safetensors``, or a torch pickle of tensors only (``weights_only=True``)."""
  path = Path(path)
  if path.suffix == ".safetensors":
    with safe_open(str(path), framework="pt" if _has_torch() else "np") as f:
      return {k: to_numpy(f.get_tensor(k)) for k in f.keys()}
  import torch  # pylint: disable=g-import-not-at-top

  state = torch.load(path, map_location="cpu", weights_only=True)
  return _tensor_dict(state, str(path))


def _has_torch() -> bool:
  return importlib.util.find_spec("torch") is not None


def _tensor_dict(state: Any, where: str) -> dict[str, np.ndarray]:
  if not isinstance(state, Mapping):
    raise ConversionError(f"{where}: expected a state dict, got {type(state).__name__}")
  bad = [f"{k} ({type(v).__name__})" for k, v in state.items() if not hasattr(v, "shape")]
  if bad:
    raise ConversionError(f"{where}: {len(bad)} entries are not tensors: {bad[:20]}")
  return {k: to_numpy(v) for k, v in state.items()}


class _Inert:
  """Stands in for any class or function a checkpoint names that is not a tensor rebuild: takes
  whatever pickle hands it and does nothing."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    del state

  def __setitem__(self, key, value):
    del key, value

  def append(self, value):
    del value

  def extend(self, values):
    del values


# What a state dict of tensors legitimately names (storages are resolved by torch.load before us).
_ALLOWED_GLOBALS = frozenset(
  {
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("collections", "OrderedDict"),
  }
)


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only tensor-rebuild globals; every other global becomes an inert placeholder class."""

  def find_class(self, module: str, name: str):
    if (module, name) in _ALLOWED_GLOBALS:
      return super().find_class(module, name)
    return type(f"Inert[{module}.{name}]", (_Inert,), {"__module__": __name__})


_RESTRICTED_PICKLE = types.SimpleNamespace(
  Unpickler=_RestrictedUnpickler,
  load=lambda f, **kw: _RestrictedUnpickler(f, **kw).load(),
  __name__="quantface_restricted_pickle",
)


def read_lightning_state_dict(path: str | Path) -> dict[str, np.ndarray]:
  """The ``state_dict`` tensors of a PyTorch Lightning checkpoint, without Lightning and without
  running pickled code.

  ``torch.load(weights_only=True)`` refuses Lightning's hyper-parameter classes; here torch's loader
  (which resolves storages itself) runs on a pickle module whose ``find_class`` returns only the
  tensor rebuild functions and ``OrderedDict`` and an inert placeholder for anything else, so no
  pickled callable other than those can run. Non-tensor entries come back as placeholders and are
  ignored outside ``state_dict``.
  """
  import torch  # pylint: disable=g-import-not-at-top

  checkpoint = torch.load(
    path, map_location="cpu", weights_only=False, pickle_module=_RESTRICTED_PICKLE
  )
  if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
    raise ConversionError(
      f"{path}: not a Lightning checkpoint (no 'state_dict' mapping at the top)"
    )
  return _tensor_dict(checkpoint["state_dict"], f"{path}:state_dict")


def read_diffusers_component(directory: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json as a dict, state dict) of a diffusers model folder (``unet/``, ``vae/``)."""
  directory = Path(directory)
  config_path = directory / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"{config_path} not found")
  for name in DIFFUSERS_WEIGHTS:
    if (directory / name).is_file():
      return json.loads(config_path.read_text()), read_state_dict(directory / name)
  raise FileNotFoundError(f"{directory}: none of {DIFFUSERS_WEIGHTS}")


def _modernize_vae_keys(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  rename = lambda m: f"{m.group(1)}.{_VAE_ATTENTION_NAMES[m.group(2)]}."
  return {_VAE_LEGACY_ATTENTION.sub(rename, k): v for k, v in state_dict.items()}


# ----------------------------------------------------------------------------------------------- LoRA


def lora_alpha_config(path: str | Path, lora_alpha: float | None) -> dict[str, Any]:
  """The peft LoRA options that set the merge scale: ``lora_alpha``, ``alpha_pattern``, ``use_rslora``.

  Read from the file's diffusers metadata (``lora_adapter_metadata``, keys ``unet.*``) or an
  ``adapter_config.json`` beside it; ``lora_alpha`` is the fallback (default 16, OSDFace's) and must
  agree with the file where both exist.
  """
  path = Path(path)
  with safe_open(str(path), framework="np") as f:
    metadata = f.metadata() or {}
  options = {}
  if "lora_adapter_metadata" in metadata:
    packed = json.loads(metadata["lora_adapter_metadata"])
    options = {k[len("unet.") :]: v for k, v in packed.items() if k.startswith("unet.")}
  elif (path.parent / "adapter_config.json").is_file():
    options = json.loads((path.parent / "adapter_config.json").read_text())
  if options.get("use_dora"):
    raise ConversionError(f"{path}: DoRA adapters cannot be merged as W += scale·B·A")
  if (
    "lora_alpha" in options
    and lora_alpha is not None
    and float(options["lora_alpha"]) != float(lora_alpha)
  ):
    raise ConversionError(
      f"{path}: lora_alpha={lora_alpha} given but the file says {options['lora_alpha']}"
    )
  alpha = options.get("lora_alpha", DEFAULT_LORA_ALPHA if lora_alpha is None else lora_alpha)
  return {
    "lora_alpha": float(alpha),
    "alpha_pattern": options.get("alpha_pattern") or {},
    "use_rslora": bool(options.get("use_rslora", False)),
  }


def _module_alpha(module: str, options: Mapping[str, Any]) -> float:
  for pattern, alpha in options[
    "alpha_pattern"
  ].items():  # peft's rule: a key matches a name suffix
    if re.match(rf"(.*\.)?({pattern})$", module):
      return float(alpha)
  return options["lora_alpha"]


def merge_lora(
  weights: Mapping[str, np.ndarray],
  lora: Mapping[str, np.ndarray],
  options: Mapping[str, Any],
  *,
  prefix: str = "unet.",
) -> tuple[dict[str, np.ndarray], ConversionReport]:
  """``weights`` with W += (alpha/r)·B·A merged for every peft pair ``prefix<module>.lora_{A,B}.weight``.

  Linear: A (r, in), B (out, r). Conv: A (r, Cin, kh, kw), B (Cout, r, 1, 1). r is A's first dim.
  Every LoRA key must pair up and land on an existing weight of matching shape; otherwise a
  ConversionError names the orphans. The merge is in float64, cast back to the weight's dtype.
  """
  pair = re.compile(rf"{re.escape(prefix)}(.+)\.lora_([AB])\.weight")
  modules: dict[str, dict[str, np.ndarray]] = {}
  orphans = []
  for key, value in lora.items():
    m = pair.fullmatch(key)
    if m is None:
      orphans.append(f"{key}: not a '{prefix}<module>.lora_A/B.weight' key")
    else:
      modules.setdefault(m.group(1), {})[m.group(2)] = value
  merged = dict(weights)
  for module, ab in sorted(modules.items()):
    target = f"{module}.weight"
    if set(ab) != {"A", "B"}:
      orphans.append(f"{prefix}{module}: lora_{'A' if 'A' not in ab else 'B'} missing")
      continue
    if target not in weights:
      orphans.append(f"{prefix}{module}: no UNet weight {target}")
      continue
    w, a, b = weights[target], ab["A"].astype(np.float64), ab["B"].astype(np.float64)
    rank = a.shape[0]
    if (
      b.shape[:2] != (w.shape[0], rank)
      or a.shape[1:] != w.shape[1:]
      or any(d != 1 for d in b.shape[2:])
    ):
      orphans.append(f"{prefix}{module}: A {a.shape} / B {b.shape} do not fit {target} {w.shape}")
      continue
    alpha = _module_alpha(module, options)
    scale = alpha / (np.sqrt(rank) if options["use_rslora"] else rank)
    delta = (b.reshape(b.shape[0], rank) @ a.reshape(rank, -1)).reshape(w.shape)
    merged[target] = (w.astype(np.float64) + scale * delta).astype(w.dtype)
  if orphans:
    raise ConversionError(
      f"{len(orphans)} LoRA keys do not pair with the UNet:\n  " + "\n  ".join(orphans[:20])
    )
  return merged, ConversionReport(
    loaded=tuple(lora), merged=tuple(f"{m}.weight" for m in sorted(modules))
  )


# ------------------------------------------------------------------------------------------------ VRE


def _require(state_dict: Mapping[str, np.ndarray], key: str, where: str) -> tuple[int, ...]:
  if key not in state_dict:
    raise ConversionError(f"{where}: missing key {key} (needed to read the VRE config)")
  return tuple(state_dict[key].shape)


def vre_config_from_state_dict(
  state_dict: Mapping[str, np.ndarray],
  *,
  resolution: int,
  norm_num_groups: int = 32,
  where: str = f"{VRE_FILE} (under {VRE_PREFIX})",
) -> VREConfig:
  """The VRE config read off tensor shapes (keys without the ``vqvae_LQ.`` prefix); what shapes
  cannot tell (GroupNorm groups, the input size the attention placement refers to) is given."""
  ch, in_channels = _require(state_dict, "encoder.conv_in.weight", where)[:2]
  levels = 0
  while f"encoder.down.{levels}.block.0.conv1.weight" in state_dict:
    levels += 1
  if not levels:
    raise ConversionError(f"{where}: missing key encoder.down.0.block.0.conv1.weight")
  widths = [state_dict[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)]
  if any(w % ch for w in widths):
    raise ConversionError(f"{where}: level widths {widths} are not multiples of conv_in's {ch}")
  num_res_blocks = 0
  while f"encoder.down.0.block.{num_res_blocks}.conv1.weight" in state_dict:
    num_res_blocks += 1
  n_embed, embed_dim = _require(state_dict, "quantize.embedding.weight", where)
  return VREConfig(
    in_channels=in_channels,
    ch=ch,
    ch_mult=tuple(w // ch for w in widths),
    num_res_blocks=num_res_blocks,
    attn_resolutions=tuple(
      resolution >> i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state_dict
    ),
    resolution=resolution,
    z_channels=_require(state_dict, "encoder.conv_out.weight", where)[0],
    embed_dim=embed_dim,
    n_embed=n_embed,
    norm_num_groups=norm_num_groups,
  )


def vre_unused_reason(key: str) -> str | None:
  """Why OSDFace's VRE never reads the associate_2.ckpt entry ``key``, or None if it does."""
  return next((why for pattern, why in VRE_UNUSED if pattern.fullmatch(key)), None)


def _split_vre_checkpoint(
  state_dict: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], ConversionReport]:
  """(the VRE's keys, prefix stripped; a report of the skipped rest)."""
  kept, skipped = {}, []
  for key, value in state_dict.items():
    if not key.startswith(VRE_PREFIX):
      skipped.append((key, f"outside {VRE_PREFIX} (not the LQ branch)"))
    elif (why := vre_unused_reason(key)) is not None:
      skipped.append((key, why))
    else:
      kept[key[len(VRE_PREFIX) :]] = value
  return kept, ConversionReport(skipped=tuple(skipped))


# -------------------------------------------------------------------------------------------- release


def convert_release(
  sd_dir: str | Path,
  osdface_dir: str | Path,
  *,
  allow_unexpected: str | None = None,
  lora_alpha: float | None = None,
  resolution: int = 512,
  vre_norm_groups: int = 32,
) -> tuple[OSDFace, ConversionReport]:
  """Builds an OSDFace model from the release files, LoRA merged.

  Args:
    sd_dir: the SD-2.1-base diffusers folder (``unet/``, ``vae/``).
    osdface_dir: holds ``pytorch_lora_weights.safetensors``, ``associate_2.ckpt`` and
      ``embedding_change_weights.pth``.
    allow_unexpected: regex (fullmatch) of keys, as written in their source file, that the model does
      not have but may be skipped (reported) instead of failing.
    lora_alpha: the LoRA alpha when neither the LoRA file's metadata nor an ``adapter_config.json``
      beside it says (default 16, OSDFace's).
    resolution: the face size the model runs at (places the VRE's attention levels).
    vre_norm_groups: the VRE's GroupNorm groups (not readable from shapes).

  Returns:
    (model, report): the model with float32 parameters on the default device; the report lists the
    keys loaded per source file (``file:key``), skipped with reasons, and the LoRA-merged weights.

  Raises:
    ConversionError: missing, unexpected or mis-shaped keys, orphan LoRA keys (all named).
  """
  sd_dir, osdface_dir = Path(sd_dir), Path(osdface_dir)
  unet_config, unet_sd = read_diffusers_component(sd_dir / "unet")
  vae_config, vae_sd = read_diffusers_component(sd_dir / "vae")
  lora_path = osdface_dir / LORA_FILE
  unet_sd, lora_report = merge_lora(
    unet_sd, read_state_dict(lora_path), lora_alpha_config(lora_path, lora_alpha)
  )
  vre_sd, vre_skipped = _split_vre_checkpoint(read_lightning_state_dict(osdface_dir / VRE_FILE))
  embedding_sd = read_state_dict(osdface_dir / EMBEDDING_CHANGE_FILE)
  hidden = _require(embedding_sd, "conv1.weight", EMBEDDING_CHANGE_FILE)[0]

  config = OSDFaceConfig(
    name="osdface",
    resolution=resolution,
    unet=unet_config_from_diffusers(unet_config),
    vae=vae_config_from_diffusers(vae_config),
    vre=vre_config_from_state_dict(vre_sd, resolution=resolution, norm_num_groups=vre_norm_groups),
    embedding_hidden=hidden,
  )
  model = abstract(config)
  load = lambda module, sd, **kw: load_torch_state_dict(
    module, sd, allow_unexpected=allow_unexpected, **kw
  )
  unet_report = load(model.unet, unet_sd)
  vae_report = load(model.vae, _modernize_vae_keys(vae_sd))
  vre_report = load(
    model.vre,
    {VRE_PREFIX + k: v for k, v in vre_sd.items()},
    prefix=VRE_PREFIX,
    renames=VRE_RENAMES,
  )
  embedding_report = load(model.embedding_change, embedding_sd)
  report = ConversionReport.combine(
    unet_report.prefixed("unet:"),
    lora_report.prefixed(f"{LORA_FILE}:"),
    vae_report.prefixed("vae:"),
    vre_report.prefixed(f"{VRE_FILE}:"),
    vre_skipped.prefixed(f"{VRE_FILE}:"),
    embedding_report.prefixed(f"{EMBEDDING_CHANGE_FILE}:"),
  )
  return model, report
