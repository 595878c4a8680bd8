"""MATLAB `imresize` (bicubic, antialiased) as separable resampling matrices, in numpy."""

import functools
import math

import numpy as np


def _cubic(x: np.ndarray) -> np.ndarray:
  """Keys cubic kernel with a = -0.5 (MATLAB's 'bicubic')."""
  ax = np.abs(x)
  ax2, ax3 = ax**2, ax**3
  near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
  far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
  return near + far


@functools.lru_cache(maxsize=64)
def resize_matrix(
  in_length: int, out_length: int, scale: float, antialias: bool = True
) -> np.ndarray:
  """(out_length, in_length) float64 matrix M with resized = M @ signal.

  MATLAB semantics: output pixel x (1-based) samples input position x / scale + (1 - 1/scale) / 2;
  when shrinking with antialiasing the kernel is stretched by 1/scale; taps falling outside the
  signal are mirrored back (half-sample symmetric padding).
  """
  kernel_width = 4.0
  if scale < 1 and antialias:
    kernel_width /= scale
  x = np.arange(1, out_length + 1, dtype=np.float64)
  u = x / scale + 0.5 * (1 - 1 / scale)
  left = np.floor(u - kernel_width / 2)
  taps = math.ceil(kernel_width) + 2
  indices = left[:, None] + np.arange(taps)[None, :]  # 1-based input positions
  distance = u[:, None] - indices
  if scale < 1 and antialias:
    weights = scale * _cubic(distance * scale)
  else:
    weights = _cubic(distance)
  weights /= weights.sum(axis=1, keepdims=True)
  # Mirror 0-based positions into [0, in_length): -1 -> 0, in_length -> in_length - 1.
  zero_based = (indices - 1).astype(np.int64)
  period = 2 * in_length
  folded = np.mod(zero_based, period)
  folded = np.where(folded >= in_length, period - 1 - folded, folded)
  matrix = np.zeros((out_length, in_length))
  np.add.at(matrix, (np.repeat(np.arange(out_length), taps), folded.ravel()), weights.ravel())
  matrix.setflags(write=False)
  return matrix


def imresize(img: np.ndarray, scale: float, antialias: bool = True) -> np.ndarray:
  """Resizes like MATLAB `imresize(img, scale, 'bicubic')` (and basicsr's `imresize`).

  Args:
    img: (H, W) or (H, W, C) float array; values are not clipped or rounded.
    scale: same factor for height and width; output side is ceil(side * scale).
    antialias: widen the kernel when shrinking, as MATLAB does by default.

  Returns:
    (ceil(H*scale), ceil(W*scale)[, C]) float64.
  """
  height, width = img.shape[:2]
  rows = resize_matrix(height, math.ceil(height * scale), scale, antialias)
  cols = resize_matrix(width, math.ceil(width * scale), scale, antialias)
  img = np.asarray(img, dtype=np.float64)
  resized_rows = np.tensordot(rows, img, axes=(1, 0))  # (out_h, W[, C])
  return np.moveaxis(np.tensordot(cols, resized_rows, axes=(1, 1)), 0, 1)
