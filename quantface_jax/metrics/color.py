"""Value-range and colour conversions shared by the metrics (basicsr conventions)."""

import numpy as np

# basicsr / MATLAB rgb2ycbcr luma row (ITU-R BT.601, studio swing 16-235), for RGB in [0, 1].
_BT601_Y_WEIGHTS = np.array([65.481, 128.553, 24.966])
# YIQ luma row (plain BT.601 weights, full swing), pyiqa's default for NIQE and SSIM.
_YIQ_Y_WEIGHTS = np.array([0.299, 0.587, 0.114])


def to_255(img: np.ndarray, data_range: float | None = None) -> np.ndarray:
  """Returns `img` as float64 in [0, 255].

  Args:
    img: (..., H, W, C) or (..., H, W) image. uint8 is taken as [0, 255]; any other dtype as
      [0, data_range].
    data_range: peak value of a floating point `img`; 1.0 when None.
  """
  img = np.asarray(img)
  if img.dtype == np.uint8:
    return img.astype(np.float64)
  scale = 255.0 / (1.0 if data_range is None else data_range)
  return img.astype(np.float64) * scale


def rgb_to_y(img_255: np.ndarray, color_space: str = "ycbcr") -> np.ndarray:
  """Luma of an RGB image in [0, 255].

  Args:
    img_255: (..., H, W, 3) float in [0, 255].
    color_space: 'ycbcr': basicsr's `to_y_channel` (BT.601 studio swing, Y = 16 + (65.481 R +
      128.553 G + 24.966 B) / 255), unrounded. 'yiq': pyiqa's default `to_y_channel(x, 255)`
      (Y = 0.299 R + 0.587 G + 0.114 B from [0, 1] inputs in float32, rounded to integers; the
      float32 arithmetic decides rounding ties exactly as pyiqa does).

  Returns:
    (..., H, W) float64 in [0, 255].
  """
  if img_255.shape[-1] != 3:
    raise ValueError(f"expected an RGB image (..., H, W, 3), got shape {img_255.shape}")
  if color_space == "ycbcr":
    return img_255 @ (_BT601_Y_WEIGHTS / 255.0) + 16.0
  if color_space == "yiq":
    unit = (img_255 / 255.0).astype(np.float32)
    return np.round(unit @ _YIQ_Y_WEIGHTS.astype(np.float32) * np.float32(255)).astype(np.float64)
  raise ValueError(f"color_space must be 'ycbcr' or 'yiq', got {color_space!r}")
