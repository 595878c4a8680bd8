"""Integer kernels (leaves: arrays in, arrays out): weight packing (`packing`), GEMMs (`gemm`: XLA and
Pallas; `mosaic`: Hopper Mosaic GPU), convolutions (`conv`), fused activation quantization
(`quantize_act`) and the backend choice (`dispatch`)."""

from quantface_jax.kernels.conv import im2col, int_conv2d_implicit, int_conv2d_xla
from quantface_jax.kernels.dispatch import int_conv2d, int_matmul, quantize_act
from quantface_jax.kernels.gemm import Epilogue, GemmBlocks, int_matmul_pallas, int_matmul_xla
from quantface_jax.kernels.mosaic import MosaicBlocks, int_matmul_mosaic
from quantface_jax.kernels.packing import pack_int4, pack_weight, unpack_int4, unpack_weight
from quantface_jax.kernels.quantize_act import quantize_act_pallas, quantize_act_xla
from quantface_jax.kernels.reference import group_norm_prologue

__all__ = [
  "Epilogue",
  "GemmBlocks",
  "MosaicBlocks",
  "group_norm_prologue",
  "im2col",
  "int_conv2d",
  "int_conv2d_implicit",
  "int_conv2d_xla",
  "int_matmul",
  "int_matmul_mosaic",
  "int_matmul_pallas",
  "int_matmul_xla",
  "pack_int4",
  "pack_weight",
  "quantize_act",
  "quantize_act_pallas",
  "quantize_act_xla",
  "unpack_int4",
  "unpack_weight",
]
