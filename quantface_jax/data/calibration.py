"""Calibration faces: the LQ inputs that quantization calibrates on and the bit allocation sweeps.

Two sources: high-quality faces degraded with the project's pipeline (``hq_dir``, reproducible from
the seeds), or real low-quality photos used as they are (``lq_dir``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from quantface_jax.data import io as image_io
from quantface_jax.data.datasets import HQFolderDataset

# `quantface_jax.data.degrade` is the re-exported function, so import names from the module.
from quantface_jax.data.degrade import DegradationConfig

log = logging.getLogger(__name__)


def calibration_faces(
  resolution: int,
  *,
  hq_dir: str | os.PathLike[str] | None = None,
  lq_dir: str | os.PathLike[str] | None = None,
  count: int | None = None,
  start: int = 0,
  seeds: int | Sequence[int] = 0,
  degradation: DegradationConfig = DegradationConfig(),
) -> np.ndarray:
  """(N, R, R, 3) float32 LQ faces in [-1, 1], R = ``resolution``.

  Args:
    resolution: side in pixels the faces are read at.
    hq_dir: folder of HQ faces: the files ``start .. start + count`` (natural order) are degraded
      with ``degradation`` once per seed of ``seeds`` (a face keeps its LQ in any subset: the
      degradation depends on the seed and the file's position only).
    lq_dir: folder of real low-quality faces, used as they are (``seeds``/``degradation`` unused).
    count: faces to take (all from ``start`` when None). When the folder holds fewer, all of them
      are used and a warning says so.
    start: position of the first face in the folder.
    seeds: degradation seed(s); N = faces × seeds, seed-major.
    degradation: the LQ recipe of ``hq_dir``.

  Raises:
    ValueError: not exactly one of ``hq_dir``/``lq_dir``, or no face at ``start`` or later.
  """
  if (hq_dir is None) == (lq_dir is None):
    raise ValueError("calibration_faces: give exactly one of hq_dir (degraded) or lq_dir (as is)")
  folder = hq_dir if lq_dir is None else lq_dir
  available = len(image_io.list_images(folder)) - start
  if available <= 0:
    raise ValueError(f"{folder}: no calibration faces from position {start} on")
  if count is not None and count > available:
    log.warning("%s: %d calibration faces asked, using the %d there", folder, count, available)
  indices = range(start, start + (available if count is None else min(count, available)))
  if lq_dir is not None:
    files = image_io.list_images(lq_dir)
    faces = [image_io.read_image(files[i], resolution) for i in indices]
  else:
    datasets = [
      HQFolderDataset(hq_dir, resolution, indices=indices, degradation=degradation, seed=seed)
      for seed in np.atleast_1d(seeds).tolist()
    ]
    faces = [dataset.load(i)[0] for dataset in datasets for i in range(len(indices))]
  return np.stack(faces).astype(np.float32) * 2.0 - 1.0


def as_batches(faces: np.ndarray, batch_size: int) -> list[np.ndarray]:
  """``faces`` (N, ...) split into consecutive batches of ``batch_size`` (the last may be smaller)."""
  return [faces[i : i + batch_size] for i in range(0, len(faces), batch_size)]
