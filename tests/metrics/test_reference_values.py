"""NIQE/PSNR/SSIM against pyiqa 0.1.16's published values on its calibration images.

The images ship in the `pyiqa==0.1.16` wheel (`ResultsCalibra/{ref_dir,dist_dir}/*.bmp`) and are
read straight out of it: from $QUANTFACE_PYIQA_WHEEL, else ~/.cache/quantface/, else downloaded
there once with `pip download`.
"""

import io
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from quantface_jax import metrics

WHEEL_NAME = "pyiqa-0.1.16-py3-none-any.whl"
CACHE_DIR = pathlib.Path.home() / ".cache" / "quantface"
NAMES = ("I03", "I04", "I06", "I08", "I19")
# pyiqa's published scores of the distorted images (README / ResultsCalibra).
PUBLISHED_NIQE = (15.6538, 3.6549, 3.2342, 3.1921, 9.0722)
PUBLISHED_PSNR = (21.11, 20.99, 27.01, 23.30, 21.62)  # RGB, ref vs dist.
PUBLISHED_SSIM = (0.6993, 0.9978, 0.9989, 0.9669, 0.6519)  # rounded YIQ luma.
# Tested at the printed precision: PSNR rounded to 2 decimals must equal the published figure;
# SSIM within one unit of its 4th decimal (ours is 0.699357 on I03, on the rounding edge).
# pyiqa 0.1.16's own code with these pristine parameters gives 15.65583 on I03 (2.0e-3 above its
# published figure; that image has large flat regions where NIQE hinges on rounding noise): the
# published I03 value is not reproducible, so it gets a 2.5e-3 tolerance, the others 1e-3.
NIQE_TOLERANCE = {"I03": 2.5e-3}


def _find_wheel() -> pathlib.Path:
  if os.environ.get("QUANTFACE_PYIQA_WHEEL"):
    return pathlib.Path(os.environ["QUANTFACE_PYIQA_WHEEL"])
  cached = CACHE_DIR / WHEEL_NAME
  if not cached.exists():
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    try:
      subprocess.run(
        [
          sys.executable,
          "-m",
          "pip",
          "download",
          "--no-deps",
          "pyiqa==0.1.16",
          "-d",
          str(CACHE_DIR),
        ],
        check=True,
        capture_output=True,
        timeout=180,
      )
    except (subprocess.SubprocessError, OSError) as e:
      pytest.skip(
        f"pyiqa 0.1.16 wheel unavailable (set QUANTFACE_PYIQA_WHEEL): pip download failed: {e}"
      )
  if not cached.exists():
    pytest.skip(f"pyiqa 0.1.16 wheel unavailable: {cached} not found after pip download")
  return cached


@pytest.fixture(scope="module")
def calibration_images() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """name -> (reference, distorted), uint8 (H, W, 3)."""
  with zipfile.ZipFile(_find_wheel()) as wheel:
    read = lambda folder, name: np.asarray(
      Image.open(io.BytesIO(wheel.read(f"ResultsCalibra/{folder}/{name}.bmp"))).convert("RGB")
    )
    return {name: (read("ref_dir", name), read("dist_dir", name)) for name in NAMES}


@pytest.mark.parametrize("name,expected", zip(NAMES, PUBLISHED_NIQE))
def test_niqe_matches_pyiqa(calibration_images, name, expected):
  _, dist = calibration_images[name]
  assert metrics.niqe(dist) == pytest.approx(expected, abs=NIQE_TOLERANCE.get(name, 1e-3))


@pytest.mark.parametrize("name,psnr,ssim", zip(NAMES, PUBLISHED_PSNR, PUBLISHED_SSIM))
def test_psnr_ssim_match_pyiqa(calibration_images, name, psnr, ssim):
  ref, dist = calibration_images[name]
  assert round(metrics.psnr(dist, ref), 2) == pytest.approx(psnr, abs=1e-9)
  assert metrics.ssim(dist, ref, test_y_channel=True, color_space="yiq") == pytest.approx(
    ssim, abs=1e-4
  )
