"""Image files: robust reading, atomic writing, listing and comparison grids.

Arrays are float32 (H, W, 3) RGB in [0, 1] unless stated otherwise.
"""

import os
import pathlib
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from quantface_jax.fileio import atomic_open

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageError(ValueError):
  """An image file that cannot be used; the message names the file."""

  def __init__(self, path: os.PathLike | str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = pathlib.Path(path)
    self.reason = reason


def list_images(dir_or_file: os.PathLike | str) -> list[pathlib.Path]:
  """Image files of a folder (not recursive, hidden files skipped) in natural order.

  Natural order sorts digit runs numerically (`2.jpg` before `10.jpg`). A single image file gives
  a one-element list.
  """
  path = pathlib.Path(dir_or_file)
  if path.is_file():
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
      raise ImageError(path, f"not an image file (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return [path]
  if not path.is_dir():
    raise FileNotFoundError(f"{path}: no such file or folder")
  files = [
    p
    for p in path.iterdir()
    if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
  ]
  return sorted(
    files, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]
  )


def _to_float_rgb(img: Image.Image, notes: list[str]) -> np.ndarray:
  """Any PIL mode -> float32 (H, W, 3) in [0, 1]; transparency is composited on white."""
  mode = img.mode
  if mode == "P":
    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    notes.append(f"palette -> {img.mode}")
  elif mode == "PA":
    img = img.convert("RGBA")
    notes.append("palette -> RGBA")
  if img.mode in _SIXTEEN_BIT_MODES:
    notes.append(f"{img.mode} (16-bit) gray -> RGB, scaled by 1/65535")
    gray = np.asarray(img, dtype=np.float32) / 65535.0
  elif img.mode == "F":
    gray = np.asarray(img, dtype=np.float32)
    scale = 1.0 if gray.max(initial=0.0) <= 1.0 else 255.0
    notes.append(f"float gray -> RGB, taken as [0, {scale:g}]")
    gray = gray / scale
  elif img.mode in ("1", "L"):
    notes.append(f"{img.mode} gray -> RGB")
    gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
  else:
    gray = None
  if gray is not None:
    return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=-1)
  if img.mode in ("RGBA", "LA", "RGBa", "La"):
    notes.append(f"{img.mode} composited on white")
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + (1.0 - alpha)
  if img.mode != "RGB":
    notes.append(f"{img.mode} -> RGB")
    img = img.convert("RGB")
  return np.asarray(img, dtype=np.float32) / 255.0


def resize(
  img: np.ndarray, height: int, width: int, resample: int = Image.Resampling.BICUBIC
) -> np.ndarray:
  """Resizes float (H, W, C) per channel in float precision (PIL; antialiased when shrinking)."""
  if img.shape[:2] == (height, width):
    return img
  channels = [
    np.asarray(
      Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32)).resize(
        (width, height), resample
      )
    )
    for c in range(img.shape[-1])
  ]
  return np.stack(channels, axis=-1)


def center_crop_square(img: np.ndarray) -> np.ndarray:
  """The largest centred square of (H, W, C)."""
  height, width = img.shape[:2]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  return img[top : top + side, left : left + side]


def read_image_with_notes(
  path: os.PathLike | str, size: int | None = None, *, min_side: int = 1
) -> tuple[np.ndarray, list[str]]:
  """Reads any common image as float32 (H, W, 3) RGB in [0, 1] and says what was converted.

  Handles EXIF orientation, gray (1, L, I;16, I, F), palette, CMYK and other modes; alpha (RGBA,
  LA, palette transparency) is composited on a white background. 16-bit data is scaled by
  1/65535. With `size`, a non-square image is centre-cropped to a square, then resized to
  `size` x `size` with bicubic (antialiased when shrinking).

  Raises:
    ImageError: missing, empty, unreadable or corrupt file, or one smaller than `min_side` pixels on
      a side (the message names it).
  """
  path = pathlib.Path(path)
  notes: list[str] = []
  try:
    if path.stat().st_size == 0:
      raise ImageError(path, "empty file")
    with Image.open(path) as img:
      img.load()
      orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
      if orientation != 1:
        notes.append(f"EXIF orientation {orientation} applied")
        img = ImageOps.exif_transpose(img)
      array = _to_float_rgb(img, notes)
  except ImageError:
    raise
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise ImageError(path, f"cannot read image ({type(e).__name__}: {e})") from e
  if array.size == 0:
    raise ImageError(path, "image has no pixels")
  if min(array.shape[:2]) < min_side:
    height, width = array.shape[:2]
    raise ImageError(path, f"{width}x{height} pixels, smaller than {min_side} on a side")
  if size is not None:
    height, width = array.shape[:2]
    if height != width:
      array = center_crop_square(array)
      notes.append(f"centre-cropped {width}x{height} -> {array.shape[1]}x{array.shape[0]}")
    if array.shape[0] != size:
      notes.append(f"resized {array.shape[0]} -> {size} (bicubic)")
      array = np.clip(resize(array, size, size), 0.0, 1.0)
  return np.ascontiguousarray(array, dtype=np.float32), notes


def read_image(path: os.PathLike | str, size: int | None = None) -> np.ndarray:
  """`read_image_with_notes` without the notes: float32 (H, W, 3) in [0, 1]."""
  return read_image_with_notes(path, size)[0]


def is_gray(img: np.ndarray) -> bool:
  """Whether an (H, W, 3) image has no colour: gray files are read with three equal channels."""
  return bool(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]))


def is_gray_file(path: os.PathLike | str) -> bool:
  """Whether the image file stores one gray channel (with or without alpha)."""
  with Image.open(path) as img:
    return img.mode in ("1", "L", "LA", "La", "F") + _SIXTEEN_BIT_MODES


# ITU-R BT.601 luma, the weights PIL's RGB -> L conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def to_gray(img: np.ndarray) -> np.ndarray:
  """(H, W, 3) float RGB -> (H, W) luma."""
  return np.asarray(img, np.float32) @ _LUMA


def to_uint8(img: np.ndarray) -> np.ndarray:
  """float [0, 1] -> uint8 with rounding (uint8 passes through); (H, W) or (H, W, C)."""
  img = np.asarray(img)
  if img.dtype == np.uint8:
    return img
  return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_image(path: os.PathLike | str, img: np.ndarray, *, quality: int = 95) -> pathlib.Path:
  """Writes (H, W[, 3]) float [0, 1] or uint8 atomically; format from the extension.

  The image goes to a hidden temporary file in the same folder, which then replaces `path`, so a
  reader never sees a partial file. `quality` applies to JPEG/WebP. Creates missing folders.
  """
  path = pathlib.Path(path)
  extension = path.suffix.lower()
  image_format = Image.registered_extensions().get(extension)
  if image_format is None:
    raise ValueError(f"{path}: unknown image extension {extension!r}")
  pil_image = Image.fromarray(to_uint8(img))
  options = {"quality": quality} if image_format in ("JPEG", "WEBP") else {}
  with atomic_open(path, "wb") as f:
    pil_image.save(f, format=image_format, **options)
  return path


def image_grid(
  rows: list[list[np.ndarray]],
  labels: list[str] | list[list[str]] | None = None,
  *,
  pad: int = 4,
  background: float = 1.0,
) -> np.ndarray:
  """Tiles images into one comparison picture, optionally with text labels.

  Args:
    rows: rows of (H, W, 3) or (H, W) images, float in [0, 1] or uint8; sizes may differ (cells
      are as large as the largest image of their row and column; images sit top-left).
    labels: per column (list[str], drawn above the first row) or per cell (list[list[str]], drawn
      above each image); PIL's default font, black on the background.
    pad: pixels between cells and around the grid.
    background: gray level of the padding.

  Returns:
    float32 (H, W, 3) in [0, 1].
  """
  cells = [
    [
      np.broadcast_to(to_uint8(im)[..., None], (*im.shape[:2], 3))
      if np.ndim(im) == 2
      else to_uint8(im)
      for im in row
    ]
    for row in rows
  ]
  num_cols = max(len(row) for row in cells)
  if labels is not None and labels and isinstance(labels[0], str):
    labels = [list(labels)] + [[] for _ in cells[1:]]
  font = ImageFont.load_default()
  label_height = 0
  if labels is not None:
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_height = (
      max((probe.textbbox((0, 0), text, font=font)[3] for row in labels for text in row), default=0)
      + pad
    )
  col_widths = [
    max((row[c].shape[1] for row in cells if c < len(row)), default=0) for c in range(num_cols)
  ]
  row_label = [
    label_height if labels is not None and r < len(labels) and any(labels[r]) else 0
    for r in range(len(cells))
  ]
  row_heights = [max(im.shape[0] for im in row) + row_label[r] for r, row in enumerate(cells)]
  canvas = Image.new(
    "RGB",
    (sum(col_widths) + pad * (num_cols + 1), sum(row_heights) + pad * (len(cells) + 1)),
    (round(background * 255),) * 3,
  )
  draw = ImageDraw.Draw(canvas)
  y = pad
  for r, row in enumerate(cells):
    x = pad
    for c, im in enumerate(row):
      if row_label[r] and c < len(labels[r]):
        draw.text((x, y), labels[r][c], fill=(0, 0, 0), font=font)
      canvas.paste(Image.fromarray(np.ascontiguousarray(im)), (x, y + row_label[r]))
      x += col_widths[c] + pad
    y += row_heights[r] + pad
  return np.asarray(canvas, dtype=np.float32) / 255.0
