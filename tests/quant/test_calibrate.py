"""Tests of quantface_jax.quant.calibrate: observed statistics and the save/load round trip."""

import numpy as np
from flax import nnx

from quantface_jax.quant import CalibrationStats, calibrate


class _Toy(nnx.Module):
  """A model with a ``restore`` of one Linear: observed inputs are the images' pixels."""

  def __init__(self):
    from quantface_jax.models.layers import Conv2d

    self.conv = Conv2d(3, 4, 3, padding=1, rngs=nnx.Rngs(0))
    self.head = Conv2d(4, 4, 1, rngs=nnx.Rngs(1))

  def restore(self, x):
    from quantface_jax.models.osdface import RestoreOutput

    y = self.head(self.conv(x))
    return RestoreOutput(image=y, z_low=y, z_high=y, eps=y, prompt=y)


def test_stats_are_exact_and_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  images = [rng.uniform(-1, 1, (2, 6, 6, 3)).astype(np.float32) for _ in range(3)]
  stats = calibrate(_Toy(), images, max_samples=16, progress=False)
  s = stats["conv"]
  allx = np.concatenate(images).reshape(-1, 3)
  np.testing.assert_array_equal(s.ch_min, allx.min(0))
  np.testing.assert_array_equal(s.ch_max, allx.max(0))
  assert s.sample.shape == (16, 3, 3, 3) and np.abs(s.sample).max() <= 1
  assert stats.meta["num_images"] == 6
  stats.save(tmp_path / "calib")
  loaded = CalibrationStats.load(tmp_path / "calib")
  assert loaded.meta == stats.meta
  for f in ("ch_min", "ch_max", "sample"):
    np.testing.assert_array_equal(getattr(loaded["conv"], f), getattr(s, f))


def test_calibrate_ranges_measures_the_balanced_input_exactly():
  from quantface_jax.quant import LayerQuantConfig, Recipe, quantize
  from quantface_jax.quant.api import calibrate_ranges

  rng = np.random.default_rng(1)
  images = [rng.uniform(-1, 1, (2, 6, 6, 3)).astype(np.float32) for _ in range(2)]
  images[1][..., 2] *= 5  # an outlier channel
  recipe = Recipe(
    name="t",
    rules=(
      ("conv", LayerQuantConfig(rotate=True, rotation_impl="dense")),
      ("head", LayerQuantConfig(a_mode="dynamic")),
    ),
  )
  model = _Toy()
  stats = calibrate(model, images[:1], max_samples=4, progress=False)
  qmodel = quantize(model, recipe, calibration=stats)
  calibrate_ranges(qmodel, images, progress=False)
  balanced = np.asarray(qmodel.conv.balance(np.concatenate(images)))
  assert float(qmodel.conv.a_min[...]) == min(balanced.min(), 0.0)
  assert float(qmodel.conv.a_max[...]) == max(balanced.max(), 0.0)
  # Every switch is restored after the pass, also of the layers it does not measure.
  assert bool(qmodel.conv.enabled[...]) and bool(qmodel.head.enabled[...])
