"""Tests for quantface_jax.data.degrade."""

import dataclasses

import numpy as np
import pytest

from quantface_jax.data.degrade import (
  DegradationConfig,
  blur,
  degrade,
  degrade_batch,
  gaussian_kernel,
  sample_degradation,
)


def _face(size=64):
  yy, xx = np.mgrid[0:size, 0:size] / size
  return np.stack([np.sin(6 * xx) * 0.5 + 0.5, yy, (xx + yy) / 2], -1).astype(np.float32)


def test_same_seed_same_output_different_seed_different():
  img, cfg = _face(), DegradationConfig()
  a = degrade(img, np.random.default_rng(7), cfg)
  b = degrade(img, np.random.default_rng(7), cfg)
  c = degrade(img, np.random.default_rng(8), cfg)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.shape == img.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1


def test_batch_matches_single_and_is_thread_safe():
  imgs = np.stack([_face(), _face()[::-1], _face()[:, ::-1], _face() * 0.5])
  seeds = [3, 1, 4, 1]
  batch = degrade_batch(imgs, seeds, workers=3)
  assert batch.shape == imgs.shape and batch.dtype == np.float32
  for img, seed, out in zip(imgs, seeds, batch):
    np.testing.assert_array_equal(out, degrade(img, np.random.default_rng(seed)))
  with pytest.raises(ValueError):
    degrade_batch(imgs, seeds[:2])


@pytest.mark.parametrize("resolution", [128, 512])
def test_sampled_parameters_respect_ranges_scaled_to_resolution(resolution):
  cfg = DegradationConfig()
  scale = resolution / 512
  rng = np.random.default_rng(0)
  params = [sample_degradation(rng, cfg, resolution) for _ in range(300)]
  size = params[0].kernel.shape[0]
  assert size % 2 == 1 and abs(size - 41 * scale) <= 1
  sigmas = np.array([p.sigma_xy for p in params])
  assert sigmas.min() >= 0.1 * scale and sigmas.max() <= 10 * scale
  assert 1 <= min(p.downsample for p in params) and max(p.downsample for p in params) <= 8
  assert 0 <= min(p.noise_sigma for p in params) and max(p.noise_sigma for p in params) <= 20
  qualities = {p.jpeg_quality for p in params}
  assert min(qualities) >= 60 and max(qualities) <= 100 and len(qualities) > 20
  anisotropic = np.mean([p.sigma_xy[0] != p.sigma_xy[1] for p in params])
  assert 0.35 < anisotropic < 0.65
  for p in params[:20]:
    assert p.kernel.dtype == np.float32 and abs(p.kernel.sum() - 1) < 1e-5


def test_gaussian_kernel_rotation_and_symmetry():
  iso = gaussian_kernel(21, 2.0, 2.0, 0.7)
  np.testing.assert_allclose(iso, iso.T, atol=1e-7)
  wide = gaussian_kernel(21, 4.0, 1.0, 0.0)
  np.testing.assert_allclose(gaussian_kernel(21, 4.0, 1.0, np.pi / 2), wide.T, atol=1e-7)
  assert wide[10].sum() > wide[:, 10].sum()  # elongated along x


def test_blur_preserves_constant_and_matches_direct_convolution():
  flat = np.full((20, 24, 3), 0.3, np.float32)
  kernel = gaussian_kernel(9, 2.0, 1.0, 0.4)
  np.testing.assert_allclose(blur(flat, kernel), 0.3, atol=1e-6)
  img = _face(24)
  padded = np.pad(img, ((4, 4), (4, 4), (0, 0)), mode="reflect")
  direct = np.zeros_like(img)
  for dy in range(9):
    for dx in range(9):
      direct += kernel[8 - dy, 8 - dx] * padded[dy : dy + 24, dx : dx + 24]
  np.testing.assert_allclose(blur(img, kernel), direct, atol=1e-5)


def test_mild_config_stays_close_and_harsh_config_degrades():
  img = _face(128)
  mild = dataclasses.replace(
    DegradationConfig(),
    blur_sigma=(0.1, 0.1),
    downsample=(1, 1),
    noise_sigma=(0, 0),
    jpeg_quality=(100, 100),
  )
  harsh = dataclasses.replace(
    mild, blur_sigma=(8, 8), downsample=(8, 8), noise_sigma=(20, 20), jpeg_quality=(60, 60)
  )
  rng = np.random.default_rng(0)
  assert np.abs(degrade(img, rng, mild) - img).mean() < 0.01
  assert np.abs(degrade(img, rng, harsh) - img).mean() > 0.03


def test_config_is_frozen_keyword_only():
  with pytest.raises(TypeError):
    DegradationConfig(41)  # pylint: disable=too-many-function-args
  with pytest.raises(dataclasses.FrozenInstanceError):
    DegradationConfig().blur_kernel_size = 3
