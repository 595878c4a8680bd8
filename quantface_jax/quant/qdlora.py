"""QD-LoRA layers: a frozen quantized residual plus trainable full-precision branches
(docs/design.md §2.4).

For a balanced layer (x̂ = x·diag(s)⁻¹·Q, Ŵ = Qᵀ·diag(s)·W, kernel layout (*taps, d_in, d_out)):

    Ŵ = U_r·S_r·V_rᵀ + R                                  (top-r SVD, float64 on the host)
    y = Q_a(x̂)·Q_w(R) + x̂·(A_svd·B_svd + A_lora·B_lora) + b

R is quantized per output channel at the layer's traced ``w_bits`` and frozen; the SVD branch starts
at A_svd = U_r·S_r^½ (*taps, d_in, r), B_svd = S_r^½·V_rᵀ (r, d_out), the LoRA branch at
A_lora ~ N(0, σ²) (*taps, d_in, r_lora), B_lora = 0, so at initialisation and with quantization off
the layer equals the original x·W + b up to float32 rounding. A conv runs each branch as a
(kh, kw, C_in, r) convolution followed by a 1x1 (r → C_out) one.

The layers subclass :class:`QuantLinear` / :class:`QuantConv2d`, so ``quant_layers``, ``set_bits``,
``set_quant_enabled`` and ``calibrate_ranges`` treat them as the quantized layers they replace.
Trainable variables have their own types (:class:`BranchParam`, :class:`ScaleParam`), selected by
:data:`TRAINABLE`; everything else (R, bias, smoothing, bits) is frozen. With ``learn_scales`` the
weight clip ratios and the static activation range train too (LSQ, gradients scaled by
``lsq_gradient_factor``). :func:`merge_qdlora` folds the two branches into the plain quantized
layer's single low-rank pair (d_in·taps, 2r)·(2r, d_out), exactly, for export.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quantface_jax.models.layers import conv2d
from quantface_jax.quant import quantizers
from quantface_jax.quant import rules as rules_lib
from quantface_jax.quant.api import quant_layers
from quantface_jax.quant.layers import QuantConv2d, QuantLinear, low_rank_split


class BranchParam(nnx.Param):
  """A factor of a trainable full-precision QD-LoRA branch."""


class ScaleParam(nnx.Param):
  """A learnable quantizer range (LSQ): weight clip ratios, a static activation range."""


# The nnx filter of everything QD-LoRA trains (ScaleParams exist only with learn_scales=True).
TRAINABLE = (BranchParam, ScaleParam)


class _QDLoRA:
  """The QD-LoRA forward and state, mixed into a quantized layer class (kernel = R)."""

  def __init__(
    self,
    kernel,
    bias,
    *,
    svd: tuple[jax.Array, jax.Array],
    lora: tuple[jax.Array, jax.Array] | None,
    learn_scales: bool = False,
    **quant_kwargs,
  ):
    """svd, lora: (down (*taps, d_in, r), up (r, d_out)) initial branch factors (lora None: no
    room left, see `qdlora_layer`); quant_kwargs: the quantized layer's own arguments (config,
    smooth, rotation_signs, w_clip, a_range, ...)."""
    super().__init__(kernel, bias, **quant_kwargs)
    self.svd_down, self.svd_up = (BranchParam(jnp.asarray(f, jnp.float32)) for f in svd)
    self.lora_down, self.lora_up = (
      (None, None) if lora is None else (BranchParam(jnp.asarray(f, jnp.float32)) for f in lora)
    )
    self.learn_scales = learn_scales
    if learn_scales:
      self.w_clip = ScaleParam(self.w_clip[...])
      if not self.config.act_quantizer.dynamic:
        self.a_min = ScaleParam(self.a_min[...])
        self.a_max = ScaleParam(self.a_max[...])

  def _contract(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x (..., d_in) against a kernel in this layer's layout (*taps, d_in, n) -> (..., n)."""
    raise NotImplementedError

  def __call__(self, x: jax.Array) -> jax.Array:
    xh = self.balance(x)
    down, up = merged_factors(self)
    y = self._contract(self.quant_input(xh), self.quant_weight().astype(x.dtype))
    y = y + jnp.dot(self._contract(xh, down.astype(x.dtype)), up.astype(x.dtype))
    return self._add_bias(y)

  def quant_weight(self) -> jax.Array:
    """Q_w(R); with learn_scales the clip ratios get LSQ-scaled gradients."""
    if not self.learn_scales:
      return super().quant_weight()
    cfg, bits, w = self.config.weight_quantizer, self.w_bits[...], self.kernel[...]
    w_min, w_max = quantizers.range_stats(w, **cfg.layout)
    scale, zero_point = quantizers.qparams_from_range(
      w_min, w_max, bits, symmetric=cfg.symmetric, clip_ratio=self.w_clip[...]
    )
    scale = _lsq(scale, w.size // scale.size, bits, cfg.symmetric)
    return quantizers.fake_quant(
      w, scale, zero_point, bits, symmetric=cfg.symmetric, enabled=self.enabled[...]
    )

  def quant_input(self, xh: jax.Array) -> jax.Array:
    """Q_a(x̂); with learn_scales a static range [a_min, a_max] gets LSQ-scaled gradients."""
    cfg = self.config.act_quantizer
    if not self.learn_scales or cfg.dynamic:
      return super().quant_input(xh)
    bits = self.a_bits[...]
    scale, zero_point = quantizers.qparams_from_range(
      self.a_min[...], self.a_max[...], bits, symmetric=cfg.symmetric
    )
    scale = _lsq(scale, math.prod(xh.shape[1:]), bits, cfg.symmetric)
    return quantizers.fake_quant(
      xh, scale, zero_point, bits, symmetric=cfg.symmetric, enabled=self.enabled[...]
    )


def _lsq(scale: jax.Array, group_size: int, bits, symmetric: bool) -> jax.Array:
  return quantizers.scale_gradient(
    scale, quantizers.lsq_gradient_factor(group_size, bits, symmetric=symmetric)
  )


class QDLoRALinear(_QDLoRA, QuantLinear):
  """QD-LoRA ``QuantLinear``: (..., d_in) -> (..., d_out)."""

  def _contract(self, x, kernel):
    return jnp.dot(x, kernel)


class QDLoRAConv2d(_QDLoRA, QuantConv2d):
  """QD-LoRA ``QuantConv2d`` (NHWC, HWIO)."""

  def _contract(self, x, kernel):
    return conv2d(x, kernel, self.stride, self.padding)


QDLORA_LAYERS = (QDLoRALinear, QDLoRAConv2d)


def merged_factors(layer: QDLoRALinear | QDLoRAConv2d) -> tuple[jax.Array, jax.Array]:
  """The two branches as one pair: (down (*taps, d_in, r + r_lora), up (r + r_lora, d_out))."""
  if layer.lora_down is None:
    return layer.svd_down[...], layer.svd_up[...]
  down = jnp.concatenate([layer.svd_down[...], layer.lora_down[...]], axis=-1)
  up = jnp.concatenate([layer.svd_up[...], layer.lora_up[...]], axis=0)
  return down, up


def _rebuild(cls, layer, kernel, **extra):
  """A ``cls`` layer with ``layer``'s quantization state (config, balancing, ranges, traced bits)
  around ``kernel``; ``extra`` goes to ``cls``'s constructor."""
  kwargs = dict(
    config=layer.config,
    smooth=None if layer.smooth is None else layer.smooth[...],
    rotation_signs=None if layer.rotation_signs is None else layer.rotation_signs[...],
    w_clip=layer.w_clip[...],
    a_range=(layer.a_min[...], layer.a_max[...]),
    **extra,
  )
  if isinstance(layer, QuantConv2d):
    kwargs.update(stride=layer.stride, padding=layer.padding)
  new = cls(kernel, None if layer.bias is None else layer.bias[...], **kwargs)
  for name in ("w_bits", "a_bits", "enabled"):
    getattr(new, name)[...] = getattr(layer, name)[...]
  return new


def branch_ranks(kernel_shape: tuple[int, ...], rank: int, lora_rank: int) -> tuple[int, int]:
  """(SVD rank, LoRA rank) of a layer with kernel (*taps, d_in, d_out): with m = min(taps·d_in,
  d_out), min(rank, m) and min(lora_rank, m − SVD rank)."""
  room = min(math.prod(kernel_shape[:-1]), kernel_shape[-1])
  svd_rank = min(rank, room)
  return svd_rank, min(lora_rank, room - svd_rank)


def qdlora_layer(
  layer: QuantLinear | QuantConv2d,
  *,
  rank: int,
  lora_rank: int,
  sigma: float,
  rng: np.random.Generator,
  learn_scales: bool = False,
) -> QDLoRALinear | QDLoRAConv2d:
  """The QD-LoRA form of one quantized layer: Ŵ = R + L1·L2 (its own split, if any) is re-split at
  ``rank``; the LoRA down factor is drawn from ``rng``.

  The ranks are `branch_ranks`', so the merged pair has rank min(rank + lora_rank, m) with
  m = min(taps·d_in, d_out): a plain quantized layer with ``low_rank = rank + lora_rank`` has the
  same shapes.
  """
  kernel = np.asarray(layer.kernel[...], np.float64)
  w_hat = kernel
  if layer.low_rank_down is not None:
    w_hat = kernel + (
      np.asarray(layer.low_rank_down[...], np.float64)
      @ np.asarray(layer.low_rank_up[...], np.float64)
    ).reshape(kernel.shape)
  rank, lora_rank = branch_ranks(kernel.shape, rank, lora_rank)
  residual, down, up = low_rank_split(w_hat, rank)
  taps_in = kernel.shape[:-1]
  lora = None
  if lora_rank > 0:
    lora = (rng.standard_normal((*taps_in, lora_rank)) * sigma, np.zeros((lora_rank, up.shape[-1])))
  cls = QDLoRAConv2d if isinstance(layer, QuantConv2d) else QDLoRALinear
  return _rebuild(
    cls, layer, residual, svd=(down.reshape(*taps_in, -1), up), lora=lora, learn_scales=learn_scales
  )


def merge_branches(layer: QDLoRALinear | QDLoRAConv2d) -> QuantLinear | QuantConv2d:
  """The plain quantized layer with R and one low-rank pair (taps·d_in, r + r_lora)·(r + r_lora,
  d_out) holding both branches (and learned ranges): the same function, for export."""
  down, up = merged_factors(layer)
  cls = QuantConv2d if isinstance(layer, QuantConv2d) else QuantLinear
  return _rebuild(cls, layer, layer.kernel[...], low_rank=(down.reshape(-1, down.shape[-1]), up))


def _replace_layers(model: nnx.Module, convert, types, inplace: bool) -> nnx.Module:
  model = model if inplace else nnx.clone(model)
  rules_lib.replace_layers(model, list(rules_lib.iter_layers(model, types)), convert)
  return model


def to_qdlora(
  model: nnx.Module,
  *,
  rank: int = 16,
  lora_rank: int = 16,
  sigma: float = 0.02,
  seed: int = 0,
  learn_scales: bool = False,
  inplace: bool = False,
) -> nnx.Module:
  """Converts every quantized layer of a ``quantize``-d model to QD-LoRA (clone unless ``inplace``).

  Args:
    rank: SVD-branch rank r per layer (capped at the layer's matrix size).
    lora_rank: LoRA-branch rank.
    sigma: standard deviation of the LoRA down factor.
    seed: LoRA draws derive from it and the module path.
    learn_scales: also train weight clip ratios and static activation ranges (LSQ).
  """
  if rank < 1 or lora_rank < 0:
    raise ValueError(f"to_qdlora: need rank >= 1 and lora_rank >= 0, got {rank}, {lora_rank}")
  layers = quant_layers(model)
  if not layers or any(isinstance(layer, QDLORA_LAYERS) for layer in layers.values()):
    raise ValueError("to_qdlora: needs a quantized model without QD-LoRA layers (run quantize)")
  convert = lambda path, layer: qdlora_layer(
    layer,
    rank=rank,
    lora_rank=lora_rank,
    sigma=sigma,
    learn_scales=learn_scales,
    rng=np.random.default_rng(rules_lib.layer_seed(seed, path)),
  )
  return _replace_layers(model, convert, (QuantLinear, QuantConv2d), inplace)


def merge_qdlora(model: nnx.Module, *, inplace: bool = False) -> nnx.Module:
  """Every QD-LoRA layer folded back into a plain quantized layer (:func:`merge_branches`)."""
  return _replace_layers(model, lambda _, layer: merge_branches(layer), QDLORA_LAYERS, inplace)
