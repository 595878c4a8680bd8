"""End-to-end restore speed of the integer serving model (SERVE_DIR) against our bf16 and PyTorch.

`sd21` shapes, random weights. Parts (run each in its own process for clean peak memory; JAX cannot
reset its peak counter): `python -m benchmarks.gpu serve` does that.

  export       build the FP model, calibrate static activation ranges on one random LQ face
               (``--act dynamic`` needs none, but then 3x3 convs run one GEMM per tap), quantize
               with ``rtn`` and write SERVE_DIRs W4A8, W4A4, W8A8 under --workdir (a row each:
               its packed bytes against bf16's); on the host's CPU unless ``--export-device default``
  W4           load W4A8 and time it, then W4A4 (same structure: a_bits is data, one compile)
  W8A8         load W8A8 and time it
  bf16         our FP model in bfloat16
  torch_eager_fp16, torch_compile_fp16   bench_fp's torch reference rows (PYTHONPATH=tests)

Every JAX part compiles its batch sizes ahead of time, one after the other (compiled concurrently,
batches 1 and 16 of W4 ran past 330 s on the H200, their autotuners contending for the one GPU,
where batch 16 alone took 48 s), then times them (median of --iters after warm-up;
``bench_fp.timed``). Rows {variant, batch, faces_per_s, latency_ms, peak_mem_gb, compile_s} are
added to the results file --out as each is timed; variants are W4A4, W4A8, W8A8, bf16, torch_fp16
and torch_fp16_compiled. CPU smoke run:
``python -m benchmarks.bench_serve --model tiny --batches 1 --iters 1``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

from benchmarks import results
from benchmarks.bench_fp import bench_torch, timed

JAX_PARTS = ("export", "bf16", "W4", "W8A8")
# Torch parts -> their variant names in the rows (those of benchmarks/results/serve_h200.json).
TORCH_PARTS = {"torch_eager_fp16": "torch_fp16", "torch_compile_fp16": "torch_fp16_compiled"}
# SERVE_DIRs written by `export`, and which of them each timing part loads.
SERVED = {"W4": ("W4A8", "W4A4"), "W8A8": ("W8A8",)}


def _random_lq(batch: int, res: int):
  import jax
  import jax.numpy as jnp

  return jax.random.uniform(jax.random.key(batch), (batch, res, res, 3), jnp.float32, -1.0, 1.0)


def export_part(preset: str, act: str, workdir: pathlib.Path, device: str, emit) -> None:
  from quantface_jax.quant.students import setup_context

  with setup_context(device):  # calibration and per-layer quantizing are compile-bound on a GPU
    _export(preset, act, workdir, emit)


def _export(preset: str, act: str, workdir: pathlib.Path, emit) -> None:
  from quantface_jax.models import build
  from quantface_jax.quant import calibrate, get_bits, get_recipe, quantize, set_bits
  from quantface_jax.serve import packed_account, save_served, serve_model

  t0 = time.perf_counter()
  model = build(preset)
  recipe = get_recipe("rtn", "W4A8", a_mode=act)
  stats = None
  if act == "static":  # ranges only change values, not speed: one random face is enough
    stats = calibrate(
      model,
      [_random_lq(1, model.config.resolution)],
      rules=recipe.rules,
      max_samples=0,
      progress=False,
    )
  qmodel = quantize(model, recipe, calibration=stats, inplace=True)
  body = [p for p, bits in get_bits(qmodel).items() if bits == (4, 8)]  # not the kept-W8A8 ones
  print(f"quantized in {time.perf_counter() - t0:.0f} s", flush=True)
  for name, bits in (("W4A8", (4, 8)), ("W4A4", (4, 4)), ("W8A8", (8, 8))):
    set_bits(qmodel, {p: bits for p in body})
    out = save_served(
      serve_model(qmodel),
      workdir / name,
      recipe=get_recipe("rtn", name, a_mode=act),
      base_ckpt=preset,
      calibration_info=dict(random_lq=1 if stats else 0),
    )
    row = dict(variant=name, part="export", serve_dir=str(out), **packed_account(out))
    print(json.dumps(row), flush=True)
    emit(row)


def time_jax(
  variants: dict,
  batches: list[int],
  iters: int,
  res: int,
  emit,
  profile_top: int = 0,
  hlo: bool = False,
) -> None:
  """``variants``: name -> (load() -> model, dtype), all of one structure: their batch sizes are
  compiled once; then each variant x batch is timed (and, with ``profile_top``,
  traced: its heaviest ops go to the row's ``top_ops``, all its device time summed by
  `profiling.op_kinds` to ``time_by_kind``; with ``hlo``, the row's ``hlo`` is
  `profiling.hlo_summary` of the compiled program) and handed to ``emit(row)``."""
  import jax
  from flax import nnx

  from quantface_jax import profiling
  from quantface_jax.inference import cast_for_inference

  lqs = {b: _random_lq(b, res) for b in batches}
  compiled = {}
  for variant, (load, dtype) in variants.items():
    t0 = time.perf_counter()
    model = load()
    state = cast_for_inference(model, dtype)
    load_s = time.perf_counter() - t0
    if not compiled:
      graphdef = nnx.graphdef(model)
      restore = jax.jit(lambda s, lq: nnx.merge(graphdef, s).restore(lq, dtype=dtype).image)

      for b in batches:
        t = time.perf_counter()
        compiled[b] = restore.lower(state, lqs[b]).compile(), time.perf_counter() - t
    elif nnx.graphdef(model) != graphdef:
      raise ValueError(f"{variant}: not the structure of {next(iter(variants))}")
    del model
    for b in sorted(batches):
      fn, compile_s = compiled[b]
      ms = timed(
        lambda: fn(state, lqs[b]), jax.block_until_ready, warmup=min(2, iters), iters=iters
      )
      stats = jax.local_devices()[0].memory_stats() or {}
      row = dict(
        variant=variant,
        batch=b,
        faces_per_s=b / ms * 1e3,
        latency_ms=ms,
        peak_mem_gb=stats.get("peak_bytes_in_use", float("nan")) / 2**30,
        compile_s=compile_s,
        load_s=load_s,
      )
      hlo_text = fn.as_text() if profile_top or hlo else None
      if profile_top:
        ops = profiling.trace_calls(lambda: fn(state, lqs[b]), calls=2, top=None, device_only=True)
        row["top_ops"] = ops[:profile_top]
        row["time_by_kind"] = profiling.time_by_kind(ops, profiling.op_kinds(hlo_text))
      if hlo:
        row["hlo"] = profiling.hlo_summary(hlo_text)
      print(json.dumps(row), flush=True)
      emit(row)
    state = None  # frees this variant's weights before the next loads


def run_part(part: str, args, emit) -> None:
  import jax.numpy as jnp

  from quantface_jax.models import PRESETS, build
  from quantface_jax.serve import load_served, packed_account

  res = PRESETS[args.model].resolution
  if part == "export":
    export_part(args.model, args.act, args.workdir, args.export_device, emit)
  elif part == "bf16":
    time_jax(
      {"bf16": (lambda: build(args.model), jnp.bfloat16)},
      args.batches,
      args.iters,
      res,
      emit,
      args.profile_top,
      args.hlo_summary,
    )
  elif part in SERVED:
    for name in SERVED[part]:
      w = packed_account(args.workdir / name)["weights_by_bits"]
      print(
        f"{name}: "
        + ", ".join(
          f"W{b} {r['packed_bytes'] / 2**20:,.1f} MiB vs bf16 "
          f"{r['bf16_bytes'] / 2**20:,.1f} MiB ({r['ratio']:.3f})"
          for b, r in sorted(w.items())
        ),
        flush=True,
      )
    load = lambda name: lambda: load_served(args.workdir / name, backend=args.backend)
    time_jax(
      {n: (load(n), jnp.bfloat16) for n in SERVED[part]},
      args.batches,
      args.iters,
      res,
      lambda row: emit(dict(row, recipe="rtn", act=args.act, backend=args.backend)),
      args.profile_top,
      args.hlo_summary,
    )
  else:
    bench_torch(
      args.model,
      part.removeprefix("torch_"),
      args.batches,
      set(),
      emit=lambda row: emit(dict(row, variant=TORCH_PARTS[part])),
    )


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--parts",
    default=",".join(JAX_PARTS),
    help=f"comma-separated, in order: {', '.join(JAX_PARTS + tuple(TORCH_PARTS))}",
  )
  p.add_argument(
    "--model", default="sd21", help="preset shapes (random weights): sd21 | mini | tiny"
  )
  p.add_argument("--batches", default="1,16", type=lambda s: [int(b) for b in s.split(",")])
  p.add_argument("--iters", type=int, default=10, help="timed calls per row (median)")
  p.add_argument(
    "--act",
    default="static",
    choices=["static", "dynamic"],
    help="activation quantization of the exported models",
  )
  p.add_argument(
    "--export-device",
    default="cpu",
    choices=["cpu", "default"],
    help="where `export` builds, calibrates and quantizes (cpu: the host's cores)",
  )
  p.add_argument("--backend", default="auto", help="integer kernels: auto | xla | pallas")
  p.add_argument(
    "--conv-gpu-backend",
    default=None,
    choices=["xla", "pallas"],
    help="what --backend auto runs the convs with on a GPU (kernels.dispatch.CONV_GPU_BACKEND; "
    "pallas: the implicit GEMM), the GEMMs unchanged: an A/B of the conv kernels alone",
  )
  p.add_argument(
    "--workdir",
    default="/tmp/quantface_bench_serve",
    type=pathlib.Path,
    help="where `export` writes the SERVE_DIRs and the timing parts read them",
  )
  p.add_argument(
    "--out", default=None, type=pathlib.Path, help="results file each row is added to when timed"
  )
  p.add_argument(
    "--hlo-summary",
    action="store_true",
    help="add profiling.hlo_summary of each compiled program to its row (which convs run on int8 "
    "through which library call; whether SiLU is fused into the quantizer)",
  )
  p.add_argument(
    "--profile-top",
    type=int,
    default=0,
    help="trace two calls per JAX row after timing; keep its N heaviest ops (top_ops) and its "
    "device time by kind of op (time_by_kind: int8 convs, quantize, dequantize...); "
    "ops in CUDA graphs are named only with XLA_FLAGS=--xla_gpu_enable_command_buffer=",
  )
  args = p.parse_args()
  if args.conv_gpu_backend:
    from quantface_jax.kernels import dispatch

    dispatch.CONV_GPU_BACKEND = args.conv_gpu_backend
  for part in args.parts.split(","):
    if part not in JAX_PARTS + tuple(TORCH_PARTS):
      raise SystemExit(f"unknown part {part!r}")
  emit = (lambda row: results.append(args.out, [row])) if args.out else (lambda row: None)
  for part in args.parts.split(","):
    run_part(part, args, emit)


if __name__ == "__main__":
  main()
