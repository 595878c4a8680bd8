"""Integer serving layers: a QDIR's quantized Linear/Conv2d on int8 MMA (docs/design.md §2.6).

For an input x (..., C_in) and the layer's packed weight codes W_q (see :class:`IntLinear`):

    x̂ = x·diag(s)⁻¹·Q          the fake-quant layer's own online transform (the same code, so
                               the activation codes below equal the fake-quant codes bit for bit)
    dynamic: xq, a_scale[m] = per-token symmetric codes of x̂       (kernels.quantize_act)
    static:  xq = clip(round(x̂ / a_scale) + a_zero, -2^(b-1), 2^(b-1) - 1)     (per tensor)
    y = (xq - a_zero)·W_q · a_scale·w_scale + bias + (x̂·L1)·L2     (kernels.int_matmul/int_conv2d:
                                                  int32 accumulation, everything after it fused)

Convolutions with static activations run as one integer convolution (codes padded with ``a_zero``,
i.e. with zeros of the real domain). Dynamic activations have one scale per *pixel*, which does
not factor out of a k×k window, so those convolutions run as one integer GEMM per tap on im2col
patches, summed in float32 (kh·kw GEMMs: static activations are the fast conv path). A 1×1,
stride-1, unpadded convolution is a GEMM over pixels either way.

The only differences from the fake-quant layer are float rounding: its dot/conv sums dequantized
float products, these layers sum integer codes exactly and scale once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quantface_jax import kernels
from quantface_jax.kernels.conv import im2col
from quantface_jax.models.layers import conv2d
from quantface_jax.quant import hadamard, quantizers
from quantface_jax.quant.export import weight_codes
from quantface_jax.quant.layers import QuantConv2d, QuantLinear, _QuantLayer
from quantface_jax.quant.qdlora import QDLORA_LAYERS, merge_branches

Padding = tuple[tuple[int, int], tuple[int, int]]


class ServeState(nnx.Variable):
  """An array of a serving layer (codes, scales, balancing, low-rank factors, widths)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class IntLayerSpec:
  """The static structure of one serving layer (JSON in the SERVE_DIR manifest)."""

  kind: Literal["linear", "conv"]  # which layer it replaces.
  kernel_shape: tuple[int, ...]  # the FP kernel: (C_in, C_out) or HWIO (kh, kw, C_in, C_out).
  stride: int = 1  # conv only.
  padding: Padding = ((0, 0), (0, 0))  # conv only: ((top, bottom), (left, right)).
  w_bits: int  # weight width 2..8: <= 4 packs two codes per byte, else one int8 each.
  a_mode: Literal["static", "dynamic"]  # per-tensor calibrated range, or per-token live scales.
  a_symmetric: bool  # static only: zero point 0 (no zero-point correction).
  smooth: bool  # per-input-channel smoothing scales.
  rotate: bool  # randomized Hadamard rotation of the input channels.
  rotation_impl: Literal["fast", "dense"] = "fast"  # butterfly, or a stored dense Q.
  low_rank: int = 0  # rank r of the float branch x̂·L1·L2 (0: none).
  bias: bool = True  # whether the layer has a bias.

  @property
  def k(self) -> int:
    """GEMM depth K = kh·kw·C_in (taps ordered kh, kw, C_in as in im2col)."""
    return math.prod(self.kernel_shape[:-1])

  @property
  def n(self) -> int:
    return self.kernel_shape[-1]

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: dict) -> IntLayerSpec:
    data = dict(
      data,
      kernel_shape=tuple(data["kernel_shape"]),
      padding=tuple(tuple(p) for p in data["padding"]),
    )
    return cls(**data)


def weight_storage_shape(spec: IntLayerSpec) -> tuple[tuple[int, int], np.dtype]:
  """Shape and dtype of the stored weight codes (``kernels.packing``'s GEMM storage)."""
  if spec.w_bits <= 4:
    return (spec.n, -(-spec.k // 2)), np.dtype(np.uint8)
  return (spec.n, spec.k), np.dtype(np.int8)


def quantize_static(x: jax.Array, a_scale, a_zero, bits) -> jax.Array:
  """Per-tensor codes int8 ``clip(round(x/a_scale) + a_zero, -2^(b-1), 2^(b-1)-1)``, x's shape.

  The fake quantizer's asymmetric codes c ∈ [0, 2^b - 1] with zero point z shifted down by
  2^(b-1) so they fit int8; ``a_zero`` is z - 2^(b-1) (0 when symmetric), so xq - a_zero = c - z.
  Integer-valued float32 arithmetic, hence the same codes as ``quantizers.fake_quant_static``.
  """
  qmin, qmax = quantizers.int_range(bits, symmetric=True)
  codes = jnp.round(x.astype(jnp.float32) / a_scale) + a_zero.astype(jnp.float32)
  return jnp.clip(codes, qmin, qmax).astype(jnp.int8)


class _IntLayer(nnx.Module):
  """State and GEMM shared by :class:`IntLinear` and :class:`IntConv2d`.

  Arrays (``ServeState``; the SERVE_DIR key is ``<layer path>.<name>``), with K = kh·kw·C_in and
  N = C_out:

  - ``weight``: w_bits <= 4: uint8 [N, ceil(K/2)], two 4-bit two's-complement codes per byte
    along K, k = 2j in the LOW nibble of byte j and k = 2j + 1 in the HIGH one (odd K: a zero
    nibble pads each row); 4 < w_bits <= 8: int8 [N, K]. Output-major (K contiguous) like
    torch's ``Linear.weight``; conv taps ordered (kh, kw, C_in). See ``kernels.packing``.
  - ``w_scale``: float32 [N], symmetric per output channel (weights have no zero point).
  - ``a_bits``: int32 [] activation width (data: one compiled function serves every width).
  - ``bias``: float32 [N] (if the layer has one).
  - ``smooth``: float32 [C_in] smoothing scales s (x is divided by them).
  - ``rotation_signs``: int8 [C_in] of ±1; the Hadamard structure follows from C_in
    (``quant.hadamard``); ``rotation_matrix`` float32 [C_in, C_in] = Q only for the dense impl.
  - ``low_rank_down`` float32 [K, r] (L1), ``low_rank_up`` float32 [r, N] (L2); QD-LoRA's two
    branches are merged into this one pair.
  - static activations: ``a_scale`` float32 [], ``a_zero`` int32 [] (shifted zero point, see
    :func:`quantize_static`) and, if asymmetric, ``w_colsum`` int32 [N] = Σ_k W_q[n, k].
  """

  # The fake-quant layer's balancing, verbatim: x̂ must match it bit for bit.
  balance = _QuantLayer.balance

  def __init__(
    self, spec: IntLayerSpec, arrays: dict[str, jax.Array] | None = None, *, backend: str = "auto"
  ):
    """``arrays``: the tensors above by name; None: zeros of the right shapes (a skeleton)."""
    self.spec = spec
    self.backend = backend
    c_in, n, r = spec.kernel_shape[-2], spec.n, spec.low_rank
    shape, dtype = weight_storage_shape(spec)
    present = {
      "weight": (shape, dtype),
      "w_scale": ((n,), np.float32),
      "a_bits": ((), np.int32),
      "bias": ((n,), np.float32) if spec.bias else None,
      "smooth": ((c_in,), np.float32) if spec.smooth else None,
      "rotation_signs": ((c_in,), np.int8) if spec.rotate else None,
      "rotation_matrix": ((c_in, c_in), np.float32)
      if spec.rotate and spec.rotation_impl == "dense"
      else None,
      "low_rank_down": ((spec.k, r), np.float32) if r else None,
      "low_rank_up": ((r, n), np.float32) if r else None,
      "a_scale": ((), np.float32) if spec.a_mode == "static" else None,
      "a_zero": ((), np.int32) if spec.a_mode == "static" else None,
      "w_colsum": ((n,), np.int32) if self._has_zero_point else None,
    }
    arrays = arrays or {}
    for name, layout in present.items():
      value = (
        None
        if layout is None
        else jnp.asarray(arrays[name] if name in arrays else np.zeros(*layout), layout[1])
      )
      setattr(self, name, None if value is None else ServeState(value))
    # Static and unsigned (the signs are data), as in the fake-quant layer: layers of one width
    # share compiled code.
    self.rotation = hadamard.random_hadamard(c_in, None) if spec.rotate else None

  @property
  def _has_zero_point(self) -> bool:
    return self.spec.a_mode == "static" and not self.spec.a_symmetric

  def _quantize(self, xh: jax.Array):
    """(codes int8 of xh's shape, a_scale (xh.shape[:-1]) or scalar, a_zero scalar or None)."""
    bits = self.a_bits[...]
    if self.spec.a_mode == "dynamic":
      codes, scale = kernels.quantize_act(
        xh.reshape(-1, xh.shape[-1]), None, None, bits, backend=self.backend
      )
      return codes.reshape(xh.shape), scale.reshape(xh.shape[:-1]), None
    codes = quantize_static(xh, self.a_scale[...], self.a_zero[...], bits)
    return codes, self.a_scale[...], self.a_zero[...] if self._has_zero_point else None

  def _epilogue(self, a_scale, a_zero, lowrank_x: jax.Array | None) -> kernels.Epilogue:
    """The epilogue operands of ``kernels.int_matmul`` / ``int_conv2d``."""
    value = lambda v: None if v is None else v[...]
    return kernels.Epilogue(
      a_scale=a_scale,
      w_scale=self.w_scale[...],
      a_zero=a_zero,
      w_colsum=value(self.w_colsum),
      bias=value(self.bias),
      lowrank_x=lowrank_x,
      lowrank_l2=None if lowrank_x is None else self.low_rank_up[...],
    )

  def _gemm(self, xh: jax.Array) -> jax.Array:
    """The layer on balanced rows xh (M, K) -> (M, N) in xh's dtype."""
    xq, a_scale, a_zero = self._quantize(xh)
    lowrank_x = (
      None if self.low_rank_down is None else jnp.dot(xh, self.low_rank_down[...].astype(xh.dtype))
    )
    return kernels.int_matmul(
      xq,
      self.weight[...],
      self._epilogue(a_scale, a_zero, lowrank_x),
      out_dtype=xh.dtype,
      backend=self.backend,
    )


class IntLinear(_IntLayer):
  """Replaces ``QuantLinear``: (..., C_in) -> (..., C_out)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    xh = self.balance(x)
    return self._gemm(xh.reshape(-1, xh.shape[-1])).reshape(*x.shape[:-1], self.spec.n)


class IntConv2d(_IntLayer):
  """Replaces ``QuantConv2d`` (NHWC input, HWIO kernel shape in the spec)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    spec = self.spec
    kh, kw, c_in, c_out = spec.kernel_shape
    xh = self.balance(x)
    if (kh, kw, spec.stride) == (1, 1, 1) and spec.padding == ((0, 0), (0, 0)):
      return self._gemm(xh.reshape(-1, c_in)).reshape(*x.shape[:-1], c_out)
    lowrank_x = None
    if self.low_rank_down is not None:
      down = self.low_rank_down[...].reshape(kh, kw, c_in, -1).astype(xh.dtype)
      h = conv2d(xh, down, spec.stride, spec.padding)
      lowrank_x = h.reshape(-1, h.shape[-1])
    xq, a_scale, a_zero = self._quantize(xh)
    pad = ((0, 0), *spec.padding, (0, 0))
    weight = kernels.unpack_weight(self.weight[...], spec.k)  # int8 [N, K]
    if spec.a_mode == "static":  # pad with the zero-point code: zeros of the real domain
      xq = jnp.pad(xq, pad, constant_values=jnp.asarray(0 if a_zero is None else a_zero, jnp.int8))
      return kernels.int_conv2d(
        xq,
        weight.T.reshape(spec.kernel_shape),
        self._epilogue(a_scale, a_zero, lowrank_x),
        stride=spec.stride,
        padding=0,
        out_dtype=x.dtype,
        backend=self.backend,
      )
    codes, (b, ho, wo) = im2col(jnp.pad(xq, pad), kh, kw, spec.stride)  # padding: code 0
    scales, _ = im2col(jnp.pad(a_scale, pad[:3])[..., None], kh, kw, spec.stride)
    y = None
    for tap in range(kh * kw):  # per-pixel scales: one GEMM per tap, bias/low-rank in the first
      cols = slice(tap * c_in, (tap + 1) * c_in)
      epilogue = (
        self._epilogue(scales[:, tap], None, lowrank_x)
        if tap == 0
        else kernels.Epilogue(a_scale=scales[:, tap], w_scale=self.w_scale[...])
      )
      part = kernels.int_matmul(codes[:, cols], weight[:, cols], epilogue, backend=self.backend)
      y = part if y is None else y + part
    return y.astype(x.dtype).reshape(b, ho, wo, c_out)


INT_LAYERS = (IntLinear, IntConv2d)


def int_layer(
  layer: QuantLinear | QuantConv2d, *, path: str = "", backend: str = "auto"
) -> IntLinear | IntConv2d:
  """The serving layer of one fake-quant layer (QD-LoRA layers are merged first), with the same
  codes, scales and balancing: weights quantized exactly as ``layer.quant_weight`` does.

  Raises ValueError (naming ``path``) for what integer serving cannot express: quantization
  switched off, widths outside 2..8, asymmetric weights.
  """
  if isinstance(layer, QDLORA_LAYERS):
    layer = merge_branches(layer)
  config = layer.config
  w_bits, a_bits = int(layer.w_bits[...]), int(layer.a_bits[...])
  if not bool(layer.enabled[...]) or not (2 <= w_bits <= 8 and 2 <= a_bits <= 8):
    raise ValueError(
      f"{path}: integer serving needs quantization on at W2..8/A2..8, got "
      f"enabled={bool(layer.enabled[...])}, W{w_bits}A{a_bits}"
    )
  if not config.w_symmetric:
    raise ValueError(f"{path}: integer serving needs symmetric weights (no weight zero point)")
  kernel = layer.kernel[...]
  codes, w_scale = weight_codes(layer)
  codes_kn = codes.reshape(-1, kernel.shape[-1])
  conv = isinstance(layer, QuantConv2d)
  spec = IntLayerSpec(
    kind="conv" if conv else "linear",
    kernel_shape=tuple(kernel.shape),
    stride=layer.stride if conv else 1,
    padding=layer.padding if conv else ((0, 0), (0, 0)),
    w_bits=w_bits,
    a_mode=config.a_mode,
    a_symmetric=config.a_symmetric,
    smooth=config.smooth,
    rotate=config.rotate,
    rotation_impl=config.rotation_impl,
    low_rank=0 if layer.low_rank_down is None else layer.low_rank_down.shape[-1],
    bias=layer.bias is not None,
  )
  arrays = dict(
    weight=kernels.pack_weight(codes_kn, w_bits),
    w_scale=jnp.broadcast_to(w_scale.reshape(-1), (spec.n,)),
    a_bits=a_bits,
  )
  for name in (
    "bias",
    "smooth",
    "rotation_signs",
    "rotation_matrix",
    "low_rank_down",
    "low_rank_up",
  ):
    if getattr(layer, name, None) is not None:
      arrays[name] = getattr(layer, name)[...]
  if config.a_mode == "static":
    a_scale, a_zero = quantizers.qparams_from_range(
      layer.a_min[...], layer.a_max[...], a_bits, symmetric=config.a_symmetric
    )
    arrays.update(
      a_scale=a_scale, a_zero=int(a_zero) - (0 if config.a_symmetric else 2 ** (a_bits - 1))
    )
    if not config.a_symmetric:
      arrays["w_colsum"] = codes_kn.sum(0, dtype=np.int32)
  cls = IntConv2d if conv else IntLinear
  return cls(spec, arrays, backend=backend)
