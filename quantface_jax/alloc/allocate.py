"""The bit allocation end to end: calibrate + quantize, sensitivity sweep, integer program, bits map.

`quantface allocate` runs `allocate`.

The model is quantized uniformly at W{w_bits}A{a_bits} with the recipe (the starting point), the
sweep measures every allocatable layer (all quantized layers except the recipe's W8A8 ones) and
the program picks one width per layer for the operand `which`; the other operand stays at the
recipe's width. The bits map names every quantized layer (the W8A8 ones at their widths), so
`set_bits` on a model quantized with the same recipe (or `quantface quantize --bits`) applies it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import nnx

from quantface_jax.alloc import program
from quantface_jax.alloc.sensitivity import SensitivityTable, layer_sizes, sensitivity_sweep
from quantface_jax.data.calibration import as_batches, calibration_faces
from quantface_jax.quant import Recipe, get_bits, get_recipe, quantize, set_bits
from quantface_jax.quant import rules as rules_lib
from quantface_jax.quant.bits_map import save_bits_map


@dataclasses.dataclass(frozen=True, kw_only=True)
class AllocateResult:
  """What `allocate` made."""

  # The quantized model, its bits set to the allocation.
  model: nnx.Module
  # Module path → (w_bits, a_bits) of every quantized layer, as written to `out`.
  bits_map: dict[str, tuple[int, int]]
  # The meta block written to `out` (allocation_meta + how it was made).
  meta: dict[str, Any]
  # The sweep the program was solved on.
  table: SensitivityTable
  # The solved program.
  allocation: program.Allocation


def allocatable_paths(model: nnx.Module, recipe) -> list[str]:
  """Layers of the FP `model` that `recipe` quantizes, less the W8A8-kept ones (docs/design.md
  §2.1), in `quant_layers` order of the quantized model."""
  keep = [(pattern, True) for pattern in rules_lib.KEEP_W8A8]
  return [
    path
    for path, _ in rules_lib.iter_layers(model, rules_lib.FP_LAYERS)
    if rules_lib.match(recipe.rules, path) is not None and rules_lib.match(keep, path) is None
  ]


def allocate(
  model_ckpt: str | os.PathLike[str] | nnx.Module,
  calib_dir: str | os.PathLike[str],
  *,
  recipe: str | Recipe = "quantface",
  budget: float = 4.0,
  perceptual_weight: float = 1.0,
  budget_kind: program.BudgetKind = "bits",
  widths: Sequence[int] = (3, 4, 5, 6),
  which: program.Mode = "activations",
  w_bits: int = 4,
  a_bits: int = 4,
  calib_lq: bool = False,
  calib_count: int = 32,
  calib_seed: int = 1,
  sweep_count: int = 8,
  chunk_size: int = 8,
  out: str | os.PathLike[str] = "bits.json",
  cache_dir: str | os.PathLike[str] | None = None,
  solver: str = "cvxpy",
  progress: bool = True,
) -> AllocateResult:
  """Allocates bit widths per layer and writes the bits map to `out`.

  Args:
    model_ckpt: checkpoint directory, preset name (`mini`) or an FP model.
    calib_dir: folder of HQ faces; the first `calib_count`, degraded with `calib_seed`, calibrate
      (with `calib_lq`: real low-quality faces, used as they are).
    recipe: quantization recipe name (`get_recipe` at W{w_bits}A{a_bits}), or a `Recipe` (its
      body widths must be w_bits, a_bits).
    budget: mean width of the allocated operand ("bits") or BOPs / all-W8A8 BOPs ("bops_fraction").
    perceptual_weight: λ, the weight of the perceptual cost p against the latent error e (both
      mean-normalised).
    budget_kind: "bits", "bops" (absolute) or "bops_fraction".
    widths: candidate widths.
    which: the operand allocated: "activations", "weights" or "both".
    w_bits: the recipe's uniform weight width (kept in "activations" mode).
    a_bits: the recipe's uniform activation width (kept in "weights" mode).
    calib_lq: `calib_dir` holds real LQ faces.
    calib_count: calibration faces (all of the folder's when it holds fewer).
    calib_seed: seed of their degradations.
    sweep_count: the first this many calibration faces form the sweep's fixed batch.
    chunk_size: sweep configurations per compiled call.
    out: the bits-map JSON to write.
    cache_dir: sweep cache (resumable); default `<out>.sweep/`.
    solver: "cvxpy" (CVXPY + HiGHS) or "highspy".
    progress: tqdm bars.

  Raises:
    ValueError: the budget is infeasible (checked before the sweep) or an argument is malformed.
  """
  from quantface_jax.checkpoint import load  # pylint: disable=g-import-not-at-top

  fp_model = model_ckpt if isinstance(model_ckpt, nnx.Module) else load(model_ckpt)
  quant_recipe = recipe if isinstance(recipe, Recipe) else get_recipe(recipe, f"W{w_bits}A{a_bits}")
  paths = allocatable_paths(fp_model, quant_recipe)
  problem_kwargs = dict(
    widths=widths,
    budget=budget,
    budget_kind=budget_kind,
    perceptual_weight=perceptual_weight,
    mode=which,
    fixed_w_bits=w_bits,
    fixed_a_bits=a_bits,
  )
  n_act, n_weight, macs = layer_sizes(fp_model, paths)
  zeros = np.zeros((len(paths), len(widths)))
  program.build_problem(
    zeros, zeros, n_act=n_act, n_weight=n_weight, macs=macs, **problem_kwargs
  )  # Fails fast on an infeasible budget.

  source = {"lq_dir" if calib_lq else "hq_dir": calib_dir}
  lq = calibration_faces(fp_model.config.resolution, count=calib_count, seeds=calib_seed, **source)
  model = quantize(
    fp_model,
    quant_recipe,
    progress=progress,
    calibration=as_batches(lq, quant_recipe.calibration.batch_size),
  )

  cache_dir = cache_dir or f"{out}.sweep"
  table = sensitivity_sweep(
    model,
    lq[:sweep_count],
    paths=paths,
    widths=widths,
    which=which,
    chunk_size=chunk_size,
    cache_dir=cache_dir,
    progress=progress,
  )
  problem = program.build_problem(
    table.e, table.p, n_act=table.n_act, n_weight=table.n_weight, macs=table.macs, **problem_kwargs
  )
  solve = {"cvxpy": program.solve_with_cvxpy, "highspy": program.solve_with_highspy}[solver]
  allocation = solve(problem)

  bits_map = get_bits(model) | program.allocation_to_bits_map(allocation, table.paths)
  meta = program.allocation_meta(problem, allocation) | {
    "recipe": quant_recipe.name,
    "model": fp_model.config.name if model_ckpt is fp_model else str(model_ckpt),
    "calibration": {
      "dir": str(calib_dir),
      "lq": calib_lq,
      "count": len(lq),
      "seed": None if calib_lq else calib_seed,
      "sweep_count": sweep_count,
    },
    "allocated_layers": len(table.paths),
    "sweep_time_s": table.sweep_time_s,
    "metric_e": "relative MSE of z_H",
    "metric_p": "1 - SSIM of the decoded image vs FP",
  }
  save_bits_map(out, bits_map, meta)
  set_bits(model, bits_map)
  return AllocateResult(
    model=model, bits_map=bits_map, meta=meta, table=table, allocation=allocation
  )
