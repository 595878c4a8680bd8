"""Integer program of the adaptive bit-width allocation (docs/design.md §2.5).

One width b_l ∈ `widths` is chosen per quantized layer l to minimise

    Σ_l ê[l, b_l] + λ·p̂[l, b_l]

subject to one budget: the element-weighted mean width (`budget_kind="bits"`), the total BOPs
(`"bops"`, absolute) or the total BOPs as a fraction of the all-W8A8 BOPs (`"bops_fraction"`).
ê and p̂ are the error and perceptual tables divided by a scale (`normalization`), so that λ is
free of the tables' units. BOPs of a layer at (w_bits, a_bits) are MACs·w_bits·a_bits.

The program is a multiple-choice knapsack: a binary X[l, k] per allowed (layer, width), one-hot
rows and one budget row. `build_problem` validates the inputs once; `solve_with_cvxpy`,
`solve_with_highspy` and `solve_brute_force` solve the same `AllocationProblem`.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from quantface_jax.quant.bits_map import MAX_BITS, MIN_BITS, check_bits

Mode = Literal["activations", "weights", "both"]
BudgetKind = Literal["bits", "bops", "bops_fraction"]
Normalization = Literal["mean", "max", "none"]

# Budget rows are scaled to O(1) (mean width, or fraction of W8A8 BOPs); solvers may exceed the
# row limit by at most this much, and brute force accepts the same slack.
BUDGET_TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True, kw_only=True)
class AllocationProblem:
  """A validated allocation instance; L layers, K candidate widths."""

  # [K] candidate widths, strictly increasing, within MIN_BITS..MAX_BITS.
  widths: np.ndarray
  # [L, K] bool; which widths each layer may take.
  allowed: np.ndarray
  # [L, K] float; normalised ê + λ·p̂ (0 where not allowed).
  cost: np.ndarray
  # [L, K] float; each choice's term in the budget row, in the units of `budget_limit`.
  budget_usage: np.ndarray
  # The budget row's right-hand side (mean width, or fraction of W8A8 BOPs).
  budget_limit: float
  # [L, K] int; weight width of each choice.
  w_bits: np.ndarray
  # [L, K] int; activation width of each choice.
  a_bits: np.ndarray
  # [L] float; element counts that weight the mean width (n_weight in "weights" mode, else n_act).
  width_counts: np.ndarray
  # [L] float MACs per forward, or None when not given.
  macs: np.ndarray | None
  # What the chosen width sets.
  mode: Mode
  # The budget as given, in the units of `budget_kind`.
  budget: float
  # How `budget` is measured.
  budget_kind: BudgetKind
  # λ, the weight of the perceptual cost.
  perceptual_weight: float
  # How the error and perceptual tables were scaled.
  normalization: Normalization

  @property
  def num_layers(self) -> int:
    return self.allowed.shape[0]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Allocation:
  """A solved allocation; L layers."""

  # [L] int; the chosen width of each layer.
  bits: np.ndarray
  # [L] int; index of the chosen width into `AllocationProblem.widths`.
  choice: np.ndarray
  # [L] int; weight width of each layer.
  w_bits: np.ndarray
  # [L] int; activation width of each layer.
  a_bits: np.ndarray
  # Σ_l ê + λ·p̂ of the chosen widths, recomputed from `choice`.
  objective: float
  # Element-weighted mean of the chosen widths (weights: `AllocationProblem.width_counts`).
  mean_width: float
  # Total BOPs Σ MACs·w·a, or None when MACs were not given.
  bops: float | None
  # Which solver produced it.
  solver: str
  # The solver's status string.
  status: str
  # Wall time of building and solving the program, in seconds.
  solve_time_s: float


def build_problem(
  errors: np.ndarray,
  perceptual: np.ndarray | None = None,
  *,
  widths: Sequence[int],
  n_act: np.ndarray,
  budget: float,
  budget_kind: BudgetKind = "bits",
  perceptual_weight: float = 0.0,
  mode: Mode = "activations",
  fixed_w_bits: int = 4,
  fixed_a_bits: int = 8,
  n_weight: np.ndarray | None = None,
  macs: np.ndarray | None = None,
  min_bits: int | np.ndarray | None = None,
  max_bits: int | np.ndarray | None = None,
  allowed: np.ndarray | None = None,
  normalization: Normalization = "mean",
) -> AllocationProblem:
  """Validates the inputs and builds the program.

  Args:
    errors: [L, K] non-negative quantization error e(l, b) for b in `widths`.
    perceptual: [L, K] non-negative perceptual cost p(l, b); None means zeros.
    widths: [K] candidate widths, strictly increasing, within 2..8.
    n_act: [L] activation elements per forward; weights the mean width unless mode is "weights".
    budget: the mean width ("bits"), total BOPs ("bops") or BOPs / all-W8A8 BOPs ("bops_fraction").
    budget_kind: which of the three `budget` is.
    perceptual_weight: λ ≥ 0.
    mode: the chosen width sets the activations (weights at `fixed_w_bits`), the weights
      (activations at `fixed_a_bits`) or both (w = a = b).
    fixed_w_bits: weight width in "activations" mode.
    fixed_a_bits: activation width in "weights" mode.
    n_weight: [L] weight elements; required in "weights" mode, where it weights the mean width.
    macs: [L] multiply-accumulates per forward; required by the BOPs budgets.
    min_bits: int or [L]; smallest allowed width per layer.
    max_bits: int or [L]; largest allowed width per layer.
    allowed: [L, K] bool mask of allowed widths, combined with `min_bits`/`max_bits`.
    normalization: "mean" divides each table by its mean over the allowed entries, "max" by its
      maximum there, "none" keeps it; an all-zero table is left as is.

  Returns:
    The validated `AllocationProblem`.

  Raises:
    ValueError: an input is malformed (the message names it), or the budget is below what the
      cheapest allowed plan needs (the message gives the smallest feasible budget).
  """
  widths_arr = _validate_widths(widths)
  errors = _validate_table("errors", errors)
  num_layers, num_widths = errors.shape
  if num_widths != widths_arr.size:
    raise ValueError(f"errors has {num_widths} columns but widths has {widths_arr.size} entries")
  perceptual = (
    np.zeros_like(errors) if perceptual is None else _validate_table("perceptual", perceptual)
  )
  if perceptual.shape != errors.shape:
    raise ValueError(f"perceptual has shape {perceptual.shape}, errors has {errors.shape}")
  n_act = _validate_counts("n_act", n_act, num_layers)
  n_weight = None if n_weight is None else _validate_counts("n_weight", n_weight, num_layers)
  macs = None if macs is None else _validate_counts("macs", macs, num_layers)
  if not (np.isfinite(perceptual_weight) and perceptual_weight >= 0):
    raise ValueError(f"perceptual_weight must be finite and >= 0, got {perceptual_weight}")
  if not np.isfinite(budget):
    raise ValueError(f"budget must be finite, got {budget}")
  if normalization not in ("mean", "max", "none"):
    raise ValueError(f"normalization must be 'mean', 'max' or 'none', got {normalization!r}")

  allowed_mask = _allowed_mask(widths_arr, num_layers, min_bits, max_bits, allowed)
  chosen = np.broadcast_to(widths_arr, (num_layers, num_widths))
  if mode == "activations":
    check_bits("fixed_w_bits", fixed_w_bits)
    w_bits, a_bits, width_counts = np.full_like(chosen, fixed_w_bits), chosen, n_act
  elif mode == "weights":
    check_bits("fixed_a_bits", fixed_a_bits)
    if n_weight is None:
      raise ValueError("n_weight is required in mode 'weights'")
    w_bits, a_bits, width_counts = chosen, np.full_like(chosen, fixed_a_bits), n_weight
  elif mode == "both":
    w_bits, a_bits, width_counts = chosen, chosen, n_act
  else:
    raise ValueError(f"mode must be 'activations', 'weights' or 'both', got {mode!r}")
  if width_counts.sum() <= 0:
    raise ValueError(f"{'n_weight' if mode == 'weights' else 'n_act'} must not be all zero")

  if budget_kind == "bits":
    budget_usage = width_counts[:, None] * chosen / width_counts.sum()
    budget_to_limit = 1.0
  elif budget_kind in ("bops", "bops_fraction"):
    if macs is None or macs.sum() <= 0:
      raise ValueError(f"budget_kind {budget_kind!r} needs macs with a positive sum")
    w8a8_bops = MAX_BITS * MAX_BITS * macs.sum()
    budget_usage = macs[:, None] * w_bits * a_bits / w8a8_bops
    budget_to_limit = 1.0 / w8a8_bops if budget_kind == "bops" else 1.0
  else:
    raise ValueError(f"budget_kind must be 'bits', 'bops' or 'bops_fraction', got {budget_kind!r}")
  budget_usage = np.where(allowed_mask, budget_usage, 0.0)
  budget_limit = budget * budget_to_limit
  smallest_limit = np.where(allowed_mask, budget_usage, np.inf).min(axis=1).sum()
  if smallest_limit > budget_limit + BUDGET_TOLERANCE:
    raise ValueError(
      f"budget {budget:g} ({budget_kind}) is infeasible: the smallest feasible budget is "
      f"{smallest_limit / budget_to_limit:.10g} (every layer at its cheapest allowed width)"
    )

  cost = _normalize(errors, allowed_mask, normalization) + perceptual_weight * _normalize(
    perceptual, allowed_mask, normalization
  )
  return AllocationProblem(
    widths=widths_arr,
    allowed=allowed_mask,
    cost=np.where(allowed_mask, cost, 0.0),
    budget_usage=budget_usage,
    budget_limit=float(budget_limit),
    w_bits=np.asarray(w_bits, np.int64),
    a_bits=np.asarray(a_bits, np.int64),
    width_counts=width_counts,
    macs=macs,
    mode=mode,
    budget=float(budget),
    budget_kind=budget_kind,
    perceptual_weight=float(perceptual_weight),
    normalization=normalization,
  )


def solve_with_cvxpy(problem: AllocationProblem) -> Allocation:
  """Solves `problem` through CVXPY (boolean X[L, K]) with HiGHS, to a zero optimality gap."""
  import cvxpy as cp  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  choose = cp.Variable(problem.allowed.shape, boolean=True)
  constraints = [
    cp.sum(choose, axis=1) == 1,
    cp.sum(cp.multiply(problem.budget_usage, choose)) <= problem.budget_limit,
  ]
  if not problem.allowed.all():
    constraints.append(choose[~problem.allowed] == 0)
  program = cp.Problem(cp.Minimize(cp.sum(cp.multiply(problem.cost, choose))), constraints)
  program.solve(solver=cp.HIGHS, **_highs_options())
  if choose.value is None:
    raise RuntimeError(f"CVXPY/HiGHS found no solution: status {program.status}")
  choice = np.argmax(choose.value, axis=1)
  return _allocation(problem, choice, "cvxpy+highs", program.status, time.perf_counter() - start)


def solve_with_highspy(problem: AllocationProblem) -> Allocation:
  """Solves `problem` by passing the MIP straight to `highspy.Highs` (no CVXPY overhead).

  Only allowed (layer, width) pairs become columns; each column has a 1 in its layer's one-hot row
  and its budget usage in the last row.
  """
  import highspy  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  layer, width_index = np.nonzero(problem.allowed)
  num_cols, num_layers = layer.size, problem.num_layers
  lp = highspy.HighsLp()
  lp.num_col_ = num_cols
  lp.num_row_ = num_layers + 1
  lp.col_cost_ = problem.cost[layer, width_index]
  lp.col_lower_ = np.zeros(num_cols)
  lp.col_upper_ = np.ones(num_cols)
  lp.row_lower_ = np.append(np.ones(num_layers), -highspy.kHighsInf)
  lp.row_upper_ = np.append(np.ones(num_layers), problem.budget_limit)
  lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
  lp.a_matrix_.start_ = np.arange(0, 2 * num_cols + 1, 2, dtype=np.int32)
  lp.a_matrix_.index_ = np.stack([layer, np.full(num_cols, num_layers)], 1).ravel().astype(np.int32)
  lp.a_matrix_.value_ = np.stack(
    [np.ones(num_cols), problem.budget_usage[layer, width_index]], 1
  ).ravel()
  lp.integrality_ = [highspy.HighsVarType.kInteger] * num_cols
  solver = highspy.Highs()
  for name, value in _highs_options().items():
    solver.setOptionValue(name, value)
  solver.passModel(lp)
  solver.run()
  status = solver.modelStatusToString(solver.getModelStatus())
  if solver.getModelStatus() != highspy.HighsModelStatus.kOptimal:
    raise RuntimeError(f"HiGHS found no optimal solution: status {status}")
  picked = np.asarray(solver.getSolution().col_value) > 0.5
  choice = np.empty(num_layers, np.int64)
  choice[layer[picked]] = width_index[picked]
  return _allocation(problem, choice, "highspy", status, time.perf_counter() - start)


def solve_brute_force(problem: AllocationProblem) -> Allocation:
  """Enumerates every allowed plan (Π_l #allowed_l of them); for small instances and tests."""
  start = time.perf_counter()
  options = [np.flatnonzero(row) for row in problem.allowed]
  rows = np.arange(problem.num_layers)
  best_choice, best_cost = None, np.inf
  for plan in itertools.product(*options):
    choice = np.asarray(plan)
    if problem.budget_usage[rows, choice].sum() > problem.budget_limit + BUDGET_TOLERANCE:
      continue
    plan_cost = problem.cost[rows, choice].sum()
    if plan_cost < best_cost:
      best_choice, best_cost = choice, plan_cost
  if best_choice is None:
    raise RuntimeError("no allowed plan meets the budget")  # build_problem rules this out.
  return _allocation(problem, best_choice, "brute_force", "optimal", time.perf_counter() - start)


def allocate_bits(
  errors: np.ndarray,
  perceptual: np.ndarray | None = None,
  *,
  solver: Literal["highspy", "cvxpy"] = "highspy",
  **problem_kwargs,
) -> Allocation:
  """`build_problem(errors, perceptual, **problem_kwargs)` solved by `solver`."""
  solvers = {"highspy": solve_with_highspy, "cvxpy": solve_with_cvxpy}
  if solver not in solvers:
    raise ValueError(f"solver must be one of {sorted(solvers)}, got {solver!r}")
  return solvers[solver](build_problem(errors, perceptual, **problem_kwargs))


def allocation_meta(problem: AllocationProblem, allocation: Allocation) -> dict[str, Any]:
  """JSON-ready summary of a solved allocation, the ``meta`` of its bits-map file."""
  return {
    "mean_width": allocation.mean_width,
    "bops": allocation.bops,
    "objective": allocation.objective,
    "budget": problem.budget,
    "budget_kind": problem.budget_kind,
    "perceptual_weight": problem.perceptual_weight,
    "normalization": problem.normalization,
    "mode": problem.mode,
    "widths": problem.widths.tolist(),
    "solver": allocation.solver,
    "status": allocation.status,
  }


def allocation_to_bits_map(
  allocation: Allocation, layer_paths: Sequence[str]
) -> dict[str, tuple[int, int]]:
  """Module path → (w_bits, a_bits); `layer_paths[l]` names layer l of the program."""
  if len(layer_paths) != allocation.bits.size:
    raise ValueError(
      f"layer_paths has {len(layer_paths)} entries, the allocation {allocation.bits.size} layers"
    )
  if len(set(layer_paths)) != len(layer_paths):
    raise ValueError("layer_paths has duplicate entries")
  return {
    path: (int(w), int(a))
    for path, w, a in zip(layer_paths, allocation.w_bits, allocation.a_bits, strict=True)
  }


def _highs_options() -> dict[str, Any]:
  """HiGHS options for an exact optimum with tight feasibility."""
  return {
    "output_flag": False,
    "mip_rel_gap": 0.0,
    "mip_abs_gap": 0.0,
    "mip_feasibility_tolerance": BUDGET_TOLERANCE,
    "primal_feasibility_tolerance": BUDGET_TOLERANCE,
  }


def _allocation(
  problem: AllocationProblem, choice: np.ndarray, solver: str, status: str, seconds: float
) -> Allocation:
  """Builds the `Allocation` of `choice` [L], recomputing every figure from the tables."""
  rows = np.arange(problem.num_layers)
  choice = np.asarray(choice, np.int64)
  if not problem.allowed[rows, choice].all():
    raise RuntimeError(f"{solver} picked a width that is not allowed")
  bits = problem.widths[choice]
  w_bits, a_bits = problem.w_bits[rows, choice], problem.a_bits[rows, choice]
  return Allocation(
    bits=bits,
    choice=choice,
    w_bits=w_bits,
    a_bits=a_bits,
    objective=float(problem.cost[rows, choice].sum()),
    mean_width=float(problem.width_counts @ bits / problem.width_counts.sum()),
    bops=None if problem.macs is None else float(problem.macs @ (w_bits * a_bits)),
    solver=solver,
    status=str(status),
    solve_time_s=seconds,
  )


def _normalize(table: np.ndarray, allowed: np.ndarray, normalization: Normalization) -> np.ndarray:
  """`table` [L, K] divided by its mean or max over `allowed` (unchanged if that is 0)."""
  if normalization == "none":
    return table
  scale = table[allowed].mean() if normalization == "mean" else table[allowed].max()
  return table / scale if scale > 0 else table


def _allowed_mask(
  widths: np.ndarray,
  num_layers: int,
  min_bits: int | np.ndarray | None,
  max_bits: int | np.ndarray | None,
  allowed: np.ndarray | None,
) -> np.ndarray:
  """[L, K] bool: `allowed` ∧ min_bits ≤ width ≤ max_bits; every layer keeps a width."""
  mask = np.ones((num_layers, widths.size), bool)
  if allowed is not None:
    allowed = np.asarray(allowed)
    if allowed.shape != mask.shape or allowed.dtype != bool:
      raise ValueError(
        f"allowed must be a bool array of shape {mask.shape}, got {allowed.dtype} {allowed.shape}"
      )
    mask &= allowed
  for name, bound, keep in (
    ("min_bits", min_bits, np.greater_equal),
    ("max_bits", max_bits, np.less_equal),
  ):
    if bound is None:
      continue
    bound = np.asarray(bound)
    if bound.shape not in ((), (num_layers,)) or not np.issubdtype(bound.dtype, np.integer):
      raise ValueError(
        f"{name} must be an int or [{num_layers}] ints, got {bound.dtype} {bound.shape}"
      )
    mask &= keep(widths[None, :], np.broadcast_to(bound, (num_layers,))[:, None])
  empty = np.flatnonzero(~mask.any(axis=1))
  if empty.size:
    raise ValueError(
      f"layers {empty.tolist()} have no allowed width (check allowed, min_bits, max_bits)"
    )
  return mask


def _validate_widths(widths: Sequence[int]) -> np.ndarray:
  arr = np.asarray(widths)
  if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"widths must be a non-empty 1-D sequence of ints, got {widths!r}")
  if np.any(np.diff(arr) <= 0) or arr.min() < MIN_BITS or arr.max() > MAX_BITS:
    raise ValueError(
      f"widths must be strictly increasing within {MIN_BITS}..{MAX_BITS}, got {arr.tolist()}"
    )
  return arr.astype(np.int64)


def _validate_table(name: str, table: np.ndarray) -> np.ndarray:
  arr = np.asarray(table, np.float64)
  if arr.ndim != 2:
    raise ValueError(f"{name} must be [L, K], got shape {arr.shape}")
  if not np.isfinite(arr).all():
    raise ValueError(f"{name} has NaN or infinite entries")
  if (arr < 0).any():
    raise ValueError(f"{name} has negative entries")
  return arr


def _validate_counts(name: str, counts: np.ndarray, num_layers: int) -> np.ndarray:
  arr = np.asarray(counts, np.float64)
  if arr.shape != (num_layers,):
    raise ValueError(f"{name} must have shape ({num_layers},), got {arr.shape}")
  if not np.isfinite(arr).all() or (arr < 0).any():
    raise ValueError(f"{name} must be finite and non-negative")
  return arr
