"""Evaluation of model variants on a face set: metrics.json, report.md and a comparison grid.

Behind `quantface eval` and `quantface demo`. Each variant's restored images are written to
``out/images/<variant>/`` first and metrics are computed from those files, so an interrupted run
resumes where it stopped (existing outputs are skipped).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from quantface_jax.data import io as image_io
from quantface_jax.fileio import atomic_write_text
from quantface_jax.inference import restore_files
from quantface_jax.metrics import compute_metrics, fidelity_psnr

RestoreFn = Callable[[object], object]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalSet:
  """LQ inputs and, when known, their ground truth, matched by file stem."""

  lq_files: list[pathlib.Path]  # inputs, restored in this order
  hq_files: dict[str, pathlib.Path] | None  # stem -> ground-truth file; None for real LQ sets
  description: str  # how the set was made, for the report


def synthetic_set(
  hq_dir, out_dir, *, resolution: int, indices: Sequence[int] | None, seed: int
) -> EvalSet:
  """Degrades HQ faces with a fixed seed (the project's pipeline) into ``out_dir/set``."""
  from quantface_jax.data.datasets import make_eval_set

  n = len(image_io.list_images(hq_dir))
  indices = list(range(n)) if indices is None else list(indices)
  root = make_eval_set(hq_dir, indices, resolution, seed, pathlib.Path(out_dir) / "set")
  lq = image_io.list_images(root / "lq")
  hq = {p.stem: p for p in image_io.list_images(root / "hq")}
  return EvalSet(
    lq_files=lq,
    hq_files=hq,
    description=f"{len(lq)} faces of {hq_dir}, degraded with seed {seed} at {resolution}px",
  )


def folder_set(lq_dir, hq_dir=None) -> EvalSet:
  lq = image_io.list_images(lq_dir)
  hq = {p.stem: p for p in image_io.list_images(hq_dir)} if hq_dir else None
  return EvalSet(lq_files=lq, hq_files=hq, description=f"{len(lq)} faces of {lq_dir}")


def _load_stack(files: Sequence[pathlib.Path], resolution: int) -> np.ndarray:
  return np.stack([image_io.read_image(f, resolution) for f in files])


def evaluate(
  variants: Mapping[str, RestoreFn],
  eval_set: EvalSet,
  out_dir,
  *,
  resolution: int,
  batch_size: int = 8,
  grid_faces: int = 8,
  reference: str | None = None,
  with_niqe: bool = True,
  with_faces: bool = False,
) -> list[dict]:
  """Restores ``eval_set`` with each variant and writes metrics.json, report.md and grid.png.

  Rows: ``input`` (the LQ images themselves, resized to the model resolution) and one per variant,
  each with psnr/ssim (when ground truth exists), niqe and n; variants other than ``reference``
  (default: the first) also get ``psnr_vs_fp``, their PSNR against the reference's outputs.
  ``with_faces`` (ground truth and the `faces` extra needed): ``ids``/``lmd``, the mean dlib
  identity and landmark distances to the ground truth (``metrics.faces``).
  """
  out_dir = pathlib.Path(out_dir)
  reference = reference or next(iter(variants))
  stems = [f.stem for f in eval_set.lq_files]
  lq = _load_stack(eval_set.lq_files, resolution)
  gt = None
  if eval_set.hq_files is not None:
    missing = [s for s in stems if s not in eval_set.hq_files]
    if missing:
      raise ValueError(f"no ground truth for {missing[:5]} ({len(missing)} missing)")
    gt = _load_stack([eval_set.hq_files[s] for s in stems], resolution)

  outputs: dict[str, np.ndarray] = {}
  failed: dict[str, str] = {}
  for name, restore in variants.items():
    result = restore_files(
      restore,
      eval_set.lq_files,
      out_dir / "images" / name,
      resolution=resolution,
      batch_size=batch_size,
    )
    failed.update(result.failed)
    outputs[name] = _load_stack([out_dir / "images" / name / f"{s}.png" for s in stems], resolution)

  def metrics(images):
    values = compute_metrics(images, gt, with_niqe=with_niqe)
    if with_faces and gt is not None:
      from quantface_jax.metrics.faces import mean_face_distances

      values.update(mean_face_distances(images, gt))
    return values

  rows = [dict(variant="input", n=len(stems), **metrics(lq))]
  for name, images in outputs.items():
    row = dict(variant=name, n=len(stems), **metrics(images))
    if name != reference:
      row["psnr_vs_fp"] = float(
        np.mean([fidelity_psnr(a, b) for a, b in zip(images, outputs[reference])])
      )
    rows.append(row)

  atomic_write_text(out_dir / "metrics.json", json.dumps(rows, indent=2))
  k = min(grid_faces, len(stems))
  columns = ["LQ"] + list(outputs) + (["GT"] if gt is not None else [])
  grid_rows = [
    [lq[i]] + [outputs[v][i] for v in outputs] + ([gt[i]] if gt is not None else [])
    for i in range(k)
  ]
  image_io.write_image(out_dir / "grid.png", image_io.image_grid(grid_rows, labels=columns))
  atomic_write_text(out_dir / "report.md", report_markdown(rows, eval_set.description, failed))
  return rows


def report_markdown(rows: list[dict], description: str, failed: Mapping[str, str]) -> str:
  cols = ("psnr", "ssim", "psnr_vs_fp", "ids", "lmd", "niqe", "n")
  cols = [c for c in cols if any(c in r for r in rows)]
  fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
  lines = [
    f"# Evaluation\n\n{description}.\n",
    "| variant | " + " | ".join(cols) + " |",
    "|---|" + "---|" * len(cols),
  ]
  lines += [
    "| " + r["variant"] + " | " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows
  ]
  lines.append(
    "\nPSNR/SSIM: RGB, basicsr conventions, against ground truth; psnr_vs_fp: against the FP "
    "model's output; ids/lmd: dlib identity-descriptor and 68-landmark distances to ground truth "
    "(lower is better; quantface_jax.metrics.faces); NIQE: LIVE pristine model (images under "
    "192 px are upsampled first, see quantface_jax.metrics.niqe), not a quality signal here: "
    "quantization noise reads as texture to it and lowers it.\n\n![grid](grid.png)\n"
  )
  if failed:
    lines.append("\n## Failed inputs\n" + "\n".join(f"- {reason}" for reason in failed.values()))
  return "\n".join(lines) + "\n"
