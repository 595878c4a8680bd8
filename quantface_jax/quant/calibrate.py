"""Calibration: stream images through the model and record every target layer's input statistics.

Observers are swapped in for the target layers (and swapped back afterwards); one jitted restore
per batch returns their updated ``ObserverStat`` variables. OSDFace runs at one fixed timestep, so
static activation ranges measured this way are stable (docs/design.md §2.2).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from quantface_jax.fileio import atomic_open, atomic_write_text
from quantface_jax.quant import rules as rules_lib

_SEP = "::"
_FIELDS = ("ch_min", "ch_max", "sample")


class ObserverStat(nnx.Variable):
  """Calibration statistics accumulated by an :class:`Observer`."""


class Observer(nnx.Module):
  """Wraps a Linear/Conv2d-like layer (``kernel`` (*taps, d_in, d_out)); returns its output unchanged
  and accumulates per-channel min/max of its input and a bounded random sample of input rows
  (conv: kh×kw×C_in patches at random output pixels). ``balanced=True`` observes the balanced
  input ``layer.balance(x)`` of a quantized layer instead.

  The randomness is drawn on the host (:class:`_HostDraws`) and passed in as data before every batch:
  ``positions`` (max_samples, 3) uniforms in [0, 1) pick (image, row, column) of each candidate
  and ``slots`` (max_samples,) int32 say where it lands in the sample (Algorithm R decided on the
  host; ``max_samples`` = dropped). The traced step is thus one gather and one scatter per layer.
  """

  def __init__(self, layer: nnx.Module, *, max_samples: int, balanced: bool = False):
    self.layer = layer
    self.balanced = balanced
    self.max_samples = max_samples
    *taps, d_in, _ = layer.kernel.shape
    self.ch_min = ObserverStat(jnp.full((d_in,), jnp.inf, jnp.float32))
    self.ch_max = ObserverStat(jnp.full((d_in,), -jnp.inf, jnp.float32))
    self.sample = ObserverStat(jnp.zeros((max_samples, *taps, d_in), jnp.float32))
    self.positions = ObserverStat(jnp.zeros((max_samples, 3), jnp.float32))
    self.slots = ObserverStat(jnp.full((max_samples,), max_samples, jnp.int32))

  def __call__(self, x: jax.Array) -> jax.Array:
    xs = (self.layer.balance(x) if self.balanced else x).astype(jnp.float32)
    flat = xs.reshape(-1, xs.shape[-1])
    # set_value, not `v[...] = `: under jit the indexed write compares the tracers' shardings, and
    # asking a tracer for its sharding walks the whole jaxpr so far (flax 0.12 / jax 0.10): quadratic
    # in model size, 97 s of tracing for mini's quantized model and ~8 min for sd21's.
    self.ch_min.set_value(jnp.minimum(self.ch_min[...], flat.min(0)))
    self.ch_max.set_value(jnp.maximum(self.ch_max[...], flat.max(0)))
    if self.max_samples:
      rows = self._candidates(xs)
      self.sample.set_value(self.sample[...].at[self.slots[...]].set(rows, mode="drop"))
    return self.layer(x)

  def _candidates(self, xs: jax.Array) -> jax.Array:
    """(max_samples, *taps, d_in) input rows (conv: patches) at the drawn positions."""
    u = self.positions[...]
    pick = lambda column, n: jnp.minimum((u[:, column] * n).astype(jnp.int32), n - 1)
    if self.layer.kernel.ndim == 2:
      rows = xs.reshape(-1, xs.shape[-1])
      return rows[pick(0, rows.shape[0])]
    kh, kw, _, _ = self.layer.kernel.shape
    stride, ((pt, pb), (pl, pr)) = self.layer.stride, self.layer.padding
    padded = jnp.pad(xs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    b, hp, wp, _ = padded.shape
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    n, i, j = pick(0, b), pick(1, ho) * stride, pick(2, wo) * stride
    rows_ix = i[:, None, None] + jnp.arange(kh)[None, :, None]
    cols_ix = j[:, None, None] + jnp.arange(kw)[None, None, :]
    return padded[n[:, None, None], rows_ix, cols_ix]


class _HostDraws:
  """Host-side randomness of one observer: candidate positions and Algorithm R slots."""

  def __init__(self, max_samples: int, seed: int):
    self.max_samples = max_samples
    self.seen = 0  # candidate rows offered so far.
    self.rng = np.random.default_rng(seed)

  def __call__(self, observer: Observer) -> None:
    """Sets the observer's ``positions`` and ``slots`` for the next batch."""
    k = self.max_samples
    index = self.seen + np.arange(k)
    replace = np.floor(self.rng.random(k) * (index + 1)).astype(np.int64)
    slots = np.where(index < k, index, np.where(replace < k, replace, k))
    observer.positions[...] = jnp.asarray(self.rng.random((k, 3)), jnp.float32)
    observer.slots[...] = jnp.asarray(slots, jnp.int32)
    self.seen += k


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerStats:
  """Calibration statistics of one layer's input."""

  ch_min: np.ndarray  # (d_in,) float32 per-channel minimum.
  ch_max: np.ndarray  # (d_in,) float32 per-channel maximum.
  sample: (
    np.ndarray
  )  # (n, *taps, d_in) float32 random input rows (conv: patches), n <= max_samples.

  @property
  def absmax(self) -> np.ndarray:
    """(d_in,) max|x_j|."""
    return np.maximum(-self.ch_min, self.ch_max)

  @property
  def range(self) -> tuple[float, float]:
    """Per-tensor (min, max)."""
    return float(self.ch_min.min()), float(self.ch_max.max())


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationStats:
  """Per-layer input statistics keyed by module path, plus how they were made."""

  layers: dict[str, LayerStats]  # module path -> statistics.
  meta: dict  # num_images, max_samples, seed, timestep, model name.

  def __getitem__(self, path: str) -> LayerStats:
    return self.layers[path]

  def __contains__(self, path: str) -> bool:
    return path in self.layers

  def save(self, directory: str | os.PathLike) -> None:
    """Writes ``stats.npz`` and ``stats.json`` under ``directory``, each atomically."""
    os.makedirs(directory, exist_ok=True)
    arrays = {f"{path}{_SEP}{f}": getattr(s, f) for path, s in self.layers.items() for f in _FIELDS}
    with atomic_open(os.path.join(directory, "stats.npz"), "wb") as fh:
      np.savez(fh, **arrays)
    atomic_write_text(
      os.path.join(directory, "stats.json"),
      json.dumps({"meta": self.meta, "layers": list(self.layers)}, indent=1),
    )

  @classmethod
  def load(cls, directory: str | os.PathLike) -> CalibrationStats:
    with open(os.path.join(directory, "stats.json")) as fh:
      index = json.load(fh)
    with np.load(os.path.join(directory, "stats.npz")) as arrays:
      layers = {
        p: LayerStats(**{f: arrays[f"{p}{_SEP}{f}"] for f in _FIELDS}) for p in index["layers"]
      }
    return cls(layers=layers, meta=index["meta"])


@nnx.jit
def _observe_step(model: nnx.Module, images: jax.Array) -> None:
  model.restore(images)


def observe(
  model: nnx.Module,
  targets: dict[str, nnx.Module],
  images: Iterable[np.ndarray],
  *,
  make_observer: Callable[[str, nnx.Module], Observer],
  seed: int = 0,
  progress: bool = True,
  desc: str = "calibrate",
) -> tuple[dict[str, Observer], int]:
  """Streams ``images`` ((B, R, R, 3) in [-1, 1]) through ``model.restore`` with ``targets``
  (path -> layer) observed; the layers are swapped back afterwards. ``seed`` (with each path) seeds
  the host-drawn sample positions. Returns (observers, images)."""
  observers = {path: make_observer(path, layer) for path, layer in targets.items()}
  draws = {
    path: _HostDraws(obs.max_samples, rules_lib.layer_seed(seed, path))
    for path, obs in observers.items()
    if obs.max_samples
  }
  for path, obs in observers.items():
    rules_lib.set_module(model, path, obs)
  count = 0
  try:
    total = len(images) if hasattr(images, "__len__") else None
    for batch in tqdm.tqdm(images, desc=desc, total=total, disable=not progress):
      for path, draw in draws.items():
        draw(observers[path])
      _observe_step(model, jnp.asarray(batch, jnp.float32))
      count += len(batch)
  finally:
    for path, layer in targets.items():
      rules_lib.set_module(model, path, layer)
  return observers, count


def calibrate(
  model: nnx.Module,
  images: Iterable[np.ndarray],
  *,
  rules: rules_lib.Rules | None = None,
  max_samples: int = 256,
  seed: int = 0,
  progress: bool = True,
) -> CalibrationStats:
  """Input statistics of every full-precision Linear/Conv2d (only those ``rules`` quantize, when
  given) over ``images``, an iterable of (B, R, R, 3) float arrays in [-1, 1]."""
  targets = {
    p: m
    for p, m in rules_lib.iter_layers(model, rules_lib.FP_LAYERS)
    if rules is None or rules_lib.match(rules, p) is not None
  }
  observers, count = observe(
    model,
    targets,
    images,
    progress=progress,
    seed=seed,
    make_observer=lambda _, layer: Observer(layer, max_samples=max_samples),
  )
  layers = {}
  for path, obs in observers.items():
    layers[path] = LayerStats(
      ch_min=np.asarray(obs.ch_min[...]),
      ch_max=np.asarray(obs.ch_max[...]),
      sample=np.asarray(obs.sample[...][: max_samples if count else 0]),
    )
  cfg = getattr(model, "config", None)
  meta = dict(
    num_images=count,
    max_samples=max_samples,
    seed=seed,
    timestep=getattr(cfg, "timestep", None),
    model=getattr(cfg, "name", None),
  )
  return CalibrationStats(layers=layers, meta=meta)
