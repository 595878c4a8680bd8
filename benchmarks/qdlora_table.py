"""The QD-LoRA table on `mini` (benchmarks/results/qdlora_mini.{json,md}) from an eval's metrics.json.

  python -m benchmarks.qdlora_table EVAL_DIR [--ptq benchmarks/results/ptq_mini.json] [--results DIR]

EVAL_DIR is `quantface eval --out`'s folder for the variants that `remeasure_mini qdlora` labels
(balancing-W4A4, quantface-W4A4, quantface-W4A4-qdlora, quantface-W6A6, quantface-W6A6-qdlora); the
best PTQ baseline at W4A4 (highest PSNR vs GT among the recipes) comes from the PTQ table, which
must be of the same model and eval set (checked on the FP row).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from benchmarks import results
from quantface_jax.fileio import atomic_write_text

RESULTS = pathlib.Path(__file__).parent / "results"
# (eval variant, row label); the ablation runs from "balancing only" to "+ QD-LoRA training".
ROWS = (
  ("input", "input (LQ)"),
  ("fp", "mini fp32"),
  ("baseline", "best PTQ baseline at W4A4 ({recipe}, ptq_mini.md)"),
  ("balancing-W4A4", "W4A4 balancing only (smoothing + Hadamard, `low_rank=0`)"),
  ("quantface-W4A4", "W4A4 + low-rank split (the PTQ start: quantface recipe, rank 16)"),
  ("quantface-W4A4-qdlora", "**W4A4 + QD-LoRA training**"),
  ("quantface-W6A6", "W6A6 PTQ start (quantface recipe)"),
  ("quantface-W6A6-qdlora", "**W6A6 + QD-LoRA training**"),
)


def build_table(eval_rows: list[dict], ptq_rows: list[dict]) -> tuple[list[dict], str]:
  """(rows with their labels, the markdown table). Raises ValueError naming a missing variant or
  an FP row that differs between the two tables (a PTQ table of another model)."""
  by_name = {r["variant"]: r for r in eval_rows}
  fp = next((by_name[n] for n in ("float32", "fp32") if n in by_name), None)
  ptq_fp = next((r for r in ptq_rows if r["variant"] in ("float32", "fp32")), None)
  if fp is None or ptq_fp is None:
    raise ValueError("both tables need their FP row (float32 / fp32)")
  if abs(fp["psnr"] - ptq_fp["psnr"]) > 1e-3:
    raise ValueError(
      f"FP PSNR {fp['psnr']:.4f} here but {ptq_fp['psnr']:.4f} in the PTQ table: "
      "not the same model or eval set"
    )
  baselines = [r for r in ptq_rows if r["variant"].endswith("-W4A4")]
  if not baselines:
    raise ValueError("the PTQ table has no W4A4 rows")
  best = max(baselines, key=lambda r: r["psnr"])
  rows = []
  for key, label in ROWS:
    source = {"fp": fp, "baseline": best}.get(key) or by_name.get(key)
    if source is None:
      raise ValueError(f"the eval has no variant {key!r} (has {sorted(by_name)})")
    rows.append(dict(source, label=label.format(recipe=best["variant"].rsplit("-", 1)[0])))
  cell = lambda r, k, f: "" if k not in r else f.format(r[k])
  md = ["| | PSNR ↑ | SSIM ↑ | NIQE ↓ | PSNR vs FP ↑ |", "|---|---|---|---|---|"]
  md += [
    f"| {r['label']} | {cell(r, 'psnr', '{:.2f}')} | {cell(r, 'ssim', '{:.3f}')} | "
    f"{cell(r, 'niqe', '{:.2f}')} | {cell(r, 'psnr_vs_fp', '{:.2f}')} |"
    for r in rows
  ]
  return rows, "\n".join(md)


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("eval_dir", type=pathlib.Path)
  parser.add_argument("--ptq", type=pathlib.Path, default=RESULTS / "ptq_mini.json")
  parser.add_argument("--results", type=pathlib.Path, default=RESULTS)
  args = parser.parse_args()
  metrics = args.eval_dir / "metrics.json"
  try:
    eval_rows = json.loads(metrics.read_text())  # evaluate(): a list of rows
    rows, md = build_table(eval_rows, results.read(args.ptq)["rows"])
  except (OSError, ValueError) as err:  # ResultsError and JSONDecodeError are ValueErrors
    raise SystemExit(f"{metrics}: {err}") from None
  results.write(
    args.results / "qdlora_mini.json",
    rows,
    summary=dict(eval_set="200 faces of celebahq512 4000-4199, degradation seed 0, 128 px"),
  )
  atomic_write_text(
    args.results / "qdlora_mini.md",
    "# QD-LoRA on `mini` (128 px)\n\nEval set: 200 faces of celebahq512 (4000–4199), degradation "
    "seed 0. Made by `python -m benchmarks.remeasure_mini qdlora` (commands there); rows: "
    "`qdlora_mini.json`.\n\n" + md + "\n",
  )
  print(md)


if __name__ == "__main__":
  main()
