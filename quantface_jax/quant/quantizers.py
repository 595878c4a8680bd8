"""Uniform fake quantization with the bit width as traced data (docs/design.md §2.2).

Pure array functions; the quantized layers and the rule table build on them.

Conventions
-----------
* **Bits are data.** Every ``bits`` argument is a jnp/Python scalar or an array broadcastable to
  the quantization-parameter shape (see *Granularity*); ``qmin``/``qmax`` are computed from it with
  jnp, so one compiled function serves every bit allocation. Supported widths are 2..8 (integer
  codes, :func:`quantize_int`, need ``bits <= 8``; 9..15 still fake-quantize correctly).
* **Pass-through.** ``bits >= 16`` (:data:`PASSTHROUGH_BITS`) or ``enabled=False`` returns ``x``
  exactly (bit for bit, in its own dtype) and its gradient is the identity; both are selected with
  ``jnp.where`` so they stay traced.
* **Integer ranges.** Symmetric: codes in ``[-2**(b-1), 2**(b-1)-1]``, scale = absmax / (2**(b-1)-1),
  zero point 0. Asymmetric: codes in ``[0, 2**b-1]``, zero point = round(-min/scale), and the range
  is widened to include 0 so that 0 is exact. ``y = (clip(round(x/s) + z, qmin, qmax) - z) * s``.
* **Granularity** decides which elements share one (scale, zero point); the parameters keep every
  axis of ``x`` (size 1 on reduced axes):
  ``per_tensor``: shape (1,)*ndim. ``per_channel``: one per index of ``axis``, reduced over the rest
  (weights (…, d_in, d_out) use axis=-1). ``per_token``: one per row, reduced over the last axis.
  ``per_group``: ``axis`` is split into contiguous groups of ``group_size``; parameters have
  ``x.shape[axis] // group_size`` there and the full size on every other axis.
* **Gradients** (straight-through rounding, LSQ/LSQ+): see :func:`fake_quant`.
* Math is float32; outputs of :func:`fake_quant` have the dtype of ``x``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal, get_args

import jax
import jax.numpy as jnp
from jax import lax

Granularity = Literal["per_tensor", "per_channel", "per_token", "per_group"]
GRANULARITIES = get_args(Granularity)

# A bit width at or above this means "no quantization" (exact pass-through).
PASSTHROUGH_BITS = 16
# Clip-ratio grid searched by default: 1.0 down to 0.5 in steps of 0.05 (1.0 first: never worse).
DEFAULT_CLIP_RATIOS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))
# Floor on scales so that an all-zero group quantizes to exact zeros instead of NaN.
_MIN_SCALE = 1e-12


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizerConfig:
  """How one tensor (a weight or a layer's input activation) is quantized."""

  bits: int = 8  # default width; layers keep it as traced state, so changing it never recompiles.
  enabled: bool = True  # False: exact pass-through (same as bits >= PASSTHROUGH_BITS).
  symmetric: bool = True  # True: zero point 0, signed codes; False: affine, unsigned codes.
  granularity: Granularity = "per_tensor"  # which elements share one scale (module docstring).
  axis: int = -1  # per_channel: the channel axis kept; per_group: the axis split into groups.
  group_size: int | None = None  # per_group only: elements per group along `axis`.
  dynamic: bool = False  # activations: scales from each live tensor (serving), not calibration.
  clip_search: bool = False  # search a clip ratio per scale group for least MSE (weights).
  clip_ratios: tuple[float, ...] = DEFAULT_CLIP_RATIOS  # grid for clip_search; must contain 1.0.

  def __post_init__(self):
    if self.granularity not in GRANULARITIES:
      raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
    if (self.granularity == "per_group") != (self.group_size is not None):
      raise ValueError('group_size is required for, and only for, granularity="per_group"')
    if self.clip_search and 1.0 not in self.clip_ratios:
      raise ValueError(
        "clip_ratios must contain 1.0 so that the search is never worse than no clip"
      )

  @property
  def layout(self) -> dict:
    """The keyword arguments that select the scale groups (for :func:`compute_qparams` & co.)."""
    return dict(granularity=self.granularity, axis=self.axis, group_size=self.group_size)


# Presets of docs/design.md §2.2.
WEIGHT_PER_CHANNEL = QuantizerConfig(granularity="per_channel", axis=-1, clip_search=True)
ACT_STATIC_PER_TENSOR = QuantizerConfig(symmetric=False, granularity="per_tensor")
ACT_DYNAMIC_PER_TOKEN = QuantizerConfig(granularity="per_token", dynamic=True)


# ----------------------------------------------------------------------------------------------
# Integer ranges and rounding.


def int_range(bits, *, symmetric: bool) -> tuple[jax.Array, jax.Array]:
  """(qmin, qmax) as exact float32 arrays of the shape of ``bits`` (traced, no gradient).

  ``bits`` is integer-valued; powers of two come from an integer shift (XLA's exp2 is not exact),
  with the width capped at 24 (pass-through widths only need a finite range).
  """
  bits = jnp.clip(lax.stop_gradient(jnp.asarray(bits)).astype(jnp.int32), 1, 24)
  levels = jnp.left_shift(1, bits).astype(jnp.float32)  # 2**bits
  if symmetric:
    return -levels / 2, levels / 2 - 1
  return jnp.zeros_like(levels), levels - 1


def is_passthrough(bits, enabled=True) -> jax.Array:
  """Boolean array: True where ``bits >= PASSTHROUGH_BITS`` or quantization is disabled."""
  return (jnp.asarray(bits) >= PASSTHROUGH_BITS) | jnp.logical_not(enabled)


def round_ste(x: jax.Array) -> jax.Array:
  """Round half to even; straight-through gradient (identity). Forward is exactly ``round(x)``."""
  return x + lax.stop_gradient(jnp.round(x) - x)


@jax.custom_vjp
def scale_gradient(x: jax.Array, factor: jax.Array) -> jax.Array:
  """Exact identity forward; the backward multiplies ``x``'s gradient by ``factor`` (LSQ's g)."""
  del factor
  return x


def _scale_gradient_fwd(x, factor):
  return x, factor


def _scale_gradient_bwd(factor, g):
  return g * factor, jnp.zeros_like(factor)


scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


def lsq_gradient_factor(num_elements: int, bits, *, symmetric: bool) -> jax.Array:
  """LSQ step-size gradient scale g = 1/sqrt(N * qmax) for a scale shared by N elements."""
  _, qmax = int_range(bits, symmetric=symmetric)
  return lax.rsqrt(num_elements * jnp.maximum(qmax, 1.0))


# ----------------------------------------------------------------------------------------------
# Scale groups.


def _normalize_axis(axis: int, ndim: int) -> int:
  if not -ndim <= axis < ndim:
    raise ValueError(f"axis {axis} out of range for a rank-{ndim} tensor")
  return axis % ndim


def reduce_groups(
  x: jax.Array,
  reducer: Callable,
  *,
  granularity: Granularity = "per_tensor",
  axis: int = -1,
  group_size: int | None = None,
) -> jax.Array:
  """Reduces ``x`` over each scale group with ``reducer`` (jnp.max, jnp.min, jnp.sum, ...).

  Returns the quantization-parameter shape of the module docstring (same rank as ``x``).
  """
  ndim = x.ndim
  if granularity == "per_tensor":
    return reducer(x, axis=tuple(range(ndim)), keepdims=True)
  if granularity == "per_token":
    return reducer(x, axis=-1, keepdims=True)
  axis = _normalize_axis(axis, ndim)
  if granularity == "per_channel":
    return reducer(x, axis=tuple(a for a in range(ndim) if a != axis), keepdims=True)
  if granularity == "per_group":
    size = x.shape[axis]
    if group_size is None or size % group_size:
      raise ValueError(f"group_size {group_size} must divide axis {axis} of size {size}")
    grouped = x.reshape(x.shape[:axis] + (size // group_size, group_size) + x.shape[axis + 1 :])
    return reducer(grouped, axis=axis + 1)
  raise ValueError(f"unknown granularity {granularity!r}")


def expand_groups(param: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Broadcasts a quantization parameter to ``shape``, repeating group-compressed axes."""
  param = jnp.asarray(param)
  if param.ndim != len(shape):
    return param  # Plain broadcasting (e.g. a scalar).
  for ax, (p, n) in enumerate(zip(param.shape, shape)):
    if p not in (1, n):
      if n % p:
        raise ValueError(f"parameter shape {param.shape} does not tile tensor shape {shape}")
      param = jnp.repeat(param, n // p, axis=ax)
  return param


def range_stats(x: jax.Array, **layout) -> tuple[jax.Array, jax.Array]:
  """(min, max) of ``x`` per scale group, float32; ``layout`` as in :func:`reduce_groups`."""
  x = jnp.asarray(x, jnp.float32)
  return reduce_groups(x, jnp.min, **layout), reduce_groups(x, jnp.max, **layout)


# ----------------------------------------------------------------------------------------------
# Quantization parameters.


def qparams_from_range(
  x_min, x_max, bits, *, symmetric: bool, clip_ratio=1.0
) -> tuple[jax.Array, jax.Array]:
  """(scale, zero_point) float32 from a (calibrated or measured) range, broadcast together.

  ``clip_ratio`` (scalar or per-group array in (0, 1]) shrinks the range before fitting it.
  The zero point is integer-valued (0 when symmetric).
  """
  x_min = jnp.minimum(jnp.asarray(x_min, jnp.float32), 0.0) * clip_ratio
  x_max = jnp.maximum(jnp.asarray(x_max, jnp.float32), 0.0) * clip_ratio
  qmin, qmax = int_range(bits, symmetric=symmetric)
  if symmetric:
    scale = jnp.maximum(jnp.maximum(-x_min, x_max) / qmax, _MIN_SCALE)
    return scale, jnp.zeros_like(scale)
  scale = jnp.maximum((x_max - x_min) / qmax, _MIN_SCALE)
  zero_point = jnp.clip(jnp.round(-x_min / scale), qmin, qmax)
  return scale, zero_point


def compute_qparams(
  x: jax.Array,
  bits,
  *,
  symmetric: bool = True,
  granularity: Granularity = "per_tensor",
  axis: int = -1,
  group_size: int | None = None,
  clip_ratio=1.0,
) -> tuple[jax.Array, jax.Array]:
  """(scale, zero_point) float32 of the parameter shape, fitted to the range of ``x``."""
  x_min, x_max = range_stats(x, granularity=granularity, axis=axis, group_size=group_size)
  return qparams_from_range(x_min, x_max, bits, symmetric=symmetric, clip_ratio=clip_ratio)


def search_clip_ratio(
  x: jax.Array,
  bits,
  *,
  symmetric: bool = True,
  granularity: Granularity = "per_channel",
  axis: int = -1,
  group_size: int | None = None,
  ratios=DEFAULT_CLIP_RATIOS,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per scale group, the clip ratio in ``ratios`` with the least squared quantization error.

  Scans the grid (memory of one fake-quantized copy of ``x``) keeping the first ratio of least
  error, so when ``ratios`` contains 1.0 the result is never worse than no clipping. jit-able;
  ``bits`` traced.

  Returns:
    (scale, zero_point, ratio), float32, each of the parameter shape.
  """
  x = jnp.asarray(x, jnp.float32)
  layout = dict(granularity=granularity, axis=axis, group_size=group_size)
  x_min, x_max = range_stats(x, **layout)
  ratios = jnp.asarray(ratios, jnp.float32)

  def candidate(ratio):
    scale, zero_point = qparams_from_range(
      x_min, x_max, bits, symmetric=symmetric, clip_ratio=ratio
    )
    error = reduce_groups(
      jnp.square(fake_quant(x, scale, zero_point, bits, symmetric=symmetric) - x), jnp.sum, **layout
    )
    return error, scale, zero_point, jnp.full_like(scale, ratio)

  def keep_better(best, ratio):
    new = candidate(ratio)
    better = new[0] < best[0]
    return jax.tree.map(lambda n, b: jnp.where(better, n, b), new, best), None

  best, _ = lax.scan(keep_better, candidate(ratios[0]), ratios[1:])
  return best[1:]


# ----------------------------------------------------------------------------------------------
# Quantize / dequantize.


def _codes(x, scale, zero_point, bits, symmetric):
  """Float32 integer-valued codes clip(round(x/s) + z); STE rounding, clipped gradients."""
  x = jnp.asarray(x, jnp.float32)
  scale = expand_groups(jnp.asarray(scale, jnp.float32), x.shape)
  zero_point = round_ste(expand_groups(jnp.asarray(zero_point, jnp.float32), x.shape))
  qmin, qmax = int_range(bits, symmetric=symmetric)
  codes = round_ste(x / scale) + zero_point
  # Not jnp.clip / lax.clamp: their gradient at a code equal to qmin or qmax is 0.5 or 0.
  codes = jnp.where(codes < qmin, qmin, jnp.where(codes > qmax, qmax, codes))
  return codes, scale, zero_point


def fake_quant(
  x: jax.Array, scale, zero_point, bits, *, symmetric: bool, enabled=True
) -> jax.Array:
  """Quantize-dequantize ``x`` (any shape/dtype) with given parameters; returns x's dtype.

  Args:
    x: the tensor.
    scale, zero_point: float arrays of the parameter shape (or broadcastable to x);
      zero_point is rounded (STE) and is 0 for symmetric quantization.
    bits: traced width, broadcastable to the parameter shape; >= 16 means pass-through.
    symmetric: selects the integer range (module docstring).
    enabled: traced bool; False means pass-through.

  Gradients (u = x/s + z before clipping, inside = qmin <= round(u) <= qmax):
    x: 1 inside, 0 where clipped (clipped straight-through estimator).
    scale: round(x/s) - x/s inside; qmin - z or qmax - z where clipped (LSQ; wrap the scale in
      :func:`scale_gradient` with :func:`lsq_gradient_factor` for LSQ's gradient scaling).
    zero_point: 0 inside; -s where clipped (LSQ+).
    bits, enabled: none. In pass-through, x gets 1 and the others 0.
  """
  codes, scale, zero_point = _codes(x, scale, zero_point, bits, symmetric)
  quantized = ((codes - zero_point) * scale).astype(jnp.asarray(x).dtype)
  return jnp.where(is_passthrough(bits, enabled), x, quantized)


def quantize_int(x: jax.Array, scale, zero_point, bits, *, symmetric: bool) -> jax.Array:
  """Integer codes of ``x`` (bits <= 8): int8 if symmetric, else uint8; shape of ``x``."""
  codes, _, _ = _codes(x, scale, zero_point, bits, symmetric)
  return codes.astype(jnp.int8 if symmetric else jnp.uint8)


def dequantize(codes: jax.Array, scale, zero_point) -> jax.Array:
  """float32 ``(codes - zero_point) * scale``; equals :func:`fake_quant` of the source bit for bit."""
  scale = expand_groups(jnp.asarray(scale, jnp.float32), codes.shape)
  zero_point = expand_groups(jnp.asarray(zero_point, jnp.float32), codes.shape)
  return (codes.astype(jnp.float32) - zero_point) * scale


# ----------------------------------------------------------------------------------------------
# Whole-tensor entry points.


def fake_quant_tensor(x: jax.Array, bits, config: QuantizerConfig, *, enabled=True) -> jax.Array:
  """Fake-quantizes ``x`` with parameters fitted to ``x`` itself as ``config`` says.

  The path for weights (per-channel, optional clip search) and dynamic activations. ``bits``
  is traced; ``config.bits`` is not read (it is the layer's default). Returns x's dtype.
  """
  if config.clip_search:
    scale, zero_point, _ = search_clip_ratio(
      x, bits, symmetric=config.symmetric, ratios=config.clip_ratios, **config.layout
    )
  else:
    scale, zero_point = compute_qparams(x, bits, symmetric=config.symmetric, **config.layout)
  return fake_quant(
    x, scale, zero_point, bits, symmetric=config.symmetric, enabled=enabled & config.enabled
  )


def quantize_per_token(x: jax.Array, bits) -> tuple[jax.Array, jax.Array]:
  """Dynamic per-token symmetric quantization (the serving path), bits <= 8.

  Returns:
    (codes int8 of x's shape, scale float32 of shape x.shape[:-1] + (1,)).
  """
  scale, zero_point = compute_qparams(x, bits, symmetric=True, granularity="per_token")
  return quantize_int(x, scale, zero_point, bits, symmetric=True), scale


def fake_quant_static(
  x: jax.Array, x_min, x_max, bits, *, symmetric: bool = False, enabled=True
) -> jax.Array:
  """Fake-quantizes with a calibrated range (default: static per-tensor asymmetric)."""
  scale, zero_point = qparams_from_range(x_min, x_max, bits, symmetric=symmetric)
  return fake_quant(x, scale, zero_point, bits, symmetric=symmetric, enabled=enabled)
