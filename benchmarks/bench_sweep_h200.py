"""Time the full sensitivity sweep (DESIGN §2.5) at `sd21` shapes, random weights, 512² faces.

    python benchmarks/bench_sweep_h200.py --preset sd21 --faces 1 --out sweep_h200.json   # GPU
    python benchmarks/bench_sweep_h200.py --preset tiny --smoke --out /tmp/sweep.json     # CPU check

The model is quantized with the quantface recipe without its calibration-heavy steps (α fixed at
0.5 instead of searched, one calibration face, no reservoir sample). Every allocatable layer (all
quantized layers but the W8A8 ones: 282 in the UNet + the VAE's) × 4 widths is swept on one
compiled function; the first chunk carries the compilation, the rest give the steady rate.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quantface_jax.alloc.allocate import allocatable_paths  # pylint: disable=wrong-import-position
from quantface_jax.alloc.sensitivity import sensitivity_sweep  # pylint: disable=wrong-import-position
from quantface_jax.models import build  # pylint: disable=wrong-import-position
from quantface_jax.quant import CalibrationSettings, get_recipe, quantize  # pylint: disable=wrong-import-position


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="sd21")
  parser.add_argument("--faces", type=int, default=1, help="faces in the sweep's batch")
  parser.add_argument("--widths", default="3,4,5,6")
  parser.add_argument("--chunk-size", type=int, default=8, help="configurations per call")
  parser.add_argument("--batch-size", type=int, default=None, help="configurations vmapped")
  parser.add_argument("--smoke", action="store_true", help="8 layers only (a quick check)")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()

  start = time.perf_counter()
  fp = build(args.preset)
  res = fp.config.resolution
  lq = np.random.default_rng(0).uniform(-1, 1, (args.faces, res, res, 3)).astype(np.float32)
  recipe = get_recipe("quantface", "W4A4", alpha=0.5, calibration=CalibrationSettings(
      num_images=1, batch_size=1, max_samples=0))
  model = quantize(fp, recipe, calibration=[lq[:1]])
  paths = allocatable_paths(fp, recipe)
  paths = paths[::max(1, len(paths) // 8)][:8] if args.smoke else paths
  setup_s = time.perf_counter() - start

  stamps = []
  widths = tuple(int(w) for w in args.widths.split(","))
  table = sensitivity_sweep(model, lq, paths=paths, widths=widths, chunk_size=args.chunk_size,
                            batch_size=args.batch_size,
                            on_chunk=lambda _: stamps.append(time.perf_counter()))
  configs = len(paths) * len(widths)
  steady_s = stamps[-1] - stamps[0]
  steady_configs = min(configs + 1, len(stamps) * args.chunk_size) - args.chunk_size
  row = dict(
      preset=args.preset, faces=args.faces, resolution=res, layers=len(paths),
      layers_unet=sum(p.startswith("unet.") for p in paths),
      layers_vae=sum(p.startswith("vae.") for p in paths), widths=widths,
      chunk_size=args.chunk_size, batch_size=args.batch_size, configs=configs,
      setup_s=setup_s, sweep_s=table.sweep_time_s,
      first_chunk_s=table.sweep_time_s - steady_s,  # compilation + one chunk
      configs_per_s=steady_configs / steady_s if steady_s > 0 else None,
      device=str(jax.devices()[0]), host=platform.node(),
      e_mean_per_width=table.e.mean(0).tolist(), p_mean_per_width=table.p.mean(0).tolist())
  print(json.dumps(row, indent=1))
  print(f"{configs} layer x width configurations in {table.sweep_time_s:.1f} s "
        f"({row['configs_per_s'] or float('nan'):.2f} configs/s steady)")
  pathlib.Path(args.out).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
  main()
