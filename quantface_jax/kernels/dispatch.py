"""Backend choice for the integer kernels.

``backend``: ``"auto"`` | ``"xla"`` | ``"pallas"`` (Pallas, Triton lowering on GPU) | ``"mosaic"``
(Pallas Mosaic GPU, Hopper only, W8A8 GEMM only) | ``"interpret"`` (Pallas interpreter, any device;
what the CPU tests use). ``"auto"`` is XLA on CPU/TPU and the measured-fastest backend on GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from quantface_jax.kernels.conv import (
  im2col,
  int_conv2d_implicit,
  int_conv2d_xla,
  pad_codes,
  with_weight_colsum,
)
from quantface_jax.kernels.gemm import Epilogue, GemmBlocks, int_matmul_pallas, int_matmul_xla
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
  epilogue: Epilogue,
  *,
  out_dtype=jnp.float32,
  backend: str = "auto",
  blocks: GemmBlocks = GemmBlocks(),
):
  """y[M, N] = f32(xq @ W^T - a_zero * w_colsum) * a_scale * w_scale + bias + lowrank_x @ lowrank_l2.

  ``xq`` int8 [M, K]; ``w`` int8 [N, K] or packed int4 uint8 [N, ceil(K/2)] (see `packing`);
  ``epilogue`` an `Epilogue` (its fields' shapes and dtypes are documented there) ->
  ``out_dtype`` [M, N]. ``blocks`` tunes "pallas".
  """
  match _resolve(backend, GEMM_GPU_BACKEND):
    case "xla":
      return int_matmul_xla(xq, w, epilogue, out_dtype=out_dtype)
    case "mosaic":
      return int_matmul_mosaic(xq, w, epilogue, out_dtype=out_dtype)
    case "pallas":
      return int_matmul_pallas(xq, w, epilogue, out_dtype=out_dtype, blocks=blocks)
    case "interpret":
      return int_matmul_pallas(xq, w, epilogue, out_dtype=out_dtype, blocks=blocks, interpret=True)


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
  epilogue: Epilogue,
  *,
  stride: int = 1,
  padding: int = 1,
  out_dtype=jnp.float32,
  backend: str = "auto",
  blocks: GemmBlocks = GemmBlocks(),
):
  """Integer conv: ``xq`` int8 NHWC [B, H, W, C_in]; ``wq`` int8 HWIO [kh, kw, C_in, C_out];
  ``epilogue`` an `Epilogue` with per-tensor ``a_scale`` (and optional ``a_zero`` code, also used
  as the padding code so padding is zero in the real domain; ``w_colsum`` summed here unless
  precomputed) and ``lowrank_x`` f32 [B*Ho*Wo, r] (the caller's float conv of the input with L1)
  -> ``out_dtype`` [B, Ho, Wo, C_out].

  "xla": ``lax.conv_general_dilated`` int8 -> int32 (cuDNN on GPU). "pallas" / "interpret", stride
  1: `int_conv2d_implicit`, the implicit GEMM (no patch copy). Otherwise: im2col patches
  [B*Ho*Wo, kh*kw*C_in] (taps ordered kh, kw, C_in) through `int_matmul` with that backend.
  """
  resolved = _resolve(backend, CONV_GPU_BACKEND)
  if resolved == "xla":
    return int_conv2d_xla(xq, wq, epilogue, stride=stride, padding=padding, out_dtype=out_dtype)
  if stride == 1 and resolved in ("pallas", "interpret"):
    return int_conv2d_implicit(
      xq,
      wq,
      epilogue,
      padding=padding,
      out_dtype=out_dtype,
      blocks=blocks,
      interpret=resolved == "interpret",
    )
  kh, kw, c_in, c_out = wq.shape
  patches, (b, ho, wo) = im2col(pad_codes(xq, padding, epilogue.a_zero), kh, kw, stride)
  w_t = wq.reshape(kh * kw * c_in, c_out).T
  epilogue = with_weight_colsum(epilogue, wq)
  y = int_matmul(patches, w_t, epilogue, out_dtype=out_dtype, backend=resolved, blocks=blocks)
  return y.reshape(b, ho, wo, c_out)
