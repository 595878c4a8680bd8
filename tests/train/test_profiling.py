"""Tests for quantface_jax.train.profiling's HLO summary."""

import jax
import jax.numpy as jnp

from quantface_jax.train.profiling import hlo_summary

# A GPU-shaped module, as XLA writes it after optimization: the SiLU and the quantizer fused into one
# s8-writing fusion that feeds cuDNN's int8 conv (a library call, not an HLO convolution).
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

ENTRY %main (x: bf16[16,512,512,128], w: s8[3,3,128,128], y: bf16[16,64,64,320]) -> f32[16,512,512,128] {
  %x = bf16[16,512,512,128]{3,2,1,0} parameter(0)
  %w = s8[3,3,128,128]{3,2,1,0} parameter(1)
  %y = bf16[16,64,64,320]{3,2,1,0} parameter(2)
  %q = s8[16,512,512,128]{3,2,1,0} fusion(%x), kind=kLoop, calls=%fused_quantize
  %silu = bf16[16,64,64,320]{3,2,1,0} fusion(%y), kind=kLoop, calls=%fused_silu
  %conv = (f32[16,512,512,128]{3,2,1,0}, u8[0]{0}) custom-call(%q, %w), window={size=3x3 pad=1_1x1_1}, custom_call_target="__cudnn$convForward", backend_config={"algo":{"algo_id":"1"}}
  ROOT %gte = f32[16,512,512,128]{3,2,1,0} get-tuple-element(%conv), index=0
}
"""


def test_hlo_summary_reads_library_convs_and_prologue_fusions():
  summary = hlo_summary(GPU_LIKE)
  assert summary["custom_calls"] == {"__cudnn$convForward": 1}
  assert summary["convolutions"] == {"__cudnn$convForward s8,s8 -> f32": 1}
  assert summary["fusions"] == 2
  assert (summary["integer_fusions"], summary["integer_fusions_with_sigmoid"]) == (1, 1)
  assert summary["float_fusions_with_sigmoid"] == 1  # the SiLU written out in bf16


def test_hlo_summary_of_a_compiled_norm_silu_quantize_conv():
  def layer(x, w):
    mean = x.mean(axis=(1, 2), keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(jnp.square(x - mean).mean(axis=(1, 2), keepdims=True) + 1e-5)
    codes = jnp.clip(jnp.round(jax.nn.silu(y) / 0.05), -128, 127).astype(jnp.int8)
    return jax.lax.conv_general_dilated(codes, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        preferred_element_type=jnp.int32)

  text = jax.jit(layer).lower(jnp.ones((2, 8, 8, 8)), jnp.ones((3, 3, 8, 8), jnp.int8)).compile().as_text()
  summary = hlo_summary(text)
  assert sum(summary["convolutions"].values()) == 1, summary
  # XLA fuses the SiLU into the op writing the codes (the CPU backend writes them as s32 for its conv).
  assert summary["integer_fusions_with_sigmoid"] == 1 and summary["float_fusions_with_sigmoid"] == 0, summary
