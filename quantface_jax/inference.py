"""Compiled one-step restore and the batched folder runner behind `quantface restore`."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quantface_jax.models.osdface import OSDFace

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def cast_for_inference(model: OSDFace, dtype) -> nnx.State:
  """The model's state with UNet and VAE parameters cast to ``dtype``.

  The VRE and embedding_change keep float32: their nearest-code search picks the tokens, and
  bf16 weights would change which codes win. That costs time: on the H200 the sd21 VRE takes 25 ms
  of a 186-ms bf16 restore of 16 faces, 12 ms of it in its float32 convs (README).
  """
  state = nnx.state(model)
  if dtype == jnp.float32:
    return state

  def cast(path, x):
    top = str(path[0].key if hasattr(path[0], "key") else path[0])
    if top in ("unet", "vae") and jnp.issubdtype(x.dtype, jnp.floating):
      return x.astype(dtype)
    return x

  return jax.tree_util.tree_map_with_path(cast, state)


def make_restore_fn(model: nnx.Module, *, dtype=jnp.float32) -> Callable[[jax.Array], jax.Array]:
  """A jitted ``lq (B, R, R, 3) in [-1, 1] -> image (B, R, R, 3) in [0, 1]`` for any OSDFace-like
  module with ``restore`` (FP or quantized). Compiles once per batch shape."""
  graphdef = nnx.graphdef(model)
  state = cast_for_inference(model, dtype) if isinstance(model, OSDFace) else nnx.state(model)

  @jax.jit
  def restore(state, lq):
    return nnx.merge(graphdef, state).restore(lq, dtype=dtype).image

  return lambda lq: restore(state, lq)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FolderResult:
  """What a folder run did."""

  written: list[str]  # output files written this run
  skipped: list[str]  # inputs whose outputs already existed
  failed: dict[str, str]  # input file -> reason
  notes: dict[str, list[str]]  # input file -> conversions applied (grayscale, alpha, resize, ...)


def restore_files(
  restore: Callable[[jax.Array], jax.Array],
  files: Sequence[pathlib.Path],
  output_dir: pathlib.Path,
  *,
  resolution: int,
  batch_size: int,
  compare: bool = False,
  progress: bool = True,
) -> FolderResult:
  """Restores ``files`` in batches into ``output_dir`` (PNG, same stem).

  Outputs that exist are skipped; each is written atomically. An unreadable input is recorded with
  its reason and the rest go on. The last batch is padded so one compiled shape serves the run.
  ``compare`` also writes ``<stem>_compare.png`` (LQ | restored).
  """
  from tqdm import tqdm

  from quantface_jax.data import io as image_io

  output_dir.mkdir(parents=True, exist_ok=True)
  todo, skipped = [], []
  for f in files:
    (skipped if (output_dir / f"{f.stem}.png").exists() else todo).append(f)
  written, failed, notes = [], {}, {}
  bar = tqdm(total=len(todo), unit="face", disable=not progress, desc="restore")
  for start in range(0, len(todo), batch_size):
    batch, names = [], []
    for f in todo[start : start + batch_size]:
      try:
        img, conv = image_io.read_image_with_notes(f, size=resolution)
      except ValueError as e:
        failed[str(f)] = str(e)
        log.error("%s", e)
        continue
      if conv:
        notes[str(f)] = list(conv)
        log.warning("%s: %s", f, "; ".join(conv))
      batch.append(img)
      names.append(f)
    if batch:
      lq = np.stack(batch).astype(np.float32)
      pad = batch_size - len(batch)
      padded = np.concatenate([lq, np.repeat(lq[-1:], pad, 0)]) if pad else lq
      out = np.asarray(restore(jnp.asarray(padded * 2.0 - 1.0)))[: len(batch)]
      for f, img, lq_img in zip(names, out, lq):
        target = output_dir / f"{f.stem}.png"
        image_io.write_image(target, img)
        if compare:
          image_io.write_image(
            output_dir / f"{f.stem}_compare.png",
            image_io.image_grid([[lq_img, img]], labels=["LQ", "restored"]),
          )
        written.append(str(target))
    bar.update(len(todo[start : start + batch_size]))
  bar.close()
  return FolderResult(
    written=written, skipped=[str(s) for s in skipped], failed=failed, notes=notes
  )
