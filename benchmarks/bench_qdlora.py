"""QD-LoRA training throughput at `sd21` shapes (random weights, 512² faces) on a device mesh.

    python -m benchmarks.bench_qdlora --preset sd21 --batch 8 --steps 30 --setup-device cpu --out q.json  # 1 GPU
    python -m benchmarks.bench_qdlora --preset sd21 --batch 8 --mesh-data 2 --out q.json    # 2 GPUs, DP
    python -m benchmarks.bench_qdlora --preset sd21 --batch 8 --mesh-data 1 --mesh-fsdp 2 --out ...  # FSDP
    python -m benchmarks.bench_qdlora --preset tiny --batch 2 --steps 3 --out /tmp/q.json   # CPU check

The student is `quant.students.quick_quantized`'s W4A4 quantface student (the trained run uses
configs/qdlora_w4a4.py), turned into QD-LoRA layers (rank 16 + 16), or with `--student structure`
`quant.students.structural_qdlora`'s: the same compiled step without the calibration work (seconds
of setup; the losses are then meaningless). The teacher is the same FP model.
Batches are fixed random LQ faces (no input pipeline: this measures the step). The step is the real
one: `train.distill.distill_stage` on `train.trainer.fit`, jit with NamedSharding over a ("data",
"fsdp") mesh. On a GPU add `--setup-device cpu` (see quant.students). Adds one row to the results
file --out: images/s and step time after the compiling step, peak memory per device, and the
per-step losses (so runs on different meshes can be checked to follow the same curve).
`--stop-after setup|trace|compile` stops early (`python -m benchmarks.gpu sd21` runs the stages as
parts of their own, linked by the cached student and the persistent compilation cache).
`--profile-steps 3,4` adds the 25 heaviest device ops of those steps (`quantface_jax.profiling`),
to say where a slow step goes.
On the CPU, `--stop-after compile --emulate-flash-memory` gives XLA's memory plan of the step as the GPU
would hold its attention (the sd21 batch-8 step: 165 GB, batch 4: 84 GB; the H200 has ~135 GB).
"""

from __future__ import annotations

import argparse
import json
import tempfile

import jax
import ml_collections
import numpy as np

from benchmarks import results, student_setup
from quantface_jax.cli import configure_logging
from quantface_jax.train.distill import distill_stage
from quantface_jax.train.logging import read_metrics
from quantface_jax.train.mesh import make_mesh
from quantface_jax.train.trainer import build_train_program, compile_train_step, fit


def run_config(args) -> ml_collections.ConfigDict:
  """What `distill_stage` and `fit` read, for a fixed-length unlogged-to-disk run (the progress bar
  shows each step as it returns, so a cut run still tells how far it got)."""
  c = ml_collections.ConfigDict()
  c.compute_dtype = args.dtype
  c.train = ml_collections.ConfigDict(
    dict(
      steps=args.steps,
      batch_size=args.batch,
      lr=1e-4,
      warmup_steps=2,
      final_lr_fraction=0.05,
      weight_decay=0.0,
      b1=0.9,
      b2=0.99,
      grad_clip=1.0,
      seed=0,
      log_every=1,
      checkpoint_every=10**9,
      keep_checkpoints=1,
      eval_every=0,
      prefetch=2,
      progress=True,
      time_budget_s=0.0,
      feature_kind="l1",
      remat=args.remat,
      profile_steps=args.profile_steps,
      weights=dict(latent=1.0, l1=1.0, sobel=0.5, feature=0.1),
      mesh=dict(data=args.mesh_data, fsdp=args.mesh_fsdp),
    )
  )
  return c


def emulate_flash_attention_memory(chunk: int = 512) -> None:
  """For CPU memory plans that stand for the GPU's: on the GPU the UNet's self-attention runs as
  cuDNN flash attention, which never holds the (B, heads, L, L) scores; XLA's CPU attention does.
  This swaps the UNet's attention for one that runs query chunks of `chunk` rows one after another
  under `jax.checkpoint` (same values; scores held for one chunk at a time), where the cuDNN path
  would apply (both lengths multiples of 64). CPU memory-plan estimates only."""
  from quantface_jax.models import unet

  dense = unet.attention

  def chunked(q, k, v, num_heads):
    b, length, width = q.shape
    if length % 64 or k.shape[1] % 64 or length % chunk:
      return dense(q, k, v, num_heads)
    one = jax.checkpoint(lambda qc: dense(qc, k, v, num_heads))
    out = jax.lax.map(one, q.reshape(b, length // chunk, chunk, width).swapaxes(0, 1))
    return out.swapaxes(0, 1).reshape(b, length, width)

  unet.attention = chunked


def peak_memory_gb() -> list[float]:
  stats = [d.memory_stats() or {} for d in jax.local_devices()]
  return [round(s.get("peak_bytes_in_use", 0) / 2**30, 2) for s in stats]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="sd21")
  parser.add_argument("--batch", type=int, default=8, help="global batch (faces per step)")
  parser.add_argument("--steps", type=int, default=30, help="steps run (the first compiles)")
  parser.add_argument("--dtype", default="bfloat16", help="VAE/UNet compute dtype")
  parser.add_argument(
    "--remat", action="store_true", help="recompute block activations (less memory)"
  )
  parser.add_argument("--mesh-data", type=int, default=-1)
  parser.add_argument("--mesh-fsdp", type=int, default=1)
  student_setup.add_setup_arguments(parser)
  parser.add_argument(
    "--student",
    default="calibrated",
    choices=("calibrated", "structure"),
    help="structure: quant.students.structural_qdlora, the same compiled step without the "
    "calibration work (seconds instead of minutes of setup; the losses are meaningless)",
  )
  parser.add_argument(
    "--stop-after",
    choices=("setup", "trace", "compile"),
    help="stop early: after the student is built (and cached), after tracing and lowering the "
    "step (the host's share of the compile), or after compiling it (into JAX's persistent "
    "cache when one is set, so a later run with the same arguments loads it)",
  )
  parser.add_argument(
    "--profile-steps",
    type=lambda s: tuple(int(x) for x in s.split(",")),
    default=None,
    help="FIRST,LAST: trace these steps (1-based) and put the heaviest ops per step in the row",
  )
  parser.add_argument(
    "--emulate-flash-memory",
    action="store_true",
    help="CPU memory-plan estimates: UNet attention in checkpointed query chunks, as "
    "little held memory as the GPU's cuDNN flash path",
  )
  parser.add_argument("--out", required=True, help="results file the row is added to")
  args = parser.parse_args()
  configure_logging()  # the trainer logs when its first step has compiled
  if args.emulate_flash_memory:
    emulate_flash_attention_memory()

  # A setup-only run just leaves the cached PTQ student: the QD-LoRA split is redone on loading.
  ranks = None if args.stop_after == "setup" else (16, 16)
  teacher, student, _, setup_s = student_setup.from_args(args, qdlora_ranks=ranks)
  if args.stop_after == "setup":
    return
  res = teacher.config.resolution
  rng = np.random.default_rng(0)

  batches = [
    {
      "lq": rng.uniform(-1, 1, (args.batch, res, res, 3)).astype(np.float32),
      "hq": rng.uniform(-1, 1, (args.batch, res, res, 3)).astype(np.float32),
    }
    for _ in range(4)
  ]
  stream = lambda start: (batches[s % len(batches)] for s in range(start, args.steps))
  config = run_config(args)
  stage = distill_stage(student, teacher, config, stream, [])
  head = dict(
    preset=args.preset,
    resolution=res,
    dtype=args.dtype,
    remat=args.remat,
    devices=jax.device_count(),
    device_kind=jax.devices()[0].device_kind,
    mesh=dict(data=args.mesh_data, fsdp=args.mesh_fsdp),
    global_batch=args.batch,
    setup_s=setup_s,
    setup_device=args.setup_device,
    emulated_flash_memory=args.emulate_flash_memory,
  )
  if args.stop_after in ("trace", "compile"):
    program = build_train_program(stage, config.train, make_mesh(args.mesh_data, args.mesh_fsdp))
    _, profile = compile_train_step(program, batches[0], compile=args.stop_after == "compile")
    return write_row(dict(head, stopped_after=args.stop_after, compile_profile=profile), args.out)
  with tempfile.TemporaryDirectory() as workdir:
    result = fit(stage, config.train, workdir)
    records = read_metrics(workdir, "qdlora")
  rate = records[-1]["steps_per_s"]  # after the compiling first step
  write_row(
    dict(
      head,
      steps=result.steps_run,
      images_per_s=rate * args.batch,
      step_ms=1e3 / rate,
      train_s=result.seconds,
      compile_profile=result.compile_profile,
      peak_mem_gb_per_device=peak_memory_gb(),
      losses=[r["loss"] for r in records],
      step_profile=result.step_profile[:25],
    ),
    args.out,
  )


def write_row(row: dict, path: str) -> None:
  print(json.dumps(row), flush=True)
  results.append(path, [row])


if __name__ == "__main__":
  main()
