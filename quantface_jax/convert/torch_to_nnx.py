"""PyTorch state dict <-> Flax NNX parameters, by rule, with strict accounting of every key.

An NNX parameter path maps to a torch key by joining its components with dots, renaming module
components through ``renames`` (ours -> torch) and the leaf by ``LEAF_NAMES``; the layout follows the
rank of our array: a 2-D ``kernel`` is a Linear, torch ``weight.T`` (a torch weight with trailing unit
dims — a Conv1d(k=1) or 1x1 conv feeding a Linear — is accepted and squeezed); a 4-D ``kernel`` is a
conv, torch OIHW <-> our HWIO. Everything else keeps its layout.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

# Our leaf name -> torch's.
LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
# Offending keys named in full in an error message; the rest are counted.
MAX_LISTED = 20


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConversionReport:
  """What a conversion did with every key of its sources."""

  loaded: tuple[str, ...] = ()  # source keys copied into the model
  skipped: tuple[tuple[str, str], ...] = ()  # (source key, why it was not used)
  merged: tuple[str, ...] = ()  # weights that had a LoRA delta merged into them

  @property
  def counts(self) -> dict[str, int]:
    return {"loaded": len(self.loaded), "skipped": len(self.skipped), "merged": len(self.merged)}

  def prefixed(self, prefix: str) -> ConversionReport:
    """The same report with ``prefix`` before every key (to combine the reports of several sources)."""
    return ConversionReport(
      loaded=tuple(prefix + k for k in self.loaded),
      skipped=tuple((prefix + k, why) for k, why in self.skipped),
      merged=tuple(prefix + k for k in self.merged),
    )

  @classmethod
  def combine(cls, *reports: ConversionReport) -> ConversionReport:
    return cls(
      loaded=sum((r.loaded for r in reports), ()),
      skipped=sum((r.skipped for r in reports), ()),
      merged=sum((r.merged for r in reports), ()),
    )

  def summary(self) -> str:
    """A few lines: per source (the part of a key before its first ``:``), how many keys were loaded,
    LoRA-merged and skipped, the skipped ones counted per reason."""
    source = lambda key: key.split(":", 1)[0] if ":" in key else "(model)"
    sources = dict.fromkeys(
      [source(k) for k in self.loaded + self.merged] + [source(k) for k, _ in self.skipped]
    )
    lines = []
    for name in sources:
      loaded = sum(source(k) == name for k in self.loaded)
      merged = sum(source(k) == name for k in self.merged)
      reasons = collections.Counter(why for k, why in self.skipped if source(k) == name)
      parts = [f"{loaded} loaded"] + ([f"{merged} LoRA-merged"] if merged else [])
      parts += [f"{sum(reasons.values())} skipped"] if reasons else []
      lines.append(f"{name}: " + ", ".join(parts))
      lines += [f"  skipped {n}: {why}" for why, n in reasons.most_common()]
    return "\n".join(lines)

  def to_json(self) -> str:
    return json.dumps(
      {
        "counts": self.counts,
        "loaded": list(self.loaded),
        "skipped": [{"key": k, "reason": why} for k, why in self.skipped],
        "merged": list(self.merged),
      },
      indent=2,
    )


class ConversionError(ValueError):
  """A state dict that does not match the model: every offending key is named."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParamSpec:
  """One NNX parameter and the torch key it corresponds to."""

  path: tuple[str, ...]  # NNX path, components as strings
  variable: nnx.Param  # the model's variable (set in place on load)
  shape: tuple[int, ...]  # our shape
  torch_shape: tuple[int, ...]  # the canonical torch shape (a Linear as (out, in))

  @property
  def is_linear_kernel(self) -> bool:
    return self.path[-1] == "kernel" and len(self.shape) == 2


def _torch_layout(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if name == "kernel" and len(shape) == 2:
    return shape[::-1]
  if name == "kernel" and len(shape) == 4:
    kh, kw, cin, cout = shape
    return (cout, cin, kh, kw)
  if name == "kernel":
    raise ConversionError(f"kernel of rank {len(shape)}: no torch layout rule")
  return shape


def param_specs(
  model: nnx.Module, *, prefix: str = "", renames: Mapping[str, str] | None = None
) -> dict[str, ParamSpec]:
  """torch key -> ParamSpec for every ``nnx.Param`` of ``model`` (works on abstract models)."""
  renames = renames or {}
  specs = {}
  for path, variable in nnx.iter_graph(model):
    if not isinstance(variable, nnx.Param):
      continue
    path = tuple(str(p) for p in path)
    leaf = path[-1]
    if leaf not in LEAF_NAMES:
      raise ConversionError(f"{'.'.join(path)}: parameter name {leaf!r} has no torch name rule")
    modules = [renames.get(p, p) for p in path[:-1]]
    shape = tuple(variable.get_value().shape)
    key = prefix + ".".join(modules + [LEAF_NAMES[leaf]])
    specs[key] = ParamSpec(
      path=path, variable=variable, shape=shape, torch_shape=_torch_layout(leaf, shape)
    )
  return specs


def to_numpy(value: Any) -> np.ndarray:
  """A torch tensor (without importing torch) or array-like -> numpy, 16-bit floats widened to float32."""
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    value = value.numpy()
  return np.asarray(value)


def _shape_ok(spec: ParamSpec, shape: tuple[int, ...]) -> bool:
  if spec.is_linear_kernel:
    return shape[:2] == spec.torch_shape and all(d == 1 for d in shape[2:])
  return shape == spec.torch_shape


def _from_torch_layout(spec: ParamSpec, value: np.ndarray) -> np.ndarray:
  if spec.is_linear_kernel:
    return value.reshape(value.shape[:2]).T
  if spec.path[-1] == "kernel":
    return value.transpose(2, 3, 1, 0)
  return value


def _listing(title: str, lines: list[str]) -> str:
  shown = "\n  ".join(lines[:MAX_LISTED])
  more = f"\n  ... and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
  return f"{len(lines)} {title}:\n  {shown}{more}"


def load_torch_state_dict(
  model: nnx.Module,
  state_dict: Mapping[str, Any],
  *,
  prefix: str = "",
  renames: Mapping[str, str] | None = None,
  allow_unexpected: str | None = None,
) -> ConversionReport:
  """Sets every parameter of ``model`` in place from a torch ``state_dict``.

  Args:
    model: an NNX module, concrete or abstract (``nnx.eval_shape``); its parameters are replaced.
    state_dict: torch key -> tensor or array (torch tensors are read without importing torch).
    prefix: prepended to each of our keys to get the torch key (``"vqvae_LQ."``).
    renames: module-name components, ours -> torch (``{"conv_shortcut": "nin_shortcut"}``).
    allow_unexpected: a regex (``re.fullmatch`` against the key); matching keys the model does not
      have are skipped and reported instead of failing.

  Returns:
    The report: loaded keys and skipped (allowed unexpected) keys.

  Raises:
    ConversionError: missing, unexpected (not allowed) or mis-shaped keys, each named with the shapes.
  """
  specs = param_specs(model, prefix=prefix, renames=renames)
  allow = re.compile(allow_unexpected) if allow_unexpected else None
  missing = [
    f"{k} (expected torch shape {s.torch_shape})" for k, s in specs.items() if k not in state_dict
  ]
  unexpected, skipped = [], []
  for key in state_dict:
    if key in specs:
      continue
    if allow is not None and allow.fullmatch(key):
      skipped.append((key, f"unexpected, allowed by {allow_unexpected!r}"))
    else:
      unexpected.append(f"{key} {np.shape(state_dict[key])}")
  shapes = {k: np.shape(state_dict[k]) for k in specs if k in state_dict}
  misshaped = [
    f"{k}: expected torch shape {specs[k].torch_shape} (ours {specs[k].shape}), got {s}"
    for k, s in shapes.items()
    if not _shape_ok(specs[k], s)
  ]
  problems = [
    _listing(title, lines)
    for title, lines in (
      ("missing keys", missing),
      ("unexpected keys", unexpected),
      ("mis-shaped keys", misshaped),
    )
    if lines
  ]
  if problems:
    hint = (
      "" if not unexpected else "\n(pass allow_unexpected=REGEX to skip unexpected keys on purpose)"
    )
    raise ConversionError(
      f"state dict does not match {type(model).__name__}:\n" + "\n".join(problems) + hint
    )
  for key, spec in specs.items():
    value = _from_torch_layout(spec, to_numpy(state_dict[key]))
    spec.variable.set_value(jnp.asarray(value, dtype=spec.variable.get_value().dtype))
  return ConversionReport(loaded=tuple(specs), skipped=tuple(skipped))


def nnx_to_torch_state_dict(
  model: nnx.Module,
  *,
  prefix: str = "",
  renames: Mapping[str, str] | None = None,
  like: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
  """The inverse: torch key -> numpy array in torch layout.

  ``like`` (a torch state dict or key -> shape-carrying object) gives the exact torch shape where it
  differs only by trailing unit dims (a Linear that torch holds as a Conv1d(k=1)); its keys are not
  otherwise checked.
  """
  out = {}
  for key, spec in param_specs(model, prefix=prefix, renames=renames).items():
    value = np.asarray(spec.variable.get_value())
    if spec.is_linear_kernel:
      value = value.T
    elif spec.path[-1] == "kernel":
      value = value.transpose(3, 2, 0, 1)
    if like is not None and key in like:
      target = np.shape(like[key])
      if not _shape_ok(spec, target):
        raise ConversionError(f"{key}: ours {spec.shape} cannot take torch shape {target}")
      value = value.reshape(target)
    out[key] = np.array(value, order="C")  # a writable copy
  return out


def torch_shapes(
  model: nnx.Module, *, prefix: str = "", renames: Mapping[str, str] | None = None
) -> dict[str, tuple[int, ...]]:
  """torch key -> canonical torch shape, without touching values (for key coverage checks)."""
  return {k: s.torch_shape for k, s in param_specs(model, prefix=prefix, renames=renames).items()}


def key_mismatch(
  ours: Mapping[str, tuple[int, ...]], theirs: Mapping[str, tuple[int, ...]]
) -> list[str]:
  """Human-readable differences between two key -> shape maps (empty when they agree)."""
  lines = [f"only ours: {k} {ours[k]}" for k in sorted(set(ours) - set(theirs))]
  lines += [f"only theirs: {k} {theirs[k]}" for k in sorted(set(theirs) - set(ours))]
  lines += [
    f"shape: {k} ours {ours[k]} theirs {theirs[k]}"
    for k in sorted(set(ours) & set(theirs))
    if tuple(ours[k]) != tuple(theirs[k])
  ]
  return lines
