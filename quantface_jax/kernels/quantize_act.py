"""Fused activation quantization: [GroupNorm + SiLU ->] smoothing -> randomized Hadamard rotation
-> per-token codes.

    x' = silu(x * scale[b] + shift[b])               optional prologue, row m in image b = m // (M / B)
    r = (x' / smooth) @ Q                            f32 [M, K]
    scale[m] = max(max_k |r[m, k]|, 1e-8) / qmax     qmax = 2^(bits-1) - 1
    codes[m, k] = clip(round_half_even(r / scale), -qmax, qmax)

``Q`` is given as dense f32 [K, K] or block-diagonal blocks f32 [K/b, b, b]; ``smooth`` or ``Q``
None skips that step (the serving layers pass x already balanced). ``bits`` is an int32 scalar
*array* (runtime data: one compiled function serves every bit width). The prologue (scale, shift)
f32 [B, K] is a GroupNorm folded into a per-image channel affine (`reference.group_norm_prologue`,
one reduction over x), so a layer after GroupNorm + SiLU reads the pre-norm activation once more
here instead of XLA writing and re-reading the normalized one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from quantface_jax.kernels.gemm import triton_params
from quantface_jax.kernels.reference import (
  bits_to_qmax,
  quantize_act_ref,
  quantize_with_scale,
  row_scale,
  silu,
)


def _quantize_kernel(x_ref, *refs, has_prologue, has_smooth, has_rotation, chunk):
  *in_refs, codes_ref, scale_ref = refs
  in_refs = iter(in_refs)
  pscale_ref, pshift_ref = (next(in_refs), next(in_refs)) if has_prologue else (None, None)
  smooth_ref = next(in_refs) if has_smooth else None
  rot_ref = next(in_refs) if has_rotation else None
  qmax = next(in_refs)[...]
  b = rot_ref.shape[1] if has_rotation else chunk
  num_blocks = x_ref.shape[1] // b

  def rotated_block(j):
    cols = pl.ds(j * b, b)
    xs = x_ref[:, cols].astype(jnp.float32)
    if has_prologue:  # this tile's image row of the per-image affine; padded columns stay 0
      xs = silu(xs * pscale_ref[:, cols] + pshift_ref[:, cols])
    if has_smooth:
      xs = xs / smooth_ref[:, cols]
    if not has_rotation:
      return xs
    # Full f32 (Triton's IEEE input precision), as the reference: its default, TF32, flips codes.
    return jnp.dot(
      xs, rot_ref[j], preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST
    )

  # Two passes over the rotation blocks (static, unrolled): the row max needs every block before
  # any code can be written; recomputing a block's rotation is cheaper than keeping [bm, K] live.
  amax = jnp.zeros(scale_ref.shape, jnp.float32)
  for j in range(num_blocks):
    amax = jnp.maximum(amax, jnp.max(jnp.abs(rotated_block(j)), axis=1, keepdims=True))
  scale = row_scale(amax, qmax)
  for j in range(num_blocks):
    codes_ref[:, pl.ds(j * b, b)] = quantize_with_scale(rotated_block(j), scale, qmax)
  scale_ref[...] = scale


@functools.partial(jax.jit, static_argnames=("block_m", "interpret"))
def quantize_act_pallas(
  x, smooth, rotation, bits, prologue=None, *, block_m: int = 32, interpret: bool = False
):
  """Pallas fused quantizer. ``x`` bf16/f32 [M, K]; ``smooth`` f32 [K] or None; ``rotation`` f32
  [K, K] or [K/b, b, b] or None; ``bits`` int32 scalar array; ``prologue`` None or (scale, shift)
  f32 [B, K] for B images of M / B rows (a multiple of ``block_m``, so a row tile never straddles
  two images) -> (int8 codes [M, K], f32 scales [M]).

  Grid ``(ceil(M / block_m),)``; each program holds x [block_m, K'] and the whole rotation, and
  does one [block_m, b'] x [b', b'] dot per rotation block per pass (without a rotation: works on
  chunks of ``b'`` = the largest power of two <= 128 dividing K, at least 16). Triton tiles must be
  powers of two, so a block of width b is zero-padded to b' = next power of two (x, smooth = 1,
  rotation rows and columns) and the padding is cropped from the codes: padded columns are 0 in
  the rotated space, so the row maxima, scales and codes are those of the unpadded problem. M is
  padded with zero rows.
  """
  m, k = x.shape
  mp = -(-m // block_m) * block_m
  if prologue is not None and (m % prologue[0].shape[0] or (m // prologue[0].shape[0]) % block_m):
    raise ValueError(
      f"quantize_act prologue: {m} rows do not split into {prologue[0].shape[0]} images "
      f"of a multiple of block_m={block_m} rows"
    )
  if rotation is not None:
    blocks = (rotation[None] if rotation.ndim == 2 else rotation).astype(jnp.float32)
    num_blocks, b = blocks.shape[:2]
    width = pl.next_power_of_2(b)
    blocks = jnp.pad(blocks, [(0, 0), (0, width - b), (0, width - b)])
  else:  # chunks of a power-of-two width: pad K up to whole chunks
    width = min(128, k & -k) if k % 16 == 0 else 16
    b = width
    num_blocks = -(-k // width)
  # [M, K] -> [Mp, num_blocks * width]: each block of b columns padded to width (rotation), or K
  # padded to whole chunks (no rotation); x pads with 0, smooth with 1.
  split = lambda a, fill: jnp.pad(
    jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, num_blocks * b - k)], constant_values=fill).reshape(
      *a.shape[:-1], num_blocks, b
    ),
    [(0, 0)] * a.ndim + [(0, width - b)],
    constant_values=fill,
  ).reshape(*a.shape[:-1], num_blocks * width)
  xw = jnp.pad(split(x, 0), [(0, mp - m), (0, 0)])
  kw = num_blocks * width
  full = lambda shape: pl.BlockSpec(shape, lambda i: (0,) * len(shape))
  operands = []  # (array, BlockSpec) of the optional steps, in kernel order
  if prologue is not None:
    tiles_per_image = m // prologue[0].shape[0] // block_m
    image_row = pl.BlockSpec((1, kw), lambda i: (i // tiles_per_image, 0))
    for part, fill in zip(prologue, (1.0, 0.0)):  # padded columns: silu(0 * 1 + 0) = 0
      operands.append((split(jnp.asarray(part, jnp.float32), fill), image_row))
  if smooth is not None:
    operands.append((split(jnp.asarray(smooth, jnp.float32).reshape(1, k), 1.0), full((1, kw))))
  if rotation is not None:
    operands.append((blocks, full(blocks.shape)))
  codes, scale = pl.pallas_call(
    functools.partial(
      _quantize_kernel,
      has_prologue=prologue is not None,
      has_smooth=smooth is not None,
      has_rotation=rotation is not None,
      chunk=width,
    ),
    out_shape=(
      jax.ShapeDtypeStruct((mp, kw), jnp.int8),
      jax.ShapeDtypeStruct((mp, 1), jnp.float32),
    ),
    grid=(mp // block_m,),
    in_specs=[
      pl.BlockSpec((block_m, kw), lambda i: (i, 0)),
      *(s for _, s in operands),
      full((1, 1)),
    ],
    out_specs=(
      pl.BlockSpec((block_m, kw), lambda i: (i, 0)),
      pl.BlockSpec((block_m, 1), lambda i: (i, 0)),
    ),
    interpret=interpret,
    compiler_params=triton_params(interpret, num_warps=4),
    name="quantize_act",
  )(xw, *(a for a, _ in operands), bits_to_qmax(bits))
  codes = codes[:m].reshape(m, num_blocks, width)[:, :, :b].reshape(m, num_blocks * b)[:, :k]
  return codes, scale[:m, 0]


quantize_act_xla = jax.jit(quantize_act_ref)
quantize_act_xla.__doc__ = "XLA fused quantizer (the jitted reference; same signature/outputs)."
