"""`allocate` end to end on the tiny model, and its CLI entry."""

import pytest
from conftest import write_random_faces

from quantface_jax import cli
from quantface_jax.alloc import allocate
from quantface_jax.quant import get_bits, quant_layers, set_bits
from quantface_jax.quant.bits_map import load_bits_map

pytestmark = pytest.mark.slow  # started first: see tests/conftest.py

SETTINGS = dict(
  recipe="rtn", widths=(3, 4, 6), calib_count=2, sweep_count=2, chunk_size=4, progress=False
)  # chunk_size: test_sensitivity's, so the compilation is shared.


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
  return write_random_faces(tmp_path_factory.mktemp("faces"), count=2, size=32)


def test_allocate_writes_a_bits_map_within_budget(tiny_model, calib_dir, tmp_path):
  out = tmp_path / "bits.json"
  result = allocate(tiny_model, calib_dir, budget=3.5, perceptual_weight=1.0, out=out, **SETTINGS)
  bits_map, meta = load_bits_map(out)
  assert bits_map == result.bits_map
  assert sorted(bits_map) == sorted(quant_layers(result.model))
  assert meta["mean_width"] <= 3.5 + 1e-9 and meta["budget"] == 3.5
  assert meta["perceptual_weight"] == 1.0 and meta["allocated_layers"] == len(result.table.paths)
  allocated = [bits_map[p] for p in result.table.paths]
  assert {w for w, _ in allocated} == {4} and {a for _, a in allocated} <= {3, 4, 6}
  counts = result.table.n_act
  mean = sum(c * a for c, (_, a) in zip(counts, allocated)) / counts.sum()
  assert mean == pytest.approx(meta["mean_width"])
  kept = set(bits_map) - set(result.table.paths)
  assert kept and all(bits_map[p] == (8, 8) for p in kept)
  set_bits(result.model, bits_map)  # A model quantized with the same recipe takes it.
  assert get_bits(result.model) == bits_map


def test_infeasible_budget_fails_before_the_sweep(tiny_model, calib_dir, tmp_path):
  with pytest.raises(ValueError, match="infeasible.*smallest feasible budget is 3"):
    allocate(tiny_model, calib_dir, budget=2.5, out=tmp_path / "bits.json", **SETTINGS)
  assert not (tmp_path / "bits.json").exists()
  assert not (tmp_path / "bits.json.sweep").exists()

  args = cli.build_parser().parse_args(
    [
      "allocate",
      "--ckpt",
      "tiny",
      "--calib",
      str(calib_dir),
      "--budget",
      "2",
      "--lambda",
      "0.5",
      "--objective",
      "bits",
      "--recipe",
      "rtn",
      "--calib-count",
      "2",
      "--out",
      str(tmp_path / "cli.json"),
    ]
  )
  assert args.perceptual_weight == 0.5
  with pytest.raises(SystemExit, match="quantface allocate: budget 2 .* infeasible"):
    args.func(args)
