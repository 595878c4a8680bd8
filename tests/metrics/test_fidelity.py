"""Tests for PSNR/SSIM (basicsr conventions) in quantface_jax.metrics."""

import numpy as np
import pytest
from skimage import metrics as skmetrics

from quantface_jax import metrics


@pytest.fixture
def pair():
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:48, 0:40] / 48
  ref = np.stack([np.sin(5 * xx), np.cos(3 * yy), xx * yy], -1) * 0.4 + 0.5
  out = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1)
  return out.astype(np.float32), ref.astype(np.float32)


def test_identical_images(pair):
  _, ref = pair
  assert metrics.psnr(ref, ref) == float("inf")
  assert metrics.ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
  assert metrics.ssim(ref, ref, test_y_channel=True) == pytest.approx(1.0, abs=1e-12)


def test_psnr_matches_skimage_and_ranges_agree(pair):
  out, ref = pair
  expected = skmetrics.peak_signal_noise_ratio(ref * 255.0, out * 255.0, data_range=255)
  assert metrics.psnr(out, ref) == pytest.approx(expected, abs=1e-4)
  assert metrics.psnr(out * 255, ref * 255, data_range=255) == pytest.approx(expected, abs=1e-4)
  u8 = lambda x: np.round(x * 255).astype(np.uint8)
  assert metrics.psnr(u8(out), u8(ref)) == pytest.approx(
    skmetrics.peak_signal_noise_ratio(u8(ref), u8(out)), abs=1e-9
  )
  assert metrics.fidelity_psnr(out, ref) == metrics.psnr(out, ref)


def test_ssim_matches_skimage_gaussian_variant(pair):
  out, ref = pair
  expected = skmetrics.structural_similarity(
    ref * 255.0,
    out * 255.0,
    data_range=255,
    channel_axis=-1,
    gaussian_weights=True,
    sigma=1.5,
    use_sample_covariance=False,
  )
  assert metrics.ssim(out, ref) == pytest.approx(expected, abs=1e-6)


def test_y_channel_and_crop_border(pair):
  out, ref = pair
  y = metrics.rgb_to_y(np.array([[[255.0, 255.0, 255.0], [0.0, 0.0, 0.0]]]))
  np.testing.assert_allclose(y, [[235.0, 16.0]])
  y_out, y_ref = (metrics.rgb_to_y(x * 255.0) for x in (out, ref))
  expected = 10 * np.log10(255.0**2 / np.mean((y_out - y_ref) ** 2))
  assert metrics.psnr(out, ref, test_y_channel=True) == pytest.approx(expected, abs=1e-6)
  cropped = metrics.psnr(out[3:-3, 3:-3], ref[3:-3, 3:-3])
  assert metrics.psnr(out, ref, crop_border=3) == pytest.approx(cropped, abs=1e-12)
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.psnr(out, ref[1:])


def test_compute_metrics(pair):
  out, ref = pair
  big_out = np.stack([np.kron(out, np.ones((5, 5, 1)))] * 2)
  big_ref = np.stack([np.kron(ref, np.ones((5, 5, 1)))] * 2)
  result = metrics.compute_metrics(big_out, big_ref, workers=2)
  assert set(result) == {"psnr", "ssim", "niqe", "niqe_upsample"}
  assert result["psnr"] == pytest.approx(metrics.psnr(big_out[0], big_ref[0]))
  assert result["niqe_upsample"] == 1 and np.isfinite(result["niqe"])
  small = metrics.compute_metrics(out[None, :40, :40], niqe_min_side=192)
  assert set(small) == {"niqe", "niqe_upsample"} and small["niqe_upsample"] == 5


def test_traced_ssim_equals_ssim(pair):
  out, ref = pair
  per_image = metrics.fidelity.ssim(out, ref)
  traced = float(metrics.fidelity.traced_ssim(out[None], ref[None]))
  assert traced == pytest.approx(per_image, abs=1e-4)
  assert float(metrics.fidelity.traced_ssim(ref[None], ref[None])) == pytest.approx(1.0, abs=1e-6)
