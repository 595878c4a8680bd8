"""PTQ quality of every recipe × width on the packaged `mini` model, plus the sd21 size/BOPs account.

    python -m benchmarks.ptq_mini [--faces 200] [--out /tmp/ptq_mini]

Eval set: celebahq512 file numbers 4000.. (validation), degradation seed 0 — the set of
`quantface eval --hq ../shared/data/celebahq512 --indices 4000:4200 --degrade-seed 0`.
Calibration: file numbers 0–63, degradation seed 1, observed once on the FP model and shared by
all recipes. Each recipe is quantized once (at W4A4, where its α search runs) and its widths are
switched with ``set_bits`` (which re-searches the weight clip ratios; static ranges and smoothing
scales do not depend on the width); every width reuses the recipe's compiled restore. One
``evaluate`` call computes the eval set and FP outputs once; it resumes from the images on disk.
Writes benchmarks/results/ptq_mini.{json,md} and the run's grid.png.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import time

import jax
from flax import nnx

from benchmarks import results
from quantface_jax.checkpoint import load
from quantface_jax.data.calibration import as_batches, calibration_faces
from quantface_jax.evaluate import evaluate, synthetic_set
from quantface_jax.fileio import atomic_write_text
from quantface_jax.inference import make_restore_fn
from quantface_jax.models.osdface import abstract
from quantface_jax.quant import (
  RECIPES,
  account,
  calibrate,
  get_bits,
  get_recipe,
  parse_bits,
  quantize,
  set_bits,
)
from quantface_jax.quant.recipes import BITS

RESULTS = pathlib.Path(__file__).parent / "results"
HQ = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "celebahq512"


@functools.partial(jax.jit, static_argnums=0)
def _restore(graphdef, state, lq):
  return nnx.merge(graphdef, state).restore(lq).image


def width_variants(qmodel: nnx.Module, name: str) -> dict:
  """'<recipe>-W<w>A<a>' -> restore fn for each width of BITS on the body layers (the W8A8 scope
  stays), all sharing one compiled function."""
  body = [p for p, bits in get_bits(qmodel).items() if bits != (8, 8)]
  variants = {}
  for bits in BITS:
    set_bits(qmodel, {p: parse_bits(bits) for p in body})
    graphdef, state = nnx.split(nnx.clone(qmodel))
    variants[f"{name}-{bits}"] = functools.partial(_restore, graphdef, state)
  return variants


def sd21_account() -> dict:
  """Size/BOPs of the quantface recipe on the SD-2.1 shapes at each width (abstract model)."""
  model = abstract("sd21")
  keys = (
    "param_reduction_vs_fp32",
    "param_reduction_vs_bf16",
    "weight_reduction",
    "bops_reduction",
    "param_bits",
    "fp32_bits",
    "bops",
    "fp32_bops",
  )
  return {
    bits: {k: account(model, rules=get_recipe("quantface", bits).rules)[k] for k in keys}
    for bits in BITS
  }


def markdown(doc: dict) -> str:
  """The results file ``doc`` as the tables of ptq_mini.md."""
  rows, meta = doc["rows"], doc["summary"]
  cols = ("psnr", "ssim", "niqe", "psnr_vs_fp")
  lines = [
    "# PTQ on `mini` (128 px)",
    "",
    f"{meta['eval_set']}; calibration: {meta['calibration']}.",
    f"Command: `{doc['command']}` (commit {doc['commit']}); machine: {doc['machine']}, "
    f"jax {doc['versions'].get('jax')}; {meta['seconds']:.0f} s.",
    "",
    "| variant | PSNR ↑ | SSIM ↑ | NIQE ↓ | PSNR vs FP ↑ |",
    "|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['variant']} | " + " | ".join(f"{r[c]:.3f}" if c in r else "" for c in cols) + " |"
    )
  lines += [
    "",
    "## Size and BOPs, quantface recipe on the SD-2.1 shapes (512 px)",
    "",
    "| width | params vs FP32 | params vs BF16 | quantized kernels | BOPs |",
    "|---|---|---|---|---|",
  ]
  for bits, a in meta["sd21_account"].items():
    lines.append(
      f"| {bits} | −{a['param_reduction_vs_fp32']:.1f}% | −{a['param_reduction_vs_bf16']:.1f}% "
      f"| −{a['weight_reduction']:.1f}% | −{a['bops_reduction']:.1f}% |"
    )
  lines += [
    "",
    "(The image grid `ptq_mini_grid.png` shows CelebA-HQ faces, research data kept out of the "
    "repository: it is written beside these results and git-ignored.)",
    "",
  ]
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--faces", type=int, default=200, help="validation faces from file 4000")
  parser.add_argument("--out", default="/tmp/ptq_mini", help="working folder (resumable)")
  parser.add_argument("--hq", default=str(HQ))
  args = parser.parse_args(argv)
  start = time.time()
  model = load("mini")
  res = model.config.resolution
  eval_set = synthetic_set(
    args.hq, args.out, resolution=res, indices=range(4000, 4000 + args.faces), seed=0
  )
  batches = as_batches(calibration_faces(res, hq_dir=args.hq, count=64, seeds=1), 8)
  settings = get_recipe("rtn").calibration
  stats = calibrate(
    model,
    batches,
    rules=get_recipe("rtn").rules,
    max_samples=settings.max_samples,
    seed=settings.seed,
  )
  variants = {"fp32": make_restore_fn(model)}
  for name in RECIPES:
    t = time.time()
    qmodel = quantize(model, get_recipe(name, "W4A4"), calibration=stats, images=batches)
    print(f"{name}: quantized in {time.time() - t:.0f} s", flush=True)
    variants.update(width_variants(qmodel, name))
  rows = evaluate(variants, eval_set, args.out, resolution=res, batch_size=8)
  summary = dict(
    eval_set=eval_set.description + " (celebahq512 file numbers from 4000)",
    calibration="64 faces (file numbers 0–63, degradation seed 1), 256 rows/layer",
    seconds=time.time() - start,
    sd21_account=sd21_account(),
  )
  doc = results.write(RESULTS / "ptq_mini.json", rows, summary=summary)
  atomic_write_text(RESULTS / "ptq_mini.md", markdown(doc))
  (RESULTS / "ptq_mini_grid.png").write_bytes((pathlib.Path(args.out) / "grid.png").read_bytes())
  print(markdown(doc))


if __name__ == "__main__":
  main()
