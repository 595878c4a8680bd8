"""The training input pipeline on grain: a step-indexed batch plan, sharded by JAX process, loaded
(decoded and degraded on the fly) in grain worker processes, with a checkpointable iterator.

Step s's global batch is the same as `datasets.iterate_batches`' batch s: batch s mod S of epoch
s // S (S batches per epoch), epoch e visiting the items in the order
``np.random.default_rng([seed, e]).permutation(n)``. Process p of P loads rows [p·b, (p+1)·b) of
it (b = batch_size / P), exactly the rows `jax.make_array_from_process_local_data` gives its
devices, so the shares are disjoint, cover the global batch, and a run on P processes trains on the
batches of a run on one.

The plan is a grain `MapDataset` indexed by step; worker processes (`IterDataset.mp_prefetch`) each
load whole batches (steps k, k + w, ...), so a batch's content does not depend on the worker count.
The iterator's state (`get_state`/`set_state`, the next step) is what the trainer checkpoints
beside the model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import grain
import numpy as np
from absl import flags

from quantface_jax.data.datasets import Dataset, collate, load_or_none


class BatchPlan(grain.sources.RandomAccessDataSource):
  """Step -> this process's share of that step's global batch, as (item index, epoch) pairs."""

  def __init__(
    self,
    num_items: int,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_epochs: int | None,
    drop_remainder: bool,
    process_index: int,
    process_count: int,
  ):
    if batch_size % process_count:
      raise ValueError(f"batch size {batch_size} does not split over {process_count} processes")
    per_epoch = num_items // batch_size if drop_remainder else -(-num_items // batch_size)
    if per_epoch == 0:
      raise ValueError(f"{num_items} items make no batch of {batch_size} with drop_remainder")
    self.num_items, self.batch_size, self.per_epoch = num_items, batch_size, per_epoch
    self.shuffle, self.seed = shuffle, seed
    self.steps = sys.maxsize if num_epochs is None else num_epochs * per_epoch
    local = batch_size // process_count
    self.rows = slice(process_index * local, (process_index + 1) * local)
    self._cached = (-1, None)

  def __len__(self) -> int:
    return self.steps

  def __repr__(self) -> str:  # grain puts it in its checkpoints; a resumed run must match it
    return (
      f"BatchPlan(n={self.num_items}, batch={self.batch_size}, rows={self.rows.start}:"
      f"{self.rows.stop}, shuffle={self.shuffle}, seed={self.seed}, steps={self.steps})"
    )

  def _order(self, epoch: int) -> np.ndarray:
    cached_epoch, order = self._cached  # one tuple: loader threads read it while another sets it
    if cached_epoch != epoch:
      rng = np.random.default_rng([self.seed, epoch])
      order = rng.permutation(self.num_items) if self.shuffle else np.arange(self.num_items)
      self._cached = (epoch, order)
    return order

  def __getitem__(self, step: int) -> list[tuple[int, int]]:
    epoch, batch = divmod(int(step), self.per_epoch)
    rows = self._order(epoch)[batch * self.batch_size : (batch + 1) * self.batch_size][self.rows]
    return [(int(i), epoch) for i in rows]


class LoadBatch(grain.transforms.Map):
  """(item, epoch) pairs -> the collated `dataset.load(item, epoch)` fields; unreadable items are
  logged and left out (as `datasets.iterate_batches` does)."""

  def __init__(self, dataset: Dataset):
    self.dataset = dataset

  def map(self, plan: list[tuple[int, int]]) -> tuple[Any, ...]:
    items = [load_or_none(self.dataset, index, epoch) for index, epoch in plan]
    return collate([item for item in items if item is not None])


def batch_dataset(
  dataset: Dataset,
  batch_size: int,
  *,
  shuffle: bool = True,
  seed: int = 0,
  num_epochs: int | None = None,
  drop_remainder: bool = True,
  workers: int = 0,
  processes: bool = False,
  prefetch: int = 4,
  process_index: int = 0,
  process_count: int = 1,
  transform: Callable[[tuple[Any, ...]], Any] | None = None,
) -> grain.IterDataset:
  """Batches of this process's share of `dataset` as a grain `IterDataset` (see the module doc).

  `batch_size` is the global batch; each item is `collate`d fields (arrays (b, H, W, 3) float32),
  passed through `transform` (in the workers) when given. Batches load on `workers` threads, or with
  `processes` in that many spawned grain worker processes (`dataset` and `transform` must pickle;
  for CPU-heavy loading, which threads would do beside the training loop's dispatch, under the GIL),
  `prefetch` batches ahead.
  `iter(...)` gives an iterator with `get_state()`/`set_state()`; `plan_start(it, step)` positions a
  fresh one at a step.
  """
  plan = BatchPlan(
    len(dataset),
    batch_size,
    shuffle=shuffle,
    seed=seed,
    num_epochs=num_epochs,
    drop_remainder=drop_remainder,
    process_index=process_index,
    process_count=process_count,
  )
  ds = grain.MapDataset.source(plan).map(LoadBatch(dataset))
  if transform is not None:
    ds = ds.map(transform)
  if processes and workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; a library has no main()
      flags.FLAGS.mark_as_parsed()
    per_worker = max(1, -(-prefetch // workers))
    options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=per_worker)
    return ds.to_iter_dataset().mp_prefetch(options)
  read = grain.ReadOptions(num_threads=max(workers, 1), prefetch_buffer_size=prefetch)
  return ds.to_iter_dataset(read)


def iterator_from_step(ds: grain.IterDataset, step: int) -> grain.DatasetIterator:
  """An iterator of `ds` (from `batch_dataset`) whose first batch is step `step`'s."""
  it = iter(ds)
  if step:
    it.set_state(_state_at(it.get_state(), step))
  return it


def _state_at(state: dict, step: int) -> dict:
  """`state` (a fresh iterator's) moved to `step`: grain's states count the source's next index,
  per worker when prefetching in processes (worker k loads steps k, k + w, ...)."""
  if "iterators_in_use_states" not in state:
    return {**state, "next_index": step}
  workers = len(state["iterators_in_use_states"])
  return {
    **state,
    "iterators_in_use_states": [
      {**s, "next_index": (step - k + workers - 1) // workers}
      for k, s in enumerate(state["iterators_in_use_states"])
    ],
    "next_index_in_cycle": step % workers,
  }
