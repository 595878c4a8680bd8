"""Faces in whole photos: detection, 5-point landmarks, similarity alignment to the FFHQ face
template, and blending restored crops back into the photo.

Detection and landmarks come from dlib (the optional ``faces`` extra, loaded by
`quantface_jax.metrics.faces`); the warps are plain numpy/scipy. Images are float32 (H, W, 3) in
[0, 1]; points are (x, y) in pixels, pixel centres at integers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

# The 5-point FFHQ face template of a 512x512 crop (left eye, right eye, nose tip, left and right
# mouth corner, as the image shows them), the one GFPGAN, CodeFormer and facexlib align to.
FFHQ_TEMPLATE_512 = np.array(
  [
    [192.98138, 239.94708],
    [318.90277, 240.19360],
    [256.63416, 314.01935],
    [201.26117, 371.41043],
    [313.08905, 371.15118],
  ]
)
# dlib's 68-point layout -> the template's five points (eye centres are the mean of each eye's six).
_LEFT_EYE, _RIGHT_EYE, _NOSE_TIP, _MOUTH_LEFT, _MOUTH_RIGHT = (
  slice(36, 42),
  slice(42, 48),
  30,
  48,
  54,
)
# dlib's detection score below which a box is not taken for a face. Its HOG detector scores frontal
# faces above 1 and face-like patterns (badges, ornaments) near 0; dlib's own cut is 0.
MIN_FACE_SCORE = 0.5
# Width of the soft edge of a pasted crop, as a fraction of the crop side.
FEATHER = 0.1
INSTALL_HINT = 'face detection needs the `faces` extra: pip install "quantface-jax[faces]"'


class FaceDetectorUnavailable(ImportError):
  """dlib or its model files are not installed; the message says how to install them."""


def face_template(resolution: int) -> np.ndarray:
  """The five template points (5, 2) for a ``resolution``-pixel crop."""
  return FFHQ_TEMPLATE_512 * (resolution / 512.0)


def five_points(landmarks68: np.ndarray) -> np.ndarray:
  """dlib's 68 landmarks (68, 2) -> the template's five points (5, 2)."""
  return np.stack(
    [
      landmarks68[_LEFT_EYE].mean(0),
      landmarks68[_RIGHT_EYE].mean(0),
      landmarks68[_NOSE_TIP],
      landmarks68[_MOUTH_LEFT],
      landmarks68[_MOUTH_RIGHT],
    ]
  )


def face_models():
  """(dlib's face detector, its 68-point landmark predictor), loaded once.

  Raises:
    FaceDetectorUnavailable: without the ``faces`` extra.
  """
  from quantface_jax.metrics import faces

  try:
    detector, predictor, _, _ = faces._models()  # pylint: disable=protected-access
  except ImportError as e:
    raise FaceDetectorUnavailable(INSTALL_HINT) from e
  return detector, predictor


def detect_faces(image: np.ndarray, *, min_score: float = MIN_FACE_SCORE) -> list[np.ndarray]:
  """Five landmark points (5, 2) of every face dlib finds in ``image`` with a detection score of at
  least ``min_score``, largest face first.

  Raises:
    FaceDetectorUnavailable: without the ``faces`` extra.
  """
  detector, predictor = face_models()
  pixels = np.ascontiguousarray(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8))
  boxes, scores, _ = detector.run(pixels, 1, min(min_score, 0.0))
  boxes = sorted(
    (box for box, score in zip(boxes, scores) if score >= min_score), key=lambda box: -box.area()
  )
  return [
    five_points(np.array([(p.x, p.y) for p in predictor(pixels, box).parts()], np.float64))
    for box in boxes
  ]


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """The least-squares similarity (rotation, uniform scale, translation) taking points ``src`` to
  ``dst`` (both (N, 2)), as a 2x3 matrix A: dst ≈ A @ [x, y, 1]."""
  x, y = src[:, 0], src[:, 1]
  ones, zeros = np.ones_like(x), np.zeros_like(x)
  # Unknowns (a, b, tx, ty) of [[a, -b, tx], [b, a, ty]].
  design = np.concatenate([np.stack([x, -y, ones, zeros], 1), np.stack([y, x, zeros, ones], 1)])
  (a, b, tx, ty), *_ = np.linalg.lstsq(design, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)
  return np.array([[a, -b, tx], [b, a, ty]])


def invert_affine(affine: np.ndarray) -> np.ndarray:
  inverse = np.linalg.inv(np.vstack([affine, [0.0, 0.0, 1.0]]))
  return inverse[:2]


def warp(
  image: np.ndarray,
  out_to_in: np.ndarray,
  shape: tuple[int, int],
  *,
  origin: tuple[int, int] = (0, 0),
  mode: str = "nearest",
) -> np.ndarray:
  """Bilinear warp: output pixel (x, y) (shifted by ``origin`` = (x0, y0)) reads ``image`` at
  ``out_to_in @ [x, y, 1]``. ``shape`` is the (height, width) of the output; ``mode`` as
  scipy.ndimage's for reads outside the image ("constant" reads 0)."""
  # scipy indexes (row, col) = (y, x): swap the axes of the xy affine.
  linear = out_to_in[:, :2][::-1, ::-1]
  offset = out_to_in[::-1, 2] + linear @ np.array([origin[1], origin[0]], np.float64)
  channels = image[..., None] if image.ndim == 2 else image
  out = np.stack(
    [
      ndimage.affine_transform(
        channels[..., c], linear, offset=offset, output_shape=shape, order=1, mode=mode
      )
      for c in range(channels.shape[-1])
    ],
    axis=-1,
  )
  return out[..., 0] if image.ndim == 2 else out


@dataclasses.dataclass(frozen=True)
class AlignedFace:
  """A face crop at the model's resolution and the affine that cut it out of its photo."""

  crop: np.ndarray  # (R, R, 3) float32 in [0, 1]
  photo_to_crop: np.ndarray  # 2x3: photo (x, y) -> crop (x, y)


def align_face(image: np.ndarray, points: np.ndarray, resolution: int) -> AlignedFace:
  """Cuts the face with landmarks ``points`` (5, 2) out of ``image``, aligned to the template."""
  photo_to_crop = similarity_transform(points, face_template(resolution))
  crop = warp(image, invert_affine(photo_to_crop), (resolution, resolution))
  return AlignedFace(np.clip(crop, 0.0, 1.0).astype(np.float32), photo_to_crop)


def _feathered_square(resolution: int) -> np.ndarray:
  """(R, R) weights: 1 inside, falling smoothly to 0 at the crop's edge over FEATHER·R pixels."""
  position = np.arange(resolution, dtype=np.float64)
  to_edge = np.minimum(position, resolution - 1 - position)
  ramp = np.clip(to_edge / max(FEATHER * resolution, 1.0), 0.0, 1.0)
  ramp = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no visible seam where the ramp ends
  return np.outer(ramp, ramp)


def paste_face(
  photo: np.ndarray, restored: np.ndarray, photo_to_crop: np.ndarray, *, scale: float = 1.0
) -> np.ndarray:
  """``photo`` (already ``scale`` times the size the affine refers to) with the restored crop warped
  back in and blended through a feathered mask. Only the crop's footprint is touched: every pixel
  outside it keeps its value exactly."""
  resolution = restored.shape[0]
  crop_to_out = invert_affine(photo_to_crop) * scale
  corners = (
    crop_to_out
    @ np.array(
      [[0, 0, 1], [resolution - 1, 0, 1], [0, resolution - 1, 1], [resolution - 1] * 2 + [1]],
      np.float64,
    ).T
  )
  height, width = photo.shape[:2]
  x0, y0 = (max(int(np.floor(v)), 0) for v in corners.min(1))
  x1 = min(int(np.ceil(corners[0].max())) + 1, width)
  y1 = min(int(np.ceil(corners[1].max())) + 1, height)
  if x0 >= x1 or y0 >= y1:
    return photo
  out_to_crop = np.hstack([photo_to_crop[:, :2] / scale, photo_to_crop[:, 2:]])
  region = (y1 - y0, x1 - x0)
  face = warp(restored, out_to_crop, region, origin=(x0, y0))
  mask = warp(_feathered_square(resolution), out_to_crop, region, origin=(x0, y0), mode="constant")
  out = photo.copy()
  window = out[y0:y1, x0:x1]
  out[y0:y1, x0:x1] = window + mask[..., None] * (face - window)
  return out
