"""Full-reference metrics, basicsr conventions: PSNR and SSIM (and SSIM as a traced JAX function).

Inputs are (H, W, C) images, uint8 in [0, 255] or float in [0, data_range] (data_range 1 by
default, the project's convention); both are evaluated in [0, 255].
"""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from quantface_jax.metrics import color

_SSIM_RADIUS = 5  # 11x11 window.
_SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2


def _prepare(img, ref, crop_border, test_y_channel, data_range, color_space):
  """Both images as float64 in [0, 255], cropped, as (H, W, C) (C = 1 for luma)."""
  img, ref = color.to_255(img, data_range), color.to_255(ref, data_range)
  if img.shape != ref.shape:
    raise ValueError(f"image shapes differ: {img.shape} vs {ref.shape}")
  if img.ndim == 2:
    img, ref = img[..., None], ref[..., None]
  if crop_border:
    img = img[crop_border:-crop_border, crop_border:-crop_border]
    ref = ref[crop_border:-crop_border, crop_border:-crop_border]
  if test_y_channel:
    img, ref = (
      color.rgb_to_y(img, color_space)[..., None],
      color.rgb_to_y(ref, color_space)[..., None],
    )
  return img, ref


def psnr(
  img: np.ndarray,
  ref: np.ndarray,
  *,
  crop_border: int = 0,
  test_y_channel: bool = False,
  data_range: float | None = None,
) -> float:
  """PSNR in dB of `img` against `ref` (basicsr `calculate_psnr`); inf for identical images.

  Args:
    img, ref: (H, W, C) or (H, W), same shape; uint8 or float in [0, data_range].
    crop_border: pixels dropped on each side.
    test_y_channel: score basicsr's Y (BT.601 YCbCr) instead of all RGB channels.
    data_range: peak value of float inputs; 1.0 when None.
  """
  img, ref = _prepare(img, ref, crop_border, test_y_channel, data_range, "ycbcr")
  mse = np.mean((img - ref) ** 2)
  return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def fidelity_psnr(quant_out: np.ndarray, fp_out: np.ndarray, **kwargs) -> float:
  """PSNR of a quantized model's output against the full-precision model's output (RGB, dB)."""
  return psnr(quant_out, fp_out, **kwargs)


def _gaussian_valid(x: np.ndarray) -> np.ndarray:
  """11x11 Gaussian (sigma 1.5) filter over the first two axes, 'valid' region only."""
  for axis in (0, 1):
    x = scipy.ndimage.gaussian_filter1d(
      x, _SSIM_SIGMA, axis=axis, mode="constant", truncate=_SSIM_RADIUS / _SSIM_SIGMA
    )
  return x[_SSIM_RADIUS:-_SSIM_RADIUS, _SSIM_RADIUS:-_SSIM_RADIUS]


def ssim(
  img: np.ndarray,
  ref: np.ndarray,
  *,
  crop_border: int = 0,
  test_y_channel: bool = False,
  data_range: float | None = None,
  color_space: str = "ycbcr",
) -> float:
  """SSIM of `img` against `ref` (basicsr `calculate_ssim`, Wang et al. 2004); 1.0 when identical.

  11x11 Gaussian window (sigma 1.5), 'valid' borders, C1 = (0.01*255)^2, C2 = (0.03*255)^2, mean
  over channels.

  Args:
    img, ref: (H, W, C) or (H, W), same shape; uint8 or float in [0, data_range].
    crop_border: pixels dropped on each side.
    test_y_channel: score a luma channel instead of the mean over RGB channels.
    data_range: peak value of float inputs; 1.0 when None.
    color_space: luma used with `test_y_channel` (see `color.rgb_to_y`): 'ycbcr' (basicsr) or
      'yiq' (pyiqa's `SSIM()` default: rounded YIQ luma; reproduces its published values).
  """
  img, ref = _prepare(img, ref, crop_border, test_y_channel, data_range, color_space)
  mu1, mu2 = _gaussian_valid(img), _gaussian_valid(ref)
  var1 = _gaussian_valid(img * img) - mu1**2
  var2 = _gaussian_valid(ref * ref) - mu2**2
  cov = _gaussian_valid(img * ref) - mu1 * mu2
  ssim_map = ((2 * mu1 * mu2 + _SSIM_C1) * (2 * cov + _SSIM_C2)) / (
    (mu1**2 + mu2**2 + _SSIM_C1) * (var1 + var2 + _SSIM_C2)
  )
  return float(ssim_map.mean())


def traced_ssim(x: jax.Array, y: jax.Array) -> jax.Array:
  """`ssim` as a traceable JAX function (jit, vmap, grad): the mean SSIM of (N, H, W, C) float images
  in [0, 1], over every pixel and channel (the same window, constants and valid region)."""
  taps = np.exp(-0.5 * ((np.arange(2 * _SSIM_RADIUS + 1) - _SSIM_RADIUS) / _SSIM_SIGMA) ** 2)
  taps = jnp.asarray(taps / taps.sum(), x.dtype)
  channels = x.shape[-1]
  c1, c2 = _SSIM_C1 / 255**2, _SSIM_C2 / 255**2

  def blur(t):
    for shape in ((2 * _SSIM_RADIUS + 1, 1), (1, 2 * _SSIM_RADIUS + 1)):
      kernel = jnp.tile(taps.reshape(*shape, 1, 1), (1, 1, 1, channels))
      t = jax.lax.conv_general_dilated(
        t,
        kernel,
        (1, 1),
        "VALID",
        feature_group_count=channels,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
      )
    return t

  mx, my = blur(x), blur(y)
  vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
  num = (2 * mx * my + c1) * (2 * cov + c2)
  return jnp.mean(num / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
