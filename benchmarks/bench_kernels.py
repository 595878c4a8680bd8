"""Speed and correctness of the integer kernels at SD-UNet GEMM shapes and at VAE/UNet 3x3 convs.

    python -m benchmarks.bench_kernels --out kernels.json   # a GPU, < 5 min
    python -m benchmarks.bench_kernels --smoke              # CPU, tiny

Every case runs in its own try/except (a failure is recorded, the run goes on). Each kernel is
first checked against the integer reference on the first ``CHECK_ROWS`` rows of its problem
(max abs / rel error recorded), then timed: median wall time of ``--repeats`` calls after warmup,
each call ended by ``jax.block_until_ready``. Roofline (an H200's): 1979 TOPS dense int8 (989 for
bf16), 4.8 TB/s HBM; ``roofline`` = max(compute time, memory time) / measured time. Each case's row
is added to the results file --out as it completes (a run cut short keeps its rows); the summary
(the plan, and `recommend` over this run's rows) is written at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import results
from quantface_jax.kernels import (
  Epilogue,
  GemmBlocks,
  group_norm_prologue,
  int_conv2d,
  int_matmul,
  pack_weight,
  quantize_act,
)
from quantface_jax.kernels.reference import int_conv2d_ref, int_matmul_ref, quantize_act_ref

PEAK_OPS = {"int8": 1979e12, "bf16": 989e12}
HBM_BYTES_PER_S = 4.8e12
CHECK_ROWS = 256
OUT_DTYPE = jnp.bfloat16  # output dtype of the timed kernels and of their error checks


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
  batches: tuple[int, ...]  # images per step; M = batch * tokens
  levels: tuple[tuple[int, int], ...]  # (tokens, channels C) per UNet level; GEMMs C->C, 4C->C
  extra_kn: tuple[tuple[int, int, int], ...]  # (tokens, K, N) extra GEMMs (cross-attn 1024->C)
  gemm_backends: tuple[str, ...]  # int_matmul backends to time ("pallas" once per pallas_blocks)
  pallas_blocks: tuple[GemmBlocks, ...]  # Triton tilings to try
  convs: tuple[tuple[int, int, int], ...]  # (batch, H=W, channels) of each 3x3 conv timed
  conv_backends: tuple[str, ...]  # int_conv2d backends to time
  quant: tuple[int, int, int]  # (M, K, Hadamard block) of the fused activation quantizer
  quant_images: int  # images the M rows split into, for the GroupNorm + SiLU prologue variant
  quant_backends: tuple[str, ...]  # quantize_act backends to time
  repeats: int  # timed calls per case
  budget_s: float  # stop starting new cases after this many seconds


FULL = Plan(
  batches=(16, 8, 1),
  levels=((4096, 320), (1024, 640), (256, 1280), (64, 1280)),
  extra_kn=((4096, 1024, 320), (4096, 320, 2560)),
  gemm_backends=("xla", "pallas", "mosaic"),
  pallas_blocks=(
    GemmBlocks(),
    GemmBlocks(block_m=128, block_n=128, block_k=128, num_warps=8, num_stages=3),
  ),
  convs=((16, 512, 128), (16, 64, 320), (16, 32, 640)),  # VAE decoder's largest; UNet
  conv_backends=("xla", "pallas"),
  quant=(16 * 4096, 320, 64),
  quant_images=16,
  quant_backends=("xla", "pallas"),
  repeats=20,
  budget_s=260.0,
)
SMOKE = Plan(
  batches=(1,),
  levels=((64, 32),),
  extra_kn=((64, 48, 32),),
  gemm_backends=("xla", "interpret"),
  pallas_blocks=(GemmBlocks(),),
  convs=((1, 16, 8),),
  conv_backends=("xla", "interpret"),
  quant=(64, 64, 32),
  quant_images=2,
  quant_backends=("xla", "interpret"),
  repeats=3,
  budget_s=120.0,
)


def time_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm
  jax.block_until_ready(fn(*args))
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    samples.append((time.perf_counter() - start) * 1e3)
  return statistics.median(samples)


def floor_s(ops: float, bytes_moved: float, precision: str) -> float:
  """The H200's roofline time: max(ops at the dense ``precision`` peak, bytes at HBM bandwidth)."""
  return max(ops / PEAK_OPS[precision], bytes_moved / HBM_BYTES_PER_S)


def roofline(ms: float, ops: float, bytes_moved: float, precision: str) -> dict:
  return dict(
    ms=ms,
    tops=ops / (ms * 1e-3) / 1e12,
    roofline=floor_s(ops, bytes_moved, precision) / (ms * 1e-3),
  )


def max_errors(got, ref) -> dict:
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  abs_err = float(np.max(np.abs(got - ref)))
  return dict(max_abs_err=abs_err, max_rel_err=abs_err / max(float(np.max(np.abs(ref))), 1e-30))


def check_errors(kernel, reference, xq, w, epilogue: Epilogue) -> dict:
  """Errors of ``kernel`` against ``reference`` with the full epilogue and ``OUT_DTYPE`` output
  (float rounding may differ by an output ulp: FMA contraction, operation order), and
  ``acc_abs_err``: both again with unit scales, no bias and f32 output, i.e. ``f32(int32
  accumulator)`` alone, which must be 0."""
  unit = epilogue._replace(
    a_scale=jnp.float32(1), w_scale=jnp.ones_like(epilogue.w_scale), bias=None
  )
  full = (
    kernel(xq, w, epilogue, out_dtype=OUT_DTYPE),
    reference(xq, w, epilogue, out_dtype=OUT_DTYPE),
  )
  return {
    **max_errors(*full),
    "acc_abs_err": max_errors(kernel(xq, w, unit), reference(xq, w, unit))["max_abs_err"],
  }


class Runner:
  def __init__(self, plan: Plan, out: Path | None = None):
    self.plan, self.results, self.start = plan, [], time.perf_counter()
    self.out = out  # each record is added here as it completes: a killed run keeps its rows

  def case(self, record: dict, body):
    """Run ``body() -> dict`` into ``record``; failures and the time budget are recorded."""
    if time.perf_counter() - self.start > self.plan.budget_s:
      record["error"] = "skipped: time budget"
    else:
      try:
        record.update(body())
      except Exception as exc:  # noqa: BLE001 - one failing variant must not end the run
        record["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        traceback.print_exc(limit=2)
    self.results.append(record)
    print(_row(record), flush=True)
    if self.out is not None:
      results.append(self.out, [record])


def gemm_problem(rng, m, k, n, w_bits, a_bits):
  half_w, half_a = 2 ** (w_bits - 1), 2 ** (a_bits - 1)
  w_codes = rng.integers(-half_w, half_w, (k, n)).astype(np.int8)
  xq = jnp.asarray(rng.integers(-half_a, half_a, (m, k)).astype(np.int8))
  epilogue = Epilogue(
    a_scale=jnp.asarray(rng.uniform(0.01, 0.1, m), jnp.float32),
    w_scale=jnp.asarray(rng.uniform(1e-3, 1e-2, n), jnp.float32),
    bias=jnp.asarray(rng.standard_normal(n), jnp.float32),
  )
  return xq, pack_weight(jnp.asarray(w_codes), w_bits), epilogue


def _backend_blocks(p: Plan):
  """(backend, GemmBlocks) pairs: Pallas backends once per tiling in ``p.pallas_blocks``."""
  return [
    (b, blocks)
    for b in p.gemm_backends
    for blocks in (p.pallas_blocks if b in ("pallas", "interpret") else (GemmBlocks(),))
  ]


def bench_gemms(run: Runner, rng):
  p = run.plan
  shapes = [(tok, k, n) for tok, c in p.levels for k, n in ((c, c), (4 * c, c))]
  shapes += list(p.extra_kn)
  checked = {}
  for batch in p.batches:
    for tokens, k, n in shapes:
      m = batch * tokens
      base = dict(kind="gemm", M=m, K=k, N=n, batch=batch)
      ops = 2.0 * m * k * n
      x_bf = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
      w_bf = jnp.asarray(rng.standard_normal((k, n)), jnp.bfloat16)
      bf16_dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.bfloat16))
      run.case(
        {**base, "variant": "bf16", "backend": "xla-dot"},
        lambda: roofline(
          time_ms(bf16_dot, x_bf, w_bf, repeats=p.repeats), ops, 2 * (m * k + k * n + m * n), "bf16"
        ),
      )
      for variant, (w_bits, a_bits) in (("w8a8", (8, 8)), ("w4a8", (4, 8)), ("w4a4", (4, 4))):
        xq, w, epilogue = gemm_problem(rng, m, k, n, w_bits, a_bits)
        weight_bytes = w.size
        if variant == "w8a8":
          raw = jax.jit(
            lambda a, b: jax.lax.dot_general(
              a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32
            )
          )
          run.case(
            {**base, "variant": "int8-raw", "backend": "xla-dot"},
            lambda: roofline(
              time_ms(raw, xq, w, repeats=p.repeats), ops, m * k + weight_bytes + 4 * m * n, "int8"
            ),
          )
        for backend, blocks in _backend_blocks(p):

          def body(backend=backend, blocks=blocks, xq=xq, w=w, ep=epilogue, variant=variant):
            key = (variant, backend, blocks, k, n)  # check once per weight shape
            if key not in checked:
              rows = min(m, CHECK_ROWS)
              check_ep = ep._replace(a_scale=ep.a_scale[:rows])
              checked[key] = check_errors(
                functools.partial(int_matmul, backend=backend, blocks=blocks),
                int_matmul_ref,
                xq[:rows],
                w,
                check_ep,
              )
            errs = checked[key]
            fn = jax.jit(
              lambda a, b: int_matmul(a, b, ep, out_dtype=OUT_DTYPE, backend=backend, blocks=blocks)
            )
            return {
              **errs,
              **roofline(
                time_ms(fn, xq, w, repeats=p.repeats), ops, m * k + weight_bytes + 2 * m * n, "int8"
              ),
            }

          run.case(
            {**base, "variant": variant, "backend": backend, "blocks": dataclasses.asdict(blocks)},
            body,
          )


def bench_conv(run: Runner, rng):
  for shape in run.plan.convs:
    _bench_one_conv(run, rng, *shape)


def _bench_one_conv(run: Runner, rng, batch: int, hw: int, c: int):
  p = run.plan
  base = dict(kind="conv3x3", M=batch * hw * hw, K=9 * c, N=c, batch=batch)
  ops = 2.0 * batch * hw * hw * 9 * c * c
  act_bytes = batch * hw * hw * c
  x_bf = jnp.asarray(rng.standard_normal((batch, hw, hw, c)), jnp.bfloat16)
  w_bf = jnp.asarray(rng.standard_normal((3, 3, c, c)) * 0.05, jnp.bfloat16)
  bf16_conv = jax.jit(
    lambda a, b: jax.lax.conv_general_dilated(
      a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
  )
  run.case(
    {**base, "variant": "bf16", "backend": "xla-conv"},
    lambda: roofline(time_ms(bf16_conv, x_bf, w_bf, repeats=p.repeats), ops, 4 * act_bytes, "bf16"),
  )
  xq = jnp.asarray(rng.integers(-128, 128, (batch, hw, hw, c)), jnp.int8)
  wq = jnp.asarray(rng.integers(-128, 128, (3, 3, c, c)), jnp.int8)
  epilogue = Epilogue(
    a_scale=jnp.float32(0.02),
    w_scale=jnp.asarray(rng.uniform(1e-3, 1e-2, c), jnp.float32),
    bias=jnp.asarray(rng.standard_normal(c), jnp.float32),
  )
  for backend, blocks in [
    (b, bl)
    for b in p.conv_backends
    for bl in (p.pallas_blocks if b in ("pallas", "interpret") else (GemmBlocks(),))
  ]:

    def body(backend=backend, blocks=blocks):
      small = xq[:1, : min(hw, 32), : min(hw, 32)]
      errs = check_errors(
        functools.partial(int_conv2d, backend=backend, blocks=blocks),
        int_conv2d_ref,
        small,
        wq,
        epilogue,
      )
      fn = jax.jit(
        lambda a, b: int_conv2d(a, b, epilogue, out_dtype=OUT_DTYPE, backend=backend, blocks=blocks)
      )
      return {
        **errs,
        **roofline(time_ms(fn, xq, wq, repeats=p.repeats), ops, 3 * act_bytes, "int8"),
      }

    run.case(
      {**base, "variant": "w8a8", "backend": backend, "blocks": dataclasses.asdict(blocks)}, body
    )


def bench_quantize(run: Runner, rng):
  """The fused quantizer ("a4"), and with the GroupNorm + SiLU prologue ("a4+gn_silu": the
  statistics' reduction is in the timed function for every backend; "xla" is XLA's fusion of the
  same program, the Pallas kernel reads the pre-norm activation once more instead)."""
  p = run.plan
  m, k, block = p.quant
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
  smooth = jnp.asarray(rng.uniform(0.5, 2.0, k), jnp.float32)
  rotation = jnp.asarray(
    np.stack([np.linalg.qr(rng.standard_normal((block, block)))[0] for _ in range(k // block)]),
    jnp.float32,
  )
  gamma, beta = (jnp.asarray(rng.uniform(lo, hi, k), jnp.float32) for lo, hi in ((0.5, 2), (-1, 1)))
  prologues = {
    "a4": lambda a: None,
    "a4+gn_silu": lambda a: group_norm_prologue(
      a.reshape(p.quant_images, -1, k), gamma, beta, groups=32, eps=1e-6
    ),
  }
  bits = jnp.int32(4)
  for variant, prologue in prologues.items():
    base = dict(kind="quantize_act", M=m, K=k, N=block, batch=None, variant=variant)
    for backend in p.quant_backends:

      def body(backend=backend, prologue=prologue):
        affine = prologue(x)
        codes, _ = quantize_act(x, smooth, rotation, bits, prologue=affine, backend=backend)
        ref, _ = quantize_act_ref(x, smooth, rotation, bits, affine)
        fn = jax.jit(
          lambda a, b: quantize_act(a, smooth, rotation, b, prologue=prologue(a), backend=backend)
        )
        return {
          **max_errors(codes, ref),
          **roofline(
            time_ms(fn, x, bits, repeats=p.repeats), 2.0 * m * k * block, 3 * m * k, "bf16"
          ),
        }

      run.case({**base, "backend": backend}, body)


def recommend(rows) -> dict:
  """Per op kind, the GPU backend (+ Pallas tiling) with the best geometric-mean speedup over
  "xla" on the cases where both ran correctly (max rel error < 1e-2); for dispatch.py."""
  best = {}
  for kind, variant in (
    ("gemm", "w8a8"),
    ("gemm", "w4a8"),
    ("conv3x3", "w8a8"),
    ("quantize_act", "a4"),
    ("quantize_act", "a4+gn_silu"),
  ):
    ok = [
      r
      for r in rows
      if r["kind"] == kind
      and r["variant"] == variant
      and "ms" in r
      and r.get("max_rel_err", 1.0) < 1e-2
    ]
    xla = {(r["M"], r["K"], r["N"]): r["ms"] for r in ok if r["backend"] == "xla"}
    gains = {}
    for r in ok:
      if (r["M"], r["K"], r["N"]) in xla and r["backend"] != "interpret":
        label = r["backend"] + _tiling(r)
        gains.setdefault(label, []).append(xla[(r["M"], r["K"], r["N"])] / r["ms"])
    if gains:
      scores = {b: float(np.exp(np.mean(np.log(g)))) for b, g in gains.items()}
      best[f"{kind}/{variant}"] = dict(backend=max(scores, key=scores.get), speedup_vs_xla=scores)
  return best


def _tiling(r: dict) -> str:
  b = r.get("blocks")
  if not b or r["backend"] not in ("pallas", "interpret"):
    return ""
  return f":{b['block_m']}x{b['block_n']}x{b['block_k']}w{b['num_warps']}"


def _row(r: dict) -> str:
  backend = r["backend"] + _tiling(r)
  head = (
    f"{r['kind']:<12} {r['variant']:<8} {backend:<22} M={r['M']:<7} K={r['K']:<5} N={r['N']:<5}"
  )
  if "error" in r:
    return f"{head} ERROR {r['error'][:90]}"
  err = f" err={r['max_rel_err']:.1e}" if "max_rel_err" in r else ""
  err += f" acc_err={r['acc_abs_err']:g}" if "acc_abs_err" in r else ""
  return f"{head} {r['ms']:9.3f} ms {r['tops']:7.1f} TOPS {100 * r['roofline']:5.1f}% roof{err}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--out", type=Path, default=None, help="results file the rows are added to, case by case"
  )
  parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU check)")
  parser.add_argument("--repeats", type=int, default=None, help="timed calls per case")
  parser.add_argument(
    "--budget-s", type=float, default=None, help="stop starting cases after this long"
  )
  parser.add_argument(
    "--batches", default=None, help="comma list replacing the GEMM batches, e.g. 8,1"
  )
  parser.add_argument(
    "--sections",
    default="conv,quantize,gemm",
    help="comma list of conv, quantize, gemm (a call can finish what an earlier one cut)",
  )
  args = parser.parse_args()
  plan = SMOKE if args.smoke else FULL
  if args.repeats:
    plan = dataclasses.replace(plan, repeats=args.repeats)
  if args.budget_s:
    plan = dataclasses.replace(plan, budget_s=args.budget_s)
  if args.batches:
    plan = dataclasses.replace(plan, batches=tuple(int(b) for b in args.batches.split(",")))
  sections = {"conv": bench_conv, "quantize": bench_quantize, "gemm": bench_gemms}
  chosen = args.sections.split(",")
  if unknown := set(chosen) - set(sections):
    parser.error(f"--sections: unknown {sorted(unknown)}; choose from {sorted(sections)}")
  run = Runner(plan, args.out)
  rng = np.random.default_rng(0)
  print(f"device: {jax.devices()[0].device_kind}  jax {jax.__version__}", flush=True)
  for section in (
    sections[name] for name in ("conv", "quantize", "gemm") if name in chosen
  ):  # GEMMs last
    try:
      section(run, rng)
    except Exception:  # noqa: BLE001 - keep the other sections
      traceback.print_exc()
  print("\n==== summary ====")
  for r in run.results:
    print(_row(r))
  summary = dict(
    plan=dataclasses.asdict(plan),
    wall_s=time.perf_counter() - run.start,
    recommendation=recommend(run.results),  # within one run: timings of two runs do not mix
  )
  print("recommendation:", json.dumps(summary["recommendation"], indent=1))
  if args.out:
    results.append(args.out, [], summary=summary)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
