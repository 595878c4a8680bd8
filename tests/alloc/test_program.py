"""Tests of the bit-width allocation integer program against brute force."""

import json
import re

import numpy as np
import pytest

from quantface_jax import alloc
from quantface_jax.quant.bits_map import load_bits_map, save_bits_map

WIDTHS = (3, 4, 5, 6)


def _random_inputs(rng: np.random.Generator, num_layers: int, *, masked: bool) -> dict:
  """Keyword arguments of `build_problem` for a random instance, without the budget."""
  allowed = None
  if masked:
    allowed = rng.random((num_layers, len(WIDTHS))) < 0.7
    allowed[np.arange(num_layers), rng.integers(len(WIDTHS), size=num_layers)] = True
  return dict(
    errors=rng.random((num_layers, len(WIDTHS))) * rng.uniform(0.1, 10),
    perceptual=rng.random((num_layers, len(WIDTHS))),
    widths=WIDTHS,
    n_act=rng.integers(1, 10**6, size=num_layers).astype(float),
    n_weight=rng.integers(1, 10**6, size=num_layers).astype(float),
    macs=rng.integers(1, 10**9, size=num_layers).astype(float),
    perceptual_weight=float(rng.choice([0.0, 0.5, 3.0])),
    mode=str(rng.choice(["activations", "weights", "both"])),
    allowed=allowed,
  )


def _budget_range(problem: alloc.AllocationProblem) -> tuple[float, float]:
  """Cheapest and dearest plan, in the units of `problem.budget`."""
  usage = problem.budget_usage
  cheapest = np.where(problem.allowed, usage, np.inf).min(axis=1).sum()
  dearest = np.where(problem.allowed, usage, -np.inf).max(axis=1).sum()
  to_budget = problem.budget / problem.budget_limit
  return cheapest * to_budget, dearest * to_budget


def _random_problem(seed: int) -> alloc.AllocationProblem:
  rng = np.random.default_rng(seed)
  inputs = _random_inputs(rng, int(rng.integers(1, 7)), masked=bool(rng.random() < 0.5))
  budget_kind = str(rng.choice(["bits", "bops", "bops_fraction"]))
  reference = alloc.build_problem(**inputs, budget_kind=budget_kind, budget=1e30)
  cheapest, dearest = _budget_range(reference)
  if rng.random() < 0.2:  # Exactly the usage of a random allowed plan: a tie at the boundary.
    plan = [rng.choice(np.flatnonzero(row)) for row in reference.allowed]
    to_budget = reference.budget / reference.budget_limit
    budget = reference.budget_usage[np.arange(len(plan)), plan].sum() * to_budget
  else:
    budget = rng.uniform(cheapest, dearest)
  return alloc.build_problem(**inputs, budget_kind=budget_kind, budget=budget)


def _assert_same_objective(actual: float, expected: float) -> None:
  assert abs(actual - expected) <= 1e-9 * max(1.0, abs(expected)), (actual, expected)


def _usage(problem: alloc.AllocationProblem, allocation: alloc.Allocation) -> float:
  return problem.budget_usage[np.arange(problem.num_layers), allocation.choice].sum()


@pytest.mark.parametrize("seed", range(60))
def test_solvers_match_brute_force(seed):
  problem = _random_problem(seed)
  expected = alloc.solve_brute_force(problem)
  for solve in (alloc.solve_with_cvxpy, alloc.solve_with_highspy):
    allocation = solve(problem)
    _assert_same_objective(allocation.objective, expected.objective)
    assert _usage(problem, allocation) <= problem.budget_limit + alloc.program.BUDGET_TOLERANCE
    assert problem.allowed[np.arange(problem.num_layers), allocation.choice].all()
    np.testing.assert_array_equal(allocation.bits, problem.widths[allocation.choice])


def test_achieved_mean_width_and_bops():
  problem = _random_problem(3)
  allocation = alloc.solve_with_highspy(problem)
  counts = problem.width_counts
  assert allocation.mean_width == pytest.approx(counts @ allocation.bits / counts.sum())
  assert allocation.bops == pytest.approx(problem.macs @ (allocation.w_bits * allocation.a_bits))


@pytest.mark.parametrize("budget_kind", ["bits", "bops", "bops_fraction"])
def test_infeasible_budget_names_smallest_feasible_budget(budget_kind):
  inputs = _random_inputs(np.random.default_rng(0), 5, masked=False)
  inputs.update(mode="activations", fixed_w_bits=4, min_bits=np.array([3, 4, 4, 5, 3]))
  min_plan = np.array([3, 4, 4, 5, 3])
  smallest = {
    "bits": inputs["n_act"] @ min_plan / inputs["n_act"].sum(),
    "bops": inputs["macs"] @ (4 * min_plan),
    "bops_fraction": inputs["macs"] @ (4 * min_plan) / (64 * inputs["macs"].sum()),
  }[budget_kind]
  with pytest.raises(ValueError, match="smallest feasible budget is") as excinfo:
    alloc.build_problem(**inputs, budget_kind=budget_kind, budget=smallest * 0.999)
  reported = float(re.search(r"smallest feasible budget is (\S+)", str(excinfo.value)).group(1))
  assert reported == pytest.approx(smallest, rel=1e-9)
  alloc.build_problem(**inputs, budget_kind=budget_kind, budget=smallest)  # Feasible.


@pytest.mark.parametrize("solve", [alloc.solve_with_cvxpy, alloc.solve_with_highspy])
def test_budget_at_max_width_picks_min_cost_widths(solve):
  inputs = _random_inputs(np.random.default_rng(1), 6, masked=False)
  problem = alloc.build_problem(**inputs, budget=max(WIDTHS))
  allocation = solve(problem)
  np.testing.assert_array_equal(allocation.choice, problem.cost.argmin(axis=1))


@pytest.mark.parametrize("budget_kind", ["bits", "bops_fraction"])
def test_objective_does_not_worsen_with_larger_budget(budget_kind):
  inputs = _random_inputs(np.random.default_rng(2), 40, masked=True)
  cheapest, dearest = _budget_range(
    alloc.build_problem(**inputs, budget_kind=budget_kind, budget=1e30)
  )
  objectives = [
    alloc.allocate_bits(**inputs, budget_kind=budget_kind, budget=budget).objective
    for budget in np.linspace(cheapest, dearest, 12)
  ]
  assert all(np.diff(objectives) <= 1e-9)


def test_zero_lambda_ignores_perceptual_cost():
  inputs = _random_inputs(np.random.default_rng(4), 30, masked=False)
  inputs.update(perceptual_weight=0.0, budget=4.0)
  with_p = alloc.allocate_bits(**inputs)
  inputs["perceptual"] = np.random.default_rng(5).random(inputs["errors"].shape) * 100
  other_p = alloc.allocate_bits(**inputs)
  _assert_same_objective(with_p.objective, other_p.objective)
  np.testing.assert_array_equal(with_p.choice, other_p.choice)


def test_mean_normalization_makes_lambda_scale_free():
  inputs = _random_inputs(np.random.default_rng(6), 30, masked=False)
  inputs.update(perceptual_weight=1.0, budget=4.2)
  reference = alloc.allocate_bits(**inputs)
  inputs.update(errors=inputs["errors"] * 1e4, perceptual=inputs["perceptual"] * 1e-3)
  np.testing.assert_array_equal(alloc.allocate_bits(**inputs).choice, reference.choice)


@pytest.mark.parametrize(
  "mode,expected",
  [("activations", lambda b: (4, b)), ("weights", lambda b: (b, 8)), ("both", lambda b: (b, b))],
)
def test_bits_map_per_mode(mode, expected):
  inputs = _random_inputs(np.random.default_rng(7), 4, masked=False)
  inputs.update(mode=mode, fixed_w_bits=4, fixed_a_bits=8, budget=4.5)
  allocation = alloc.allocate_bits(**inputs)
  paths = [f"unet.block{i}.proj" for i in range(4)]
  bits_map = alloc.allocation_to_bits_map(allocation, paths)
  assert bits_map == {p: expected(int(b)) for p, b in zip(paths, allocation.bits)}


def test_bits_map_json_round_trip(tmp_path):
  inputs = _random_inputs(np.random.default_rng(8), 5, masked=True)
  problem = alloc.build_problem(**inputs, budget_kind="bops_fraction", budget=0.6)
  allocation = alloc.solve_with_highspy(problem)
  bits_map = alloc.allocation_to_bits_map(allocation, [f"layer{i}" for i in range(5)])
  path = tmp_path / "bits.json"
  save_bits_map(path, bits_map, alloc.allocation_meta(problem, allocation))
  loaded, meta = load_bits_map(path)
  assert loaded == bits_map
  assert meta["mean_width"] == allocation.mean_width and meta["bops"] == allocation.bops
  assert meta["budget"] == 0.6 and meta["perceptual_weight"] == problem.perceptual_weight
  assert [p.name for p in tmp_path.iterdir()] == ["bits.json"]  # No temporary file left.


def test_load_bits_map_names_bad_key(tmp_path):
  path = tmp_path / "bits.json"
  save_bits_map(path, {"a": (4, 4)})
  document = json.loads(path.read_text())
  document["layers"]["unet.up.0.conv"] = [4, 9]
  path.write_text(json.dumps(document))
  with pytest.raises(ValueError, match=r"bits.json: a_bits of 'unet.up.0.conv'.*2..8"):
    load_bits_map(path)
  path.write_text("{not json")
  with pytest.raises(ValueError, match="bits.json: not JSON"):
    load_bits_map(path)


def test_save_bits_map_refuses_bad_widths(tmp_path):
  with pytest.raises(ValueError, match=r"w_bits of 'a' must be an int"):
    save_bits_map(tmp_path / "bits.json", {"a": (4.5, 4)})
  with pytest.raises(ValueError, match=r"entry 'b' must be \(w_bits, a_bits\)"):
    save_bits_map(tmp_path / "bits.json", {"b": (4,)})
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
  "change,argument",
  [
    (dict(errors=np.ones((5, 3))), "errors"),
    (dict(perceptual=np.ones((4, 4))), "perceptual"),
    (dict(errors=np.full((5, 4), np.nan)), "errors"),
    (dict(perceptual=-np.ones((5, 4))), "perceptual"),
    (dict(n_act=-np.ones(5)), "n_act"),
    (dict(n_act=np.ones(4)), "n_act"),
    (dict(macs=np.ones(6), budget_kind="bops"), "macs"),
    (dict(n_weight=None, mode="weights"), "n_weight"),
    (dict(widths=(3, 3, 4, 5)), "widths"),
    (dict(allowed=np.zeros((5, 4), bool)), "allowed"),
    (dict(min_bits=7), "min_bits"),
    (dict(perceptual_weight=-1.0), "perceptual_weight"),
    (dict(fixed_w_bits=9), "fixed_w_bits"),
  ],
)
def test_invalid_inputs_name_the_argument(change, argument):
  inputs = _random_inputs(np.random.default_rng(9), 5, masked=False)
  inputs.update(mode="activations", budget=5.0)
  inputs.update(change)
  with pytest.raises(ValueError, match=argument):
    alloc.build_problem(**inputs)
