"""Size and BOPs account of a (planned or applied) quantization against FP32 (docs/design.md §2.6).

Parameter bits: quantized kernels at w_bits; weight scales (and zero points if asymmetric) fp16 per
scale group; static activation scale + zero point fp32; smoothing scales fp16 per input channel;
rotations a seed + a size (64 bits); low-rank factors bf16; every other parameter (biases, norms,
the untouched VRE/embedding_change, ...) fp32. BOPs: MACs × w_bits × a_bits per Linear/Conv2d
(low-rank branch at 16×16, full-precision layers at 32×32) for one image at ``resolution``; MACs
come from traced shapes (conv: H_out·W_out·kh·kw·C_in·C_out). Attention score/value matmuls are
not layers and not counted. Works on ``nnx.eval_shape`` models (nothing is allocated).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from quantface_jax.quant import rules as rules_lib
from quantface_jax.quant.layers import QUANT_LAYERS
from quantface_jax.quant.rules import LayerQuantConfig

_LAYERS = rules_lib.FP_LAYERS + QUANT_LAYERS
_SHAPES: dict[str, tuple] = {}


class _Probe(nnx.Module):
  """Records a layer's output shape while the model is traced."""

  def __init__(self, layer: nnx.Module, path: str):
    self.layer = layer
    self.path = path

  def __call__(self, x):
    y = self.layer(x)
    _SHAPES[self.path] = y.shape
    return y


# Output shapes by (model config, resolution): they follow from the architecture alone, and tracing
# the model for them takes seconds, once per QDIR written or account printed otherwise.
_SHAPE_CACHE: dict[tuple, dict[str, tuple]] = {}


def _output_shapes(model: nnx.Module, layers: dict, resolution: int) -> dict[str, tuple]:
  key = (model.config, resolution)
  cached = _SHAPE_CACHE.get(key)
  if cached is None or not layers.keys() <= cached.keys():
    _SHAPE_CACHE[key] = cached = _traced_output_shapes(model, layers, resolution)
  return {path: cached[path] for path in layers}


def _traced_output_shapes(model: nnx.Module, layers: dict, resolution: int) -> dict[str, tuple]:
  for path, layer in layers.items():
    rules_lib.set_module(model, path, _Probe(layer, path))
  try:
    graphdef, state = nnx.split(model)
    _SHAPES.clear()
    jax.eval_shape(
      lambda s, x: nnx.merge(graphdef, s).restore(x).image,
      state,
      jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32),
    )
    return dict(_SHAPES)
  finally:
    for path, layer in layers.items():
      rules_lib.set_module(model, path, layer)


def _bits_of(layer, config: LayerQuantConfig) -> tuple[int, int]:
  values = (layer.w_bits[...], layer.a_bits[...]) if isinstance(layer, QUANT_LAYERS) else ()
  if len(values) == 2 and not any(isinstance(v, jax.ShapeDtypeStruct) for v in values):
    return int(values[0]), int(values[1])
  return config.w_bits, config.a_bits


def account(
  model: nnx.Module, *, rules: rules_lib.Rules | None = None, resolution: int | None = None
) -> dict:
  """Bits and BOPs of ``model``'s quantized layers (or of the plan ``rules`` on an FP model).

  Returns a dict: per-layer rows, totals (``param_bits`` and its split ``bits_by_dtype``
  (int<w>: quantized kernels, fp16: scales, bf16: low-rank, seed: rotations, fp32: the rest),
  ``fp32_bits``, ``bf16_bits``,
  ``weight_bits``/``fp32_weight_bits`` for the quantized kernels alone, ``bops``, ``fp32_bops``)
  and reductions in percent (``param_reduction_vs_fp32``, ``param_reduction_vs_bf16``,
  ``weight_reduction``, ``bops_reduction``).
  """
  resolution = resolution or model.config.resolution
  layers = dict(rules_lib.iter_layers(model, _LAYERS))
  shapes = _output_shapes(model, layers, resolution)
  total_params = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  rows, layer_params, by_dtype = [], 0, {}
  totals = dict(param_bits=0, weight_bits=0, fp32_weight_bits=0, bops=0, fp32_bops=0)
  for path, layer in layers.items():
    kernel = layer.kernel.shape
    n_kernel, n_bias = math.prod(kernel), 0 if layer.bias is None else kernel[-1]
    config = (
      layer.config
      if isinstance(layer, QUANT_LAYERS)
      else (rules_lib.match(rules, path) if rules else None)
    )
    macs = math.prod(shapes[path][:-1]) * n_kernel
    fp32_bops = macs * 32 * 32
    if config is None:
      w_bits = a_bits = 32
      bits, bops, rank = (n_kernel + n_bias) * 32, fp32_bops, 0
      by_dtype["fp32"] = by_dtype.get("fp32", 0) + bits
    else:
      w_bits, a_bits = _bits_of(layer, config)
      rank = (
        _live_rank(layer)
        if isinstance(layer, QUANT_LAYERS)
        else min(config.low_rank, math.prod(kernel[:-1]), kernel[-1])
      )
      n_scales = kernel[-1] if config.w_granularity == "per_channel" else 1
      n_low_rank = rank * (math.prod(kernel[:-1]) + kernel[-1])
      parts = {
        f"int{w_bits}": n_kernel * w_bits,
        "fp16": n_scales * 16 * (1 if config.w_symmetric else 2)
        + (kernel[-2] * 16 if config.smooth else 0),
        "fp32": (64 if config.a_mode == "static" else 0) + n_bias * 32,
        "seed": 64 if config.rotate else 0,
        "bf16": n_low_rank * 16,
      }
      bits = sum(parts.values())
      for dtype, n in parts.items():
        by_dtype[dtype] = by_dtype.get(dtype, 0) + n
      bops = macs * w_bits * a_bits + math.prod(shapes[path][:-1]) * n_low_rank * 16 * 16
      totals["weight_bits"] += n_kernel * w_bits
      totals["fp32_weight_bits"] += n_kernel * 32
    layer_params += n_kernel + n_bias + _low_rank_params(layer)
    totals["param_bits"] += bits
    totals["bops"] += bops
    totals["fp32_bops"] += fp32_bops
    rows.append(
      dict(
        path=path,
        w_bits=w_bits,
        a_bits=a_bits,
        low_rank=rank,
        macs=macs,
        param_bits=bits,
        bops=bops,
      )
    )
  totals["param_bits"] += (total_params - layer_params) * 32  # Everything outside the layers.
  by_dtype["fp32"] = by_dtype.get("fp32", 0) + (total_params - layer_params) * 32
  original = total_params - sum(_low_rank_params(layer) for layer in layers.values())
  totals["fp32_bits"] = original * 32
  totals["bf16_bits"] = original * 16
  pct = lambda new, old: 100.0 * (1.0 - new / old) if old else 0.0
  return dict(
    layers=rows,
    resolution=resolution,
    **totals,
    bits_by_dtype=by_dtype,
    param_reduction_vs_fp32=pct(totals["param_bits"], totals["fp32_bits"]),
    param_reduction_vs_bf16=pct(totals["param_bits"], totals["bf16_bits"]),
    weight_reduction=pct(totals["weight_bits"], totals["fp32_weight_bits"]),
    bops_reduction=pct(totals["bops"], totals["fp32_bops"]),
  )


# Factor pairs (down, up) a quantized layer may carry: the PTQ low-rank split and QD-LoRA's SVD and
# LoRA branches (they merge into one pair of rank r_svd + r_lora on export).
_BRANCHES = (("low_rank_down", "low_rank_up"), ("svd_down", "svd_up"), ("lora_down", "lora_up"))


def _branches(layer) -> list[tuple]:
  if not isinstance(layer, QUANT_LAYERS):
    return []
  pairs = [(getattr(layer, d, None), getattr(layer, u, None)) for d, u in _BRANCHES]
  return [(d, u) for d, u in pairs if d is not None]


def _live_rank(layer) -> int:
  """Total rank of the low-rank branches the layer carries (what its export stores)."""
  return sum(up.shape[0] for _, up in _branches(layer))


def _low_rank_params(layer) -> int:
  """Parameters of the applied low-rank branches (not part of the original model)."""
  return sum(math.prod(d.shape) + math.prod(u.shape) for d, u in _branches(layer))


def account_table(report: dict) -> str:
  """A markdown table of :func:`account`'s totals and reductions."""
  gib = lambda bits: f"{bits / 8 / 2**20:,.1f} MiB"
  gbops = lambda b: f"{b / 1e12:,.2f} TBOPs"
  lines = [
    "| quantity | quantized | reference | reduction |",
    "|---|---|---|---|",
    f"| parameters vs FP32 | {gib(report['param_bits'])} | {gib(report['fp32_bits'])} | "
    f"{report['param_reduction_vs_fp32']:.1f}% |",
    f"| parameters vs BF16 | {gib(report['param_bits'])} | {gib(report['bf16_bits'])} | "
    f"{report['param_reduction_vs_bf16']:.1f}% |",
    f"| quantized kernels | {gib(report['weight_bits'])} | {gib(report['fp32_weight_bits'])} | "
    f"{report['weight_reduction']:.1f}% |",
    f"| BOPs @ {report['resolution']} px | {gbops(report['bops'])} | "
    f"{gbops(report['fp32_bops'])} | {report['bops_reduction']:.1f}% |",
  ]
  return "\n".join(lines)
