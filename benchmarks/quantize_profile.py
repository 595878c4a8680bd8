"""Where quantizing a model goes: time per phase of `quantize` (calibration pass, per-layer
balancing / low-rank split / clip search, range pass) for `quant.students.light_recipe`.

    python -m benchmarks.quantize_profile sd21 [--out profile.json]   # 134 s on 2 CPU cores
    python -m benchmarks.quantize_profile mini

The phases are timed by wrapping `quant.api`'s module-level functions (each call blocked on its
result). Layers are converted on a thread pool, so the per-layer phases are summed over its threads:
with N threads busy they can add up to N times the wall time they took.
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import jax
import numpy as np

from benchmarks import results
from quantface_jax import checkpoint
from quantface_jax.quant import api, quantize
from quantface_jax.quant.students import light_recipe

PHASES = ("calibrate", "_balance", "low_rank_split", "clip_ratio", "calibrate_ranges")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("preset", nargs="?", default="mini")
  parser.add_argument("--out", default=None, help="results file the row is added to")
  args = parser.parse_args()
  preset = args.preset
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
  recipe = light_recipe()
  start = time.perf_counter()
  quantize(fp, recipe, calibration=[face])
  row = dict(
    preset=preset,
    device=str(jax.devices()[0]),
    total_s=round(time.perf_counter() - start, 1),
    phases={n: dict(s=round(seconds[n], 1), calls=calls[n]) for n in PHASES},
  )
  print(json.dumps(row, indent=1))
  if args.out:
    results.append(args.out, [row])


if __name__ == "__main__":
  main()
