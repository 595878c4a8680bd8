"""One verb: ``quantize(model, recipe, calibration=stats)`` swaps matched layers for quantized ones.

Also the traced-state controls (bit widths, quantization on/off) and the bits-map JSON format
(``{"format": "quantface-bits-map", "version": 1, "meta": {...}, "layers": {path: [w, a]}}``, the
layout of DESIGN §2.5's allocation output).
"""

from __future__ import annotations

import functools
import json
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quantface_jax.models.layers import Conv2d
from quantface_jax.quant import hadamard, quantizers, smoothing
from quantface_jax.quant import rules as rules_lib
from quantface_jax.quant.calibrate import CalibrationStats, LayerStats, Observer, observe
from quantface_jax.quant.layers import QUANT_LAYERS, QuantConv2d, QuantLinear, low_rank_split
from quantface_jax.quant.recipes import Recipe
from quantface_jax.quant.rules import LayerQuantConfig

BITS_MAP_FORMAT = 'quantface-bits-map'
BITS_MAP_VERSION = 1


def quantize(model: nnx.Module, recipe: Recipe, *, calibration: CalibrationStats | None = None,
             images: Iterable[np.ndarray] | None = None, inplace: bool = False) -> nnx.Module:
  """Returns ``model`` with every Linear/Conv2d that ``recipe.rules`` matches quantized.

  Args:
    model: an FP model (e.g. ``OSDFace``); cloned first unless ``inplace``.
    recipe: rules (path regex -> LayerQuantConfig), seed (rotation seeds derive from it and the
      module path), calibration settings.
    calibration: input statistics of the matched layers (:func:`calibrate`); required by smoothing
      and static activation ranges.
    images: calibration batches for the range pass: static ranges of the balanced inputs are then
      measured exactly (quantization off) instead of estimated from the statistics.
  """
  model = model if inplace else nnx.clone(model)
  targets = [(p, m) for p, m in rules_lib.iter_layers(model, rules_lib.FP_LAYERS)
             if rules_lib.match(recipe.rules, p) is not None]
  for path, layer in targets:
    stats = None if calibration is None or path not in calibration else calibration[path]
    new = quantize_layer(layer, rules_lib.match(recipe.rules, path), stats=stats,
                         seed=rules_lib.layer_seed(recipe.seed, path), path=path)
    rules_lib.set_module(model, path, new)
  if images is not None:
    calibrate_ranges(model, images)
  return model


def quantize_layer(layer: nnx.Module, config: LayerQuantConfig, *, stats: LayerStats | None,
                   seed: int, path: str = '') -> QuantLinear | QuantConv2d:
  """The quantized counterpart of one ``Linear``/``Conv2d`` (kernel (*taps, d_in, d_out))."""
  w = jnp.asarray(layer.kernel[...], jnp.float32)
  bias = None if layer.bias is None else layer.bias[...]
  needs_stats = config.smooth or config.a_mode == 'static'
  if needs_stats and stats is None:
    raise ValueError(f'{path}: smoothing / static activations need calibration statistics')
  rotation = hadamard.random_hadamard(w.shape[-2], seed) if config.rotate else None
  smooth = _smoothing_scales(w, config, stats, rotation) if config.smooth else None
  w_hat = smoothing.balance_weight(w, smooth, rotation)
  low_rank = None
  if config.low_rank:
    w_hat, down, up = low_rank_split(w_hat, config.low_rank)
    low_rank = (down, up)
  w_clip = _clip_ratio(w_hat, config.w_bits, config.weight_quantizer) if config.clip_search else None
  a_range = _balanced_range(stats, smooth, rotation) if config.a_mode == 'static' else (0.0, 0.0)
  kwargs = dict(config=config, smooth=smooth, rotation=rotation, low_rank=low_rank, w_clip=w_clip,
                a_range=a_range)
  if isinstance(layer, Conv2d):
    return QuantConv2d(w_hat, bias, stride=layer.stride, padding=layer.padding, **kwargs)
  return QuantLinear(w_hat, bias, **kwargs)


def _smoothing_scales(w, config: LayerQuantConfig, stats: LayerStats, rotation) -> jax.Array:
  """(d_in,) smoothing scales: fixed α, or α searched on the calibration sample.

  The search rotates with the unsigned Hadamard of the same size (one compilation per shape, not
  per layer seed); the random signs leave symmetric weight and dynamic activation quantization
  exactly unchanged, and static per-tensor ranges nearly so.
  """
  absmax = jnp.asarray(stats.absmax)
  if config.alpha != 'search':
    return smoothing.smoothing_scales(absmax, w, config.alpha)
  unsigned = None if rotation is None else hadamard.random_hadamard(rotation.dim, None)
  _, scales, _ = smoothing.search_alpha(
      jnp.asarray(stats.sample), w, config.w_bits, config.a_bits, rotation=unsigned,
      act_absmax=absmax, w_config=config.weight_quantizer, a_config=config.act_quantizer)
  return scales


@functools.partial(jax.jit, static_argnames=('config',))
def _clip_ratio(w: jax.Array, bits, config: quantizers.QuantizerConfig) -> jax.Array:
  return quantizers.search_clip_ratio(w, bits, symmetric=config.symmetric,
                                      ratios=config.clip_ratios, **config.layout)[2]


def _balanced_range(stats: LayerStats, smooth, rotation) -> tuple[float, float]:
  """Per-tensor (min, max) of x̂: exact from per-channel ranges without rotation (s > 0); with
  rotation, measured on the balanced calibration sample (refine with :func:`calibrate_ranges`)."""
  if rotation is None:
    s = np.ones_like(stats.ch_min) if smooth is None else np.asarray(smooth)
    return float((stats.ch_min / s).min()), float((stats.ch_max / s).max())
  rows = stats.sample.reshape(-1, stats.sample.shape[-1])
  if not rows.size:  # No sample: |x̂_i| <= ‖x·diag(s)⁻¹‖₂ bounds every rotated channel.
    s = 1.0 if smooth is None else np.asarray(smooth)
    bound = float(np.sqrt(np.sum(np.square(stats.absmax / s))))
    return -bound, bound
  balanced = np.asarray(smoothing.balance_input(jnp.asarray(rows), smooth, rotation))
  return float(min(balanced.min(), 0.0)), float(max(balanced.max(), 0.0))


def calibrate_ranges(model: nnx.Module, images: Iterable[np.ndarray], *,
                     progress: bool = True) -> None:
  """Sets each static-activation layer's [a_min, a_max] to the range of its balanced input over
  ``images``, measured with quantization off (in place)."""
  targets = {p: m for p, m in quant_layers(model).items() if m.config.a_mode == 'static'}
  enabled = {p: m.enabled[...] for p, m in targets.items()}
  set_quant_enabled(model, False)
  try:
    observers, _ = observe(
        model, targets, images, progress=progress, desc='calibrate ranges',
        make_observer=lambda _, layer: Observer(layer, max_samples=0, seed=0, balanced=True))
  finally:
    for path, layer in targets.items():
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


def set_bits(model: nnx.Module, bits_map: Mapping[str, tuple[int, int]]) -> None:
  """Sets the widths of the named quantized layers (in place; data only, no recompilation)."""
  layers = quant_layers(model)
  unknown = sorted(set(bits_map) - set(layers))
  if unknown:
    raise KeyError(f'not quantized layers: {unknown[:5]}{"..." if len(unknown) > 5 else ""}')
  for path, (w_bits, a_bits) in bits_map.items():
    layers[path].w_bits[...] = jnp.asarray(w_bits, jnp.int32)
    layers[path].a_bits[...] = jnp.asarray(a_bits, jnp.int32)


def set_quant_enabled(model: nnx.Module, enabled: bool) -> None:
  """Fake quantization on, or off (the balanced full-precision model), for every layer (in place)."""
  for layer in quant_layers(model).values():
    layer.enabled[...] = jnp.asarray(enabled)


def bits_map_to_json(bits_map: Mapping[str, tuple[int, int]], meta: Mapping | None = None) -> str:
  layers = {p: [int(w), int(a)] for p, (w, a) in bits_map.items()}
  return json.dumps({'format': BITS_MAP_FORMAT, 'version': BITS_MAP_VERSION,
                     'meta': dict(meta or {}), 'layers': layers}, indent=1)


def bits_map_from_json(text: str) -> dict[str, tuple[int, int]]:
  document = json.loads(text)
  if document.get('format') != BITS_MAP_FORMAT or document.get('version') != BITS_MAP_VERSION:
    raise ValueError(f'not a {BITS_MAP_FORMAT} v{BITS_MAP_VERSION} document')
  return {p: (int(w), int(a)) for p, (w, a) in document['layers'].items()}
