"""Fake-quantized Linear and Conv2d with channel balancing and a low-rank branch (docs/design.md
§2.2–2.4).

    x̂ = x·diag(s)⁻¹·Q                    (online, per token / per pixel over C_in)
    y = Q_a(x̂)·Q_w(R) + x̂·L1·L2 + b      R = Ŵ − L1·L2,  Ŵ = Qᵀ·diag(s)·W

Everything that may change between calls of one compiled function is an ``nnx.Variable``:
``w_bits``/``a_bits`` (:class:`QuantBits`, int32 scalars) and ``enabled`` (:class:`QuantState`,
bool scalar; False = full precision, the balanced layer then equals the original up to float32
rounding), so ``set_bits``/``set_quant_enabled`` never recompile a jitted restore. The rotation
Q = H·diag(signs)/√n is split into a static unsigned ``RotationSpec`` (channel count only, so
layers of one width share compiled code) and its ±1 signs, stored as data (``rotation_signs``).

Weight quantization is symmetric per output channel by default; the stored ``w_clip`` is the clip
ratio searched at quantize time, and the scale ``w_clip·absmax(R)/qmax(w_bits)`` is derived from the
live weight and the traced width (so it stays right when the bits or, in QD-LoRA, R change).
Static activations use the calibrated range ``[a_min, a_max]`` of the *balanced* input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from flax import nnx

from quantface_jax.models.layers import Padding, conv2d
from quantface_jax.quant import hadamard, quantizers, smoothing
from quantface_jax.quant.rules import LayerQuantConfig


class QuantBits(nnx.Variable):
  """A bit width (int32 scalar): traced data, so changing it never recompiles."""


class QuantState(nnx.Variable):
  """Non-trainable quantization state: smoothing scales, ranges, clip ratios, the enable flag."""


def _state(x, dtype=jnp.float32) -> QuantState:
  return QuantState(jnp.asarray(x, dtype))


class _QuantLayer(nnx.Module):
  """State and math shared by :class:`QuantLinear` and :class:`QuantConv2d`.

  ``kernel`` is the residual weight R: (d_in, d_out) for a Linear, (kh, kw, C_in, C_out) HWIO for a
  conv; the low-rank factors work on its (taps·d_in, d_out) matrix.
  """

  def __init__(
    self,
    kernel: jax.Array,
    bias: jax.Array | None,
    *,
    config: LayerQuantConfig,
    smooth: jax.Array | None = None,
    rotation_signs: jax.Array | None = None,
    low_rank: tuple[jax.Array, jax.Array] | None = None,
    w_clip: jax.Array | None = None,
    a_range: tuple[float, float] = (0.0, 0.0),
  ):
    self.config = config
    self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
    self.bias = None if bias is None else nnx.Param(jnp.asarray(bias, jnp.float32))
    self.smooth = None if smooth is None else _state(smooth)
    if rotation_signs is None:
      self.rotation = self.rotation_signs = self.rotation_matrix = None
    else:
      self.rotation = hadamard.random_hadamard(len(rotation_signs), None)  # static, unsigned
      self.rotation_signs = _state(rotation_signs)  # (d_in,) ±1
      self.rotation_matrix = (
        _state(hadamard.dense_rotation(self.rotation) * np.asarray(rotation_signs))
        if config.rotation_impl == "dense"
        else None
      )
    if low_rank is None:
      self.low_rank_down = self.low_rank_up = None
    else:
      self.low_rank_down = nnx.Param(jnp.asarray(low_rank[0], jnp.float32))  # L1 (taps·d_in, r)
      self.low_rank_up = nnx.Param(jnp.asarray(low_rank[1], jnp.float32))  # L2 (r, d_out)
    param_shape = quantizers.reduce_groups(
      self.kernel[...], jnp.max, **config.weight_quantizer.layout
    ).shape
    self.w_clip = _state(jnp.ones(param_shape) if w_clip is None else w_clip)
    self.a_min = _state(a_range[0])
    self.a_max = _state(a_range[1])
    self.w_bits = QuantBits(jnp.asarray(config.w_bits, jnp.int32))
    self.a_bits = QuantBits(jnp.asarray(config.a_bits, jnp.int32))
    self.enabled = QuantState(jnp.asarray(True))

  @property
  def in_channels(self) -> int:
    return self.kernel.shape[-2]

  def balance(self, x: jax.Array) -> jax.Array:
    """x̂ = x·diag(s)⁻¹·Q over the last axis; x's dtype."""
    xs = smoothing.balance_input(x, None if self.smooth is None else self.smooth[...])
    if self.rotation_matrix is not None:
      return jnp.dot(
        xs.astype(jnp.float32), self.rotation_matrix[...], precision=jax.lax.Precision.HIGHEST
      ).astype(x.dtype)
    if self.rotation is None:
      return xs
    return rotate_input(xs, self.rotation, self.rotation_signs[...])

  def quant_input(self, xh: jax.Array) -> jax.Array:
    """Q_a(x̂) (static per-tensor range, or dynamic per token)."""
    cfg = self.config.act_quantizer
    enabled = self.enabled[...]
    if cfg.dynamic:
      return quantizers.fake_quant_tensor(xh, self.a_bits[...], cfg, enabled=enabled)
    return quantizers.fake_quant_static(
      xh,
      self.a_min[...],
      self.a_max[...],
      self.a_bits[...],
      symmetric=cfg.symmetric,
      enabled=enabled,
    )

  def quant_weight(self) -> jax.Array:
    """Q_w(R), float32, with the stored clip ratios and the traced width."""
    cfg = self.config.weight_quantizer
    w = self.kernel[...]
    w_min, w_max = quantizers.range_stats(w, **cfg.layout)
    scale, zero_point = quantizers.qparams_from_range(
      w_min, w_max, self.w_bits[...], symmetric=cfg.symmetric, clip_ratio=self.w_clip[...]
    )
    return quantizers.fake_quant(
      w, scale, zero_point, self.w_bits[...], symmetric=cfg.symmetric, enabled=self.enabled[...]
    )

  def _add_bias(self, y: jax.Array) -> jax.Array:
    return y if self.bias is None else y + self.bias[...].astype(y.dtype)


class QuantLinear(_QuantLayer):
  """Replaces ``Linear``: (..., d_in) -> (..., d_out)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    xh = self.balance(x)
    y = jnp.dot(self.quant_input(xh), self.quant_weight().astype(x.dtype))
    if self.low_rank_down is not None:
      y = y + jnp.dot(
        jnp.dot(xh, self.low_rank_down[...].astype(x.dtype)), self.low_rank_up[...].astype(x.dtype)
      )
    return self._add_bias(y)


class QuantConv2d(_QuantLayer):
  """Replaces ``Conv2d`` (NHWC, HWIO); balancing runs per pixel over C_in before the convolution."""

  def __init__(self, kernel, bias, *, stride: int, padding: Padding, **kwargs):
    super().__init__(kernel, bias, **kwargs)
    self.stride = stride
    self.padding = padding

  def __call__(self, x: jax.Array) -> jax.Array:
    xh = self.balance(x)
    y = conv2d(self.quant_input(xh), self.quant_weight().astype(x.dtype), self.stride, self.padding)
    if self.low_rank_down is not None:
      kh, kw, c_in, _ = self.kernel.shape
      down = self.low_rank_down[...].reshape(kh, kw, c_in, -1).astype(x.dtype)
      h = conv2d(xh, down, self.stride, self.padding)
      y = y + jnp.dot(h, self.low_rank_up[...].astype(x.dtype))
    return self._add_bias(y)


def rotate_input(x: jax.Array, rotation: hadamard.RotationSpec, signs: jax.Array) -> jax.Array:
  """x·Q over the last axis of (..., d): the unsigned transform, then the ±1 signs (x's dtype)."""
  return (hadamard.apply_hadamard(x, rotation) * signs).astype(x.dtype)


def rotate_weight(w: jax.Array, rotation: hadamard.RotationSpec, signs: jax.Array) -> jax.Array:
  """Qᵀ·W over the d_in axis of a (*taps, d_in, d_out) weight."""
  return (hadamard.apply_hadamard(w, rotation, axis=-2) * signs[:, None]).astype(w.dtype)


def low_rank_split(w_hat: jax.Array, rank: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Top-r SVD split of a balanced (*taps, d_in, d_out) weight: (R, L1, L2) with R + L1·L2 = Ŵ.

  L1 = U_r·S_r^½ (taps·d_in, r), L2 = S_r^½·V_rᵀ (r, d_out); computed in float64 on the host. Only
  the top r singular pairs are needed, so they come from the r largest eigenpairs of the smaller
  Gram matrix (one GEMM and a subset eigensolve: ~10× faster than a full SVD at sd21's 11520×1280,
  where the full SVD dominated quantizing). Float64 keeps the top pairs exact to ~1e-12 for any
  r ≤ 32 that matters here, and R is formed from L1·L2 itself, so R + L1·L2 = Ŵ regardless.
  """
  w = np.asarray(w_hat, np.float64)
  matrix = w.reshape(-1, w.shape[-1])
  rank = min(rank, *matrix.shape)
  if rank == 0:
    return (
      jnp.asarray(w, jnp.float32),
      jnp.zeros((matrix.shape[0], 0)),
      jnp.zeros((0, matrix.shape[1])),
    )
  tall = matrix.shape[0] >= matrix.shape[1]
  a = matrix if tall else matrix.T  # (m, n), m >= n: the Gram matrix is the small n × n one
  n = a.shape[1]
  eigvals, eigvecs = scipy.linalg.eigh(a.T @ a, subset_by_index=(n - rank, n - 1))
  s = np.sqrt(np.maximum(eigvals[::-1], 0.0))  # descending singular values
  v = eigvecs[:, ::-1]
  root = np.sqrt(s)
  # a = U S Vᵀ ⇒ U·S^½ = a·V·S^-½ (columns of zero singular value stay zero).
  left = a @ v / np.where(root > 0, root, 1.0)
  right = root[:, None] * v.T
  down, up = (left, right) if tall else (right.T, left.T)
  residual = (matrix - down @ up).reshape(w.shape)
  return (
    jnp.asarray(residual, jnp.float32),
    jnp.asarray(down, jnp.float32),
    jnp.asarray(up, jnp.float32),
  )


QUANT_LAYERS = (QuantLinear, QuantConv2d)
