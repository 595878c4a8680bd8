"""How much a degrading batch loader slows the training loop's dispatch: threads against processes.

    python -m benchmarks.bench_loader [--faces .facepack/celebahq128] [--workers 2] [--out loader.json]

A jitted step over 300 small arrays (dispatch-bound, like a training step's Python side) is timed
alone, then while `iterate_batches` degrades 128-px faces on the fly in loader threads and in
loader processes, with a consumer thread draining the batches. Prints (and adds to the results file
--out) the mean dispatch ms of each.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import jax
import jax.numpy as jnp

from benchmarks import results
from quantface_jax.data import datasets


def time_dispatch(step, params, x, n: int = 300) -> float:
  """Mean ms per call of `step` over n calls after 5 warm-up calls."""
  for _ in range(5):
    params, _ = step(params, x)
  jax.block_until_ready(params)
  start = time.perf_counter()
  for _ in range(n):
    params, _ = step(params, x)
  jax.block_until_ready(params)
  return (time.perf_counter() - start) / n * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--faces", default=".facepack/celebahq128", help="a folder of HQ faces")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--out", default=None, help="results file the row is added to")
  args = parser.parse_args()
  params = {f"p{i}": jnp.ones((8, 8)) for i in range(300)}
  step = jax.jit(lambda p, x: (jax.tree.map(lambda a: a * 1.0001, p), x.sum()))
  x = jnp.ones((4, 4))
  row = dict(workers=args.workers, alone_ms=time_dispatch(step, params, x))
  dataset = datasets.HQFolderDataset(args.faces, 128, indices=range(256), seed=0)
  for name, processes in (("threads", False), ("processes", True)):
    batches = datasets.iterate_batches(
      dataset, 32, workers=args.workers, prefetch=8, processes=processes
    )
    next(batches)
    time.sleep(1.0)  # the loaders are busy filling the prefetch queue
    stop = threading.Event()

    def drain():
      while not stop.is_set():
        next(batches)

    consumer = threading.Thread(target=drain)
    consumer.start()
    row[f"{name}_ms"] = time_dispatch(step, params, x)
    stop.set()
    consumer.join()
    batches.close()
  print(json.dumps(row))
  if args.out:
    results.append(args.out, [row])


if __name__ == "__main__":
  main()
