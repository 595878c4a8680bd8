"""Integer 2-D convolutions (NHWC activations, HWIO weights) with the GEMM's fused epilogue.

Operands:

- ``xq``: int8 NHWC [B, H, W, C_in] activation codes (4-bit codes held in int8).
- ``wq``: int8 HWIO [kh, kw, C_in, C_out] weight codes (a packed int4 weight is unpacked first:
  `packing.unpack_weight`).
- ``epilogue``: a `gemm.Epilogue` with per-tensor ``a_scale``/``a_zero`` (scalars): x ~ a_scale *
  (xq - a_zero), the spatial padding using the zero-point code, i.e. zero padding in the real
  domain; ``w_colsum`` is summed from ``wq`` when omitted; ``lowrank_x`` has B*Ho*Wo rows.
- result: ``out_dtype`` NHWC [B, Ho, Wo, C_out].

`int_conv2d_xla` (XLA / cuDNN int8 conv), `int_conv2d_implicit` (Pallas implicit GEMM, stride 1,
no im2col copy) and `im2col` + a GEMM (`dispatch.int_conv2d`'s route for strided convs on the
Pallas backends).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from quantface_jax.kernels.gemm import (
  Epilogue,
  GemmBlocks,
  dot_nt,
  epilogue_from_refs,
  epilogue_pallas_call,
  pad_to,
  pick_block,
  prepare_epilogue,
  round_up,
)
from quantface_jax.kernels.reference import gemm_epilogue


def pad_codes(xq, padding: int, a_zero):
  """int8 NHWC [B, H, W, C] -> [B, H + 2p, W + 2p, C], padded with the zero-point code (zero padding
  in the real domain)."""
  fill = 0 if a_zero is None else jnp.asarray(a_zero, xq.dtype)
  return jnp.pad(xq, [(0, 0), (padding, padding), (padding, padding), (0, 0)], constant_values=fill)


def with_weight_colsum(epilogue: Epilogue, wq) -> Epilogue:
  """``epilogue`` with ``w_colsum`` (int32 [C_out], the sum of HWIO ``wq`` over kh, kw, C_in)
  filled in where the zero point needs it and the caller did not precompute it."""
  if epilogue.a_zero is None or epilogue.w_colsum is not None:
    return epilogue
  return epilogue._replace(w_colsum=jnp.sum(wq, axis=(0, 1, 2), dtype=jnp.int32))


def im2col(xp, kh: int, kw: int, stride: int):
  """Padded NHWC [B, Hp, Wp, C] -> (patches [B*Ho*Wo, kh*kw*C], (B, Ho, Wo)), taps ordered
  (kh, kw, C) like ``wq.reshape(kh*kw*C, C_out)`` of an HWIO weight; same dtype as ``xp``."""
  b, hp, wp, c = xp.shape
  ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
  taps = [
    xp[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
    for i in range(kh)
    for j in range(kw)
  ]
  return jnp.concatenate(taps, axis=-1).reshape(b * ho * wo, kh * kw * c), (b, ho, wo)


@functools.partial(jax.jit, static_argnames=("stride", "padding", "out_dtype"))
def int_conv2d_xla(
  xq, wq, epilogue: Epilogue, *, stride: int = 1, padding: int = 1, out_dtype=jnp.float32
):
  """Integer conv by XLA: ``lax.conv_general_dilated`` int8 NHWC x int8 HWIO with int32
  accumulation, converted to f32 at once, then the GEMM epilogue (``epilogue`` as in the module
  docstring) -> ``out_dtype`` NHWC.

  The immediate f32 conversion is the only int8 conv cuDNN runs (XLA fuses a convert to f32 that
  is the int32 conv's one user into an int8 -> f32 cuDNN conv; anything else between them fails
  to compile on GPU). It is exact while |sum| < 2**24, which holds for every W4 conv up to
  K = kh·kw·C_in = 16384 (|code products| <= 128·8) — all of sd21's — and for W8 up to K = 1024;
  beyond, the accumulator is rounded to 24 bits, as cuDNN itself does."""
  acc = lax.conv_general_dilated(
    pad_codes(xq, padding, epilogue.a_zero),
    wq,
    (stride, stride),
    "VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    preferred_element_type=jnp.int32,
  )
  acc = acc.astype(jnp.float32)
  b, ho, wo, c_out = acc.shape
  rows = b * ho * wo
  ep = prepare_epilogue(with_weight_colsum(epilogue, wq), rows, c_out, rows, c_out)
  y = gemm_epilogue(acc.reshape(rows, c_out), ep, out_dtype=out_dtype)
  return y.reshape(b, ho, wo, c_out)


def _implicit_conv_kernel(x_ref, w_ref, *refs, shifts, c_steps, block_k, epilogue_tree, out_dtype):
  *epilogue_refs, o_ref = refs
  bm, bn = o_ref.shape
  row0 = pl.program_id(0) * bm
  acc = jnp.zeros((bm, bn), jnp.int32)
  for tap, shift in enumerate(shifts):  # static: one shifted row window of x per tap

    def k_step(step, acc, rows=pl.ds(row0 + shift, bm), w0=tap * c_steps * block_k):
      k0 = step * block_k
      return acc + dot_nt(x_ref[rows, pl.ds(k0, block_k)], w_ref[:, pl.ds(w0 + k0, block_k)])

    acc = lax.fori_loop(0, c_steps, k_step, acc)
  ep = epilogue_from_refs(epilogue_refs, epilogue_tree)
  o_ref[...] = gemm_epilogue(acc, ep, out_dtype=out_dtype)


@functools.partial(jax.jit, static_argnames=("padding", "out_dtype", "blocks", "interpret"))
def int_conv2d_implicit(
  xq,
  wq,
  epilogue: Epilogue,
  *,
  padding: int = 1,
  out_dtype=jnp.float32,
  blocks: GemmBlocks = GemmBlocks(),
  interpret: bool = False,
):
  """Stride-1 integer conv as an implicit GEMM in Pallas (Triton on GPU): no im2col copy.

  ``xq`` int8 NHWC [B, H, W, C_in], ``wq`` int8 HWIO [kh, kw, C_in, C_out]; epilogue operands as
  in the module docstring -> ``out_dtype`` [B, Ho, Wo, C_out].

  The codes are padded spatially (zero-point code) to [B, Hp, Wp, C_in] and flattened to rows
  r = (b·Hp + y)·Wp + x. Tap (dy, dx) of output row r is input row r + dy·Wp + dx, so every tap
  is one contiguous [bm, C_in] row window: program (i, j) accumulates, for each of the kh·kw taps
  and each ``block_k`` slice of C_in, x[i·bm + shift : +bm, k-slice] @ w_tap[j-block, k-slice]ᵀ
  in int32. Outputs are computed on the padded grid (rows B·Hp·Wp, rounded up to ``bm``; the
  input gets ``(kh-1)·Wp + kw-1`` zero rows of tail) and the positions y ≥ Ho or x ≥ Wo are
  cropped: at 512² that is 0.8% extra work, at 64² 6%. Weights are laid out [Np, kh·kw·Cp]
  (output-major, taps in (kh, kw) order, C_in zero-padded to Cp per tap); x is passed whole.
  The low-rank branch ``lowrank_x`` [B·Ho·Wo, r] is moved onto the padded grid and fused.
  Limit: the padded codes must number < 2³¹ (Triton's int32 offsets; sd21's largest VAE conv at
  batch 16 has 1.1·10⁹); beyond, a ValueError.
  """
  kh, kw, c_in, c_out = wq.shape
  xp = pad_codes(xq, padding, epilogue.a_zero)
  b, hp, wp, _ = xp.shape
  ho, wo = hp - kh + 1, wp - kw + 1
  rows = b * hp * wp
  bm = pick_block(rows, blocks.block_m)
  bn = pick_block(c_out, blocks.block_n)
  bk = pick_block(c_in, blocks.block_k)
  mp, np_, cp = round_up(rows, bm), round_up(c_out, bn), round_up(c_in, bk)
  x_flat = pad_to(xp.reshape(rows, c_in), (mp + (kh - 1) * wp + kw - 1, cp))
  if x_flat.size >= 2**31 and not interpret:  # Triton indexes the whole operand with int32 offsets
    raise ValueError(
      f"int_conv2d_implicit: input of {x_flat.size:,} padded codes needs 64-bit "
      "offsets; split the batch (or use the xla backend)"
    )
  w = pad_to(wq.reshape(kh * kw, c_in, c_out), (kh * kw, cp, np_))
  w = w.transpose(2, 0, 1).reshape(np_, kh * kw * cp)
  epilogue = with_weight_colsum(epilogue, wq)
  if epilogue.lowrank_x is not None:
    grid_x = epilogue.lowrank_x.reshape(b, ho, wo, -1)
    grid_x = jnp.pad(grid_x, [(0, 0), (0, hp - ho), (0, wp - wo), (0, 0)])
    epilogue = epilogue._replace(lowrank_x=grid_x.reshape(rows, -1))
  ep = prepare_epilogue(epilogue, rows, c_out, mp, np_)
  kernel = functools.partial(
    _implicit_conv_kernel,
    shifts=tuple(dy * wp + dx for dy in range(kh) for dx in range(kw)),
    c_steps=cp // bk,
    block_k=bk,
  )
  specs = [
    pl.BlockSpec(x_flat.shape, lambda i, j: (0, 0)),
    pl.BlockSpec((bn, kh * kw * cp), lambda i, j: (j, 0)),
  ]
  y = epilogue_pallas_call(
    "int8_implicit_conv", kernel, (x_flat, w), specs, ep, (bm, bn), blocks, interpret, out_dtype
  )
  return y[:rows, :c_out].reshape(b, hp, wp, c_out)[:, :ho, :wo]
