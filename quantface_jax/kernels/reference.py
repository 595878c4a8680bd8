"""Reference semantics of the integer kernels: numpy integer math, then the float32 epilogue.

The epilogue (`gemm_epilogue`) and the quantizer math (`row_scale`, `quantize_with_scale`) are
written once here and called both by the references and inside the kernels on tiles, so kernel and
reference perform the same float ops in the same order. The references run the epilogue under jit,
as the kernels do, so XLA contracts multiply-add into FMA the same way on both sides (eager op-by-op
evaluation differs in the last bit). The integer parts of the references are independent numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

if TYPE_CHECKING:  # gemm imports this module
  from quantface_jax.kernels.gemm import Epilogue


def gemm_epilogue(acc, ep: Epilogue, *, out_dtype=jnp.float32):
  """int32 accumulator tile -> output tile.

  ``acc`` int32 [m, n] (or f32 holding the integers: the XLA conv); ``ep`` an `gemm.Epilogue` in
  its 2-D form (tile or full array): ``a_scale`` f32 [m, 1], ``w_scale`` f32 [1, n], ``a_zero``
  int32 [m, 1], ``w_colsum`` int32 [1, n], ``bias`` f32 [1, n], ``lowrank_x`` f32 [m, r],
  ``lowrank_l2`` f32 [r, n].

      y = f32(acc - a_zero * w_colsum) * a_scale * w_scale + bias + lowrank_x @ lowrank_l2

  The zero-point correction is exact int32 arithmetic for an int32 ``acc`` (float32 for an f32
  one: exact while the values stay below 2**24); everything after it is float32.
  """
  if ep.a_zero is not None:
    acc = acc - ep.a_zero * ep.w_colsum
  y = acc.astype(jnp.float32) * ep.a_scale * ep.w_scale
  if ep.bias is not None:
    y = y + ep.bias
  if ep.lowrank_x is not None:
    y = y + lax.dot_general(
      ep.lowrank_x, ep.lowrank_l2, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )
  return y.astype(out_dtype)


_gemm_epilogue_jit = jax.jit(gemm_epilogue, static_argnames="out_dtype")


def row_scale(amax, qmax):
  """Per-row symmetric scale: ``max(amax, 1e-8) / qmax`` (f32 [m, 1]; ``qmax`` f32 [1, 1])."""
  return jnp.maximum(amax, 1e-8) / qmax


def round_half_even(v):
  """``jnp.round`` (ties to even) from floor, compare and select: Pallas's Triton lowering has
  no ``round`` primitive. Exact for every finite f32 (``v - floor(v)`` is exact)."""
  low = jnp.floor(v)
  frac = v - low
  low_is_odd = low - 2.0 * jnp.floor(0.5 * low) == 1.0
  return jnp.where((frac > 0.5) | ((frac == 0.5) & low_is_odd), low + 1.0, low)


def quantize_with_scale(rotated, scale, qmax):
  """``clip(round_half_even(r / scale), -qmax, qmax)`` -> int8, ``rotated`` f32 [m, k]."""
  return jnp.clip(round_half_even(rotated / scale), -qmax, qmax).astype(jnp.int8)


def _unpack_int4_np(packed: np.ndarray, k: int) -> np.ndarray:
  nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
  return (nibbles.astype(np.int8) - 16 * (nibbles >= 8)).astype(np.int8)[..., :k]


def int_matmul_ref(xq, w_stored, epilogue: Epilogue, *, out_dtype=jnp.float32):
  """Reference of `int_matmul`: ``xq`` int8 [M, K]; ``w_stored`` int8 [N, K] or packed uint8
  [N, ceil(K/2)]; ``epilogue`` as for the kernels -> ``out_dtype`` [M, N]."""
  xq = np.asarray(xq)
  m, k = xq.shape
  w = np.asarray(w_stored)
  w = _unpack_int4_np(w, k) if w.dtype == np.uint8 else w
  acc = jnp.asarray((xq.astype(np.int64) @ w.T.astype(np.int64)).astype(np.int32))
  n = acc.shape[1]
  col = lambda v, size, dt: jnp.broadcast_to(jnp.asarray(v, dt).reshape(-1), (size,))
  optional = lambda v, convert: None if v is None else convert(v)
  ep = epilogue._replace(
    a_scale=col(epilogue.a_scale, m, jnp.float32)[:, None],
    w_scale=col(epilogue.w_scale, n, jnp.float32)[None, :],
    a_zero=optional(epilogue.a_zero, lambda v: col(v, m, jnp.int32)[:, None]),
    w_colsum=optional(epilogue.w_colsum, lambda v: col(v, n, jnp.int32)[None, :]),
    bias=optional(epilogue.bias, lambda v: col(v, n, jnp.float32)[None, :]),
    lowrank_x=optional(epilogue.lowrank_x, lambda v: _pad_rank(jnp.asarray(v, jnp.float32), 1)),
    lowrank_l2=optional(epilogue.lowrank_l2, lambda v: _pad_rank(jnp.asarray(v, jnp.float32), 0)),
  )
  return _gemm_epilogue_jit(acc, ep, out_dtype=out_dtype)


def silu(y):
  """``y * sigmoid(y)`` as ``y / (1 + exp(-y))`` (f32): one formula for the kernels and their
  references (Pallas's Triton lowering has ``exp``; the codes then match bit for bit)."""
  return y / (1.0 + jnp.exp(-y))


def norm_silu_ref(x, prologue):
  """The GroupNorm + SiLU prologue: ``silu(x * scale[b] + shift[b])`` in f32, ``x`` [M, K] holding
  B images of M / B rows each, ``prologue`` = (scale, shift) f32 [B, K] (`group_norm_prologue`)."""
  scale, shift = (jnp.asarray(a, jnp.float32) for a in prologue)
  b, k = scale.shape
  xs = jnp.asarray(x, jnp.float32).reshape(b, -1, k)
  return silu(xs * scale[:, None] + shift[:, None]).reshape(-1, k)


def group_norm_prologue(x, gamma, beta, *, groups: int, eps: float):
  """GroupNorm (statistics in f32, as ``models.layers.GroupNorm``) folded into a per-image channel
  affine: ``x`` [B, L, C] -> (scale, shift) f32 [B, C] with GroupNorm(x) = x * scale + shift."""
  b, _, c = x.shape
  g = jnp.asarray(x, jnp.float32).reshape(b, -1, groups, c // groups)
  mean = g.mean(axis=(1, 3))
  rstd = lax.rsqrt(jnp.square(g - mean[:, None, :, None]).mean(axis=(1, 3)) + eps)
  per_channel = lambda a: jnp.repeat(a, c // groups, axis=1)  # [B, groups] -> [B, C]
  scale = per_channel(rstd) * jnp.asarray(gamma, jnp.float32)
  return scale, jnp.asarray(beta, jnp.float32) - per_channel(mean) * scale


def rotate_ref(x, smooth, rotation):
  """``(x / smooth) @ Q`` in f32: ``x`` [M, K]; ``smooth`` [K]; ``rotation`` dense [K, K] or
  block-diagonal blocks [K/b, b, b] (one ``[M, b] @ [b, b]`` dot per block, in block order).
  ``smooth`` / ``rotation`` None: that step is skipped (x already balanced by the caller).
  The dots run at full f32 precision, as the fake-quant layers' Hadamard transform does: a GPU's
  default for f32 (TF32, 10 mantissa bits) moves values by ~1e-3 and flips codes."""
  xs = jnp.asarray(x, jnp.float32)
  if smooth is not None:
    xs = xs / jnp.asarray(smooth, jnp.float32)[None, :]
  if rotation is None:
    return xs
  rotation = jnp.asarray(rotation, jnp.float32)
  blocks = rotation[None] if rotation.ndim == 2 else rotation
  b = blocks.shape[-1]
  return jnp.concatenate(
    [
      jnp.dot(
        xs[:, j * b : (j + 1) * b],
        blocks[j],
        preferred_element_type=jnp.float32,
        precision=jax.lax.Precision.HIGHEST,
      )
      for j in range(blocks.shape[0])
    ],
    axis=1,
  )


def bits_to_qmax(bits):
  """int32 scalar array ``bits`` -> f32 [1, 1] ``2^(bits-1) - 1`` (bits stays runtime data)."""
  bits = jnp.asarray(bits, jnp.int32).reshape(1, 1)
  return (jnp.left_shift(jnp.int32(1), bits - 1) - 1).astype(jnp.float32)


def quantize_act_ref(x, smooth, rotation, bits, prologue=None):
  """Reference of `quantize_act`: -> (int8 codes [M, K], f32 scales [M]); ``prologue`` (scale,
  shift) [B, K] first applies `norm_silu_ref`."""
  if prologue is not None:
    x = norm_silu_ref(x, prologue)
  rotated, qmax = rotate_ref(x, smooth, rotation), bits_to_qmax(bits)
  scale = row_scale(jnp.max(jnp.abs(rotated), axis=1, keepdims=True), qmax)
  return quantize_with_scale(rotated, scale, qmax), scale[:, 0]


def int_conv2d_ref(xq, wq, epilogue: Epilogue, *, stride=1, padding=1, out_dtype=jnp.float32):
  """Reference conv: ``xq`` int8 NHWC, ``wq`` int8 HWIO; zero padding in the *real* domain (pads
  with the code ``a_zero``); ``epilogue`` as for the kernels, with per-tensor ``a_scale`` /
  ``a_zero`` (``w_colsum`` is not read: the zero point is subtracted from the codes) -> NHWC."""
  a_zero = epilogue.a_zero
  xq = np.asarray(xq).astype(np.int64)
  wq = np.asarray(wq).astype(np.int64)
  kh, kw, _, c_out = wq.shape
  zp = 0 if a_zero is None else int(a_zero)
  xp = np.pad(xq, [(0, 0), (padding, padding), (padding, padding), (0, 0)], constant_values=zp)
  n, hp, wp, _ = xp.shape
  ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
  acc = np.zeros((n, ho, wo, c_out), np.int64)
  for i in range(kh):
    for j in range(kw):
      tap = xp[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
      acc += (tap - zp) @ wq[i, j]
  acc = jnp.asarray(acc.astype(np.int32)).reshape(-1, c_out)
  ep = epilogue._replace(
    a_scale=jnp.asarray(epilogue.a_scale, jnp.float32).reshape(1, 1),
    w_scale=jnp.asarray(epilogue.w_scale, jnp.float32).reshape(1, c_out),
    a_zero=None,
    w_colsum=None,
    bias=None if epilogue.bias is None else jnp.asarray(epilogue.bias, jnp.float32)[None, :],
  )
  y = _gemm_epilogue_jit(acc, ep, out_dtype=out_dtype)
  return y.reshape(n, ho, wo, c_out)


def _pad_rank(a, axis):
  """Zero-pad the rank axis to a multiple of 16 (Triton's minimum dot size), as the kernels do."""
  pad = [(0, 0), (0, 0)]
  pad[axis] = (0, -a.shape[axis] % 16)
  return jnp.pad(a, pad)
