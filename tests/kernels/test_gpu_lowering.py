"""The GPU kernels lower for CUDA on a CPU-only machine (``lowering_platforms=("cuda",)``): a
primitive without a Pallas Triton or Mosaic GPU lowering rule fails here, not on a GPU.
``quantize_act`` once failed this way on an H200 (``round`` had no Triton lowering)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantface_jax.kernels import Epilogue, pack_weight
from quantface_jax.kernels.conv import int_conv2d_implicit
from quantface_jax.kernels.gemm import int_matmul_pallas
from quantface_jax.kernels.mosaic import int_matmul_mosaic
from quantface_jax.kernels.quantize_act import quantize_act_pallas


def _lower_for_cuda(fn, *args) -> str:
  return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize(
  "k,smooth,block,prologue",
  [
    (128, False, None, False),
    (128, True, None, False),
    (128, True, 64, False),
    (320, False, None, False),
    (48, True, None, False),
    (80, True, 20, False),
    (320, True, 64, True),
    (80, True, 20, True),
  ],
)
def test_quantize_act_lowers_to_triton(k, smooth, block, prologue):
  """Triton tiles must be powers of two: sd21's widths (320, 640, 1280) and non-power-of-two
  rotation blocks are padded inside (the serving model of `tiny`, K = 48, found this); the
  GroupNorm + SiLU prologue (3 images of 32 rows) lowers too."""
  x = jnp.zeros((96, k), jnp.bfloat16)
  smooth_arr = jnp.ones(k) if smooth else None
  rotation = jnp.stack([jnp.eye(block)] * (k // block)) if block else None
  affine = (jnp.ones((3, k)), jnp.zeros((3, k))) if prologue else None
  text = _lower_for_cuda(
    lambda x: quantize_act_pallas(x, smooth_arr, rotation, jnp.int32(4), affine), x
  )
  assert "triton" in text


@pytest.mark.parametrize("int4,r", [(False, 16), (True, 16), (True, 40)])
def test_int_matmul_lowers_to_triton_with_full_epilogue(int4, r):
  m, k, n = 100, 256, 192
  codes_kn = np.random.default_rng(0).integers(-7, 8, (k, n)).astype(np.int8)
  w_stored = pack_weight(codes_kn, 4 if int4 else 8)
  epilogue = Epilogue(
    a_scale=jnp.ones(m),
    w_scale=jnp.ones(n),
    a_zero=jnp.zeros(m, jnp.int32),
    w_colsum=jnp.zeros(n, jnp.int32),
    bias=jnp.zeros(n),
    lowrank_x=jnp.zeros((m, r)),
    lowrank_l2=jnp.zeros((r, n)),
  )
  text = _lower_for_cuda(
    lambda x: int_matmul_pallas(x, w_stored, epilogue), jnp.zeros((m, k), jnp.int8)
  )
  assert "triton" in text


def test_int_matmul_lowers_to_mosaic_gpu():
  m, k, n = 256, 384, 256
  text = _lower_for_cuda(
    lambda x, w: int_matmul_mosaic(
      x,
      w,
      Epilogue(a_scale=jnp.ones(m), w_scale=jnp.ones(n), bias=jnp.zeros(n)),
      out_dtype=jnp.bfloat16,
    ),
    jnp.zeros((m, k), jnp.int8),
    jnp.zeros((n, k), jnp.int8),
  )
  assert "mosaic_gpu" in text


def test_implicit_conv_lowers_to_triton():
  c_in, c_out = 64, 96
  text = _lower_for_cuda(
    lambda x, w: int_conv2d_implicit(
      x,
      w,
      Epilogue(a_scale=0.1, w_scale=jnp.ones(c_out), bias=jnp.zeros(c_out), a_zero=jnp.int32(2)),
      out_dtype=jnp.bfloat16,
    ),
    jnp.zeros((2, 20, 20, c_in), jnp.int8),
    jnp.zeros((3, 3, c_in, c_out), jnp.int8),
  )
  assert "triton" in text
