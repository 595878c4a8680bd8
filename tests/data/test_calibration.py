"""`calibration_faces`: HQ faces degraded per seed, or real LQ faces as they are; short folders."""

import logging

import numpy as np
import pytest
from conftest import write_random_faces

from quantface_jax.data import io as image_io
from quantface_jax.data.calibration import as_batches, calibration_faces
from quantface_jax.data.datasets import HQFolderDataset


@pytest.fixture(scope="module")
def face_dir(tmp_path_factory):
  return write_random_faces(tmp_path_factory.mktemp("faces"), count=3, size=24)


def test_hq_faces_are_the_datasets_degradations_per_seed(face_dir):
  faces = calibration_faces(16, hq_dir=face_dir, count=2, start=1, seeds=(3, 4))
  assert faces.shape == (4, 16, 16, 3) and faces.dtype == np.float32
  for row, (seed, file_number) in enumerate([(3, 1), (3, 2), (4, 1), (4, 2)]):
    lq, _ = HQFolderDataset(face_dir, 16, indices=[file_number], seed=seed).load(0)
    np.testing.assert_allclose(faces[row], lq * 2 - 1, atol=1e-6)
  assert faces.min() >= -1 and faces.max() <= 1


def test_lq_faces_are_used_as_they_are(face_dir):
  faces = calibration_faces(24, lq_dir=face_dir, count=2)
  expected = [image_io.read_image(face_dir / f"{i}.png", 24) * 2 - 1 for i in range(2)]
  np.testing.assert_allclose(faces, np.stack(expected), atol=1e-6)


def test_fewer_faces_than_asked_uses_them_all_and_says_so(face_dir, caplog):
  with caplog.at_level(logging.WARNING):
    faces = calibration_faces(16, hq_dir=face_dir, count=18)
  assert len(faces) == 3
  assert "18 calibration faces asked, using the 3 there" in caplog.text


def test_bad_arguments_name_the_problem(face_dir):
  with pytest.raises(ValueError, match="exactly one of hq_dir"):
    calibration_faces(16, hq_dir=face_dir, lq_dir=face_dir)
  with pytest.raises(ValueError, match="no calibration faces from position 3"):
    calibration_faces(16, hq_dir=face_dir, start=3)


def test_as_batches_keeps_the_remainder():
  batches = as_batches(np.zeros((5, 2)), 2)
  assert [len(b) for b in batches] == [2, 2, 1]
