"""Trains the `mini` OSDFace (configs/mini.py) and writes the shippable results to --out.

  python -m benchmarks.train_mini --out OUT [--workdir DIR] [--resume TAR] [key=value ...]

OUT receives: model.safetensors + config.json (fp16), metrics.jsonl, checkpoints.tar (the model after
the last finished stage, re-written after each stage; extract into the workdir to resume),
val_grid.png (LQ | restored | HQ, 8 val faces) and summary.json (a results file: one row per
stage). `python -m benchmarks.gpu train_mini` runs it with the stage budgets of the shipped model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tarfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import results
from quantface_jax.cli import configure_logging
from quantface_jax.data import io as image_io
from quantface_jax.models.osdface import parameter_counts
from quantface_jax.train import apply_overrides, fp_stages, load_safetensors, train_fp
from quantface_jax.train.config_utils import load_config_file
from quantface_jax.train.logging import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def archive_stage(workdir: str, out: str, name: str) -> None:
  """``out/checkpoints.tar`` := stages/<name>/ + metrics.jsonl (written atomically)."""
  tmp = os.path.join(out, ".checkpoints.tar.tmp")
  with tarfile.open(tmp, "w") as tar:
    tar.add(os.path.join(workdir, "stages", name), arcname=f"stages/{name}")
    tar.add(os.path.join(workdir, "metrics.jsonl"), arcname="metrics.jsonl")
  os.replace(tmp, os.path.join(out, "checkpoints.tar"))


def evaluate(model, val, dtype) -> tuple[dict[str, float], np.ndarray]:
  """Mean PSNR of restored and of input vs HQ over `val`; and the first 8 (lq, restored, hq) rows."""
  restore = jax.jit(lambda m, lq: m.restore(lq, dtype=dtype).image)
  out, lq, hq = [], [], []
  for batch in val:
    out.append(np.asarray(restore(model, jnp.asarray(batch["lq"]))))
    lq.append(batch["lq"] * 0.5 + 0.5)
    hq.append(batch["hq"] * 0.5 + 0.5)
  out, lq, hq = (np.concatenate(a) for a in (out, lq, hq))
  psnr = lambda a: 10 * np.log10(1.0 / np.maximum(np.mean((a - hq) ** 2, axis=(1, 2, 3)), 1e-10))
  scores = {
    "num_faces": int(len(hq)),
    "psnr_restored": float(psnr(out).mean()),
    "psnr_input": float(psnr(lq).mean()),
  }
  scores["psnr_gain"] = scores["psnr_restored"] - scores["psnr_input"]
  grid = image_io.image_grid([[lq[i], out[i], hq[i]] for i in range(min(8, len(hq)))])
  return scores, grid


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--out", required=True)
  parser.add_argument("--workdir", default="/tmp/quantface_mini_work")
  parser.add_argument("--resume", default="", help="a checkpoints.tar from an earlier run")
  parser.add_argument("--config", default=os.path.join(REPO, "configs", "mini.py"))
  parser.add_argument("overrides", nargs="*", help="config overrides key=value")
  args = parser.parse_args()
  configure_logging()  # the trainer's compile times and budget fits go to train.log
  t_start = time.perf_counter()
  os.makedirs(args.out, exist_ok=True)
  os.makedirs(args.workdir, exist_ok=True)
  if args.resume and os.path.exists(args.resume):
    with tarfile.open(args.resume) as tar:
      tar.extractall(args.workdir, filter="data")
    print(
      f"resumed from {args.resume}: {os.listdir(os.path.join(args.workdir, 'stages'))}", flush=True
    )

  config = apply_overrides(load_config_file(args.config), args.overrides)
  print(f"devices: {jax.devices()}", flush=True)
  model, stage_results = train_fp(
    config, args.workdir, on_stage_done=lambda name, _: archive_stage(args.workdir, args.out, name)
  )
  t_train = time.perf_counter() - t_start

  shipped = load_safetensors(os.path.join(args.workdir, "model"))
  for name in ("model.safetensors", "config.json"):
    shutil.copy(os.path.join(args.workdir, "model", name), os.path.join(args.out, name))
  shutil.copy(os.path.join(args.workdir, "metrics.jsonl"), os.path.join(args.out, "metrics.jsonl"))
  scores, grid = evaluate(shipped, fp_stages.val_batches(config), jnp.float32)
  image_io.write_image(os.path.join(args.out, "val_grid.png"), grid)

  stages = {
    name: {
      "steps": r.steps_run,
      "seconds": round(r.seconds, 1),
      "steps_per_s": round(r.steps_run / max(r.seconds, 1e-9), 2),  # compile included
      "compile_profile": r.compile_profile,
      "final_train": r.train_metrics,
      "val": r.val_metrics,
    }
    for name, r in stage_results.items()
  }
  summary = {
    "devices": [str(d) for d in jax.devices()],
    "parameters": parameter_counts(shipped),
    "train_wall_s": round(t_train, 1),
    "val_fp16_weights_fp32_compute": scores,
    "last_logged": {s: (read_metrics(args.workdir, s) or [{}])[-1] for s in config.stages},
    "total_wall_s": round(time.perf_counter() - t_start, 1),
  }
  results.write(
    os.path.join(args.out, "summary.json"),
    [dict(stage=name, **s) for name, s in stages.items()],
    summary=summary,
  )
  print("\n== summary ==")
  for name, s in stages.items():
    loss = s["final_train"].get("loss", float("nan"))
    print(
      f"{name:5s} {s['steps']:6d} steps {s['seconds']:7.1f}s {s['steps_per_s']:7.2f} step/s "
      f"loss {loss:.4f} val {s['val']}"
    )
  print(
    f"val ({scores['num_faces']} faces): restored {scores['psnr_restored']:.2f} dB, input "
    f"{scores['psnr_input']:.2f} dB, gain {scores['psnr_gain']:+.2f} dB"
  )
  print(
    f"params {summary['parameters']['total']:,}; train {t_train:.0f}s; total {summary['total_wall_s']:.0f}s"
  )


if __name__ == "__main__":
  main()
