"""One quantized `tiny` model for the serve tests: UNet layers with dynamic per-token activations,
VAE layers with static per-tensor ones (so both serving paths, incl. the per-tap dynamic conv and
the asymmetric-padding static conv, are covered by one calibration), all with smoothing, rotation
and a rank-4 low-rank branch."""

import numpy as np
import pytest

from quantface_jax.quant import LayerQuantConfig, Recipe, calibrate, quantize
from quantface_jax.quant.rules import FULL_PRECISION, KEEP_W8A8


def mixed_recipe() -> Recipe:
  body = LayerQuantConfig(w_bits=4, a_bits=4, smooth=True, alpha=0.5, rotate=True, low_rank=4)
  keep = body.replace(w_bits=8, a_bits=8, low_rank=0)
  dynamic = body.replace(a_mode="dynamic")
  rules = (
    tuple((p, None) for p in FULL_PRECISION)
    + tuple((p, keep) for p in KEEP_W8A8)
    + ((r"unet\..*", dynamic), (r"vae\.(encoder|decoder)\..*", body))
  )
  return Recipe(name="mixed-W4A4", rules=rules)


@pytest.fixture(scope="session")
def lq():
  return np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="session")
def quantized(tiny_model, lq):
  """(fake-quant model at W4A4, its recipe)."""
  recipe = mixed_recipe()
  stats = calibrate(tiny_model, [lq], rules=recipe.rules, max_samples=32, progress=False)
  return quantize(tiny_model, recipe, calibration=stats, images=[lq]), recipe
