"""NIQE (Mittal et al., "Making a completely blind image quality analyzer", 2012), vectorised numpy.

Follows the published algorithm as basicsr 1.4.2 / pyiqa implement it: luma rounded to integers in
[0, 255], cropped to whole 96x96 patches; at two scales (full, then MATLAB-bicubic x0.5) the MSCN
coefficients (7x7 Gaussian window, sigma 7/6, replicated borders, C = 1) give per patch 18 AGGD
features (the coefficients and their products with the 4 circularly shifted neighbours); a
Gaussian fitted to the 36-d patch features is compared with the LIVE pristine model:
sqrt((mu_p - mu)^T pinv((cov_p + cov) / 2) (mu_p - mu)). Lower is better.
"""

import dataclasses
import functools
import math
import pathlib

import numpy as np
import scipy.ndimage
import scipy.special

from quantface_jax.metrics import color, matlab_resize

_ASSETS = pathlib.Path(__file__).resolve().parent.parent / "assets"
PATCH_SIZE = 96
MIN_SIDE = 2 * PATCH_SIZE  # smaller inputs give too few patches for the 36x36 covariance.
# convention -> (luma colour space, pyiqa's float32 window).
_CONVENTIONS = {"pyiqa": ("yiq", True), "basicsr": ("ycbcr", False)}
_NEIGHBOUR_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
# Lookup table of the generalised Gaussian ratio r(a) = G(2/a)^2 / (G(1/a) G(3/a)).
_SHAPES = np.arange(0.2, 10.001, 0.001)
_SHAPE_RATIOS = scipy.special.gamma(2 / _SHAPES) ** 2 / (
  scipy.special.gamma(1 / _SHAPES) * scipy.special.gamma(3 / _SHAPES)
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PristineModel:
  """The multivariate Gaussian fitted to the LIVE pristine images' patch features."""

  mean: np.ndarray  # (36,) float64 feature mean.
  cov: np.ndarray  # (36, 36) float64 feature covariance.
  window: np.ndarray  # (7, 7) float64 Gaussian window for the MSCN local statistics.


@functools.cache
def pristine_model() -> PristineModel:
  """Loads the LIVE pristine parameters (from basicsr 1.4.2's `niqe_pris_params.npz`)."""
  with np.load(_ASSETS / "niqe_pris_params.npz") as params:
    return PristineModel(
      mean=params["mu_pris_param"].reshape(-1).astype(np.float64),
      cov=params["cov_pris_param"].astype(np.float64),
      window=params["gaussian_window"].astype(np.float64),
    )


def _mscn(img: np.ndarray, window: np.ndarray) -> np.ndarray:
  """Mean-subtracted contrast-normalised coefficients of a (H, W) float64 image."""
  mean = scipy.ndimage.correlate(img, window, mode="nearest")
  var = scipy.ndimage.correlate(img * img, window, mode="nearest") - mean * mean
  return (img - mean) / (np.sqrt(np.abs(var)) + 1)


def _fit_aggd(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Moment-matching AGGD fit of each row of (N, P) samples: (shape, left scale, right scale)."""
  left, right = samples < 0, samples > 0
  with np.errstate(divide="ignore", invalid="ignore"):
    left_std = np.sqrt((samples**2 * left).sum(1) / left.sum(1))
    right_std = np.sqrt((samples**2 * right).sum(1) / right.sum(1))
    gamma_hat = left_std / right_std
    r_hat = np.mean(np.abs(samples), 1) ** 2 / np.mean(samples**2, 1)
    r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
  # A NaN ratio (a one-signed patch) picks the first table entry; its std is NaN anyway.
  shape = _SHAPES[np.argmin((_SHAPE_RATIOS[None, :] - r_hat_norm[:, None]) ** 2, axis=1)]
  spread = np.sqrt(scipy.special.gamma(1 / shape) / scipy.special.gamma(3 / shape))
  return shape, left_std * spread, right_std * spread


def _patch_features(mscn: np.ndarray, patch: int) -> np.ndarray:
  """(num_patches, 18) NIQE features of the non-overlapping `patch`-sized tiles of `mscn`."""
  rows, cols = mscn.shape[0] // patch, mscn.shape[1] // patch
  tiles = mscn[: rows * patch, : cols * patch].reshape(rows, patch, cols, patch)
  tiles = tiles.transpose(0, 2, 1, 3).reshape(rows * cols, patch, patch)
  products = [tiles * np.roll(tiles, shift, axis=(1, 2)) for shift in _NEIGHBOUR_SHIFTS]
  samples = np.concatenate([tiles] + products, axis=0).reshape(5, rows * cols, -1)
  shape, beta_l, beta_r = (
    a.reshape(5, -1) for a in _fit_aggd(samples.reshape(5 * rows * cols, -1))
  )
  features = [shape[0], (beta_l[0] + beta_r[0]) / 2]
  mean_ratio = scipy.special.gamma(2 / shape[1:]) / scipy.special.gamma(1 / shape[1:])
  for k in range(1, 5):
    features += [shape[k], (beta_r[k] - beta_l[k]) * mean_ratio[k - 1], beta_l[k], beta_r[k]]
  return np.stack(features, axis=1)


def niqe_luma(luma: np.ndarray, model: PristineModel | None = None) -> float:
  """NIQE of one (H, W) luma image in [0, 255] (already rounded as the reference does).

  H and W must be at least `MIN_SIDE` (192); they are cropped to multiples of 96.
  """
  model = model or pristine_model()
  height, width = luma.shape
  if min(height, width) < MIN_SIDE:
    raise ValueError(
      f"NIQE needs images of at least {MIN_SIDE}x{MIN_SIDE} px, got {height}x{width}"
    )
  img = np.asarray(luma, np.float64)[
    : height // PATCH_SIZE * PATCH_SIZE, : width // PATCH_SIZE * PATCH_SIZE
  ]
  features = [_patch_features(_mscn(img, model.window), PATCH_SIZE)]
  half = matlab_resize.imresize(img / 255.0, 0.5) * 255.0
  features.append(_patch_features(_mscn(half, model.window), PATCH_SIZE // 2))
  features = np.concatenate(features, axis=1)
  mean = np.nanmean(features, axis=0)
  cov = np.cov(features[~np.isnan(features).any(axis=1)], rowvar=False)
  diff = model.mean - mean
  return float(np.sqrt(diff @ np.linalg.pinv((model.cov + cov) / 2) @ diff))


def niqe(
  img: np.ndarray,
  *,
  data_range: float | None = None,
  crop_border: int = 0,
  convention: str = "pyiqa",
) -> float:
  """NIQE of one image (lower is better).

  Args:
    img: (H, W, 3) RGB or (H, W) gray; uint8 in [0, 255] or float in [0, data_range].
      H, W >= 192 after cropping (see `niqe_any_size` for smaller faces).
    data_range: peak value of a float `img`; 1.0 when None.
    crop_border: pixels dropped on each side before scoring.
    convention: 'pyiqa' (pyiqa 0.1.16 `NIQE()`: YIQ luma, its float32 7x7 window; reproduces its
      published calibration values) or 'basicsr' (basicsr 1.4.2 `calculate_niqe`: BT.601 YCbCr luma,
      float64 window). The two differ by up to ~0.15 on real images, so quote the convention.

  Returns:
    The NIQE score.
  """
  if convention not in _CONVENTIONS:
    raise ValueError(f"convention must be one of {sorted(_CONVENTIONS)}, got {convention!r}")
  color_space, float32_window = _CONVENTIONS[convention]
  img = color.to_255(img, data_range)
  luma = color.rgb_to_y(img, color_space) if img.ndim == 3 else img
  if crop_border:
    luma = luma[crop_border:-crop_border, crop_border:-crop_border]
  model = pristine_model()
  if float32_window:
    # pyiqa builds the window in float32: its sum misses 1 by ~1e-8, which sets the sign of the
    # MSCN coefficients in flat regions and so shifts the AGGD fits there.
    model = dataclasses.replace(model, window=model.window.astype(np.float32).astype(np.float64))
  return niqe_luma(np.round(luma), model)


def upsample_factor(short_side: int, min_side: int = 512) -> int:
  """Integer bicubic factor `niqe_any_size` applies: 1 when `short_side` >= 192, else enough to
  reach `min_side`."""
  return 1 if short_side >= MIN_SIDE else math.ceil(min_side / short_side)


def niqe_any_size(
  img: np.ndarray, *, min_side: int = 512, data_range: float | None = None, **kwargs
) -> float:
  """NIQE that also accepts images too small for its 96-px patches (< 192 px a side).

  Those are upsampled (MATLAB bicubic, integer factor, clipped to [0, 255]) to at least `min_side`
  first: the `mini` model's 128-px faces are scored at x4 = 512 px. Label such scores (e.g.
  "NIQE, bicubic x4 to 512") — they are not comparable with native-size NIQE. `kwargs` go to `niqe`.
  """
  img = color.to_255(img, data_range)
  factor = upsample_factor(min(img.shape[:2]), min_side)
  if factor > 1:
    img = np.clip(matlab_resize.imresize(img, factor), 0, 255)
  return niqe(img, data_range=255.0, **kwargs)
