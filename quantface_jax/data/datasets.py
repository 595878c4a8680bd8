"""Face folders as datasets, a resumable batch iterator (grain's, `pipeline`), and on-disk eval sets.

Images are float32 (H, W, 3) RGB in [0, 1]; batches stack them to (B, H, W, 3) float32 in [0, 1]
(models map them to [-1, 1] themselves).
"""

import concurrent.futures
import dataclasses
import json
import logging
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from quantface_jax.data import io as image_io

# `quantface_jax.data.degrade` is the re-exported function, so import names from the module.
from quantface_jax.data.degrade import DegradationConfig, degrade
from quantface_jax.fileio import atomic_write_text

logger = logging.getLogger(__name__)


class Dataset(Protocol):
  """What `iterate_batches` needs: a length and a deterministic `load(index, epoch)`."""

  def __len__(self) -> int: ...

  def load(self, index: int, epoch: int = 0) -> tuple[Any, ...]: ...


_FLIP_STREAM = 1  # extra seed word of the mirror draws


class HQFolderDataset:
  """(lq, hq) pairs from a folder of high-quality faces; LQ synthesised on the fly.

  The LQ of item i in epoch e is a pure function of (seed, e, file number), where the file number
  is the position in the whole sorted folder (so a face keeps its LQ in any subset). With `hflip`,
  the HQ face is mirrored before degradation in about half the (epoch, face) pairs, drawn from a
  stream of its own so the degradations stay those of `hflip=False`.
  """

  def __init__(
    self,
    root: os.PathLike | str,
    size: int,
    *,
    indices: Sequence[int] | None = None,
    degradation: DegradationConfig = DegradationConfig(),
    seed: int = 0,
    hflip: bool = False,
  ):
    """Args: root folder; size: square side (px) images are read at; indices: file numbers in the
    naturally sorted folder (all when None); degradation: LQ recipe; seed: base seed of the LQs;
    hflip: mirror augmentation (training sets only)."""
    files = image_io.list_images(root)
    self.file_numbers = list(range(len(files))) if indices is None else [int(i) for i in indices]
    bad = [i for i in self.file_numbers if not 0 <= i < len(files)]
    if bad:
      raise IndexError(f"{root}: indices {bad[:5]} out of range for {len(files)} images")
    self.files = [files[i] for i in self.file_numbers]
    self.size = size
    self.degradation = degradation
    self.seed = seed
    self.hflip = hflip

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    return self.load(index)

  def load(self, index: int, epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(lq, hq), each float32 (size, size, 3) in [0, 1]. Raises `ImageError` for a bad file."""
    hq = image_io.read_image(self.files[index], self.size)
    key = [self.seed, epoch, self.file_numbers[index]]
    if self.hflip and np.random.default_rng(key + [_FLIP_STREAM]).random() < 0.5:
      hq = np.ascontiguousarray(hq[:, ::-1])
    return degrade(hq, np.random.default_rng(key), self.degradation), hq


class LQFolderDataset:
  """(lq, name) items from a folder of real low-quality faces (no ground truth)."""

  def __init__(self, root: os.PathLike | str, size: int):
    self.files = image_io.list_images(root)
    self.size = size

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
    return self.load(index)

  def load(self, index: int, epoch: int = 0) -> tuple[np.ndarray, str]:
    """(lq float32 (size, size, 3) in [0, 1], file name). `epoch` is unused (no randomness)."""
    del epoch
    return image_io.read_image(self.files[index], self.size), self.files[index].name


def collate(items: list[tuple[Any, ...]]) -> tuple[Any, ...]:
  """Stacks array fields to (B, ...) float32; other fields (names) become lists."""
  fields = []
  for values in zip(*items):
    fields.append(
      np.stack(values).astype(np.float32) if isinstance(values[0], np.ndarray) else list(values)
    )
  return tuple(fields)


def load_or_none(dataset: Dataset, index: int, epoch: int):
  try:
    return dataset.load(index, epoch)
  except image_io.ImageError as e:
    logger.warning("skipping unreadable image %s: %s", e.path, e.reason)
    return None


def iterate_batches(
  dataset: Dataset,
  batch_size: int,
  *,
  shuffle: bool = True,
  seed: int = 0,
  start_step: int = 0,
  num_epochs: int | None = None,
  drop_remainder: bool = True,
  workers: int = 4,
  prefetch: int = 2,
  processes: bool = False,
) -> Iterator[tuple[Any, ...]]:
  """Batches of `dataset.load(index, epoch)` items, resumable at any step (one process's view of
  `pipeline.batch_dataset`, grain underneath).

  Step s is batch s mod B of epoch s // B (B batches per epoch); epoch e visits the items in the
  order `np.random.default_rng([seed, e]).permutation(n)` (or 0..n-1 without `shuffle`), so
  `start_step=s` yields exactly what the s-th and later batches of a fresh iterator would.
  An item whose file cannot be read is logged (the warning names the file) and left out, so that
  batch is smaller.

  Args:
    dataset: e.g. `HQFolderDataset` (yields (lq, hq)) or `LQFolderDataset` (yields (lq, names)).
    batch_size: items per batch.
    shuffle: reshuffle every epoch.
    seed: seed of the shuffles.
    start_step: first step to produce.
    num_epochs: stop after this many epochs (counted from step 0); None runs forever.
    drop_remainder: drop each epoch's last partial batch.
    workers: loader threads (or processes).
    prefetch: batches loaded ahead.
    processes: load in `workers` grain worker processes (`dataset` must pickle). For CPU-heavy
      loading (degradation on the fly) beside a training loop: loader threads contend for the GIL
      that the loop's dispatch needs too (a jitted step's dispatch ran 7x slower beside two
      degrading threads on a 2-core machine: benchmarks/bench_loader.py).

  Yields:
    Tuples of fields: arrays as (B, H, W, 3) float32 in [0, 1], other fields as lists.
  """
  from quantface_jax.data import pipeline  # it builds on this module's datasets

  ds = pipeline.batch_dataset(
    dataset,
    batch_size,
    shuffle=shuffle,
    seed=seed,
    num_epochs=num_epochs,
    drop_remainder=drop_remainder,
    workers=workers,
    processes=processes,
    prefetch=prefetch,
  )
  return pipeline.iterator_from_step(ds, start_step)


def make_eval_set(
  hq_dir: os.PathLike | str,
  indices: Sequence[int],
  size: int,
  seed: int,
  out_dir: os.PathLike | str,
  *,
  degradation: DegradationConfig = DegradationConfig(),
  workers: int = 4,
) -> pathlib.Path:
  """Writes a fixed (LQ, HQ) evaluation set: `out_dir/{lq,hq}/<stem>.png` + `manifest.json`.

  LQ images equal `HQFolderDataset(hq_dir, size, indices=indices, degradation=..., seed=seed)`'s
  epoch-0 items. Idempotent: files already present are kept, missing ones are (re)written
  atomically, and the manifest is written last; an existing manifest with different settings is
  an error (choose another `out_dir`). Returns `out_dir`.
  """
  out_dir = pathlib.Path(out_dir)
  dataset = HQFolderDataset(hq_dir, size, indices=indices, degradation=degradation, seed=seed)
  settings = {
    "hq_dir": str(pathlib.Path(hq_dir).resolve()),
    "indices": dataset.file_numbers,
    "size": size,
    "seed": seed,
    "degradation": dataclasses.asdict(degradation),
  }
  manifest = json.loads(json.dumps(settings))  # tuples -> lists, as stored.
  manifest_path = out_dir / "manifest.json"
  if manifest_path.exists():
    stored = json.loads(manifest_path.read_text())
    if {k: v for k, v in stored.items() if k != "files"} != manifest:
      raise ValueError(f"{manifest_path}: an eval set with other settings is already there")

  def write_item(index: int) -> str:
    stem = dataset.files[index].stem
    lq_path, hq_path = out_dir / "lq" / f"{stem}.png", out_dir / "hq" / f"{stem}.png"
    if not (lq_path.exists() and hq_path.exists()):
      lq, hq = dataset.load(index, epoch=0)
      image_io.write_image(hq_path, hq)
      image_io.write_image(lq_path, lq)
    return f"{stem}.png"

  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    manifest["files"] = list(pool.map(write_item, range(len(dataset))))
  atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
  return out_dir


def pack_faces(
  src_dir: os.PathLike | str,
  out_dir: os.PathLike | str,
  size: int,
  *,
  quality: int = 95,
  workers: int = 4,
) -> list[pathlib.Path]:
  """Resized JPEG copy of a face folder (`out_dir/<stem>.jpg`, size x size), e.g. to ship to a GPU box.

  Idempotent (existing outputs are kept); unreadable files are logged and skipped.
  Returns the written or existing output paths in source order.
  """
  out_dir = pathlib.Path(out_dir)

  def pack(src: pathlib.Path) -> pathlib.Path | None:
    dst = out_dir / f"{src.stem}.jpg"
    if not dst.exists():
      try:
        image_io.write_image(dst, image_io.read_image(src, size), quality=quality)
      except image_io.ImageError as e:
        logger.warning("skipping unreadable image %s: %s", e.path, e.reason)
        return None
    return dst

  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    return [p for p in pool.map(pack, image_io.list_images(src_dir)) if p is not None]
