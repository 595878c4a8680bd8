"""Re-measures the quantization tables on the shipped `mini` (run it after a new mini lands), on the
CPU, each table writing its benchmarks/results/ files:

  ptq     PTQ of every recipe x width (benchmarks.ptq_mini; ~40 min on 2 cores)
  alloc   mixed-precision activations against uniform W4A4 (benchmarks.alloc_mini; ~15 min)
  qdlora  three PTQ starts, the W4A4 and W6A6 QD-LoRA trainings, one eval and the table
          (benchmarks.qdlora_table, which needs this model's ptq_mini.json; ~100 min)

    python -m benchmarks.remeasure_mini [ptq] [alloc] [qdlora] [--dry-run]   (default: all three)

Every step resumes. The work folders (runs/remeasure-KEY) are keyed by the mini weights' hash, so an
earlier model's PTQ starts and checkpoints are never reused. Needs ../shared/data/celebahq512 and
the packed faces in .facepack/celebahq128 (`quantface_jax.data.pack_faces`).
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import shlex
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "quantface_jax" / "assets" / "mini" / "model.safetensors"
HQ = "../shared/data/celebahq512"
FACES = ".facepack/celebahq128"
PARTS = ("ptq", "alloc", "qdlora")


def weights_key(path: pathlib.Path = WEIGHTS) -> str:
  """The first 10 hex digits of the weights' sha256."""
  return hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def commands(part: str, work: str) -> list[list[str]]:
  """The commands of one part, in order, run from the repository root."""
  python = [sys.executable, "-m"]
  if part == "ptq":
    return [python + ["benchmarks.ptq_mini", "--faces", "200", "--out", f"{work}/ptq"]]
  if part == "alloc":
    return [
      python
      + ["benchmarks.alloc_mini", "--recipe", "quantface", "--budget", "4.0", "--faces", "200"]
      + ["--work", f"{work}/alloc"]
    ]
  qd, root = f"{work}/qd", f"data.root={FACES}"
  prepare = python + ["benchmarks.qdlora_prepare"]
  train = python + ["quantface_jax.cli", "train"]
  train_args = [
    f"--config.data.root={FACES}",
    "--config.data.workers=2",
    "--config.data.lq_epochs=0",
    "--config.train.batch_size=8",
  ]
  labels = {
    "balancing-W4A4": f"{qd}/w4a4_balance_only/quantized",
    "quantface-W4A4": f"{qd}/w4a4/quantized",
    "quantface-W4A4-qdlora": f"{qd}/w4a4/model",
    "quantface-W6A6": f"{qd}/w6a6/quantized",
    "quantface-W6A6-qdlora": f"{qd}/w6a6/model",
  }
  return [
    prepare + ["configs/qdlora_w4a4.py", f"{qd}/w4a4", root],
    prepare
    + ["configs/qdlora_w4a4.py", f"{qd}/w4a4_balance_only", root]
    + ["quant.overrides.low_rank=0"],
    prepare + ["configs/qdlora_w6a6.py", f"{qd}/w6a6", root],
    train
    + ["--config", "configs/qdlora_w4a4.py", "--workdir", f"{qd}/w4a4", *train_args]
    + ["--config.train.steps=400", "--config.train.warmup_steps=20"],
    train
    + ["--config", "configs/qdlora_w6a6.py", "--workdir", f"{qd}/w6a6", *train_args]
    + ["--config.train.steps=120", "--config.train.warmup_steps=10"],
    python
    + ["quantface_jax.cli", "eval", "--hq", HQ, "--indices", "4000:4200"]
    + [
      "--degrade-seed",
      "0",
      *[f"--quant={k}={v}" for k, v in labels.items()],
      "--out",
      f"{qd}/eval",
    ],
    python + ["benchmarks.qdlora_table", f"{qd}/eval"],
  ]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("parts", nargs="*", help="of ptq, alloc, qdlora (default: all three)")
  parser.add_argument("--dry-run", action="store_true", help="print the commands only")
  args = parser.parse_args(argv)
  if unknown := [p for p in args.parts if p not in PARTS]:
    parser.error(f"unknown part {unknown[0]!r} (one of {', '.join(PARTS)})")
  try:
    key = weights_key()
  except OSError as err:
    raise SystemExit(f"{WEIGHTS}: {err.strerror}") from None
  work = f"runs/remeasure-{key}"
  print(f"mini {key} -> {work}", flush=True)
  for part in args.parts or PARTS:
    for command in commands(part, work):
      print(f"== {part}: {shlex.join(command)}", flush=True)
      if not args.dry_run and subprocess.run(command, cwd=REPO).returncode != 0:
        raise SystemExit(f"{part}: failed: {shlex.join(command)}")


if __name__ == "__main__":
  main()
