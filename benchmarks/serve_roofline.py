"""Roofline floors of the quantized layers of a restore: what int8 serving can gain over bf16, by design.

A model, not a measurement: it traces the model abstractly (no weights are allocated), records the
input and output shape of every Linear / Conv2d that docs/design.md §2.1 quantizes, and gives each
layer the floor max(ops / peak, bytes / bandwidth) on the H200 (989 TFLOP/s dense bf16, 1,979 TOPS
int8, 4.8 TB/s) for three ways of running it:

  bf16        the layer as our bf16 model runs it: bf16 activations in and out, bf16 weights
  int8_built  what the serving path runs today: the quantize pass (bf16 in, int8 codes out), the
              int8 conv/GEMM writing f32 (cuDNN's int8 conv) or int32 (cuBLASLt), and the
              dequantizing epilogue as its own pass (f32/int32 in, bf16 out)
  int8_fused  the kernels of docs/design.md §2.6: quantize fused into the producer's epilogue (int8
              codes are what the previous op writes), dequantization fused into the GEMM (bf16 out)

The operations between the layers (GroupNorm, SiLU, attention cores, residual adds) are the same in
all three and are not counted: the measured bf16 restore minus the bf16 floor bounds them from
below. Weights count at their stored width (W4: half a byte). Usage:

    python -m benchmarks.serve_roofline --preset sd21 --batch 16 --out benchmarks/results/serve_roofline_sd21.json
"""

from __future__ import annotations

import argparse
import collections
import math
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import results
from benchmarks.bench_kernels import floor_s  # the H200 peaks and bandwidth, one place
from quantface_jax.models import PRESETS, build
from quantface_jax.models.layers import Conv2d
from quantface_jax.quant import get_recipe
from quantface_jax.quant import rules as rules_lib


class _ShapeProbe(nnx.Module):
  """Stands in for a layer during an abstract trace and records (input shape, output shape)."""

  def __init__(self, layer: nnx.Module, path: str, shapes: dict):
    self.layer, self.path, self.shapes = layer, path, shapes

  def __call__(self, x):
    y = self.layer(x)
    self.shapes[self.path] = (tuple(x.shape), tuple(y.shape))
    return y


def layer_shapes(preset: str, batch: int, bits: str) -> list[dict]:
  """{path, kind, w_bits, rows M, K, N, in_elems, out_elems} of every layer the ``rtn`` recipe at
  ``bits`` quantizes (the scope of docs/design.md §2.1: first/last layers at W8A8), in traversal
  order."""
  model = nnx.eval_shape(lambda: build(preset))
  shapes, configs = {}, {}
  rules = get_recipe("rtn", bits).rules
  for path, _ in rules_lib.iter_layers(model, rules_lib.FP_LAYERS):
    if (config := rules_lib.match(rules, path)) is not None:
      configs[path] = config
  layers = [(path, rules_lib.get_module(model, path)) for path in configs]
  for path, layer in layers:
    rules_lib.set_module(model, path, _ShapeProbe(layer, path, shapes))
  graphdef, state = nnx.split(model)
  res = PRESETS[preset].resolution
  jax.eval_shape(
    lambda s, lq: nnx.merge(graphdef, s).restore(lq, dtype=jnp.bfloat16).image,
    state,
    jax.ShapeDtypeStruct((batch, res, res, 3), jnp.float32),
  )
  rows = []
  for path, layer in layers:
    (x_shape, y_shape) = shapes[path]
    kernel = layer.kernel.shape
    k = kernel[0] * kernel[1] * kernel[2] if isinstance(layer, Conv2d) else kernel[0]
    n = kernel[-1]
    out_elems = math.prod(y_shape)
    rows.append(
      dict(
        path=path,
        kind="conv" if isinstance(layer, Conv2d) else "linear",
        w_bits=configs[path].w_bits,
        M=out_elems // n,
        K=k,
        N=n,
        in_elems=math.prod(x_shape),
        out_elems=out_elems,
      )
    )
  return rows


def floors_ms(row: dict) -> dict:
  """The three floors of one layer (ms)."""
  ops = 2.0 * row["M"] * row["K"] * row["N"]
  x, y, w = row["in_elems"], row["out_elems"], row["K"] * row["N"]
  w_bytes = w * row["w_bits"] / 8
  acc_bytes = 4  # cuDNN's int8 conv writes f32, cuBLASLt's int8 GEMM int32
  t = lambda ops_, bytes_, precision: floor_s(ops_, bytes_, precision) * 1e3
  return dict(
    bf16=t(ops, 2 * x + 2 * y + 2 * w, "bf16"),
    int8_built=(
      t(0, 2 * x + x, "int8")  # quantize: bf16 -> int8 codes
      + t(ops, x + acc_bytes * y + w_bytes, "int8")  # integer conv / GEMM
      + t(0, acc_bytes * y + 2 * y, "int8")
    ),  # dequantizing epilogue -> bf16
    int8_fused=t(ops, x + 2 * y + w_bytes, "int8"),
  )


def component(path: str) -> str:
  """unet | vae.encoder | vae.decoder (quant_conv counts with the encoder, post_quant_conv with the decoder)."""
  if path.startswith("unet."):
    return "unet"
  part = path.split(".")[1]
  return {"quant_conv": "vae.encoder", "post_quant_conv": "vae.decoder"}.get(part, "vae." + part)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="sd21")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--bits", default="W4A8", help="body width (first/last layers stay W8A8)")
  p.add_argument(
    "--out", type=Path, default=None, help="results file: per-layer rows, per-component sums"
  )
  args = p.parse_args()
  rows = layer_shapes(args.preset, args.batch, args.bits)
  sums = collections.defaultdict(lambda: collections.Counter())
  for row in rows:
    row.update(floors_ms(row))
    for name in ("bf16", "int8_built", "int8_fused"):
      sums[component(row["path"])][name] += row[name]
      sums["total"][name] += row[name]
    sums[component(row["path"])]["layers"] += 1
    sums["total"]["layers"] += 1
  print(f"{args.preset}, batch {args.batch}, {args.bits} body: floors of the quantized layers (ms)")
  print("| component | layers | bf16 | int8 as built | int8 fused | built / bf16 | fused / bf16 |")
  print("|---|---|---|---|---|---|---|")
  for name, s in sorted(sums.items(), key=lambda item: item[0] == "total"):
    print(
      f"| {name} | {s['layers']} | {s['bf16']:.1f} | {s['int8_built']:.1f} | {s['int8_fused']:.1f} "
      f"| {s['int8_built'] / s['bf16']:.2f} | {s['int8_fused'] / s['bf16']:.2f} |"
    )
  if args.out:
    sums = {k: dict(v) for k, v in sums.items()}
    results.write(
      args.out, rows, summary=dict(preset=args.preset, batch=args.batch, bits=args.bits, sums=sums)
    )


if __name__ == "__main__":
  main()
