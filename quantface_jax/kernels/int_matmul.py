"""Integer GEMMs with a fused dequantization epilogue: W8A8, W4A8, W4A4 (all on int8 MMA).

Operands (see `packing` for the weight storage):

- ``xq``: int8 [M, K] activation codes (4-bit codes for W4A4 are held in int8, range [-8, 7]).
- ``w``: int8 [N, K] weight codes (int8/int6), or uint8 [N, ceil(K/2)] packed int4 (even k in
  the low nibble); unpacked to int8 inside the kernel.
- ``a_scale`` f32 [M] (per token) or scalar (static per tensor); ``w_scale`` f32 [N] or scalar.
- ``a_zero`` int32 [M] or scalar, with ``w_colsum`` int32 [N] = sum_k W[k, n] precomputed at export:
  x ~ a_scale * (xq - a_zero).
- ``bias`` f32 [N]; low-rank branch ``lowrank_x`` f32 [M, r] = x_fp @ L1 (computed OUTSIDE the
  kernel: it is a thin [M, K] x [K, r] GEMM best left to XLA) and ``lowrank_l2`` f32 [r, N],
  multiplied inside the epilogue.

    y[M, N] = f32(xq @ W^T - a_zero * w_colsum) * a_scale * w_scale + bias + lowrank_x @ lowrank_l2

int32 accumulation throughout. Every backend pads M, N, K with zero codes up to whole blocks and
slices the result, so any shape works; zero codes add nothing, so results are exact.
Convolutions (`int_conv2d_xla`, `int_conv2d_implicit`, `im2col`) share the epilogue; see
`dispatch.int_conv2d`.
Backends: `int_matmul_pallas` (generic Pallas: Triton lowering on GPU, ``interpret=True`` on CPU),
`int_matmul_mosaic` (Pallas Mosaic GPU, Hopper int8 ``wgmma``, W8A8 only) and `int_matmul_xla`
(``lax.dot_general`` int8 -> int32, i.e. cuBLASLt IMMA on GPU, then the epilogue as one fusion).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from quantface_jax.kernels.packing import unpack_int4_halves, unpack_weight
from quantface_jax.kernels.reference import gemm_epilogue


@dataclasses.dataclass(frozen=True, kw_only=True)
class GemmBlocks:
  block_m: int = 64  # rows of xq / y per program (power of two, >= 16)
  block_n: int = 128  # output channels per program (power of two, >= 16)
  block_k: int = 64  # K step of the in-kernel loop (power of two, >= 32 for packed int4)
  num_warps: int = 4  # Triton warps per program (ignored in interpret mode)
  num_stages: int = 3  # Triton software-pipelining depth (ignored in interpret mode)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Epilogue:
  """Epilogue operands as 2-D f32/int32 arrays, padded to the blocked output [Mp, Np]."""

  a_scale: jax.Array  # f32 [Mp, 1]
  w_scale: jax.Array  # f32 [1, Np]
  a_zero: jax.Array | None  # int32 [Mp, 1]
  w_colsum: jax.Array | None  # int32 [1, Np]
  bias: jax.Array | None  # f32 [1, Np]
  lowrank_x: jax.Array | None  # f32 [Mp, R], R = r padded with zero columns to a power of two >= 16
  lowrank_l2: jax.Array | None  # f32 [R, Np]

  def arrays(self):
    return [v for v in self.as_kwargs().values() if v is not None]

  def as_kwargs(self):
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _pad_to(a, shape):
  return jnp.pad(a, [(0, t - s) for s, t in zip(a.shape, shape)])


def _prepare_epilogue(
  m, n, mp, np_, *, a_scale, w_scale, a_zero, w_colsum, bias, lowrank_x, lowrank_l2
) -> _Epilogue:
  def vec(v, size, padded, dtype):
    return _pad_to(jnp.broadcast_to(jnp.asarray(v, dtype).reshape(-1), (size,)), (padded,))

  if (a_zero is None) != (w_colsum is None):
    raise ValueError("a_zero and w_colsum go together")
  if (lowrank_x is None) != (lowrank_l2 is None):
    raise ValueError("lowrank_x and lowrank_l2 go together")
  # Triton tiles are powers of two (>= 16 for its dots): the rank is zero-padded to one.
  rank = None if lowrank_x is None else max(16, pl.next_power_of_2(lowrank_x.shape[1]))
  return _Epilogue(
    a_scale=vec(a_scale, m, mp, jnp.float32)[:, None],
    w_scale=vec(w_scale, n, np_, jnp.float32)[None, :],
    a_zero=None if a_zero is None else vec(a_zero, m, mp, jnp.int32)[:, None],
    w_colsum=None if w_colsum is None else vec(w_colsum, n, np_, jnp.int32)[None, :],
    bias=None if bias is None else vec(bias, n, np_, jnp.float32)[None, :],
    lowrank_x=None if rank is None else _pad_to(jnp.asarray(lowrank_x, jnp.float32), (mp, rank)),
    lowrank_l2=None if rank is None else _pad_to(jnp.asarray(lowrank_l2, jnp.float32), (rank, np_)),
  )


def _epilogue_specs(ep: _Epilogue, bm: int, bn: int):
  """BlockSpecs over the (i, j) output-tile grid, in `_Epilogue.arrays()` order."""
  row = lambda width: pl.BlockSpec((bm, width), lambda i, j: (i, 0))
  col = lambda height: pl.BlockSpec((height, bn), lambda i, j: (0, j))
  specs = [row(1), col(1)]
  if ep.a_zero is not None:
    specs += [row(1), col(1)]
  if ep.bias is not None:
    specs += [col(1)]
  if ep.lowrank_x is not None:
    rank = ep.lowrank_x.shape[1]
    specs += [row(rank), col(rank)]
  return specs


def _epilogue_from_refs(refs, *, has_zero, has_bias, has_lowrank):
  values = iter(r[...] for r in refs)
  kw = dict(a_scale=next(values), w_scale=next(values))
  if has_zero:
    kw.update(a_zero=next(values), w_colsum=next(values))
  if has_bias:
    kw.update(bias=next(values))
  if has_lowrank:
    kw.update(lowrank_x=next(values), lowrank_l2=next(values))
  return kw


def _dot_nt(a, b):
  """int8 [m, k] x int8 [n, k] -> int32 [m, n] (both operands K-major)."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)


def _gemm_kernel(
  x_ref, w_ref, *refs, block_k, k_steps, packed_int4, has_zero, has_bias, has_lowrank, out_dtype
):
  *epilogue_refs, o_ref = refs
  bm, bn = o_ref.shape
  half = block_k // 2

  def k_step(step, acc):
    if packed_int4:
      # Byte j of the packed tile holds k = 2j (low nibble) and 2j + 1 (high nibble): multiply
      # the even/odd nibbles by the even/odd activation columns (strided loads), no interleave.
      even_w, odd_w = unpack_int4_halves(w_ref[:, pl.ds(step * half, half)])
      even_x = x_ref[:, pl.ds(step * block_k, half, stride=2)]
      odd_x = x_ref[:, pl.ds(step * block_k + 1, half, stride=2)]
      return acc + _dot_nt(even_x, even_w) + _dot_nt(odd_x, odd_w)
    k_slice = pl.ds(step * block_k, block_k)
    return acc + _dot_nt(x_ref[:, k_slice], w_ref[:, k_slice])

  acc = lax.fori_loop(0, k_steps, k_step, jnp.zeros((bm, bn), jnp.int32))
  o_ref[...] = gemm_epilogue(
    acc,
    **_epilogue_from_refs(
      epilogue_refs, has_zero=has_zero, has_bias=has_bias, has_lowrank=has_lowrank
    ),
    out_dtype=out_dtype,
  )


def triton_params(interpret: bool, *, num_warps: int, num_stages: int | None = None):
  """Triton compiler params (None in interpret mode). Naming them pins the Triton lowering:
  without params, jax 0.10 lowers a GPU ``pallas_call`` to Mosaic GPU."""
  if interpret:
    return None
  from jax.experimental.pallas import triton as pltriton

  return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def _pick_block(dim: int, preferred: int, minimum: int = 16) -> int:
  """Largest power of two in [minimum, preferred] dividing ``dim`` (no padding), else the
  smallest power of two >= min(dim, preferred) (then ``dim`` is padded up to it)."""
  block = preferred
  while block >= minimum:
    if dim % block == 0:
      return block
    block //= 2
  return max(minimum, min(preferred, pl.next_power_of_2(dim)))


@functools.partial(jax.jit, static_argnames=("out_dtype", "blocks", "interpret"))
def int_matmul_pallas(
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
  blocks: GemmBlocks = GemmBlocks(),
  interpret: bool = False,
):
  """Pallas integer GEMM, operands and formula as in the module docstring -> ``out_dtype`` [M, N].

  Grid ``(ceil(M/bm), ceil(N/bn))``; program (i, j) reads xq [bm, Kp] and w [bn, Kp] (int8) or
  [bn, Kp/2] (packed uint8) and loops over K in ``block_k`` steps with an int32 [bm, bn]
  accumulator, then applies the epilogue and writes y [bm, bn]. ``bm``/``bn``/``bk`` are
  ``blocks``' sizes shrunk to powers of two dividing M/N/K where possible (see `_pick_block`).
  """
  m, k = xq.shape
  n = w.shape[0]
  packed_int4 = w.dtype == jnp.uint8
  bm = _pick_block(m, blocks.block_m)
  bn = _pick_block(n, blocks.block_n)
  bk = _pick_block(k, blocks.block_k, minimum=32 if packed_int4 else 16)
  mp, np_, kp = _round_up(m, bm), _round_up(n, bn), _round_up(k, bk)
  xq = _pad_to(xq, (mp, kp))
  w_width = kp // 2 if packed_int4 else kp
  w = _pad_to(w, (np_, w_width))
  ep = _prepare_epilogue(
    m,
    n,
    mp,
    np_,
    a_scale=a_scale,
    w_scale=w_scale,
    a_zero=a_zero,
    w_colsum=w_colsum,
    bias=bias,
    lowrank_x=lowrank_x,
    lowrank_l2=lowrank_l2,
  )
  kernel = functools.partial(
    _gemm_kernel,
    block_k=bk,
    k_steps=kp // bk,
    packed_int4=packed_int4,
    has_zero=ep.a_zero is not None,
    has_bias=ep.bias is not None,
    has_lowrank=ep.lowrank_x is not None,
    out_dtype=out_dtype,
  )
  y = pl.pallas_call(
    kernel,
    out_shape=jax.ShapeDtypeStruct((mp, np_), out_dtype),
    grid=(mp // bm, np_ // bn),
    in_specs=[
      pl.BlockSpec((bm, kp), lambda i, j: (i, 0)),
      pl.BlockSpec((bn, w_width), lambda i, j: (j, 0)),
      *_epilogue_specs(ep, bm, bn),
    ],
    out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
    interpret=interpret,
    compiler_params=triton_params(
      interpret, num_warps=blocks.num_warps, num_stages=blocks.num_stages
    ),
    name="int4_gemm" if packed_int4 else "int8_gemm",
  )(xq, w, *ep.arrays())
  return y[:m, :n]


@functools.partial(jax.jit, static_argnames=("out_dtype",))
def int_matmul_xla(
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
):
  """XLA integer GEMM: ``lax.dot_general`` int8 x int8 -> int32 (cuBLASLt IMMA on GPU, weights
  already K-major) + the same epilogue, which XLA fuses into one elementwise kernel. Packed int4
  weights are unpacked to int8 [N, K] first (a separate XLA fusion)."""
  m, k = xq.shape
  w = unpack_weight(w, k)
  ep = _prepare_epilogue(
    m,
    w.shape[0],
    m,
    w.shape[0],
    a_scale=a_scale,
    w_scale=w_scale,
    a_zero=a_zero,
    w_colsum=w_colsum,
    bias=bias,
    lowrank_x=lowrank_x,
    lowrank_l2=lowrank_l2,
  )
  return gemm_epilogue(_dot_nt(xq, w), **ep.as_kwargs(), out_dtype=out_dtype)


def pad_codes(xq, padding: int, a_zero):
  """Pad NHWC codes spatially with the zero-point code, i.e. zero padding in the real domain."""
  fill = 0 if a_zero is None else jnp.asarray(a_zero, xq.dtype)
  return jnp.pad(xq, [(0, 0), (padding, padding), (padding, padding), (0, 0)], constant_values=fill)


def im2col(xp, kh: int, kw: int, stride: int):
  """Padded NHWC [B, Hp, Wp, C] -> patches [B*Ho*Wo, kh*kw*C], taps ordered (kh, kw, C) like
  ``wq.reshape(kh*kw*C, C_out)`` of an HWIO weight."""
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
):
  """Integer conv by XLA: ``lax.conv_general_dilated`` int8 NHWC x int8 HWIO with int32
  accumulation, converted to f32 at once, then the GEMM epilogue with per-tensor
  ``a_scale``/``a_zero`` (scalars), per-C_out ``w_scale`` [C_out] and ``bias`` [C_out] ->
  ``out_dtype`` NHWC. ``w_colsum`` int32 [C_out] (sum of wq over kh, kw, C_in) is computed here
  unless given; ``lowrank_x`` f32 [B*Ho*Wo, r] with ``lowrank_l2`` [r, C_out] as in `int_matmul`.

  The immediate f32 conversion is the only int8 conv cuDNN runs (XLA fuses a convert to f32 that
  is the int32 conv's one user into an int8 -> f32 cuDNN conv; anything else between them fails
  to compile on GPU). It is exact while |sum| < 2**24, which holds for every W4 conv up to
  K = kh·kw·C_in = 16384 (|code products| <= 128·8) — all of sd21's — and for W8 up to K = 1024;
  beyond, the accumulator is rounded to 24 bits, as cuDNN itself does."""
  acc = lax.conv_general_dilated(
    pad_codes(xq, padding, a_zero),
    wq,
    (stride, stride),
    "VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    preferred_element_type=jnp.int32,
  )
  acc = acc.astype(jnp.float32)
  b, ho, wo, c_out = acc.shape
  rows = b * ho * wo
  if a_zero is not None and w_colsum is None:
    w_colsum = jnp.sum(wq, axis=(0, 1, 2), dtype=jnp.int32)
  ep = _prepare_epilogue(
    rows,
    c_out,
    rows,
    c_out,
    a_scale=a_scale,
    w_scale=w_scale,
    a_zero=a_zero,
    w_colsum=w_colsum,
    bias=bias,
    lowrank_x=lowrank_x,
    lowrank_l2=lowrank_l2,
  )
  y = gemm_epilogue(acc.reshape(rows, c_out), **ep.as_kwargs(), out_dtype=out_dtype)
  return y.reshape(b, ho, wo, c_out)


def _implicit_conv_kernel(
  x_ref, w_ref, *refs, shifts, c_steps, block_k, has_zero, has_bias, has_lowrank, out_dtype
):
  *epilogue_refs, o_ref = refs
  bm, bn = o_ref.shape
  row0 = pl.program_id(0) * bm
  acc = jnp.zeros((bm, bn), jnp.int32)
  for tap, shift in enumerate(shifts):  # static: one shifted row window of x per tap

    def k_step(step, acc, rows=pl.ds(row0 + shift, bm), w0=tap * c_steps * block_k):
      k0 = step * block_k
      return acc + _dot_nt(x_ref[rows, pl.ds(k0, block_k)], w_ref[:, pl.ds(w0 + k0, block_k)])

    acc = lax.fori_loop(0, c_steps, k_step, acc)
  o_ref[...] = gemm_epilogue(
    acc,
    **_epilogue_from_refs(
      epilogue_refs, has_zero=has_zero, has_bias=has_bias, has_lowrank=has_lowrank
    ),
    out_dtype=out_dtype,
  )


@functools.partial(jax.jit, static_argnames=("padding", "out_dtype", "blocks", "interpret"))
def int_conv2d_implicit(
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
  padding: int = 1,
  out_dtype=jnp.float32,
  blocks: GemmBlocks = GemmBlocks(),
  interpret: bool = False,
):
  """Stride-1 integer conv as an implicit GEMM in Pallas (Triton on GPU): no im2col copy.

  ``xq`` int8 NHWC [B, H, W, C_in], ``wq`` int8 HWIO [kh, kw, C_in, C_out]; epilogue operands as
  in `int_conv2d_xla` -> ``out_dtype`` [B, Ho, Wo, C_out].

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
  xp = pad_codes(xq, padding, a_zero)
  b, hp, wp, _ = xp.shape
  ho, wo = hp - kh + 1, wp - kw + 1
  rows = b * hp * wp
  bm = _pick_block(rows, blocks.block_m)
  bn = _pick_block(c_out, blocks.block_n)
  bk = _pick_block(c_in, blocks.block_k)
  mp, np_, cp = _round_up(rows, bm), _round_up(c_out, bn), _round_up(c_in, bk)
  x_flat = _pad_to(xp.reshape(rows, c_in), (mp + (kh - 1) * wp + kw - 1, cp))
  if x_flat.size >= 2**31 and not interpret:  # Triton indexes the whole operand with int32 offsets
    raise ValueError(
      f"int_conv2d_implicit: input of {x_flat.size:,} padded codes needs 64-bit "
      "offsets; split the batch (or use the xla backend)"
    )
  w = _pad_to(wq.reshape(kh * kw, c_in, c_out), (kh * kw, cp, np_))
  w = w.transpose(2, 0, 1).reshape(np_, kh * kw * cp)
  if a_zero is not None and w_colsum is None:
    w_colsum = jnp.sum(wq, axis=(0, 1, 2), dtype=jnp.int32)
  if lowrank_x is not None:
    grid_x = lowrank_x.reshape(b, ho, wo, -1)
    lowrank_x = jnp.pad(grid_x, [(0, 0), (0, hp - ho), (0, wp - wo), (0, 0)]).reshape(rows, -1)
  ep = _prepare_epilogue(
    rows,
    c_out,
    mp,
    np_,
    a_scale=a_scale,
    w_scale=w_scale,
    a_zero=a_zero,
    w_colsum=w_colsum,
    bias=bias,
    lowrank_x=lowrank_x,
    lowrank_l2=lowrank_l2,
  )
  kernel = functools.partial(
    _implicit_conv_kernel,
    shifts=tuple(dy * wp + dx for dy in range(kh) for dx in range(kw)),
    c_steps=cp // bk,
    block_k=bk,
    has_zero=ep.a_zero is not None,
    has_bias=ep.bias is not None,
    has_lowrank=ep.lowrank_x is not None,
    out_dtype=out_dtype,
  )
  y = pl.pallas_call(
    kernel,
    out_shape=jax.ShapeDtypeStruct((mp, np_), out_dtype),
    grid=(mp // bm, np_ // bn),
    in_specs=[
      pl.BlockSpec(x_flat.shape, lambda i, j: (0, 0)),
      pl.BlockSpec((bn, kh * kw * cp), lambda i, j: (j, 0)),
      *_epilogue_specs(ep, bm, bn),
    ],
    out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
    interpret=interpret,
    compiler_params=triton_params(
      interpret, num_warps=blocks.num_warps, num_stages=blocks.num_stages
    ),
    name="int8_implicit_conv",
  )(x_flat, w, *ep.arrays())
  return y[:rows, :c_out].reshape(b, hp, wp, c_out)[:, :ho, :wo]


@dataclasses.dataclass(frozen=True, kw_only=True)
class MosaicBlocks:
  tile_m: int = 128  # rows per CTA (multiple of 64: Hopper wgmma M granule, one warpgroup)
  tile_n: int = 128  # output channels per CTA (multiple of 8, <= 256)
  tile_k: int = 128  # K bytes per pipeline stage (128 = one 128-byte swizzle row of int8)
  max_concurrent_steps: int = 4  # TMA pipeline depth (shared-memory stages in flight)


def _mosaic_kernel(
  x_gmem,
  w_gmem,
  a_scale_gmem,
  w_scale_gmem,
  bias_gmem,
  out_gmem,
  out_smem,
  *,
  blocks: MosaicBlocks,
  k_iters: int,
):
  import jax.experimental.pallas.mosaic_gpu as plgpu

  tm, tn, tk = blocks.tile_m, blocks.tile_n, blocks.tile_k
  mi, ni = lax.axis_index("m"), lax.axis_index("n")
  swizzle = plgpu.find_swizzle(tk * 8)  # int8: 8 bits per element
  transforms = (plgpu.TilingTransform((8, swizzle)), plgpu.SwizzleTransform(swizzle))

  def accumulate(acc_ref):
    def k_step(_, x_smem, w_smem):
      # w tile is [tn, tk] with K contiguous: the K-major B operand int8 wgmma requires.
      plgpu.wgmma(acc_ref, x_smem, plgpu.transpose_ref(w_smem, (1, 0)))
      plgpu.wgmma_wait(1)

    plgpu.emit_pipeline(
      k_step,
      grid=(k_iters,),
      in_specs=[
        plgpu.BlockSpec((tm, tk), lambda k: (mi, k), transforms=transforms, delay_release=1),
        plgpu.BlockSpec((tn, tk), lambda k: (ni, k), transforms=transforms, delay_release=1),
      ],
      max_concurrent_steps=blocks.max_concurrent_steps,
    )(x_gmem, w_gmem)
    plgpu.wgmma_wait(0)
    acc = acc_ref[...].astype(jnp.float32)
    row = plgpu.Layout.WGMMA.reduce(1)
    col = plgpu.Layout.WGMMA.reduce(0)
    a_s = plgpu.load(a_scale_gmem.at[pl.ds(mi * tm, tm)], (), layout=row, optimized=False)
    w_s = plgpu.load(w_scale_gmem.at[pl.ds(ni * tn, tn)], (), layout=col, optimized=False)
    bias = plgpu.load(bias_gmem.at[pl.ds(ni * tn, tn)], (), layout=col, optimized=False)
    y = acc * lax.broadcast_in_dim(a_s, (tm, tn), [0]) * lax.broadcast_in_dim(
      w_s, (tm, tn), [1]
    ) + lax.broadcast_in_dim(bias, (tm, tn), [1])
    out_smem[...] = y.astype(out_smem.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(out_smem, out_gmem.at[pl.ds(mi * tm, tm), pl.ds(ni * tn, tn)])
    plgpu.wait_smem_to_gmem(0)

  pl.run_scoped(accumulate, plgpu.ACC((tm, tn), jnp.int32))


@functools.partial(jax.jit, static_argnames=("out_dtype", "blocks"))
def int_matmul_mosaic(
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
  blocks: MosaicBlocks = MosaicBlocks(),
):
  """Hopper-only W8A8 GEMM on Pallas Mosaic GPU: TMA-pipelined int8 ``wgmma`` into an int32
  register accumulator, epilogue ``y = f32(acc) * a_scale * w_scale + bias`` fused.

  ``xq`` int8 [M, K], ``w`` int8 [N, K] (packed int4 is not supported here), one warpgroup per
  CTA, grid ``(Mp/tile_m, Np/tile_n)``, operands zero-padded to whole tiles. ``a_zero`` and the
  low-rank branch are not fused in this backend (ValueError); use "pallas" or "xla" for them.
  """
  import jax.experimental.pallas.mosaic_gpu as plgpu

  if w.dtype != jnp.int8:
    raise ValueError("mosaic backend takes int8 [N, K] weights only (W8A8)")
  if a_zero is not None or lowrank_x is not None:
    raise ValueError("mosaic backend fuses scales and bias only")
  m, k = xq.shape
  n = w.shape[0]
  mp, np_ = _round_up(m, blocks.tile_m), _round_up(n, blocks.tile_n)
  kp = _round_up(k, blocks.tile_k)
  ep = _prepare_epilogue(
    m,
    n,
    mp,
    np_,
    a_scale=a_scale,
    w_scale=w_scale,
    a_zero=None,
    w_colsum=None,
    bias=0.0 if bias is None else bias,
    lowrank_x=None,
    lowrank_l2=None,
  )
  out_bits = jnp.dtype(out_dtype).itemsize * 8
  out_swizzle = plgpu.find_swizzle(blocks.tile_n * out_bits)
  out_elems = out_swizzle * 8 // out_bits
  kernel = plgpu.kernel(
    functools.partial(_mosaic_kernel, blocks=blocks, k_iters=kp // blocks.tile_k),
    out_type=jax.ShapeDtypeStruct((mp, np_), out_dtype),
    scratch_types=[
      plgpu.SMEM(
        (blocks.tile_m, blocks.tile_n),
        out_dtype,
        transforms=(plgpu.TilingTransform((8, out_elems)), plgpu.SwizzleTransform(out_swizzle)),
      )
    ],
    grid=(mp // blocks.tile_m, np_ // blocks.tile_n),
    grid_names=("m", "n"),
  )
  y = kernel(
    _pad_to(xq, (mp, kp)), _pad_to(w, (np_, kp)), ep.a_scale[:, 0], ep.w_scale[0], ep.bias[0]
  )
  return y[:m, :n]
