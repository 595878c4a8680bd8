"""Per-layer sensitivity sweep (docs/design.md §2.5): e(l, b) and p(l, b) for every quantized layer.

For layer l and width b, only l is quantized (at b bits for the swept operand, the other operand at
`fixed_bits`); every other quantized layer runs at `PASSTHROUGH_BITS` (exact full precision):

    e(l, b) = ‖z_H − z_H^FP‖² / ‖z_H^FP‖²                 (relative MSE of the restored latent)
    p(l, b) = 1 − SSIM(image, image^FP)                     (decoded image, Gaussian 11×11, σ = 1.5)

both over a fixed calibration batch. SSIM against the FP output is the cheap perceptual proxy: it
is sensitive to the structure/contrast loss that low activation widths cause and costs a few
convolutions. The reference is configuration 0 of the same compiled function (all layers at
`PASSTHROUGH_BITS`), so e(l, 16) = 0 exactly (p(l, 16) up to SSIM's float rounding).

Bit widths are traced data (`QuantBits`): ONE compiled function maps a chunk of C bit maps
(the values of every `QuantBits` leaf) to C restores (`lax.map`, `batch_size` of them vmapped
together). Chunks are cached on disk (`chunk_#####.npz` + `index.json`, written atomically), so an
interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import pathlib
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from quantface_jax.alloc.program import Mode
from quantface_jax.fileio import atomic_open
from quantface_jax.metrics.fidelity import traced_ssim
from quantface_jax.quant import account, get_bits, quant_layers
from quantface_jax.quant import rules as rules_lib
from quantface_jax.quant.layers import QUANT_LAYERS, QuantBits
from quantface_jax.quant.quantizers import PASSTHROUGH_BITS

_INDEX = "index.json"
_REFERENCE = "reference.npz"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SensitivityTable:
  """Sensitivities of L layers at K widths, and the sizes the integer program weighs them by."""

  # [L] module paths of the swept layers, in `quant_layers` order.
  paths: tuple[str, ...]
  # [K] candidate widths.
  widths: tuple[int, ...]
  # Which operand the width sets: "activations", "weights" or "both".
  which: Mode
  # [L, K] relative MSE of z_H with only layer l at width k.
  e: np.ndarray
  # [L, K] 1 − SSIM of the decoded image with only layer l at width k.
  p: np.ndarray
  # [L] input activation elements of each layer per image (one forward at model resolution).
  n_act: np.ndarray
  # [L] weight elements of each layer.
  n_weight: np.ndarray
  # [L] multiply-accumulates of each layer per image.
  macs: np.ndarray
  # Wall time of the configurations computed by the call that returned this table, in seconds.
  sweep_time_s: float


def layer_sizes(
  model: nnx.Module, paths: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(n_act, n_weight, macs), each [L] float64, per image at the model's resolution.

  Works on the FP and the quantized model alike. MACs come from `quant.account` (traced shapes);
  a layer's input elements are its output pixels (tokens) × stride² × C_in (the models' padding
  conventions keep H_in = stride·H_out).
  """
  rows = {row["path"]: row for row in account(model)["layers"]}
  layers = dict(rules_lib.iter_layers(model, rules_lib.FP_LAYERS + QUANT_LAYERS))
  n_act, n_weight, macs = [], [], []
  for path in paths:
    shape = layers[path].kernel.shape
    out_pixels = rows[path]["macs"] / np.prod(shape)
    n_act.append(out_pixels * getattr(layers[path], "stride", 1) ** 2 * shape[-2])
    n_weight.append(np.prod(shape))
    macs.append(rows[path]["macs"])
  return tuple(np.asarray(x, np.float64) for x in (n_act, n_weight, macs))


def bit_maps(
  model: nnx.Module,
  paths: Sequence[str],
  widths: Sequence[int],
  which: Mode,
  fixed_bits: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
  """The sweep's configurations as [1 + L·K, L_all] int32 (w_bits, a_bits), L_all = all layers.

  Row 0 is the reference (everything at `PASSTHROUGH_BITS`); row 1 + l·K + k has only `paths[l]`
  quantized, its swept operand at `widths[k]` and the other at `fixed_bits[l]`.
  """
  order = {path: i for i, path in enumerate(quant_layers(model))}
  num = 1 + len(paths) * len(widths)
  w_bits = np.full((num, len(order)), PASSTHROUGH_BITS, np.int32)
  a_bits = np.full((num, len(order)), PASSTHROUGH_BITS, np.int32)
  for i, (path, fixed) in enumerate(zip(paths, fixed_bits, strict=True)):
    for k, bits in enumerate(widths):
      row, col = 1 + i * len(widths) + k, order[path]
      w_bits[row, col] = bits if which in ("weights", "both") else fixed
      a_bits[row, col] = bits if which in ("activations", "both") else fixed
  return w_bits, a_bits


@functools.partial(jax.jit, static_argnames=("graphdef", "batch_size"))
def restore_bit_maps(graphdef, bits_state, rest, lq, leaf_bits, *, batch_size=None):
  """Restores `lq` (N, R, R, 3) in [-1, 1] under each of C bit maps.

  `graphdef, bits_state, rest = nnx.split(model, QuantBits, ...)`; `leaf_bits` [C, B] int32 holds
  the values of the B `QuantBits` leaves of `bits_state` (in its flattening order) per map.
  Returns z_H (C, N, r, r, c) and images (C, N, R, R, 3). The bits are data, so every chunk of
  the same shape reuses one compilation.
  """
  treedef = jax.tree.structure(bits_state)

  def one(row):
    model = nnx.merge(graphdef, jax.tree.unflatten(treedef, list(row)), rest)
    out = model.restore(lq)
    return out.z_high, out.image

  return jax.lax.map(one, leaf_bits, batch_size=batch_size)


def _leaf_bits(bits_state, model, w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
  """[C, B] values of the B `QuantBits` leaves of `bits_state` from [C, L_all] w/a widths."""
  order = {path: i for i, path in enumerate(quant_layers(model))}
  columns = []
  for keys, _ in jax.tree_util.tree_flatten_with_path(bits_state)[0]:
    *layer, field = [str(k.key) for k in keys if isinstance(k, jax.tree_util.DictKey)]
    columns.append({"w_bits": w_bits, "a_bits": a_bits}[field][:, order[".".join(layer)]])
  return np.stack(columns, 1)


@jax.jit
def scores(z, image, ref_z, ref_image):
  """(e, p), each [C]: relative MSE of z (C, ...) to ref_z, and 1 − SSIM of image to ref_image
  (clipped at 0: SSIM of identical images is 1 only up to float rounding)."""
  axes = tuple(range(1, z.ndim))
  e = jnp.sum(jnp.square(z - ref_z), axes) / jnp.sum(jnp.square(ref_z))
  return e, jnp.maximum(1.0 - jax.vmap(lambda x: traced_ssim(x, ref_image))(image), 0.0)


def sensitivity_sweep(
  model: nnx.Module,
  lq: np.ndarray,
  *,
  paths: Sequence[str] | None = None,
  widths: Sequence[int] = (3, 4, 5, 6),
  which: Mode = "activations",
  fixed_bits: int | None = None,
  chunk_size: int = 8,
  batch_size: int | None = None,
  cache_dir: str | os.PathLike[str] | None = None,
  progress: bool = True,
  on_chunk: Callable[[int], None] | None = None,
) -> SensitivityTable:
  """Measures e(l, b) and p(l, b) for `paths` × `widths` on the batch `lq`.

  Args:
    model: a quantized model (`quantize`); its bits are not changed.
    lq: (N, R, R, 3) LQ faces in [-1, 1], the fixed calibration batch.
    paths: layers to sweep (default: every quantized layer), kept in `quant_layers` order.
    widths: [K] candidate widths.
    which: the width sets the activations, the weights or both of the swept layer.
    fixed_bits: width of the other operand of the swept layer ("activations": its weights;
      "weights": its activations); None keeps each layer's current width (the recipe's).
    chunk_size: configurations per call of the compiled function (the last chunk is padded).
    batch_size: configurations vmapped together inside a call (None: one at a time).
    cache_dir: where finished chunks are stored; a rerun with the same model, batch and settings
      resumes from them (other settings there raise ValueError).
    progress: show a tqdm bar (configurations, rate and ETA).
    on_chunk: called with the number of finished chunks after each chunk is stored.

  Returns:
    The `SensitivityTable`.
  """
  layers = quant_layers(model)
  paths = tuple(layers) if paths is None else tuple(p for p in layers if p in set(paths))
  if not paths:
    raise ValueError("no quantized layers to sweep")
  widths = tuple(int(b) for b in widths)
  current = get_bits(model)
  fixed = 0 if which == "activations" else 1  # Index of the fixed operand in (w_bits, a_bits).
  other = [current[path][fixed] if fixed_bits is None else fixed_bits for path in paths]
  w_bits, a_bits = bit_maps(model, paths, widths, which, other)
  num_configs = w_bits.shape[0]
  num_chunks = -(-num_configs // chunk_size)
  pad = num_chunks * chunk_size - num_configs
  w_bits = np.concatenate([w_bits, np.repeat(w_bits[:1], pad, 0)])
  a_bits = np.concatenate([a_bits, np.repeat(a_bits[:1], pad, 0)])

  graphdef, bits_state, rest = nnx.split(model, QuantBits, ...)
  leaf_bits = _leaf_bits(bits_state, model, w_bits, a_bits)
  lq = jnp.asarray(lq, jnp.float32)
  cache = _Cache(cache_dir, _fingerprint(rest, lq, paths, widths, which, w_bits, chunk_size))
  done = cache.load_chunks(num_chunks)
  reference = cache.load_reference()
  start = time.perf_counter()
  with tqdm.tqdm(
    total=num_configs,
    initial=min(len(done) * chunk_size, num_configs),
    unit="config",
    desc="sensitivity",
    disable=not progress,
  ) as bar:
    for chunk in range(num_chunks):
      if chunk in done:
        continue
      rows = slice(chunk * chunk_size, (chunk + 1) * chunk_size)
      z, image = restore_bit_maps(
        graphdef, bits_state, rest, lq, leaf_bits[rows], batch_size=batch_size
      )
      if reference is None:  # Chunk 0 holds the reference, row 0.
        reference = cache.save_reference(z[0], image[0])
      e, p = scores(z, image, jnp.asarray(reference[0]), jnp.asarray(reference[1]))
      done[chunk] = cache.save_chunk(chunk, np.asarray(e), np.asarray(p))
      bar.update(min(chunk_size, num_configs - chunk * chunk_size))
      if on_chunk is not None:
        on_chunk(len(done))
  elapsed = time.perf_counter() - start

  table = np.concatenate([np.stack(done[c], 1) for c in range(num_chunks)])[1:num_configs]
  table = table.reshape(len(paths), len(widths), 2)
  n_act, n_weight, macs = layer_sizes(model, paths)
  return SensitivityTable(
    paths=paths,
    widths=widths,
    which=which,
    e=table[..., 0],
    p=table[..., 1],
    n_act=n_act,
    n_weight=n_weight,
    macs=macs,
    sweep_time_s=elapsed,
  )


def _fingerprint(state, lq, paths, widths, which, w_bits, chunk_size) -> str:
  """Digest of what determines the chunks: settings, calibration batch and model values."""
  floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  sums = np.asarray(_checksums(floats), np.float64)
  digest = hashlib.sha256()
  digest.update(json.dumps([paths, widths, which, chunk_size, w_bits.tolist()]).encode())
  digest.update(np.asarray(lq).tobytes())
  digest.update(sums.tobytes())
  return digest.hexdigest()


@jax.jit
def _checksums(leaves):
  return jnp.stack([jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in leaves])


class _Cache:
  """Chunk results on disk: `index.json` (fingerprint), `chunk_#####.npz`, `reference.npz`."""

  def __init__(self, directory: str | os.PathLike[str] | None, fingerprint: str):
    self.directory = None if directory is None else pathlib.Path(directory)
    if self.directory is None:
      return
    index = self.directory / _INDEX
    if index.exists():
      stored = json.loads(index.read_text())["fingerprint"]
      if stored != fingerprint:
        raise ValueError(
          f"{self.directory} holds a sweep of another model, batch or settings; "
          "use another cache_dir"
        )
    else:
      self.directory.mkdir(parents=True, exist_ok=True)
      _atomic_write(index, json.dumps({"fingerprint": fingerprint}).encode())

  def load_chunks(self, num_chunks: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    if self.directory is None:
      return {}
    chunks = {}
    for chunk in range(num_chunks):
      path = self._chunk_path(chunk)
      if path.exists():
        with np.load(path) as f:
          chunks[chunk] = (f["e"], f["p"])
    return chunks

  def save_chunk(self, chunk: int, e: np.ndarray, p: np.ndarray):
    if self.directory is not None:
      _atomic_write(self._chunk_path(chunk), _npz_bytes(e=e, p=p))
    return e, p

  def load_reference(self) -> tuple[np.ndarray, np.ndarray] | None:
    path = None if self.directory is None else self.directory / _REFERENCE
    if path is None or not path.exists():
      return None
    with np.load(path) as f:
      return f["z"], f["image"]

  def save_reference(self, z: jax.Array, image: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    z, image = np.asarray(z), np.asarray(image)
    if self.directory is not None:
      _atomic_write(self.directory / _REFERENCE, _npz_bytes(z=z, image=image))
    return z, image

  def _chunk_path(self, chunk: int) -> pathlib.Path:
    return self.directory / f"chunk_{chunk:05d}.npz"


def _npz_bytes(**arrays) -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
  with atomic_open(path, "wb") as f:
    f.write(data)
