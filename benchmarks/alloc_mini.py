"""Mixed-precision activations vs uniform W4A4 on the packaged `mini` model (CPU).

    python -m benchmarks.alloc_mini --recipe quantface --budget 4.0 --faces 100

Calibration (+ sweep) on training faces 0..calib_count-1 (degradation seed 1); `allocate` picks one
activation width per layer (weights at 4 bits) at mean width <= budget; `evaluate` compares FP,
uniform W4A4 and the allocation on celebahq512 faces 4000.. (degradation seed 0, as
`quantface eval --hq ../shared/data/celebahq512 --indices 4000:4200 --degrade-seed 0` makes them).
Writes `<results>/alloc_mini.{json,md,png}`.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np
from flax import nnx

from benchmarks import results as results_lib
from quantface_jax.alloc import allocate
from quantface_jax.checkpoint import load
from quantface_jax.evaluate import evaluate, synthetic_set
from quantface_jax.fileio import atomic_write_text
from quantface_jax.inference import make_restore_fn
from quantface_jax.quant import get_recipe, set_bits

BENCHMARKS = pathlib.Path(__file__).resolve().parent

COMPONENTS = (
  ("VAE enc", "vae.encoder", "tab:blue"),
  ("VAE enc", "vae.quant_conv", "tab:blue"),
  ("UNet", "unet.", "tab:orange"),
  ("VAE dec", "vae.post_quant_conv", "tab:green"),
  ("VAE dec", "vae.decoder", "tab:green"),
)


def model_order(paths):
  """(component, colour, path) in execution order: VAE encoder, UNet, VAE decoder."""
  return [
    (name, colour, p) for name, prefix, colour in COMPONENTS for p in paths if p.startswith(prefix)
  ]


def plot(layers: list[dict], title: str, path: pathlib.Path) -> None:
  """Bar per layer (`layers`: rows with component and a_bits, in execution order)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top

  colours = {name: colour for name, _, colour in COMPONENTS}
  bits = [row["a_bits"] for row in layers]
  fig, ax = plt.subplots(figsize=(14, 3.5))
  ax.bar(range(len(bits)), bits, width=1.0, color=[colours[row["component"]] for row in layers])
  ax.set(
    xlabel="layer (execution order)",
    ylabel="activation bits",
    ylim=(0, max(bits) + 0.7),
    xlim=(-1, len(bits)),
    title=title,
  )
  ax.legend(
    handles=[Patch(color=c, label=n) for n, c in colours.items()], loc="upper right", ncols=3
  )
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--recipe", default="quantface")
  parser.add_argument("--budget", type=float, default=4.0)
  parser.add_argument("--perceptual-weight", type=float, default=1.0)
  parser.add_argument(
    "--alpha",
    type=float,
    default=None,
    help="fixed smoothing alpha instead of the recipe's (quantface: searched)",
  )
  parser.add_argument("--calib-count", type=int, default=32)
  parser.add_argument("--sweep-count", type=int, default=2)
  parser.add_argument("--faces", type=int, default=200, help="validation faces from 4000")
  parser.add_argument(
    "--hq", default=str(BENCHMARKS.parents[1] / "shared" / "data" / "celebahq512")
  )
  parser.add_argument("--work", default="/tmp/alloc_mini")
  parser.add_argument("--results", default=str(BENCHMARKS / "results"))
  args = parser.parse_args()
  work, results = pathlib.Path(args.work) / args.recipe, pathlib.Path(args.results)
  results.mkdir(parents=True, exist_ok=True)

  start = time.perf_counter()
  fp = load("mini")
  overrides = {} if args.alpha is None else {"alpha": args.alpha}
  recipe = get_recipe(args.recipe, "W4A4", **overrides)
  result = allocate(
    fp,
    args.hq,
    recipe=recipe,
    budget=args.budget,
    perceptual_weight=args.perceptual_weight,
    calib_count=args.calib_count,
    sweep_count=args.sweep_count,
    out=work / "bits.json",
    cache_dir=work / "sweep",
  )
  allocate_s = time.perf_counter() - start
  uniform = nnx.clone(result.model)
  set_bits(uniform, {p: (4, 4) for p in result.table.paths})

  res = fp.config.resolution
  eval_set = synthetic_set(
    args.hq, work / "eval", resolution=res, indices=range(4000, 4000 + args.faces), seed=0
  )
  variants = {
    "fp": make_restore_fn(fp),
    "W4A4": make_restore_fn(uniform),
    f"mixed A{result.meta['mean_width']:.2f}": make_restore_fn(result.model),
  }
  rows = evaluate(variants, eval_set, work / "eval", resolution=res)

  stem = "alloc_mini" if args.recipe == "quantface" else f"alloc_mini_{args.recipe}"
  table = result.table
  summary = dict(
    eval_set=eval_set.description,
    meta=result.meta,
    allocate_s=allocate_s,
    sweep_s=table.sweep_time_s,
    sweep_configs=len(table.paths) * len(table.widths),
    layers=[
      dict(
        path=p,
        component=c,
        a_bits=result.bits_map[p][1],
        e=table.e[table.paths.index(p)].tolist(),
        p=table.p[table.paths.index(p)].tolist(),
      )
      for c, _, p in model_order(table.paths)
    ],
    histogram={int(b): int(np.sum(result.allocation.a_bits == b)) for b in table.widths},
  )
  doc = results_lib.write(results / f"{stem}.json", rows, summary=summary)
  plot(
    summary["layers"],
    f"mini, {recipe.name} (alpha {args.alpha or 'searched'}): activation width "
    f"per layer (mean {result.meta['mean_width']:.3f}, weights 4 bit)",
    results / f"{stem}.png",
  )
  cols = ("psnr", "ssim", "niqe", "psnr_vs_fp")
  md = [
    f"# Mixed-precision activations on `mini` ({result.meta['recipe']})\n",
    f"`{doc['command']}` (commit {doc['commit']}) on {doc['machine']}.\n",
    f"{eval_set.description}. Calibration on faces 0..{args.calib_count - 1} (seed 1); sweep on "
    f"the first {args.sweep_count} of them: {summary['sweep_configs']} configurations in "
    f"{table.sweep_time_s:.0f} s ({summary['sweep_configs'] / table.sweep_time_s:.2f} "
    f"configs/s); allocate end to end {allocate_s:.0f} s.\n",
    f"Budget: mean activation width <= {args.budget} (element-weighted), perceptual "
    f"weight {args.perceptual_weight}; achieved {result.meta['mean_width']:.4f}; widths chosen "
    f"{summary['histogram']}.\n",
    "| variant | " + " | ".join(cols) + " |",
    "|---|" + "---|" * len(cols),
  ]
  md += [
    "| " + r["variant"] + " | " + " | ".join(f"{r[c]:.4f}" if c in r else "" for c in cols) + " |"
    for r in rows
  ]
  md.append(f"\n![activation width per layer]({stem}.png)\n")
  atomic_write_text(results / f"{stem}.md", "\n".join(md))
  print("\n".join(md))


if __name__ == "__main__":
  main()
