"""W8A8 GEMM for Hopper GPUs on Pallas Mosaic GPU (TMA pipeline + int8 ``wgmma``).

Operands: ``xq`` int8 [M, K] row-major; ``w`` int8 [N, K], K contiguous (the K-major B operand int8
``wgmma`` requires; packed int4 is not supported); ``epilogue`` a `gemm.Epilogue` with scales and
bias only -> ``out_dtype`` [M, N]:

    y = f32(xq @ W^T) * a_scale * w_scale + bias

int32 accumulation in registers. No zero point and no low-rank branch in this backend (the
`gemm` backends fuse them).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from quantface_jax.kernels.gemm import Epilogue, pad_to, prepare_epilogue, round_up


@dataclasses.dataclass(frozen=True, kw_only=True)
class MosaicBlocks:
  """Tile sizes and pipeline depth of `int_matmul_mosaic`."""

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
  epilogue: Epilogue,
  *,
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
  if epilogue.a_zero is not None or epilogue.lowrank_x is not None:
    raise ValueError("mosaic backend fuses scales and bias only")
  m, k = xq.shape
  n = w.shape[0]
  mp, np_ = round_up(m, blocks.tile_m), round_up(n, blocks.tile_n)
  kp = round_up(k, blocks.tile_k)
  bias = 0.0 if epilogue.bias is None else epilogue.bias  # the kernel always adds one
  ep = prepare_epilogue(epilogue._replace(bias=bias), m, n, mp, np_)
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
    pad_to(xq, (mp, kp)), pad_to(w, (np_, kp)), ep.a_scale[:, 0], ep.w_scale[0], ep.bias[0]
  )
  return y[:m, :n]
