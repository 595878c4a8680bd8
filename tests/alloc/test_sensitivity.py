"""Sensitivity sweep on the tiny model: one layer per configuration, one compilation, resume."""

import numpy as np
import pytest

from quantface_jax.alloc import sensitivity
from quantface_jax.quant import calibrate, get_bits, get_recipe, quant_layers, quantize

WIDTHS = (3, 4, 6, 16)
CHUNK = 4  # Also test_allocate's chunk size: the two modules share one compilation.


@pytest.fixture(scope="module")
def setup(tiny_model):
  rng = np.random.default_rng(0)
  lq = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  recipe = get_recipe("rtn", "W4A4")  # The sweep is recipe-agnostic; rtn quantizes fastest.
  stats = calibrate(tiny_model, [lq], rules=recipe.rules, max_samples=0, progress=False)
  qmodel = quantize(tiny_model, recipe, calibration=stats)
  paths = list(quant_layers(qmodel))[::16]  # A spread-out subset keeps the test fast.
  return qmodel, lq, paths


def _sweep(setup, **kwargs):
  qmodel, lq, paths = setup
  return sensitivity.sensitivity_sweep(
    qmodel, lq, paths=paths, widths=WIDTHS, chunk_size=CHUNK, progress=False, **kwargs
  )


@pytest.fixture(scope="module")
def full(setup, tmp_path_factory):
  """The whole sweep, weights at 16 bits too; (table, compilations it took)."""
  compiled = sensitivity.restore_bit_maps._cache_size()
  table = _sweep(setup, fixed_bits=16, cache_dir=tmp_path_factory.mktemp("full"))
  return table, sensitivity.restore_bit_maps._cache_size() - compiled


def test_one_layer_per_configuration(setup, full):
  qmodel, _, paths = setup
  table, compilations = full
  assert compilations <= 1  # 1 + L·K configurations in several chunks, one compilation.
  assert table.paths == tuple(paths) and table.e.shape == table.p.shape == (len(paths), 4)
  np.testing.assert_array_equal(table.e[:, -1], 0.0)  # 16 bits everywhere: exact pass-through.
  assert (table.p[:, -1] < 1e-6).all()
  decoder = np.array([p.startswith("vae.decoder") for p in paths])
  assert decoder.any() and (~decoder).any()
  assert (table.e[~decoder, :-1] > 0).all() and (table.e[decoder] == 0).all()  # z_H is upstream.
  assert (table.p[:, :-1] > 0).all()
  mean_e, mean_p = table.e[~decoder].mean(0), table.p.mean(0)
  assert mean_e[0] > mean_e[1] > mean_e[2] > 0 and mean_p[0] > mean_p[1] > mean_p[2]
  assert set(get_bits(qmodel).values()) == {(4, 4), (8, 8)}  # The model's own bits are kept.
  assert (table.n_act > 0).all() and (table.macs >= table.n_weight).all()


@pytest.mark.parametrize(
  "which, w_expect, a_expect", [("activations", 5, 3), ("weights", 3, 5), ("both", 3, 3)]
)
def test_bit_maps_quantize_one_layer(setup, which, w_expect, a_expect):
  qmodel, _, paths = setup
  w_bits, a_bits = sensitivity.bit_maps(qmodel, paths, (3, 4), which, [5] * len(paths))
  quantized = (w_bits < 16) | (a_bits < 16)
  assert w_bits.shape == (1 + 2 * len(paths), len(quant_layers(qmodel)))
  assert not quantized[0].any() and (quantized[1:].sum(1) == 1).all()
  column = list(quant_layers(qmodel)).index(paths[1])
  assert (w_bits[3, column], a_bits[3, column]) == (w_expect, a_expect)  # Layer 1, width 3.


def test_resume_after_interruption(setup, full, tmp_path):
  table, _ = full
  compiled = sensitivity.restore_bit_maps._cache_size()

  class Interrupt(Exception):
    pass

  def stop_after_two(done):
    if done == 2:
      raise Interrupt

  with pytest.raises(Interrupt):
    _sweep(setup, fixed_bits=16, cache_dir=tmp_path, on_chunk=stop_after_two)
  assert len(list(tmp_path.glob("chunk_*.npz"))) == 2
  resumed = _sweep(setup, fixed_bits=16, cache_dir=tmp_path)
  np.testing.assert_array_equal(resumed.e, table.e)
  np.testing.assert_array_equal(resumed.p, table.p)
  assert sensitivity.restore_bit_maps._cache_size() == compiled  # No recompilation.
  with pytest.raises(ValueError, match="another model, batch or settings"):
    _sweep(setup, fixed_bits=4, cache_dir=tmp_path)
