"""Channel balancing (docs/design.md §2.3): per-channel smoothing scales, optional Hadamard rotation.

For a layer y = x·W with d input channels: s_j = a_j^α / w_j^(1-α) (a_j = max|x_j| from
calibration, w_j = max|W_j,:|), Ŵ = Qᵀ·diag(s)·W and x̂ = x·diag(s)⁻¹·Q, so x̂·Ŵ = x·W.

Shapes: weights are (*taps, d_in, d_out) (a Linear has no taps, an HWIO conv has taps (kh, kw))
and one scale is shared by a channel's taps, as the convolution applies it per pixel; inputs are
channels-last (..., d_in). Calibration samples for the α search are (n, *taps, d_in): rows of
input patches whose contraction with W gives the layer's (n, d_out) output.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from quantface_jax.quant import hadamard, quantizers

# α grid searched by default: 0, 0.05, ..., 1.
DEFAULT_ALPHAS = tuple(round(0.05 * i, 2) for i in range(21))
# Floor on a_j and w_j (dead channels), and the range s_j is clamped to.
_MIN_ABSMAX = 1e-5
_SCALE_RANGE = (1e-5, 1e5)
# Defaults of the α search: per-output-channel symmetric weights with clip search; dynamic
# per-token symmetric activations (the serving path).
SEARCH_WEIGHT_CONFIG = quantizers.WEIGHT_PER_CHANNEL
SEARCH_ACT_CONFIG = quantizers.ACT_DYNAMIC_PER_TOKEN


def weight_channel_absmax(w: jax.Array) -> jax.Array:
  """(d_in,) float32 max|W| per input channel of a (*taps, d_in, d_out) weight."""
  w = jnp.abs(jnp.asarray(w, jnp.float32))
  return jnp.max(w, axis=tuple(a for a in range(w.ndim) if a != w.ndim - 2))


def act_channel_absmax(x: jax.Array) -> jax.Array:
  """(d_in,) float32 max|x| per channel of a channels-last (..., d_in) activation."""
  x = jnp.abs(jnp.asarray(x, jnp.float32))
  return jnp.max(x.reshape(-1, x.shape[-1]), axis=0)


def smoothing_scales(act_absmax: jax.Array, w: jax.Array, alpha) -> jax.Array:
  """(d_in,) float32 s = a^α / w^(1-α); a, w floored at 1e-5, s clamped to [1e-5, 1e5].

  Args:
    act_absmax: (d_in,) calibrated max|x_j|.
    w: (*taps, d_in, d_out) weight.
    alpha: traced scalar in [0, 1] (0: all difficulty left on x; 1: all moved onto W).
  """
  a = jnp.maximum(jnp.asarray(act_absmax, jnp.float32), _MIN_ABSMAX)
  w_max = jnp.maximum(weight_channel_absmax(w), _MIN_ABSMAX)
  return jnp.clip(a**alpha / w_max ** (1.0 - alpha), *_SCALE_RANGE)


def balance_weight(
  w: jax.Array, scales: jax.Array | None, rotation: hadamard.RotationSpec | None = None
) -> jax.Array:
  """Ŵ = Qᵀ·diag(s)·W over the d_in axis of a (*taps, d_in, d_out) weight; w's dtype."""
  out = jnp.asarray(w, jnp.float32)
  if scales is not None:
    out = out * scales[:, None]
  if rotation is not None:
    out = hadamard.apply_hadamard(out, rotation, axis=-2)
  return out.astype(jnp.asarray(w).dtype)


def balance_input(
  x: jax.Array, scales: jax.Array | None, rotation: hadamard.RotationSpec | None = None
) -> jax.Array:
  """x̂ = x·diag(s)⁻¹·Q over the last axis of (..., d_in); x's dtype."""
  out = jnp.asarray(x, jnp.float32)
  if scales is not None:
    out = out / scales
  if rotation is not None:
    out = hadamard.apply_hadamard(out, rotation, axis=-1)
  return out.astype(jnp.asarray(x).dtype)


def _layer_output(x: jax.Array, w: jax.Array) -> jax.Array:
  """(n, d_out) = contraction of (n, *taps, d_in) with (*taps, d_in, d_out), full f32."""
  return jnp.tensordot(x, w, axes=w.ndim - 1, precision=jax.lax.Precision.HIGHEST)


def balanced_quant_error(
  x_sample: jax.Array,
  w: jax.Array,
  scales: jax.Array | None,
  w_bits,
  a_bits,
  *,
  rotation: hadamard.RotationSpec | None = None,
  w_config: quantizers.QuantizerConfig = SEARCH_WEIGHT_CONFIG,
  a_config: quantizers.QuantizerConfig = SEARCH_ACT_CONFIG,
) -> jax.Array:
  """Scalar float32 mean ‖x·W − Q_a(x̂)·Q_w(Ŵ)‖² over the (n, d_out) output.

  ``scales=None`` and ``rotation=None`` give plain round-to-nearest. Activation parameters are
  fitted to the sample itself (a static config is thus calibrated on it).
  """
  x_sample = jnp.asarray(x_sample, jnp.float32)
  w = jnp.asarray(w, jnp.float32)
  x_q = quantizers.fake_quant_tensor(balance_input(x_sample, scales, rotation), a_bits, a_config)
  w_q = quantizers.fake_quant_tensor(balance_weight(w, scales, rotation), w_bits, w_config)
  return jnp.mean(jnp.square(_layer_output(x_sample, w) - _layer_output(x_q, w_q)))


@functools.partial(
  jax.jit, static_argnames=("rotation", "w_config", "a_config", "alpha_batch_size")
)
def search_alpha(
  x_sample: jax.Array,
  w: jax.Array,
  w_bits,
  a_bits,
  *,
  rotation: hadamard.RotationSpec | None = None,
  alphas=DEFAULT_ALPHAS,
  act_absmax: jax.Array | None = None,
  w_config: quantizers.QuantizerConfig = SEARCH_WEIGHT_CONFIG,
  a_config: quantizers.QuantizerConfig = SEARCH_ACT_CONFIG,
  alpha_batch_size: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The α of ``alphas`` whose balancing (then rotation) gives the least quantized-output MSE.

  Args:
    x_sample: (n, *taps, d_in) calibration inputs (patches for a conv).
    w: (*taps, d_in, d_out) weight.
    w_bits, a_bits: traced widths (scalars, or arrays broadcastable to the parameter shapes).
    rotation: applied after smoothing (static; hashable spec), or None.
    alphas: (n_alpha,) grid; all evaluated at once with vmap unless ``alpha_batch_size`` is
      given, then in sequential chunks of that many (bounds memory for large layers).
    act_absmax: (d_in,) calibrated max|x|; default: measured on ``x_sample``.
    w_config, a_config: quantizers (their granularity etc.; their bits are not read).

  Returns:
    (alpha () float32, scales (d_in,) float32 for that alpha, errors (n_alpha,) float32).
  """
  if act_absmax is None:
    act_absmax = act_channel_absmax(x_sample)
  alphas = jnp.asarray(alphas, jnp.float32)

  def error(alpha):
    return balanced_quant_error(
      x_sample,
      w,
      smoothing_scales(act_absmax, w, alpha),
      w_bits,
      a_bits,
      rotation=rotation,
      w_config=w_config,
      a_config=a_config,
    )

  if alpha_batch_size is None:
    errors = jax.vmap(error)(alphas)
  else:
    errors = jax.lax.map(error, alphas, batch_size=alpha_batch_size)
  alpha = alphas[jnp.argmin(errors)]
  return alpha, smoothing_scales(act_absmax, w, alpha), errors
