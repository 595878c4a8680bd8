"""Forward + backward of one layer at `sd21` shapes, per XLA GPU autotune level: where a QD-LoRA step's time goes.

The sd21 QD-LoRA step (bench_qdlora) compiled in 5 min at ``--xla_gpu_autotune_level=0`` and then
ran > 120 s per step; autotuned, its compile passed 7 min. This isolates the layer kinds in seconds
of compile each. Per case (a conv or linear of the UNet/VAE at batch --batch, bfloat16):

  fp       the plain layer, gradients for its input and weight (a normal training layer)
  qdlora   the quantface W4A4 QD-LoRA layer (smoothing + Hadamard, fake-quant R frozen, SVD + LoRA
           branches of rank 16 + 16), gradients for its input and the branch factors — what the
           QD-LoRA step runs for every quantized layer
  qdlora_dense     the same with the rotation as a stored dense matrix (``rotation_impl="dense"``)
                   instead of the butterfly
  qdlora_norotate  the same without the Hadamard rotation
  fakequant        the fake-quantized layer alone (no branches), gradient for its input only
The last three split the QD-LoRA overhead (measured 1.5-4x the plain layer on the H200) into the
rotation, the fake quantization and the branches:
``--variants fp,qdlora,qdlora_dense,qdlora_norotate,fakequant --levels 4``.

Each (case, variant) is compiled once per level in --levels (``compiler_options``, one process;
ignored off GPU) and timed (median of --iters; one call when the first takes > 2 s), with the
heaviest device ops of two traced calls (one if slow) (`quantface_jax.profiling`). Rows {case,
variant, level, compile_s, first_ms (the first call: cuDNN may build kernels then), ms, gflop,
tflops, top_ops} are added to the results file --out as each is timed.

    python -m benchmarks.bench_qdlora_layer --out qdlora_layers.json                          # GPU
    python -m benchmarks.bench_qdlora_layer --batch 1 --scale 8 --iters 2 --out /tmp/l.json   # CPU
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import results
from benchmarks.bench_fp import timed
from quantface_jax import profiling
from quantface_jax.models.layers import attention, conv2d
from quantface_jax.quant.layers import QuantConv2d, QuantLinear
from quantface_jax.quant.qdlora import TRAINABLE, qdlora_layer
from quantface_jax.quant.recipes import get_recipe

# name: (kind, spatial size or tokens, d_in, d_out) — for attention (kind, tokens, heads, head dim);
# sd21 at 512² (latents 64²).
CASES = {
  "vae_conv_512px_128": ("conv", 512, 128, 128),
  "vae_conv_256px_256": ("conv", 256, 256, 256),
  "vae_conv_128px_512": ("conv", 128, 512, 512),
  "unet_conv_64px_320": ("conv", 64, 320, 320),
  "unet_conv_16px_1280": ("conv", 16, 1280, 1280),
  "unet_linear_4096tok_320x1280": ("linear", 4096, 320, 1280),
  "unet_attention_4096tok_5x64": ("attention", 4096, 5, 64),
  "vae_attention_4096tok_1x512": ("attention", 4096, 1, 512),
}


SLOW_MS = 2000.0  # a call this slow is timed once and traced once


# variant -> overrides of the quantface body rule (fp is the plain layer).
QUANT_VARIANTS = {
  "qdlora": {},
  "qdlora_dense": dict(rotation_impl="dense"),
  "qdlora_norotate": dict(rotate=False),
  "fakequant": {},
}


def quantface_layer(kind: str, d_in: int, d_out: int, rng: np.random.Generator, **overrides):
  """A W4A4 quantface QuantConv2d / QuantLinear (smoothing, rotation, static activation range)."""
  config = (
    get_recipe("quantface", "W4A4").rules[-1][1].replace(low_rank=0, **overrides)
  )  # the body rule
  shape = (3, 3, d_in, d_out) if kind == "conv" else (d_in, d_out)
  kernel = rng.standard_normal(shape).astype(np.float32) / np.sqrt(np.prod(shape[:-1]))
  common = dict(
    config=config,
    smooth=rng.uniform(0.5, 2.0, d_in).astype(np.float32),
    rotation_signs=rng.choice([-1.0, 1.0], d_in).astype(np.float32),
    a_range=(-4.0, 4.0),
  )
  if kind == "conv":
    return QuantConv2d(
      kernel, np.zeros(d_out, np.float32), stride=1, padding=((1, 1), (1, 1)), **common
    )
  return QuantLinear(kernel, np.zeros(d_out, np.float32), **common)


def build_case(kind: str, size: int, d_in: int, d_out: int, variant: str, batch: int):
  """(loss-and-grad function, its arguments, forward GFLOP of the main GEMM/conv)."""
  rng = np.random.default_rng(0)
  if kind == "attention":  # size tokens, d_in heads of d_out channels; no quantized variant
    qkv = tuple(
      jnp.asarray(rng.standard_normal((batch, size, d_in * d_out)), jnp.bfloat16) for _ in range(3)
    )
    loss = lambda q, k, v: jnp.mean(jnp.square(attention(q, k, v, d_in).astype(jnp.float32)))
    return (
      jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))),
      qkv,
      2 * 2 * batch * size**2 * d_in * d_out / 1e9,
    )
  x_shape = (batch, size, size, d_in) if kind == "conv" else (batch, size, d_in)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.bfloat16)
  pixels = batch * (size * size if kind == "conv" else size)
  gflop = 2 * pixels * d_in * d_out * (9 if kind == "conv" else 1) / 1e9
  if variant == "fp":
    shape = (3, 3, d_in, d_out) if kind == "conv" else (d_in, d_out)
    w = jnp.asarray(rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1])), jnp.bfloat16)
    apply = (
      (lambda w, x: conv2d(x, w, 1, ((1, 1), (1, 1)))) if kind == "conv" else (lambda w, x: x @ w)
    )
    loss = lambda w, x: jnp.mean(jnp.square(apply(w, x).astype(jnp.float32)))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), (w, x), gflop
  quant = quantface_layer(kind, d_in, d_out, rng, **QUANT_VARIANTS[variant])
  if variant == "fakequant":
    graphdef, frozen = nnx.split(quant)
    loss = lambda x, frozen: jnp.mean(
      jnp.square(nnx.merge(graphdef, frozen)(x).astype(jnp.float32))
    )
    return jax.jit(jax.value_and_grad(loss)), (x, frozen), gflop
  layer = qdlora_layer(quant, rank=16, lora_rank=16, sigma=0.02, rng=rng)
  graphdef, branches, frozen = nnx.split(layer, TRAINABLE, ...)

  def loss(branches, x, frozen):
    return jnp.mean(jnp.square(nnx.merge(graphdef, branches, frozen)(x).astype(jnp.float32)))

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), (branches, x, frozen), gflop


def run(case: str, variant: str, level: int | None, args) -> dict:
  kind, size, d_in, d_out = CASES[case]
  size = max(size // args.scale, 4) if kind == "conv" else max(size // args.scale, 1)
  if kind == "attention":  # keep the heads; a CPU check shrinks tokens and head dims only
    fn, fn_args, gflop = build_case(
      kind, size, d_in, max(d_out // args.scale, 8), variant, args.batch
    )
  else:
    fn, fn_args, gflop = build_case(
      kind, size, d_in // args.scale, d_out // args.scale, variant, args.batch
    )
  t0 = time.perf_counter()
  options = {"xla_gpu_autotune_level": level} if level is not None else None
  compiled = fn.lower(*fn_args).compile(compiler_options=options)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(compiled(*fn_args))  # may build cuDNN's runtime-compiled kernels
  first_ms = (time.perf_counter() - t0) * 1e3
  calls = args.iters if first_ms < SLOW_MS else 1  # a pathological case must not eat the call
  ms = timed(lambda: compiled(*fn_args), jax.block_until_ready, warmup=0, iters=calls)
  top = profiling.trace_calls(lambda: compiled(*fn_args), calls=2 if ms < SLOW_MS else 1, top=4)
  row = dict(
    case=case,
    variant=variant,
    level=level,
    batch=args.batch,
    scale=args.scale,
    compile_s=compile_s,
    first_ms=first_ms,
    ms=ms,
    gflop=gflop,
    tflops=3 * gflop / ms,  # forward + two backward GEMMs/convs
    top_ops=top,
  )
  print(json.dumps(row), flush=True)
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}"
  )
  parser.add_argument(
    "--variants", default="fp,qdlora", help=f"comma-separated, of fp, {', '.join(QUANT_VARIANTS)}"
  )
  parser.add_argument("--levels", default="0,4", help="XLA GPU autotune levels compared (GPU only)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument(
    "--scale", type=int, default=1, help="divide sizes and channels by this (CPU checks)"
  )
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument(
    "--budget-s", type=float, default=480.0, help="start no new case after this many seconds"
  )
  parser.add_argument("--out", required=True, help="results file each row is added to")
  args = parser.parse_args()
  start = time.perf_counter()
  levels = [int(v) for v in args.levels.split(",")] if jax.default_backend() == "gpu" else [None]
  for case in args.cases.split(","):
    for variant in args.variants.split(","):
      if variant != "fp" and CASES[case][0] == "attention":
        continue  # the attention core is not quantized
      for level in levels:
        if time.perf_counter() - start > args.budget_s:
          print(
            f"budget of {args.budget_s:.0f} s spent: {case}/{variant}/level {level} and later not run",
            flush=True,
          )
          return
        results.append(args.out, [run(case, variant, level, args)])


if __name__ == "__main__":
  main()
