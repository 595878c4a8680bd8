"""Backend choice for the integer kernels.

``backend``: ``"auto"`` | ``"xla"`` | ``"pallas"`` (Pallas, Triton lowering on GPU) | ``"mosaic"``
(Pallas Mosaic GPU, Hopper only, W8A8 GEMM only) | ``"interpret"`` (Pallas interpreter, any device;
what the CPU tests use). ``"auto"`` is XLA on CPU/TPU and the measured-fastest backend on GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from quantface_jax.kernels.conv import im2col, int_conv2d_implicit, int_conv2d_xla, pad_codes
from quantface_jax.kernels.gemm import GemmBlocks, int_matmul_pallas, int_matmul_xla
from quantface_jax.kernels.mosaic import int_matmul_mosaic
from quantface_jax.kernels.quantize_act import quantize_act_pallas, quantize_act_xla

# Fastest GPU backends as measured by benchmarks/bench_kernels.py on an H200; "xla" until measured.
GEMM_GPU_BACKEND = "xla"
QUANTIZE_GPU_BACKEND = "xla"
CONV_GPU_BACKEND = "xla"

_BACKENDS = ("auto", "xla", "pallas", "mosaic", "interpret")


def _resolve(backend: str, gpu_default: str) -> str:
  if backend not in _BACKENDS:
    raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
  if backend != "auto":
    return backend
  return gpu_default if jax.default_backend() == "gpu" else "xla"


def int_matmul(
  xq,
  w,
  *,
  a_scale,
  w_scale,
  a_zero=None,
  w_colsum=None,
  bias=None,
  lowrank_x=None,
  lowrank_l2=None,
  out_dtype=jnp.float32,
  backend: str = "auto",
  blocks: GemmBlocks = GemmBlocks(),
):
  """y[M, N] = f32(xq @ W^T - a_zero * w_colsum) * a_scale * w_scale + bias + lowrank_x @ lowrank_l2.

  ``xq`` int8 [M, K]; ``w`` int8 [N, K] or packed int4 uint8 [N, ceil(K/2)] (see `packing`);
  ``a_scale`` f32 [M] or scalar; ``w_scale`` f32 [N] or scalar; ``a_zero`` int32 [M] or scalar
  with ``w_colsum`` int32 [N]; ``bias`` [N]; ``lowrank_x`` f32 [M, r] (= x_fp @ L1, computed by
  the caller); ``lowrank_l2`` f32 [r, N] -> ``out_dtype`` [M, N]. ``blocks`` tunes "pallas".
  """
  kw = dict(
    a_scale=a_scale,
    w_scale=w_scale,
    a_zero=a_zero,
    w_colsum=w_colsum,
    bias=bias,
    lowrank_x=lowrank_x,
    lowrank_l2=lowrank_l2,
    out_dtype=out_dtype,
  )
  match _resolve(backend, GEMM_GPU_BACKEND):
    case "xla":
      return int_matmul_xla(xq, w, **kw)
    case "mosaic":
      return int_matmul_mosaic(xq, w, **kw)
    case "pallas":
      return int_matmul_pallas(xq, w, **kw, blocks=blocks)
    case "interpret":
      return int_matmul_pallas(xq, w, **kw, blocks=blocks, interpret=True)


def quantize_act(x, smooth, rotation, bits, *, prologue=None, backend: str = "auto"):
  """x [M, K] -> (int8 codes [M, K], f32 scales [M]): ``(x / smooth) @ rotation`` (either may be
  None: skipped), then per-token symmetric ``bits``-bit codes (``bits`` an int32 scalar array).
  ``prologue`` (scale, shift) f32 [B, K] first applies GroupNorm + SiLU per image
  (`reference.group_norm_prologue`). See `quantize_act` module."""
  match _resolve(backend, QUANTIZE_GPU_BACKEND):
    case "xla":
      return quantize_act_xla(x, smooth, rotation, bits, prologue)
    case "pallas":
      return quantize_act_pallas(x, smooth, rotation, bits, prologue)
    case "interpret":
      return quantize_act_pallas(x, smooth, rotation, bits, prologue, interpret=True)
    case other:
      raise ValueError(f"quantize_act has no {other!r} backend")


def int_conv2d(
  xq,
  wq,
  *,
  a_scale,
  w_scale,
  bias=None,
  a_zero=None,
  w_colsum=None,
  lowrank_x=None,
  lowrank_l2=None,
  stride: int = 1,
  padding: int = 1,
  out_dtype=jnp.float32,
  backend: str = "auto",
  blocks: GemmBlocks = GemmBlocks(),
):
  """Integer conv: ``xq`` int8 NHWC [B, H, W, C_in]; ``wq`` int8 HWIO [kh, kw, C_in, C_out];
  per-tensor ``a_scale`` (and optional ``a_zero`` code, also used as the padding code so padding
  is zero in the real domain; ``w_colsum`` int32 [C_out] precomputed, else summed here);
  per-C_out ``w_scale``, ``bias``; optional low-rank branch ``lowrank_x`` f32 [B*Ho*Wo, r] (the
  caller's float conv of the input with L1) and ``lowrank_l2`` [r, C_out], fused in the epilogue
  -> ``out_dtype`` [B, Ho, Wo, C_out].

  "xla": ``lax.conv_general_dilated`` int8 -> int32 (cuDNN on GPU). "pallas" / "interpret", stride
  1: `int_conv2d_implicit`, the implicit GEMM (no patch copy). Otherwise: im2col patches
  [B*Ho*Wo, kh*kw*C_in] (taps ordered kh, kw, C_in) through `int_matmul` with that backend.
  """
  resolved = _resolve(backend, CONV_GPU_BACKEND)
  kw = dict(
    a_scale=a_scale,
    w_scale=w_scale,
    bias=bias,
    a_zero=a_zero,
    lowrank_x=lowrank_x,
    lowrank_l2=lowrank_l2,
    out_dtype=out_dtype,
  )
  if resolved == "xla":
    return int_conv2d_xla(xq, wq, w_colsum=w_colsum, stride=stride, padding=padding, **kw)
  if stride == 1 and resolved in ("pallas", "interpret"):
    return int_conv2d_implicit(
      xq,
      wq,
      w_colsum=w_colsum,
      padding=padding,
      blocks=blocks,
      interpret=resolved == "interpret",
      **kw,
    )
  kh, kw_, c_in, c_out = wq.shape
  patches, (b, ho, wo) = im2col(pad_codes(xq, padding, a_zero), kh, kw_, stride)
  w_t = wq.reshape(kh * kw_ * c_in, c_out).T
  if a_zero is not None and w_colsum is None:
    w_colsum = jnp.sum(w_t, axis=1, dtype=jnp.int32)
  y = int_matmul(patches, w_t, w_colsum=w_colsum, backend=resolved, blocks=blocks, **kw)
  return y.reshape(b, ho, wo, c_out)
