"""Tests for quantface_jax.profiling's HLO readers."""

import jax
import jax.numpy as jnp

from quantface_jax.profiling import hlo_summary, op_kinds, time_by_kind

# A GPU-shaped module, as XLA writes it after optimization: the SiLU and the quantizer fused into one
# s8-writing fusion that feeds cuDNN's int8 conv (a library call, not an HLO convolution), whose f32
# result a dequantizing fusion scales to bf16.
GPU_LIKE = """HloModule jit_f

%fused_quantize (p0: bf16[16,512,512,128]) -> s8[16,512,512,128] {
  %p0 = bf16[16,512,512,128]{3,2,1,0} parameter(0)
  %logistic.1 = bf16[16,512,512,128]{3,2,1,0} logistic(%p0)
  %multiply.1 = bf16[16,512,512,128]{3,2,1,0} multiply(%p0, %logistic.1)
  ROOT %convert.1 = s8[16,512,512,128]{3,2,1,0} convert(%multiply.1)
}

%fused_silu (p0: bf16[16,64,64,320]) -> bf16[16,64,64,320] {
  %p0 = bf16[16,64,64,320]{3,2,1,0} parameter(0)
  %logistic.2 = bf16[16,64,64,320]{3,2,1,0} logistic(%p0)
  ROOT %multiply.2 = bf16[16,64,64,320]{3,2,1,0} multiply(%p0, %logistic.2)
}

%fused_dequantize (p0: f32[16,512,512,128]) -> bf16[16,512,512,128] {
  %p0 = f32[16,512,512,128]{3,2,1,0} parameter(0)
  %c = f32[] constant(0.5)
  %b = f32[16,512,512,128]{3,2,1,0} broadcast(%c), dimensions={}
  %m = f32[16,512,512,128]{3,2,1,0} multiply(%p0, %b)
  ROOT %convert.2 = bf16[16,512,512,128]{3,2,1,0} convert(%m)
}

ENTRY %main (x: bf16[16,512,512,128], w: s8[3,3,128,128], y: bf16[16,64,64,320]) -> bf16[16,512,512,128] {
  %x = bf16[16,512,512,128]{3,2,1,0} parameter(0)
  %w = s8[3,3,128,128]{3,2,1,0} parameter(1)
  %y = bf16[16,64,64,320]{3,2,1,0} parameter(2)
  %q = s8[16,512,512,128]{3,2,1,0} fusion(%x), kind=kLoop, calls=%fused_quantize
  %silu = bf16[16,64,64,320]{3,2,1,0} fusion(%y), kind=kLoop, calls=%fused_silu
  %conv = (f32[16,512,512,128]{3,2,1,0}, u8[0]{0}) custom-call(%q, %w), window={size=3x3 pad=1_1x1_1}, custom_call_target="__cudnn$convForward", backend_config={"algo":{"algo_id":"1"}}
  %gte = f32[16,512,512,128]{3,2,1,0} get-tuple-element(%conv), index=0
  ROOT %dequantize = bf16[16,512,512,128]{3,2,1,0} fusion(%gte), kind=kLoop, calls=%fused_dequantize
}
"""


def test_hlo_summary_reads_library_convs_and_prologue_fusions():
  summary = hlo_summary(GPU_LIKE)
  assert summary["custom_calls"] == {"__cudnn$convForward": 1}
  assert summary["convolutions"] == {"__cudnn$convForward s8,s8 -> f32": 1}
  assert summary["fusions"] == 3
  assert (summary["integer_fusions"], summary["integer_fusions_with_sigmoid"]) == (1, 1)
  assert summary["float_fusions_with_sigmoid"] == 1  # the SiLU written out in bf16


def test_hlo_summary_of_a_compiled_norm_silu_quantize_conv():
  def layer(x, w):
    mean = x.mean(axis=(1, 2), keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(jnp.square(x - mean).mean(axis=(1, 2), keepdims=True) + 1e-5)
    codes = jnp.clip(jnp.round(jax.nn.silu(y) / 0.05), -128, 127).astype(jnp.int8)
    return jax.lax.conv_general_dilated(
      codes,
      w,
      (1, 1),
      "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      preferred_element_type=jnp.int32,
    )

  text = (
    jax.jit(layer)
    .lower(jnp.ones((2, 8, 8, 8)), jnp.ones((3, 3, 8, 8), jnp.int8))
    .compile()
    .as_text()
  )
  summary = hlo_summary(text)
  assert sum(summary["convolutions"].values()) == 1, summary
  # XLA fuses the SiLU into the op writing the codes (the CPU backend writes them as s32 for its conv).
  assert (
    summary["integer_fusions_with_sigmoid"] == 1 and summary["float_fusions_with_sigmoid"] == 0
  ), summary


def test_op_kinds_name_the_passes_of_an_integer_layer():
  kinds = op_kinds(GPU_LIKE)
  assert kinds["q"] == "quantize -> s8"
  assert kinds["silu"] == "elementwise -> bf16"
  assert kinds["conv"] == "conv s8,s8 -> f32"
  # Reached through the conv's get-tuple-element: the pass a bf16 layer does not make.
  assert kinds["dequantize"] == "dequantize (reads an integer op's output)"
  assert "p0" not in kinds and "convert.2" not in kinds  # fusion bodies count through their fusions


def test_op_kinds_of_a_compiled_program_cover_its_gemm_and_reduction():
  def f(x, w):
    h = x @ w
    return h / h.sum(axis=-1, keepdims=True)

  kinds = op_kinds(jax.jit(f).lower(jnp.ones((8, 16)), jnp.ones((16, 32))).compile().as_text())
  assert any(k.startswith("gemm f32,f32 -> f32") for k in kinds.values()), kinds
  assert any(k.startswith("reduction") or k.startswith("elementwise") for k in kinds.values()), (
    kinds
  )


def test_time_by_kind_sums_each_kind_and_keeps_unnamed_ops_apart():
  ops = [
    dict(op="conv", ms_per_step=2.0),
    dict(op="q", ms_per_step=1.5),
    dict(op="dequantize", ms_per_step=1.0),
    dict(op="silu", ms_per_step=0.25),
    dict(op="MemcpyD2H", ms_per_step=0.125),
  ]
  rows = time_by_kind(ops, op_kinds(GPU_LIKE))
  assert rows[0] == dict(kind="conv s8,s8 -> f32", ms_per_step=2.0, ops=1)
  assert {r["kind"]: r["ms_per_step"] for r in rows}["other"] == 0.125
  assert sum(r["ms_per_step"] for r in rows) == sum(o["ms_per_step"] for o in ops)
