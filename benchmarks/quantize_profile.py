"""Where quantizing a model goes: time per phase of `quantize` (calibration pass, per-layer
balancing / low-rank split / clip search, range pass) for bench_setup.py's recipe.

    python benchmarks/quantize_profile.py sd21     # 134 s on 2 CPU cores (828 s before session 4's fixes)
    python benchmarks/quantize_profile.py mini

The phases are timed by wrapping `quant.api`'s module-level functions (each call blocked on its
result). Layers are converted on a thread pool, so the per-layer phases are summed over its threads:
with N threads busy they can add up to N times the wall time they took.
"""

from __future__ import annotations

import collections
import json
import pathlib
import sys
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_setup import bench_recipe  # pylint: disable=wrong-import-position

from quantface_jax import checkpoint  # pylint: disable=wrong-import-position
from quantface_jax.quant import api, quantize  # pylint: disable=wrong-import-position

PHASES = ("calibrate", "_balance", "low_rank_split", "clip_ratio", "calibrate_ranges")


def main(preset: str) -> None:
  seconds, calls = collections.defaultdict(float), collections.Counter()

  def timed(name, fn):
    def wrapper(*args, **kwargs):
      start = time.perf_counter()
      out = jax.block_until_ready(fn(*args, **kwargs))
      seconds[name] += time.perf_counter() - start
      calls[name] += 1
      return out

    return wrapper

  for name in PHASES:
    setattr(api, name, timed(name, getattr(api, name)))
  fp = checkpoint.load(preset)
  res = fp.config.resolution
  face = np.random.default_rng(0).uniform(-1, 1, (1, res, res, 3)).astype(np.float32)
  recipe = bench_recipe()
  start = time.perf_counter()
  quantize(fp, recipe, calibration=[face])
  row = dict(
    preset=preset,
    device=str(jax.devices()[0]),
    total_s=round(time.perf_counter() - start, 1),
    phases={n: dict(s=round(seconds[n], 1), calls=calls[n]) for n in PHASES},
  )
  print(json.dumps(row, indent=1))


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "mini")
