"""PTQ recipes of docs/design.md §2.7 on one machinery: rules + seed + calibration settings.

=============  ====================================================================================
``rtn``        MinMax round-to-nearest: no balancing, no clip search.
``smoothquant`` smoothing, α = 0.5 (``alpha="search"`` for the per-layer search).
``rotate``     QuaRot-style randomized Hadamard rotation only.
``svdquant``   smoothing (α = 0.5) + an untrained rank-16 low-rank branch.
``quantface``  smoothing with α search + randomized Hadamard + rank-16 split, ready for QD-LoRA.
=============  ====================================================================================

All at W8A8, W6A6, W4A6, W4A4 (or any ``W<w>A<a>``), the scope of docs/design.md §2.1 (first/last
layers at W8A8, prompt branch untouched). Activations default to *static per-tensor asymmetric* ranges of the
balanced input from calibration (one fixed timestep: stable ranges; the cheapest serving path);
``a_mode="dynamic"`` gives per-token symmetric scales. Weights: symmetric per output channel, with
a per-channel clip-ratio search except in ``rtn``.
"""

from __future__ import annotations

import dataclasses
import re

from quantface_jax.quant.rules import LayerQuantConfig, Rule, default_rules

BITS = ("W8A8", "W6A6", "W4A6", "W4A4")
_BODIES = {
  "rtn": LayerQuantConfig(clip_search=False),
  "smoothquant": LayerQuantConfig(smooth=True, alpha=0.5),
  "rotate": LayerQuantConfig(rotate=True),
  "svdquant": LayerQuantConfig(smooth=True, alpha=0.5, low_rank=16),
  "quantface": LayerQuantConfig(smooth=True, alpha="search", rotate=True, low_rank=16),
}
RECIPES = tuple(_BODIES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationSettings:
  """How calibration data is drawn and summarised."""

  num_images: int = 64  # calibration images (LQ faces).
  batch_size: int = 4  # images per jitted restore.
  max_samples: int = 256  # input rows (conv: patches) kept per layer for the α search.
  seed: int = 0  # observer sampling seed.
  range_pass: bool = True  # re-measure static ranges of the balanced inputs with a second pass.


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
  """A quantization recipe: ``quantize(model, recipe, calibration=...)`` applies it."""

  name: str  # e.g. "quantface-W4A4".
  rules: tuple[Rule, ...]  # (module-path regex, LayerQuantConfig | None), first match wins.
  seed: int = 0  # rotation seeds derive from it and the module path.
  calibration: CalibrationSettings = CalibrationSettings()  # calibration data settings.


def parse_bits(bits: str) -> tuple[int, int]:
  """ "W4A6" -> (4, 6)."""
  m = re.fullmatch(r"W(\d+)A(\d+)", bits.upper())
  if not m:
    raise ValueError(f'bits must look like "W4A4", got {bits!r}')
  return int(m.group(1)), int(m.group(2))


def get_recipe(
  name: str,
  bits: str = "W4A4",
  *,
  seed: int = 0,
  calibration: CalibrationSettings = CalibrationSettings(),
  **overrides,
) -> Recipe:
  """A named recipe at ``bits``; ``overrides`` replace fields of the body LayerQuantConfig
  (e.g. ``a_mode="dynamic"``, ``alpha="search"``, ``low_rank=32``)."""
  if name not in _BODIES:
    raise ValueError(f"unknown recipe {name!r}; choose from {RECIPES}")
  w_bits, a_bits = parse_bits(bits)
  body = _BODIES[name].replace(w_bits=w_bits, a_bits=a_bits, **overrides)
  return Recipe(
    name=f"{name}-{bits.upper()}", rules=default_rules(body), seed=seed, calibration=calibration
  )


def recipe_to_dict(recipe: Recipe) -> dict:
  """A JSON-ready dict of every setting of ``recipe`` (inverse: :func:`recipe_from_dict`)."""
  rules = [
    [pattern, None if config is None else dataclasses.asdict(config)]
    for pattern, config in recipe.rules
  ]
  return dict(
    name=recipe.name,
    seed=recipe.seed,
    rules=rules,
    calibration=dataclasses.asdict(recipe.calibration),
  )


def recipe_from_dict(data: dict) -> Recipe:
  rules = tuple(
    (pattern, None if config is None else LayerQuantConfig(**config))
    for pattern, config in data["rules"]
  )
  return Recipe(
    name=data["name"],
    rules=rules,
    seed=data["seed"],
    calibration=CalibrationSettings(**data["calibration"]),
  )
