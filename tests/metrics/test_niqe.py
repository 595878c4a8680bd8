"""Tests for NIQE and the MATLAB imresize port."""

import numpy as np
import pytest

from quantface_jax import metrics
from quantface_jax.metrics import niqe_metric


def test_pristine_model_shapes():
  model = metrics.pristine_model()
  assert model.mean.shape == (36,) and model.cov.shape == (36, 36) and model.window.shape == (7, 7)
  np.testing.assert_allclose(model.cov, model.cov.T)
  assert model.window.sum() == pytest.approx(1.0)


def test_imresize_matlab_properties():
  flat = np.full((20, 30), 0.7)
  np.testing.assert_allclose(metrics.imresize(flat, 0.5), 0.7, atol=1e-12)
  ramp = np.tile(np.arange(16, dtype=np.float64), (4, 1))
  half = metrics.imresize(ramp, 0.5)
  assert half.shape == (2, 8)
  # Interior samples of a linear ramp land on the input positions 2k + 0.5 (MATLAB's mapping).
  np.testing.assert_allclose(half[0, 2:6], 2 * np.arange(2, 6) + 0.5, atol=1e-9)
  up = metrics.imresize(np.arange(12.0).reshape(3, 4, 1), 2)
  assert up.shape == (6, 8, 1)


def test_niqe_basic_behaviour():
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:192, 0:224] / 32
  smooth = (np.sin(xx) * np.cos(yy) * 0.3 + 0.5)[..., None].repeat(3, -1)
  noisy = np.round(np.clip(smooth + rng.normal(0, 0.1, smooth.shape), 0, 1) * 255) / 255
  score = metrics.niqe(noisy)
  assert np.isfinite(score) and score > 0
  assert metrics.niqe(noisy * 255, data_range=255) == pytest.approx(score)
  assert metrics.niqe(np.round(noisy * 255).astype(np.uint8)) == pytest.approx(score)
  assert metrics.niqe(noisy, convention="basicsr") != score
  with pytest.raises(ValueError, match="at least 192"):
    metrics.niqe(noisy[:100])
  with pytest.raises(ValueError, match="convention"):
    metrics.niqe(noisy, convention="matlab")


def test_niqe_any_size_upsamples_small_images():
  rng = np.random.default_rng(1)
  small = rng.random((64, 64, 3))
  assert niqe_metric.upsample_factor(64, 256) == 4 and niqe_metric.upsample_factor(192) == 1
  expected = metrics.niqe(np.clip(metrics.imresize(small * 255, 4), 0, 255), data_range=255)
  assert metrics.niqe_any_size(small, min_side=256) == pytest.approx(expected)
