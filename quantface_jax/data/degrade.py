"""Synthetic degradation for blind face restoration (the GFPGAN / CodeFormer / OSDFace recipe).

    lq = resize_back(jpeg(noise(downsample(blur(hq)))))

Parameters are given for 512 px faces and scaled to the actual resolution: blur sigma and kernel
size by res / 512; the downsample factor, noise and JPEG quality stay as they are.
Images are float32 (H, W, 3) RGB in [0, 1].
"""

import concurrent.futures
import dataclasses
import io
import math
from collections.abc import Sequence

import numpy as np
import scipy.fft
from PIL import Image

from quantface_jax.data import io as image_io


@dataclasses.dataclass(frozen=True, kw_only=True)
class DegradationConfig:
  """Ranges of the random degradation, in 512-px units; every range is sampled uniformly."""

  reference_resolution: int = 512  # resolution the blur parameters below are given for.
  blur_kernel_size: int = 41  # odd blur kernel side at the reference resolution.
  blur_sigma: tuple[float, float] = (0.1, 10.0)  # Gaussian sigma range (px at reference res).
  anisotropic_prob: float = 0.5  # chance of an anisotropic, rotated kernel instead of isotropic.
  downsample: tuple[float, float] = (1.0, 8.0)  # downsampling factor range.
  noise_sigma: tuple[float, float] = (0.0, 20.0)  # Gaussian noise std range, in 0-255 units.
  jpeg_quality: tuple[int, int] = (60, 100)  # JPEG quality range, inclusive.


@dataclasses.dataclass(frozen=True, kw_only=True)
class DegradationParams:
  """One sampled degradation, in pixels of the image it applies to."""

  kernel: np.ndarray  # (k, k) float32 blur kernel summing to 1.
  sigma_xy: tuple[float, float]  # blur sigmas along the kernel's principal axes (px).
  angle: float  # kernel rotation in radians (0 for isotropic).
  downsample: float  # downsampling factor >= 1.
  noise_sigma: float  # Gaussian noise std in 0-255 units.
  jpeg_quality: int  # JPEG quality.


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, angle: float) -> np.ndarray:
  """(size, size) float32 Gaussian with principal sigmas (sigma_x, sigma_y) rotated by `angle`."""
  radius = size // 2
  grid = np.arange(-radius, radius + 1, dtype=np.float64)
  xx, yy = np.meshgrid(grid, grid)
  cos, sin = math.cos(angle), math.sin(angle)
  u, v = cos * xx + sin * yy, -sin * xx + cos * yy
  kernel = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
  return (kernel / kernel.sum()).astype(np.float32)


def sample_degradation(
  rng: np.random.Generator, cfg: DegradationConfig, resolution: int
) -> DegradationParams:
  """Draws one degradation for a `resolution`-px image (always the same number of draws)."""
  scale = resolution / cfg.reference_resolution
  size = max(3, 2 * round((cfg.blur_kernel_size * scale - 1) / 2) + 1)
  anisotropic = rng.random() < cfg.anisotropic_prob
  sigmas = rng.uniform(*cfg.blur_sigma, size=2) * scale
  angle = rng.uniform(-math.pi, math.pi)
  if not anisotropic:
    sigmas, angle = np.full(2, sigmas[0]), 0.0
  return DegradationParams(
    kernel=gaussian_kernel(size, sigmas[0], sigmas[1], angle),
    sigma_xy=(float(sigmas[0]), float(sigmas[1])),
    angle=float(angle),
    downsample=float(rng.uniform(*cfg.downsample)),
    noise_sigma=float(rng.uniform(*cfg.noise_sigma)),
    jpeg_quality=int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)),
  )


def blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """Convolves float32 (H, W, C) with a (k, k) kernel, reflect-101 borders (cv2's default).

  One float32 real FFT per channel: after padding by k // 2 each side, the circular wrap-around only
  reaches the k - 1 leading rows/columns, which are dropped.
  """
  size = kernel.shape[0]
  radius = size // 2
  padded = np.pad(
    np.moveaxis(img, -1, 0), ((0, 0), (radius, radius), (radius, radius)), mode="reflect"
  )
  shape = tuple(scipy.fft.next_fast_len(n, real=True) for n in padded.shape[1:])
  spectrum = scipy.fft.rfft2(padded, shape) * scipy.fft.rfft2(kernel.astype(np.float32), shape)
  out = scipy.fft.irfft2(spectrum, shape)[:, size - 1 : padded.shape[1], size - 1 : padded.shape[2]]
  return np.ascontiguousarray(np.moveaxis(out, 0, -1), dtype=np.float32)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
  """JPEG round trip (4:2:0, PIL/libjpeg) of float (H, W, 3) in [0, 1]."""
  buffer = io.BytesIO()
  Image.fromarray(image_io.to_uint8(img)).save(buffer, format="JPEG", quality=quality)
  buffer.seek(0)
  with Image.open(buffer) as decoded:
    return np.asarray(decoded.convert("RGB"), dtype=np.float32) / 255.0


def apply_degradation(
  img: np.ndarray, params: DegradationParams, noise_rng: np.random.Generator
) -> np.ndarray:
  """Applies `params` to float32 (H, W, 3) in [0, 1]; returns the same shape and dtype."""
  height, width = img.shape[:2]
  out = blur(img, params.kernel)
  small_h = max(1, round(height / params.downsample))
  small_w = max(1, round(width / params.downsample))
  out = image_io.resize(out, small_h, small_w, Image.Resampling.BILINEAR)
  out = out + noise_rng.standard_normal(out.shape, dtype=np.float32) * np.float32(
    params.noise_sigma / 255.0
  )
  out = jpeg(out, params.jpeg_quality)
  out = image_io.resize(out, height, width, Image.Resampling.BILINEAR)
  return np.clip(out, 0.0, 1.0)


def degrade(
  img: np.ndarray, rng: np.random.Generator, cfg: DegradationConfig = DegradationConfig()
) -> np.ndarray:
  """Random degradation of float32 (H, W, 3) in [0, 1]; deterministic given `rng`'s state.

  The blur/downsample/noise/JPEG parameters are drawn for resolution min(H, W).
  """
  params = sample_degradation(rng, cfg, min(img.shape[:2]))
  return apply_degradation(np.asarray(img, np.float32), params, rng)


def degrade_batch(
  imgs: np.ndarray | Sequence[np.ndarray],
  seeds: Sequence[int],
  cfg: DegradationConfig = DegradationConfig(),
  *,
  workers: int = 4,
) -> np.ndarray:
  """Degrades each image with `np.random.default_rng(seed)`, on a thread pool.

  Args:
    imgs: (N, H, W, 3) float32 in [0, 1] (or a sequence of such images).
    seeds: N integer seeds; image i equals `degrade(imgs[i], np.random.default_rng(seeds[i]), cfg)`.
    workers: threads (FFT, PIL and libjpeg release the GIL).

  Returns:
    (N, H, W, 3) float32 in [0, 1].
  """
  if len(imgs) != len(seeds):
    raise ValueError(f"{len(imgs)} images but {len(seeds)} seeds")
  run = lambda img, seed: degrade(img, np.random.default_rng(seed), cfg)
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    return np.stack(list(pool.map(run, imgs, seeds)))
