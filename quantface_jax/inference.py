"""Compiled one-step restore and the batched runners behind `quantface restore`: aligned face crops
(`restore_files`) and whole photos (`restore_photos`: detect, align, restore, paste back)."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quantface_jax.data import align
from quantface_jax.data import io as image_io
from quantface_jax.models.osdface import OSDFace

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def cast_for_inference(model: OSDFace, dtype) -> nnx.State:
  """The model's state with UNet and VAE parameters cast to ``dtype``.

  The VRE and embedding_change keep float32: their nearest-code search picks the tokens, and
  bf16 weights would change which codes win. That costs time: on the H200 the sd21 VRE takes 25 ms
  of a 186-ms bf16 restore of 16 faces, 12 ms of it in its float32 convs (README).
  """
  state = nnx.state(model)
  if dtype == jnp.float32:
    return state

  def cast(path, x):
    top = str(path[0].key if hasattr(path[0], "key") else path[0])
    if top in ("unet", "vae") and jnp.issubdtype(x.dtype, jnp.floating):
      return x.astype(dtype)
    return x

  return jax.tree_util.tree_map_with_path(cast, state)


def make_restore_fn(
  model: nnx.Module, *, dtype=jnp.float32, name: str = "restore"
) -> Callable[[jax.Array], jax.Array]:
  """A compiled ``lq (B, R, R, 3) in [-1, 1] -> image (B, R, R, 3) in [0, 1]`` for any OSDFace-like
  module with ``restore`` (FP or quantized). Compiles once per input shape and logs, under ``name``,
  what it compiled and how long that took (short when JAX's persistent compilation cache has it)."""
  graphdef = nnx.graphdef(model)
  state = cast_for_inference(model, dtype) if isinstance(model, OSDFace) else nnx.state(model)

  @jax.jit
  def restore(state, lq):
    return nnx.merge(graphdef, state).restore(lq, dtype=dtype).image

  compiled = {}

  def call(lq):
    lq = jnp.asarray(lq)
    key = (lq.shape, lq.dtype)
    if key not in compiled:
      start = time.perf_counter()
      lowered = restore.lower(state, lq)
      traced = time.perf_counter()
      compiled[key] = lowered.compile()
      log.info(
        "compiled %s for %s %s in %.1f s (tracing %.1f s, XLA %.1f s)",
        name,
        "x".join(map(str, lq.shape)),
        lq.dtype,
        time.perf_counter() - start,
        traced - start,
        time.perf_counter() - traced,
      )
    return compiled[key](state, lq)

  return call


@dataclasses.dataclass(frozen=True, kw_only=True)
class FolderResult:
  """What a folder run did."""

  written: list[str]  # output files written this run
  skipped: list[str]  # inputs whose outputs already existed
  failed: dict[str, str]  # input file -> reason
  notes: dict[str, list[str]]  # input file -> conversions applied (grayscale, alpha, resize, ...)
  no_face: list[str] = dataclasses.field(default_factory=list)  # photos passed through unchanged


# Inputs smaller than this on a side are refused: too few pixels for a face.
MIN_SIDE = 32


class _Run:
  """The bookkeeping both runners share: which outputs exist, reading inputs, writing outputs."""

  def __init__(self, files, output_dir: pathlib.Path, *, compare: bool):
    self.output_dir, self.compare = output_dir, compare
    output_dir.mkdir(parents=True, exist_ok=True)
    self.todo, self.skipped, self.compare_only = [], [], []
    for f in files:
      if not self.output(f).exists():
        self.todo.append(f)
        continue
      self.skipped.append(str(f))
      if compare and not self.compare_path(f).exists():
        self.compare_only.append(f)
    self.written, self.failed, self.notes = [], {}, {}

  def output(self, f: pathlib.Path) -> pathlib.Path:
    return self.output_dir / f"{f.stem}.png"

  def compare_path(self, f: pathlib.Path) -> pathlib.Path:
    return self.output_dir / f"{f.stem}_compare.png"

  def read(self, f: pathlib.Path, size: int | None) -> np.ndarray | None:
    """The input as float RGB, or None after recording why it cannot be used."""
    try:
      img, conversions = image_io.read_image_with_notes(f, size=size, min_side=MIN_SIDE)
    except ValueError as e:
      self.failed[str(f)] = str(e)
      log.error("%s", e)
      return None
    if conversions:
      self.notes[str(f)] = list(conversions)
      log.warning("%s: %s", f, "; ".join(conversions))
    return img

  def write(self, f: pathlib.Path, lq: np.ndarray, restored: np.ndarray) -> None:
    """The output (gray when the input is) and, with ``compare``, LQ | restored beside it."""
    if image_io.is_gray(lq):  # no colour in, none out: one channel, or three equal ones
      restored = image_io.to_gray(restored)
      if not image_io.is_gray_file(f):
        restored = np.repeat(restored[..., None], 3, axis=-1)
    image_io.write_image(self.output(f), restored)
    self.written.append(str(self.output(f)))
    if self.compare:
      self.write_compare(f, lq, restored)

  def write_compare(self, f: pathlib.Path, lq: np.ndarray, restored: np.ndarray) -> None:
    grid = image_io.image_grid([[lq, restored]], labels=["LQ", "restored"])
    image_io.write_image(self.compare_path(f), grid)

  def add_missing_compares(self, size: int | None, *, upscale: int = 1) -> None:
    """Compare pictures of inputs whose outputs exist from an earlier run."""
    for f in self.compare_only:
      lq = self.read(f, size)
      if lq is not None:
        self.write_compare(f, _upscaled(lq, upscale), image_io.read_image(self.output(f)))

  def result(self, **extra) -> FolderResult:
    return FolderResult(
      written=self.written, skipped=self.skipped, failed=self.failed, notes=self.notes, **extra
    )


def _pad_batch(batch: list[np.ndarray], batch_size: int) -> np.ndarray:
  """(batch_size, ...) float32 in [-1, 1] from up to batch_size images in [0, 1]: the last is repeated
  so one compiled shape serves the run."""
  lq = np.stack(batch).astype(np.float32)
  pad = batch_size - len(batch)
  return (np.concatenate([lq, np.repeat(lq[-1:], pad, 0)]) if pad else lq) * 2.0 - 1.0


def restore_files(
  restore: Callable[[jax.Array], jax.Array],
  files: Sequence[pathlib.Path],
  output_dir: pathlib.Path,
  *,
  resolution: int,
  batch_size: int,
  compare: bool = False,
  progress: bool = True,
) -> FolderResult:
  """Restores aligned face crops ``files`` in batches into ``output_dir`` (PNG, same stem).

  Each input is centre-cropped to a square and resized to ``resolution``. Outputs that exist are
  skipped (with ``compare``, their missing compare pictures are still written); each is written
  atomically, gray when the input is gray. An unreadable or too small input is recorded with its
  reason and the rest go on. ``compare`` also writes ``<stem>_compare.png`` (LQ | restored).
  """
  from tqdm import tqdm

  run = _Run(files, output_dir, compare=compare)
  run.add_missing_compares(resolution)
  bar = tqdm(total=len(run.todo), unit="face", disable=not progress, desc="restore")
  for start in range(0, len(run.todo), batch_size):
    chunk = run.todo[start : start + batch_size]
    loaded = [(f, img) for f in chunk if (img := run.read(f, resolution)) is not None]
    if loaded:
      out = np.asarray(restore(_pad_batch([img for _, img in loaded], batch_size)))
      for (f, lq), restored in zip(loaded, out):
        run.write(f, lq, restored)
    bar.update(len(chunk))
  bar.close()
  return run.result()


def _upscaled(img: np.ndarray, factor: int) -> np.ndarray:
  if factor == 1:
    return img
  height, width = img.shape[:2]
  return np.clip(image_io.resize(img, height * factor, width * factor), 0.0, 1.0)


@dataclasses.dataclass
class _Photo:
  """A photo whose faces are being restored."""

  path: pathlib.Path
  image: np.ndarray
  faces: list  # AlignedFace per detected face
  restored: list  # restored crop per face (None until its batch ran)


def restore_photos(
  restore: Callable[[jax.Array], jax.Array],
  files: Sequence[pathlib.Path],
  output_dir: pathlib.Path,
  *,
  resolution: int,
  batch_size: int,
  upscale: int = 1,
  save_faces: bool = False,
  compare: bool = False,
  min_face_score: float | None = None,
  progress: bool = True,
) -> FolderResult:
  """Restores every face of whole photos ``files`` into ``output_dir`` (PNG, same stem).

  Each face dlib finds is aligned to the FFHQ template at ``resolution`` (a similarity transform
  from its five landmarks), the crops are restored in batches of ``batch_size`` across photos, and
  each restored crop is warped back and blended in through a feathered mask. The output is
  ``upscale`` times the input's size (bicubic background); with ``upscale`` 1, pixels outside the
  faces' crops are the input's exactly. A photo without a face is listed in ``no_face`` and written
  unchanged. ``save_faces`` also writes ``faces/<stem>_<k>.png`` (aligned input crop) and
  ``faces/<stem>_<k>_restored.png``. Outputs that exist are skipped, unreadable inputs recorded.

  Raises:
    quantface_jax.data.align.FaceDetectorUnavailable: without the ``faces`` extra.
  """
  from tqdm import tqdm

  align.face_models()  # fails here, before any work, without the `faces` extra
  min_score = align.MIN_FACE_SCORE if min_face_score is None else min_face_score
  run = _Run(files, output_dir, compare=compare)
  run.add_missing_compares(None, upscale=upscale)
  no_face, pending = [], []  # pending: (photo, face number) waiting for a batch
  bar = tqdm(total=0, unit="face", disable=not progress, desc="restore")

  def finish(photo: _Photo) -> None:
    background = out = _upscaled(photo.image, upscale)
    for face, restored in zip(photo.faces, photo.restored):
      out = align.paste_face(out, restored, face.photo_to_crop, scale=upscale)  # a new array
    run.write(photo.path, background, out)
    if save_faces:
      for k, (face, restored) in enumerate(zip(photo.faces, photo.restored)):
        image_io.write_image(output_dir / "faces" / f"{photo.path.stem}_{k}.png", face.crop)
        image_io.write_image(output_dir / "faces" / f"{photo.path.stem}_{k}_restored.png", restored)

  def run_batch(batch: list[tuple[_Photo, int]]) -> None:
    out = np.asarray(restore(_pad_batch([p.faces[k].crop for p, k in batch], batch_size)))
    for (photo, k), restored in zip(batch, out):
      photo.restored[k] = restored
      if all(r is not None for r in photo.restored):
        finish(photo)
    bar.update(len(batch))

  for f in run.todo:
    image = run.read(f, None)
    if image is None:
      continue
    points = align.detect_faces(image, min_score=min_score)
    if not points:
      no_face.append(str(f))
      log.warning("%s: no face found, written unchanged (for aligned face crops use --aligned)", f)
      run.write(f, image, _upscaled(image, upscale))
      continue
    photo = _Photo(
      f, image, [align.align_face(image, p, resolution) for p in points], [None] * len(points)
    )
    pending += [(photo, k) for k in range(len(points))]
    bar.total += len(points)
    bar.refresh()
    while len(pending) >= batch_size:
      run_batch(pending[:batch_size])
      pending = pending[batch_size:]
  if pending:
    run_batch(pending)
  bar.close()
  return run.result(no_face=no_face)
