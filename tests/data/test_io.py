"""Tests for quantface_jax.data.io."""

import os
import threading

import numpy as np
import pytest
from PIL import Image

from quantface_jax.data import io as image_io


def _gradient(height=24, width=32):
  yy, xx = np.mgrid[0:height, 0:width]
  return np.stack(
    [xx / (width - 1), yy / (height - 1), np.full_like(xx, 0.5, dtype=float)], -1
  ).astype(np.float32)


def test_rgb_roundtrip_png(tmp_path):
  img = _gradient()
  path = image_io.write_image(tmp_path / "a.png", img)
  out, notes = image_io.read_image_with_notes(path)
  assert out.dtype == np.float32 and out.shape == (24, 32, 3)
  np.testing.assert_array_equal(out, np.round(img * 255) / np.float32(255))
  assert notes == []


def test_grayscale_8_and_16_bit(tmp_path):
  Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(tmp_path / "g8.png")
  Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "g16.png")
  gray, notes = image_io.read_image_with_notes(tmp_path / "g8.png")
  assert gray.shape == (16, 16, 3) and gray[0, 1, 2] == np.float32(1 / 255) and "gray" in notes[0]
  full, notes = image_io.read_image_with_notes(tmp_path / "g16.png")
  assert full.shape == (8, 8, 3) and np.all(full == 1.0) and "16-bit" in notes[0]


def test_float_gray_tiff(tmp_path):
  Image.fromarray(np.full((4, 4), 0.25, dtype=np.float32)).save(tmp_path / "f.tif")
  img, notes = image_io.read_image_with_notes(tmp_path / "f.tif")
  np.testing.assert_allclose(img, 0.25)
  assert "float" in notes[0]


def test_rgba_composited_on_white_and_palette(tmp_path):
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., 0] = 255
  rgba[:2, ..., 3] = 255  # top half opaque red, bottom half transparent
  Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
  img, notes = image_io.read_image_with_notes(tmp_path / "a.png")
  np.testing.assert_allclose(img[0, 0], [1, 0, 0])
  np.testing.assert_allclose(img[3, 3], [1, 1, 1])
  assert "white" in notes[0]
  Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "p.png")
  img, notes = image_io.read_image_with_notes(tmp_path / "p.png")
  np.testing.assert_allclose(img[0, 0], [1, 0, 0])
  assert "palette" in notes[0]


def test_cmyk_and_exif_orientation(tmp_path):
  Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
  img, notes = image_io.read_image_with_notes(tmp_path / "c.jpg")
  assert img.shape == (4, 6, 3) and img[0, 0, 0] > 0.9 and img[0, 0, 1] < 0.1 and "CMYK" in notes[0]
  pixels = np.zeros((4, 6, 3), np.uint8)
  pixels[0, 0] = 255
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise on display
  Image.fromarray(pixels).save(tmp_path / "r.png", exif=exif)
  img, notes = image_io.read_image_with_notes(tmp_path / "r.png")
  assert img.shape == (6, 4, 3) and img[0, 3, 0] == 1.0 and "orientation" in notes[0]


def test_non_square_is_center_cropped_and_resized(tmp_path):
  img = np.zeros((40, 60, 3), np.float32)
  img[:, 10:50] = 1.0  # the centred 40x40 square is white
  image_io.write_image(tmp_path / "w.png", img)
  out, notes = image_io.read_image_with_notes(tmp_path / "w.png", size=20)
  assert out.shape == (20, 20, 3)
  np.testing.assert_allclose(out, 1.0, atol=1e-6)
  assert any("crop" in n for n in notes) and any("resized" in n for n in notes)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n truncated"])
def test_bad_files_raise_image_error_naming_the_file(tmp_path, content):
  path = tmp_path / "broken_face.png"
  path.write_bytes(content)
  with pytest.raises(image_io.ImageError, match="broken_face.png") as info:
    image_io.read_image(path)
  assert isinstance(info.value, ValueError) and info.value.path == path


def test_truncated_jpeg_raises(tmp_path):
  image_io.write_image(tmp_path / "x.jpg", _gradient(64, 64))
  data = (tmp_path / "x.jpg").read_bytes()
  (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
  with pytest.raises(image_io.ImageError, match="cut.jpg"):
    image_io.read_image(tmp_path / "cut.jpg")


def test_missing_file_raises(tmp_path):
  with pytest.raises(image_io.ImageError, match="nope.png"):
    image_io.read_image(tmp_path / "nope.png")


def test_too_small_images_are_refused_by_name(tmp_path):
  Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "tiny.png")
  with pytest.raises(image_io.ImageError, match=r"tiny.png: 40x20 pixels, smaller than 32"):
    image_io.read_image_with_notes(tmp_path / "tiny.png", size=64, min_side=32)
  assert image_io.read_image(tmp_path / "tiny.png").shape == (20, 40, 3)  # no minimum by default


def test_gray_detection_and_luma(tmp_path):
  Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "l.png")
  Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(tmp_path / "rgb.png")
  assert image_io.is_gray_file(tmp_path / "l.png") and not image_io.is_gray_file(
    tmp_path / "rgb.png"
  )
  assert image_io.is_gray(image_io.read_image(tmp_path / "rgb.png"))
  assert not image_io.is_gray(_gradient())
  np.testing.assert_allclose(image_io.to_gray(np.ones((2, 2, 3))), 1.0, rtol=1e-6)
  np.testing.assert_allclose(image_io.to_gray(np.eye(3)[None]), [[0.299, 0.587, 0.114]], rtol=1e-6)


def test_atomic_directory_files_are_world_readable(tmp_path):
  from quantface_jax.fileio import atomic_directory

  with atomic_directory(tmp_path / "out", overwrite=False) as tmp:
    os.close(os.open(tmp / "private", os.O_CREAT | os.O_WRONLY, 0o600))  # as safetensors writes
    (tmp / "sub").mkdir(mode=0o700)
  assert (tmp_path / "out" / "private").stat().st_mode & 0o777 == 0o644
  assert (tmp_path / "out" / "sub").stat().st_mode & 0o777 == 0o755


def test_list_images_natural_order_and_filters(tmp_path):
  for name in ["10.jpg", "2.PNG", "1.webp", "notes.txt", ".hidden.png", "b.tiff"]:
    (tmp_path / name).write_bytes(b"x")
  (tmp_path / "sub.png").mkdir()
  assert [p.name for p in image_io.list_images(tmp_path)] == ["1.webp", "2.PNG", "10.jpg", "b.tiff"]
  assert image_io.list_images(tmp_path / "10.jpg") == [tmp_path / "10.jpg"]
  with pytest.raises(image_io.ImageError):
    image_io.list_images(tmp_path / "notes.txt")


def test_write_image_rounds_and_is_atomic(tmp_path):
  path = tmp_path / "out" / "img.png"
  image_io.write_image(path, np.full((2, 2, 3), 0.5, np.float32))
  assert np.asarray(Image.open(path))[0, 0, 0] == 128  # 127.5 -> 128 (round half to even)
  assert os.listdir(path.parent) == ["img.png"]
  jpeg = image_io.write_image(tmp_path / "img.jpg", _gradient())
  assert Image.open(jpeg).format == "JPEG"


def test_write_image_never_leaves_partial_files(tmp_path, monkeypatch):
  path = tmp_path / "img.png"
  image_io.write_image(path, np.zeros((8, 8, 3), np.float32))
  before = path.read_bytes()

  def failing_save(self, fp, *args, **kwargs):
    fp.write(b"partial")
    raise OSError("disk full")

  monkeypatch.setattr(Image.Image, "save", failing_save)
  with pytest.raises(OSError, match="disk full"):
    image_io.write_image(path, np.ones((8, 8, 3), np.float32))
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ["img.png"]


def test_concurrent_readers_never_see_partial_file(tmp_path):
  path = tmp_path / "img.png"
  image_io.write_image(path, _gradient(128, 128))
  stop, errors = threading.Event(), []

  def reader():
    while not stop.is_set():
      try:
        image_io.read_image(path)
      except image_io.ImageError as e:
        errors.append(e)

  thread = threading.Thread(target=reader)
  thread.start()
  for i in range(20):
    image_io.write_image(path, _gradient(128, 128) * (i % 2))
  stop.set()
  thread.join()
  assert not errors


def test_image_grid_shapes_and_labels():
  a, b = np.zeros((10, 12, 3), np.float32), np.ones((8, 8), np.float32)
  plain = image_io.image_grid([[a, b], [b, a]], pad=2)
  assert plain.dtype == np.float32 and plain.shape == (2 + 10 + 2 + 10 + 2, 2 + 12 + 2 + 12 + 2, 3)
  labelled = image_io.image_grid([[a, b], [b, a]], ["LQ", "restored"], pad=2)
  assert labelled.shape[0] > plain.shape[0] and labelled.shape[1] == plain.shape[1]
  strip = labelled[2 : labelled.shape[0] - plain.shape[0] + 2, 2:14]
  assert strip.min() < 0.5  # some dark text was drawn
  per_cell = image_io.image_grid([[a], [b]], [["one"], ["two"]], pad=2)
  assert per_cell.shape[0] > plain.shape[0] - 10
