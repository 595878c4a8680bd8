"""Integer GEMMs with a fused dequantization epilogue: W8A8, W4A8, W4A4, all on int8 MMA.

    y[M, N] = f32(xq @ W^T - a_zero * w_colsum) * a_scale * w_scale + bias + lowrank_x @ lowrank_l2

Operands (shapes, layouts and dtypes; `packing` stores the weights):

- ``xq``: int8 [M, K] activation codes, row-major (4-bit codes for W4A4 are held in int8, range
  [-8, 7]).
- ``w``: int8 [N, K] weight codes (int8/int6), K contiguous (the transposed weight, "K-major"); or
  uint8 [N, ceil(K/2)] packed int4, byte j of a row holding k = 2j in its low nibble and k = 2j + 1
  in its high nibble (two's complement); unpacked to int8 inside the kernel.
- ``epilogue``: the scales, zero point, bias and low-rank branch, an `Epilogue` (below).
- result: ``out_dtype`` (default f32) [M, N].

int32 accumulation throughout. The Pallas kernel pads M, N, K with zero codes up to whole blocks
and slices the result, so any shape works; zero codes add nothing, so results are exact.

Backends here: `int_matmul_pallas` (generic Pallas: Triton lowering on GPU, ``interpret=True`` on
CPU) and `int_matmul_xla` (``lax.dot_general`` int8 -> int32, i.e. cuBLASLt IMMA on GPU, then the
epilogue as one fusion). The integer convolutions (`conv`) and the Hopper Mosaic GPU GEMM (`mosaic`)
reuse this module's epilogue helpers; `dispatch` picks a backend.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from quantface_jax.kernels.packing import unpack_int4_halves, unpack_weight
from quantface_jax.kernels.reference import gemm_epilogue


@dataclasses.dataclass(frozen=True, kw_only=True)
class GemmBlocks:
  """Tile sizes of the Pallas GEMM and implicit-conv kernels (shrunk per call to fit the shape)."""

  block_m: int = 64  # rows of xq / y per program (power of two, >= 16)
  block_n: int = 128  # output channels per program (power of two, >= 16)
  block_k: int = 64  # K step of the in-kernel loop (power of two, >= 32 for packed int4)
  num_warps: int = 4  # Triton warps per program (ignored in interpret mode)
  num_stages: int = 3  # Triton software-pipelining depth (ignored in interpret mode)


class Epilogue(NamedTuple):
  """The epilogue operands of every integer GEMM / conv kernel and its reference (a JAX pytree:
  None fields are absent operands):

      y = f32(acc - a_zero * w_colsum) * a_scale * w_scale + bias + lowrank_x @ lowrank_l2

  As passed to a kernel (M rows, N output channels):

  - ``a_scale``: f32 [M] (dynamic per token) or scalar (static per tensor; a conv's is scalar).
  - ``w_scale``: f32 [N] (per output channel) or scalar.
  - ``a_zero``: int32 [M] or scalar (a conv's is scalar), with ``w_colsum`` int32 [N] = sum_k
    W[n, k] precomputed at export (a conv sums its weight when omitted): x ~ a_scale * (xq -
    a_zero). Both or neither.
  - ``bias``: f32 [N].
  - ``lowrank_x`` f32 [M, r] = x_fp @ L1 (computed by the caller: a thin GEMM best left to XLA)
    with ``lowrank_l2`` f32 [r, N]. Both or neither.

  Inside the kernels (`prepare_epilogue`, `reference.gemm_epilogue`) the same fields are 2-D and
  padded to the blocked output [Mp, Np]: ``a_scale`` f32 [Mp, 1], ``w_scale`` f32 [1, Np],
  ``a_zero`` int32 [Mp, 1], ``w_colsum`` int32 [1, Np], ``bias`` f32 [1, Np], ``lowrank_x`` f32
  [Mp, R], ``lowrank_l2`` f32 [R, Np], R = r zero-padded to a power of two >= 16.
  """

  a_scale: jax.Array
  w_scale: jax.Array
  a_zero: jax.Array | None = None
  w_colsum: jax.Array | None = None
  bias: jax.Array | None = None
  lowrank_x: jax.Array | None = None
  lowrank_l2: jax.Array | None = None


def round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def pad_to(a, shape):
  return jnp.pad(a, [(0, t - s) for s, t in zip(a.shape, shape)])


def prepare_epilogue(epilogue: Epilogue, m, n, mp, np_) -> Epilogue:
  """``epilogue`` as passed to a kernel -> its 2-D form padded to the blocked output [mp, np_]."""

  def vec(v, size, padded, dtype):
    return pad_to(jnp.broadcast_to(jnp.asarray(v, dtype).reshape(-1), (size,)), (padded,))

  a_zero, w_colsum, bias = epilogue.a_zero, epilogue.w_colsum, epilogue.bias
  lowrank_x, lowrank_l2 = epilogue.lowrank_x, epilogue.lowrank_l2
  if (a_zero is None) != (w_colsum is None):
    raise ValueError("a_zero and w_colsum go together")
  if (lowrank_x is None) != (lowrank_l2 is None):
    raise ValueError("lowrank_x and lowrank_l2 go together")
  # Triton tiles are powers of two (>= 16 for its dots): the rank is zero-padded to one.
  rank = None if lowrank_x is None else max(16, pl.next_power_of_2(lowrank_x.shape[1]))
  return Epilogue(
    a_scale=vec(epilogue.a_scale, m, mp, jnp.float32)[:, None],
    w_scale=vec(epilogue.w_scale, n, np_, jnp.float32)[None, :],
    a_zero=None if a_zero is None else vec(a_zero, m, mp, jnp.int32)[:, None],
    w_colsum=None if w_colsum is None else vec(w_colsum, n, np_, jnp.int32)[None, :],
    bias=None if bias is None else vec(bias, n, np_, jnp.float32)[None, :],
    lowrank_x=None if rank is None else pad_to(jnp.asarray(lowrank_x, jnp.float32), (mp, rank)),
    lowrank_l2=None if rank is None else pad_to(jnp.asarray(lowrank_l2, jnp.float32), (rank, np_)),
  )


def epilogue_specs(ep: Epilogue, bm: int, bn: int):
  """BlockSpecs over the (i, j) output-tile grid of a prepared epilogue, in the order of its
  leaves (``jax.tree_util.tree_leaves(ep)``: the fields that are not None)."""
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


def epilogue_pallas_call(
  name, kernel, operands, operand_specs, ep: Epilogue, tile, blocks, interpret, out_dtype
):
  """``pl.pallas_call`` named ``name`` over the (i, j) grid of ``tile`` = (bm, bn) output tiles
  of the prepared epilogue ``ep``'s [Mp, Np], compiled with ``blocks``' warps and stages:
  ``kernel(*operand_refs, *epilogue_refs, o_ref, epilogue_tree, out_dtype)`` reads its epilogue
  tiles back with `epilogue_from_refs`."""
  bm, bn = tile
  leaves, tree = jax.tree_util.tree_flatten(ep)
  mp, np_ = ep.a_scale.shape[0], ep.w_scale.shape[1]
  return pl.pallas_call(
    functools.partial(kernel, epilogue_tree=tree, out_dtype=out_dtype),
    out_shape=jax.ShapeDtypeStruct((mp, np_), out_dtype),
    grid=(mp // bm, np_ // bn),
    in_specs=[*operand_specs, *epilogue_specs(ep, bm, bn)],
    out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
    interpret=interpret,
    compiler_params=triton_params(
      interpret, num_warps=blocks.num_warps, num_stages=blocks.num_stages
    ),
    name=name,
  )(*operands, *leaves)


def epilogue_from_refs(refs, epilogue_tree) -> Epilogue:
  """The epilogue tiles read from the kernel's refs (the leaves of `epilogue_pallas_call`'s)."""
  return jax.tree_util.tree_unflatten(epilogue_tree, [r[...] for r in refs])


def dot_nt(a, b):
  """int8 [m, k] x int8 [n, k] -> int32 [m, n] (both operands K-major)."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)


def _gemm_kernel(x_ref, w_ref, *refs, block_k, k_steps, packed_int4, epilogue_tree, out_dtype):
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
      return acc + dot_nt(even_x, even_w) + dot_nt(odd_x, odd_w)
    k_slice = pl.ds(step * block_k, block_k)
    return acc + dot_nt(x_ref[:, k_slice], w_ref[:, k_slice])

  acc = lax.fori_loop(0, k_steps, k_step, jnp.zeros((bm, bn), jnp.int32))
  ep = epilogue_from_refs(epilogue_refs, epilogue_tree)
  o_ref[...] = gemm_epilogue(acc, ep, out_dtype=out_dtype)


def triton_params(interpret: bool, *, num_warps: int, num_stages: int | None = None):
  """Triton compiler params (None in interpret mode). Naming them pins the Triton lowering:
  without params, jax 0.10 lowers a GPU ``pallas_call`` to Mosaic GPU."""
  if interpret:
    return None
  from jax.experimental.pallas import triton as pltriton

  return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def pick_block(dim: int, preferred: int, minimum: int = 16) -> int:
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
  epilogue: Epilogue,
  *,
  out_dtype=jnp.float32,
  blocks: GemmBlocks = GemmBlocks(),
  interpret: bool = False,
):
  """Pallas integer GEMM: ``xq`` int8 [M, K], ``w`` int8 [N, K] or packed uint8 [N, ceil(K/2)],
  ``epilogue`` an `Epilogue` -> ``out_dtype`` [M, N].

  Grid ``(ceil(M/bm), ceil(N/bn))``; program (i, j) reads xq [bm, Kp] and w [bn, Kp] (int8) or
  [bn, Kp/2] (packed uint8) and loops over K in ``block_k`` steps with an int32 [bm, bn]
  accumulator, then applies the epilogue and writes y [bm, bn]. ``bm``/``bn``/``bk`` are
  ``blocks``' sizes shrunk to powers of two dividing M/N/K where possible (see `pick_block`).
  """
  m, k = xq.shape
  n = w.shape[0]
  packed_int4 = w.dtype == jnp.uint8
  bm = pick_block(m, blocks.block_m)
  bn = pick_block(n, blocks.block_n)
  bk = pick_block(k, blocks.block_k, minimum=32 if packed_int4 else 16)
  mp, np_, kp = round_up(m, bm), round_up(n, bn), round_up(k, bk)
  xq = pad_to(xq, (mp, kp))
  w_width = kp // 2 if packed_int4 else kp
  w = pad_to(w, (np_, w_width))
  ep = prepare_epilogue(epilogue, m, n, mp, np_)
  kernel = functools.partial(_gemm_kernel, block_k=bk, k_steps=kp // bk, packed_int4=packed_int4)
  specs = [
    pl.BlockSpec((bm, kp), lambda i, j: (i, 0)),
    pl.BlockSpec((bn, w_width), lambda i, j: (j, 0)),
  ]
  name = "int4_gemm" if packed_int4 else "int8_gemm"
  y = epilogue_pallas_call(name, kernel, (xq, w), specs, ep, (bm, bn), blocks, interpret, out_dtype)
  return y[:m, :n]


@functools.partial(jax.jit, static_argnames=("out_dtype",))
def int_matmul_xla(
  xq,
  w,
  epilogue: Epilogue,
  *,
  out_dtype=jnp.float32,
):
  """XLA integer GEMM: ``lax.dot_general`` int8 x int8 -> int32 (cuBLASLt IMMA on GPU, weights
  already K-major) + the same epilogue, which XLA fuses into one elementwise kernel. Packed int4
  weights are unpacked to int8 [N, K] first (a separate XLA fusion)."""
  m, k = xq.shape
  w = unpack_weight(w, k)
  n = w.shape[0]
  ep = prepare_epilogue(epilogue, m, n, m, n)
  return gemm_epilogue(dot_nt(xq, w), ep, out_dtype=out_dtype)
