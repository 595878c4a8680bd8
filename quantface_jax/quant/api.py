"""One verb: ``quantize(model, recipe, calibration=stats)`` swaps matched layers for quantized ones.

Also the traced-state controls: bit widths (`set_bits` applies a bits map, see
`quantface_jax.quant.bits_map`) and quantization on/off.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quantface_jax.models.layers import Conv2d
from quantface_jax.quant import hadamard, quantizers, smoothing
from quantface_jax.quant import rules as rules_lib
from quantface_jax.quant.calibrate import CalibrationStats, LayerStats, Observer, calibrate, observe
from quantface_jax.quant.layers import (
  QUANT_LAYERS,
  QuantConv2d,
  QuantLinear,
  low_rank_split,
  rotate_input,
  rotate_weight,
)
from quantface_jax.quant.recipes import Recipe
from quantface_jax.quant.rules import LayerQuantConfig


def quantize(
  model: nnx.Module,
  recipe: Recipe,
  *,
  calibration: CalibrationStats | Sequence[np.ndarray] | None = None,
  images: Iterable[np.ndarray] | None = None,
  inplace: bool = False,
  progress: bool = False,
  workers: int | None = None,
) -> nnx.Module:
  """Returns ``model`` with every Linear/Conv2d that ``recipe.rules`` matches quantized.

  Args:
    model: an FP model (e.g. ``OSDFace``); cloned first unless ``inplace``.
    recipe: rules (path regex -> LayerQuantConfig), seed (rotation seeds derive from it and the
      module path), calibration settings.
    calibration: input statistics of the matched layers (:func:`calibrate`), or the calibration
      batches themselves ((B, R, R, 3) in [-1, 1]): then they are observed with
      ``recipe.calibration``'s settings and, if its ``range_pass``, used for ``images`` too.
      Required by smoothing and static activation ranges.
    images: calibration batches for the range pass: static ranges of the balanced inputs are then
      measured exactly (quantization off) instead of estimated from the statistics.
    progress: progress bars for the calibration passes.
    workers: threads quantizing layers in parallel (default: the host's cores, at most 16); the
      result does not depend on it. Each busy thread holds float64 copies of its layer for the
      low-rank split (up to ~0.5 GB for sd21's largest convs): lower it on a host short of memory.
  """
  if calibration is not None and not isinstance(calibration, CalibrationStats):
    batches = list(calibration)
    settings = recipe.calibration
    calibration = calibrate(
      model,
      batches,
      rules=recipe.rules,
      max_samples=settings.max_samples,
      seed=settings.seed,
      progress=progress,
    )
    images = batches if settings.range_pass and images is None else images
  model = model if inplace else nnx.clone(model)

  def convert(path, layer):
    config = rules_lib.match(recipe.rules, path)
    if config is None:
      return None
    stats = None if calibration is None or path not in calibration else calibration[path]
    return quantize_layer(
      layer, config, stats=stats, seed=rules_lib.layer_seed(recipe.seed, path), path=path
    )

  rules_lib.replace_layers(
    model, list(rules_lib.iter_layers(model, rules_lib.FP_LAYERS)), convert, workers=workers
  )
  if images is not None:
    calibrate_ranges(model, images, progress=progress)
  return model


def quantize_layer(
  layer: nnx.Module,
  config: LayerQuantConfig,
  *,
  stats: LayerStats | None,
  seed: int,
  path: str = "",
) -> QuantLinear | QuantConv2d:
  """The quantized counterpart of one ``Linear``/``Conv2d`` (kernel (*taps, d_in, d_out)).

  The array work runs in jitted functions whose only static inputs are shapes and the config, so
  every distinct layer shape compiles once per process (the rotation signs are data).
  """
  w = jnp.asarray(layer.kernel[...], jnp.float32)
  bias = None if layer.bias is None else layer.bias[...]
  needs_stats = config.smooth or config.a_mode == "static"
  if needs_stats and stats is None:
    raise ValueError(f"{path}: smoothing / static activations need calibration statistics")
  d_in = w.shape[-2]
  signs = jnp.asarray(hadamard.random_hadamard(d_in, seed).signs) if config.rotate else None
  if stats is None:
    stats = LayerStats(
      ch_min=np.zeros(d_in, np.float32),
      ch_max=np.zeros(d_in, np.float32),
      sample=np.zeros((0, *w.shape[:-1]), np.float32),
    )
  smooth, w_hat, a_min, a_max = _balance(
    w,
    jnp.asarray(stats.ch_min),
    jnp.asarray(stats.ch_max),
    jnp.asarray(stats.sample),
    signs,
    config.w_bits,
    config.a_bits,
    config=_static_config(config),
  )
  low_rank = None
  if config.low_rank:
    w_hat, down, up = low_rank_split(w_hat, config.low_rank)
    low_rank = (down, up)
  w_clip = clip_ratio(w_hat, config.w_bits, config) if config.clip_search else None
  kwargs = dict(
    config=config,
    smooth=smooth if config.smooth else None,
    rotation_signs=signs,
    low_rank=low_rank,
    w_clip=w_clip,
    a_range=(a_min, a_max),
  )
  if isinstance(layer, Conv2d):
    return QuantConv2d(w_hat, bias, stride=layer.stride, padding=layer.padding, **kwargs)
  return QuantLinear(w_hat, bias, **kwargs)


def _static_config(config: LayerQuantConfig) -> LayerQuantConfig:
  """``config`` with its widths normalised: they are traced, so they must not key compilations."""
  return config.replace(w_bits=8, a_bits=8)


@functools.partial(jax.jit, static_argnames=("config",))
def _balance(w, ch_min, ch_max, sample, signs, w_bits, a_bits, *, config: LayerQuantConfig):
  """(smoothing scales (d_in,), Ŵ, a_min, a_max of x̂) for one layer.

  α search (``alpha="search"``) scores each α with min/max weight ranges (the clip search runs
  once afterwards, on the chosen Ŵ) and the unsigned rotation of the same size: the random
  signs leave symmetric per-channel weight error unchanged and static per-tensor ranges nearly
  so. The static range of x̂ is exact from the per-channel ranges without rotation (s > 0);
  with rotation it is measured on the balanced sample (refine with :func:`calibrate_ranges`),
  or bounded by ‖x·diag(s)⁻¹‖₂ when there is no sample.
  """
  rotation = hadamard.random_hadamard(w.shape[-2], None) if config.rotate else None
  absmax = jnp.maximum(-ch_min, ch_max)
  smooth = jnp.ones_like(absmax)
  if config.smooth and config.alpha == "search":
    _, smooth, _ = smoothing.search_alpha(
      sample,
      w,
      w_bits,
      a_bits,
      rotation=rotation,
      act_absmax=absmax,
      w_config=dataclasses.replace(config.weight_quantizer, clip_search=False),
      a_config=config.act_quantizer,
    )
  elif config.smooth:
    smooth = smoothing.smoothing_scales(absmax, w, config.alpha)
  w_hat = w * smooth[:, None]
  if rotation is not None:
    w_hat = rotate_weight(w_hat, rotation, signs)
  if rotation is None:
    a_min, a_max = (ch_min / smooth).min(), (ch_max / smooth).max()
  elif sample.shape[0]:
    balanced = rotate_input(sample.reshape(-1, sample.shape[-1]) / smooth, rotation, signs)
    a_min, a_max = balanced.min(), balanced.max()
  else:
    bound = jnp.sqrt(jnp.sum(jnp.square(absmax / smooth)))
    a_min, a_max = -bound, bound
  return smooth, w_hat, jnp.minimum(a_min, 0.0), jnp.maximum(a_max, 0.0)


def clip_ratio(w: jax.Array, bits, config: LayerQuantConfig) -> jax.Array:
  """Per-output-channel clip ratios of least weight error for ``w`` at ``bits`` (traced)."""
  q = config.weight_quantizer
  return _clip_ratio(
    w,
    bits,
    symmetric=q.symmetric,
    ratios=q.clip_ratios,
    granularity=q.granularity,
    axis=q.axis,
    group_size=q.group_size,
  )


@functools.partial(
  jax.jit, static_argnames=("symmetric", "ratios", "granularity", "axis", "group_size")
)
def _clip_ratio(w, bits, **kwargs) -> jax.Array:
  return quantizers.search_clip_ratio(w, bits, **kwargs)[2]


def calibrate_ranges(
  model: nnx.Module, images: Iterable[np.ndarray], *, progress: bool = True
) -> None:
  """Sets each rotated static-activation layer's [a_min, a_max] to the range of its balanced input
  over ``images``, measured with quantization off (in place). Without rotation the range from the
  per-channel statistics is already exact, so those layers are skipped (and with them, possibly
  the whole pass and its compilation)."""
  targets = {
    p: m
    for p, m in quant_layers(model).items()
    if m.config.a_mode == "static" and m.rotation is not None
  }
  if not targets:
    return
  layers = quant_layers(model)  # every layer's switch is restored, not only the measured ones'
  enabled = {p: m.enabled[...] for p, m in layers.items()}
  set_quant_enabled(model, False)
  try:
    observers, _ = observe(
      model,
      targets,
      images,
      progress=progress,
      desc="calibrate ranges",
      make_observer=lambda _, layer: Observer(layer, max_samples=0, balanced=True),
    )
  finally:
    for path, layer in layers.items():
      layer.enabled[...] = enabled[path]
  for path, obs in observers.items():
    targets[path].a_min[...] = jnp.minimum(obs.ch_min[...].min(), 0.0)
    targets[path].a_max[...] = jnp.maximum(obs.ch_max[...].max(), 0.0)


# ----------------------------------------------------------------------------------------------
# Traced state: bit widths and the quantization switch.


def quant_layers(model: nnx.Module) -> dict[str, QuantLinear | QuantConv2d]:
  """Module path -> quantized layer."""
  return dict(rules_lib.iter_layers(model, QUANT_LAYERS))


def get_bits(model: nnx.Module) -> dict[str, tuple[int, int]]:
  """Module path -> (w_bits, a_bits) of every quantized layer."""
  return {p: (int(m.w_bits[...]), int(m.a_bits[...])) for p, m in quant_layers(model).items()}


def set_bits(
  model: nnx.Module, bits_map: Mapping[str, tuple[int, int]], *, refit_clip: bool = True
) -> None:
  """Sets the widths of the named quantized layers (in place; data only, no recompilation).

  ``refit_clip``: re-search the weight clip ratios of clip-searching layers whose weight width
  changes (they depend on it; one small jitted call per layer shape). Static activation ranges
  and smoothing scales do not depend on the width and are kept.
  """
  layers = quant_layers(model)
  unknown = sorted(set(bits_map) - set(layers))
  if unknown:
    raise KeyError(f"not quantized layers: {unknown[:5]}{'...' if len(unknown) > 5 else ''}")
  for path, (w_bits, a_bits) in bits_map.items():
    layer = layers[path]
    if refit_clip and layer.config.clip_search and int(layer.w_bits[...]) != w_bits:
      layer.w_clip[...] = clip_ratio(layer.kernel[...], w_bits, layer.config)
    layer.w_bits[...] = jnp.asarray(w_bits, jnp.int32)
    layer.a_bits[...] = jnp.asarray(a_bits, jnp.int32)


def set_quant_enabled(model: nnx.Module, enabled: bool) -> None:
  """Fake quantization on, or off (the balanced full-precision model), for every layer (in place)."""
  for layer in quant_layers(model).values():
    layer.enabled[...] = jnp.asarray(enabled)
