"""Face alignment: the similarity fit, the warps, pasting back, and dlib's landmarks on a real photo."""

import numpy as np
import pytest
from skimage import data

from quantface_jax.data import align


def _similarity(angle, scale, shift):
  c, s = scale * np.cos(angle), scale * np.sin(angle)
  return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


def test_similarity_fit_recovers_a_known_transform():
  rng = np.random.default_rng(0)
  src = rng.uniform(0, 100, (5, 2))
  want = _similarity(0.3, 1.7, (12.0, -4.0))
  dst = src @ want[:, :2].T + want[:, 2]
  np.testing.assert_allclose(align.similarity_transform(src, dst), want, atol=1e-9)
  np.testing.assert_allclose(
    align.invert_affine(want) @ np.vstack([want, [0, 0, 1]]), np.eye(3)[:2], atol=1e-12
  )


def test_template_scales_with_the_resolution():
  np.testing.assert_allclose(align.face_template(256), align.FFHQ_TEMPLATE_512 / 2)


def test_warp_reads_where_the_affine_says():
  image = np.random.default_rng(1).uniform(0, 1, (40, 50, 3)).astype(np.float32)
  shift = np.array([[1.0, 0.0, 7.0], [0.0, 1.0, 3.0]])  # output (x, y) reads input (x + 7, y + 3)
  out = align.warp(image, shift, (20, 30))
  np.testing.assert_allclose(out, image[3:23, 7:37], atol=1e-6)
  part = align.warp(image, shift, (5, 6), origin=(4, 2))  # the window at x0=4, y0=2 of that output
  np.testing.assert_allclose(part, out[2:7, 4:10], atol=1e-6)


def test_paste_touches_only_the_crops_footprint_and_feathers_its_edge():
  photo = np.random.default_rng(2).uniform(0, 1, (200, 240, 3)).astype(np.float32)
  photo_to_crop = _similarity(0.2, 0.5, (-20.0, -10.0))  # a 64 px crop covers ~128 px of photo
  restored = np.ones((64, 64, 3), np.float32)
  out = align.paste_face(photo, restored, photo_to_crop)
  footprint = align.warp(np.ones((64, 64)), photo_to_crop, (200, 240), mode="constant") > 0
  assert footprint.sum() > 100 * 100
  changed = np.any(out != photo, axis=-1)
  assert changed.sum() > 0.9 * footprint.sum() and not (changed & ~footprint).any()
  centre = np.round(align.invert_affine(photo_to_crop) @ [32, 32, 1]).astype(int)
  np.testing.assert_allclose(out[centre[1], centre[0]], 1.0, atol=1e-6)  # fully the restored face
  edge = np.round(align.invert_affine(photo_to_crop) @ [2, 32, 1]).astype(int)
  weight = (out - photo)[edge[1], edge[0]] / (1.0 - photo[edge[1], edge[0]])
  assert (0.0 < weight).all() and (weight < 0.5).all()  # blended near the crop's edge

  upscaled = np.repeat(np.repeat(photo, 2, 0), 2, 1)
  out2 = align.paste_face(upscaled, restored, photo_to_crop, scale=2.0)
  np.testing.assert_allclose(out2[2 * centre[1], 2 * centre[0]], 1.0, atol=1e-6)


def test_astronaut_face_is_found_and_aligned_to_the_template():
  pytest.importorskip("dlib")
  image = data.astronaut().astype(np.float32) / 255.0
  faces = align.detect_faces(image)
  assert len(faces) == 1  # the suit's round mission patch scores below MIN_FACE_SCORE
  assert len(align.detect_faces(image, min_score=0.0)) == 2
  face = align.align_face(image, faces[0], 128)
  assert face.crop.shape == (128, 128, 3)
  aligned = faces[0] @ face.photo_to_crop[:, :2].T + face.photo_to_crop[:, 2]
  assert np.abs(aligned - align.face_template(128)).max() < 6  # landmarks land on the template
  assert align.detect_faces(np.full((64, 64, 3), 0.5, np.float32)) == []
