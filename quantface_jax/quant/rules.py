"""Which layers are quantized, and how: per-layer configs matched by module-path regex
(docs/design.md §2.1).

A module path is the NNX attribute path joined by dots, list indices included, e.g.
``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``. A rule table is an ordered
sequence of ``(regex, LayerQuantConfig | None)``; the first rule whose regex ``re.fullmatch``-es the
path wins, ``None`` means "leave the layer in full precision", and an unmatched path is left alone.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

from flax import nnx

from quantface_jax.models.layers import Conv2d, Linear
from quantface_jax.quant import quantizers


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerQuantConfig:
  """How one Linear/Conv2d is balanced and fake-quantized."""

  w_bits: int = 8  # initial weight width (the layer keeps it as traced QuantBits state).
  a_bits: int = 8  # initial input-activation width (traced QuantBits state).
  w_granularity: Literal["per_channel", "per_tensor"] = "per_channel"  # per output channel or one.
  w_symmetric: bool = True  # symmetric weight codes (zero point 0).
  a_mode: Literal["static", "dynamic"] = "static"  # calibrated per-tensor range, or per-token live.
  a_symmetric: bool = False  # static mode only; dynamic per-token is always symmetric.
  smooth: bool = False  # per-input-channel smoothing s_j = max|x_j|^α / max|W_j|^(1-α).
  alpha: float | Literal["search"] = (
    0.5  # smoothing strength, or searched per layer on calibration.
  )
  rotate: bool = False  # randomized Hadamard rotation of the (smoothed) input channels.
  rotation_impl: Literal["fast", "dense"] = (
    "fast"  # online transform: butterfly, or a stored dense Q.
  )
  low_rank: int = 0  # rank r of the full-precision branch x̂·L1·L2 split off the weight (0: none).
  clip_search: bool = True  # search a per-channel weight clip ratio for least MSE (else min/max).

  def __post_init__(self):
    for name in ("w_bits", "a_bits"):
      if not 2 <= getattr(self, name) <= quantizers.PASSTHROUGH_BITS:
        raise ValueError(f"{name}={getattr(self, name)} outside 2..{quantizers.PASSTHROUGH_BITS}")
    if self.a_mode not in ("static", "dynamic"):
      raise ValueError(f"a_mode must be static or dynamic, got {self.a_mode!r}")
    if self.alpha != "search" and not 0.0 <= self.alpha <= 1.0:
      raise ValueError(f'alpha must be in [0, 1] or "search", got {self.alpha!r}')
    if self.low_rank < 0:
      raise ValueError(f"low_rank must be >= 0, got {self.low_rank}")

  def replace(self, **changes) -> LayerQuantConfig:
    return dataclasses.replace(self, **changes)

  @property
  def weight_quantizer(self) -> quantizers.QuantizerConfig:
    """Weights (…, d_in, d_out): one scale per output channel (last axis) or per tensor."""
    return quantizers.QuantizerConfig(
      bits=self.w_bits,
      symmetric=self.w_symmetric,
      granularity=self.w_granularity,
      axis=-1,
      clip_search=self.clip_search,
    )

  @property
  def act_quantizer(self) -> quantizers.QuantizerConfig:
    """Balanced inputs (…, d_in): static per-tensor, or dynamic per-token symmetric."""
    if self.a_mode == "dynamic":
      return dataclasses.replace(quantizers.ACT_DYNAMIC_PER_TOKEN, bits=self.a_bits)
    return quantizers.QuantizerConfig(
      bits=self.a_bits, symmetric=self.a_symmetric, granularity="per_tensor"
    )


Rule = tuple[str, LayerQuantConfig | None]
Rules = Sequence[Rule]

# docs/design.md §2.1: kept at W8A8 (first/last convs, time embedding, VAE latent 1x1 convs).
KEEP_W8A8 = (
  r"unet\.conv_in",
  r"unet\.conv_out",
  r"unet\.time_embedding\..*",
  r"vae\.(encoder|decoder)\.conv_(in|out)",
  r"vae\.(post_)?quant_conv",
)
# Full precision: the prompt branch (run once, small).
FULL_PRECISION = (r"vre\..*", r"embedding_change\..*")
# Everything else quantized at the body width.
BODY = r"(unet|vae\.(encoder|decoder))\..*"


def default_rules(body: LayerQuantConfig) -> tuple[Rule, ...]:
  """The scope of docs/design.md §2.1: ``body`` everywhere in the UNet and VAE, W8A8 (no low-rank)
  for the KEEP_W8A8 layers, the VRE and embedding_change untouched."""
  keep = body.replace(w_bits=8, a_bits=8, low_rank=0)
  return (
    tuple((p, None) for p in FULL_PRECISION) + tuple((p, keep) for p in KEEP_W8A8) + ((BODY, body),)
  )


def match(rules: Rules, path: str) -> LayerQuantConfig | None:
  """The config of the first rule whose regex fullmatches ``path``; None: skip (or no rule)."""
  for pattern, config in rules:
    if re.fullmatch(pattern, path):
      return config
  return None


# ----------------------------------------------------------------------------------------------
# Module paths.

FP_LAYERS = (Linear, Conv2d)


def path_str(path: Sequence) -> str:
  return ".".join(str(p) for p in path)


def iter_layers(model: nnx.Module, types: tuple[type, ...]) -> Iterator[tuple[str, nnx.Module]]:
  """(dotted path, module) for every submodule of one of ``types``, in NNX traversal order."""
  for path, module in nnx.iter_modules(model):
    if path and isinstance(module, types):
      yield path_str(path), module


def get_module(model: nnx.Module, path: str) -> nnx.Module:
  module = model
  for key in path.split("."):
    module = module[int(key)] if key.isdigit() else getattr(module, key)
  return module


def set_module(model: nnx.Module, path: str, new: nnx.Module) -> None:
  """Replaces the submodule at ``path`` (attribute or ``nnx.List`` index) with ``new``."""
  parent_path, _, key = path.rpartition(".")
  parent = get_module(model, parent_path) if parent_path else model
  if key.isdigit():
    parent[int(key)] = new
  else:
    setattr(parent, key, new)


def replace_layers(
  model: nnx.Module,
  layers: Sequence[tuple[str, nnx.Module]],
  convert: Callable[[str, nnx.Module], nnx.Module | None],
  *,
  workers: int | None = None,
) -> None:
  """Sets each ``path`` of ``layers`` to ``convert(path, layer)`` (None: left as is), in place.

  The conversions run on ``workers`` threads (default: the host's cores, at most 16): their array
  work (jitted programs, LAPACK) releases the GIL, so a many-core host converts layers in parallel.
  Each layer's result depends on that layer alone, so the model is the same for any ``workers``.
  """
  workers = workers or min(16, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    new_layers = list(pool.map(lambda item: convert(*item), layers))
  for (path, _), new in zip(layers, new_layers):
    if new is not None:
      set_module(model, path, new)


def layer_seed(seed: int, path: str) -> int:
  """A 31-bit seed from a recipe/calibration seed and a module path (stable across runs)."""
  digest = hashlib.sha256(f"{seed}:{path}".encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
