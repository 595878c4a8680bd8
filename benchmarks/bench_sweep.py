"""Time the full sensitivity sweep (docs/design.md §2.5) at `sd21` shapes, random weights, 512²
faces.

    python -m benchmarks.bench_sweep --preset sd21 --setup-device cpu --out sweep.json   # GPU
    python -m benchmarks.bench_sweep --preset tiny --smoke --out /tmp/sweep.json         # CPU check

The model is `quant.students.quick_quantized`'s W4A4 quantface student. Every allocatable layer (all
quantized layers but the W8A8 ones: 282 in the UNet + the VAE's) × 4 widths is swept on one
compiled function; the first chunk carries the compilation, the rest give the steady rate. The
results file's one row is rewritten after every chunk (`partial: true` until the sweep ends).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import numpy as np

from benchmarks import results, student_setup
from quantface_jax.alloc.allocate import allocatable_paths
from quantface_jax.alloc.sensitivity import sensitivity_sweep
from quantface_jax.cli import configure_logging


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="sd21")
  parser.add_argument("--faces", type=int, default=1, help="faces in the sweep's batch")
  parser.add_argument("--widths", default="3,4,5,6")
  parser.add_argument("--chunk-size", type=int, default=8, help="configurations per call")
  parser.add_argument("--batch-size", type=int, default=None, help="configurations vmapped")
  parser.add_argument("--smoke", action="store_true", help="8 layers only (a quick check)")
  student_setup.add_setup_arguments(parser)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  configure_logging()

  fp, model, recipe, setup_s = student_setup.from_args(args)
  res = fp.config.resolution
  lq = np.random.default_rng(0).uniform(-1, 1, (args.faces, res, res, 3)).astype(np.float32)
  paths = allocatable_paths(fp, recipe)
  paths = paths[:: max(1, len(paths) // 8)][:8] if args.smoke else paths

  widths = tuple(int(w) for w in args.widths.split(","))
  configs = len(paths) * len(widths)
  rows = configs + 1  # the sweep's first row is the unquantized reference
  head = dict(
    preset=args.preset,
    faces=args.faces,
    resolution=res,
    layers=len(paths),
    layers_unet=sum(p.startswith("unet.") for p in paths),
    layers_vae=sum(p.startswith("vae.") for p in paths),
    widths=widths,
    chunk_size=args.chunk_size,
    batch_size=args.batch_size,
    configs=configs,
    setup_s=setup_s,
    setup_device=args.setup_device,
    device=str(jax.devices()[0]),
    host=platform.node(),
  )
  stamps, timing = [], {}
  sweep_start = time.perf_counter()

  def record_chunk(chunks_done: int) -> None:
    # first_chunk_s counts from the call: cache fingerprint, compilation and one chunk; the later
    # chunks give the steady rate. The row is rewritten after every chunk, so a run cut short
    # still gives the rate.
    stamps.append(time.perf_counter())
    done, steady_s = min(rows, chunks_done * args.chunk_size), stamps[-1] - stamps[0]
    timing.update(
      configs_done=done - 1,
      first_chunk_s=stamps[0] - sweep_start,
      elapsed_s=stamps[-1] - sweep_start,
      configs_per_s=(done - min(rows, args.chunk_size)) / steady_s if steady_s > 0 else None,
    )
    results.write(args.out, [dict(head, partial=True, **timing)])

  table = sensitivity_sweep(
    model,
    lq,
    paths=paths,
    widths=widths,
    chunk_size=args.chunk_size,
    batch_size=args.batch_size,
    progress=False,
    on_chunk=record_chunk,
  )
  row = dict(
    head,
    partial=False,
    **timing,
    sweep_s=table.sweep_time_s,
    e_mean_per_width=table.e.mean(0).tolist(),
    p_mean_per_width=table.p.mean(0).tolist(),
  )
  print(json.dumps(row, indent=1))
  print(
    f"{configs} layer x width configurations in {table.sweep_time_s:.1f} s "
    f"({row['configs_per_s'] or float('nan'):.2f} configs/s steady)"
  )
  results.write(args.out, [row])


if __name__ == "__main__":
  main()
