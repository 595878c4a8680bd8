"""The `quantface` command: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import sys

import numpy as np

from quantface_jax.version import __version__

log = logging.getLogger("quantface")


def _model_config(name_or_path: str):
  """The OSDFaceConfig of a preset name or a checkpoint directory, without loading weights."""
  from quantface_jax.models.configs import PRESETS, OSDFaceConfig

  if name_or_path in PRESETS:
    return PRESETS[name_or_path]
  path = pathlib.Path(name_or_path)
  config_file = path / "config.json" if path.is_dir() else path
  if not config_file.exists():
    raise SystemExit(
      f"quantface: {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) "
      f"nor a checkpoint directory with a config.json"
    )
  return OSDFaceConfig.from_dict(json.loads(config_file.read_text()))


def calibration_batches(hq_dir, indices, *, seed: int, size: int, batch_size: int = 8) -> list:
  """LQ calibration batches ((B, size, size, 3) float32 in [-1, 1]) of the HQ faces ``indices``
  (file numbers of the sorted folder) degraded with the project pipeline at ``seed``."""
  from quantface_jax.data.datasets import HQFolderDataset

  dataset = HQFolderDataset(hq_dir, size, indices=indices, seed=seed)
  lq = np.stack([dataset.load(i)[0] for i in range(len(dataset))]) * 2.0 - 1.0
  return [lq[i : i + batch_size].astype(np.float32) for i in range(0, len(lq), batch_size)]


def cmd_info(args) -> int:
  from quantface_jax.models.osdface import abstract, parameter_counts

  cfg = _model_config(args.model)
  counts = parameter_counts(abstract(cfg))
  info = {"model": args.model, "parameters": counts, "config": dataclasses.asdict(cfg)}
  if args.json:
    print(json.dumps(info, indent=2))
  else:
    print(f"{args.model}: {cfg.name} at {cfg.resolution}px, t={cfg.timestep}")
    for part, n in counts.items():
      print(f"  {part:<18}{n:>15,}")
  return 0


def _load_quant(path: str, backend: str):
  """(model, row name) of a QDIR (fake quantization) or a SERVE_DIR (integer kernels), told apart
  by the ``format`` field of their manifest.json."""
  from quantface_jax.quant.export import load_quantized, read_manifest
  from quantface_jax.serve import is_serve_dir, load_served
  from quantface_jax.serve import read_manifest as read_serve_manifest

  if is_serve_dir(path):
    return load_served(path, backend=backend), f"{_quant_row_name(read_serve_manifest(path))}-int"
  return load_quantized(path), _quant_row_name(read_manifest(path))


def split_label(spec: str) -> tuple[str | None, str]:
  """``[LABEL=]DIR`` -> (LABEL or None, DIR); a path that exists as written is never split."""
  label, sep, path = spec.partition("=")
  if not sep or os.path.exists(spec) or not label:
    return None, spec
  return label, path


def _load_model(ckpt: str, qdir: str | None, backend: str):
  """The FP checkpoint, or the quantized model of ``qdir`` (which names its own base)."""
  if qdir:
    return _load_quant(qdir, backend)[0]
  from quantface_jax.checkpoint import load

  return load(ckpt)


def cmd_quantize(args) -> int:
  from quantface_jax.checkpoint import load
  from quantface_jax.quant import account, account_table, get_recipe, quantize, set_bits
  from quantface_jax.quant.export import save_quantized

  bits_map = None
  if args.bits.lower().endswith(".json"):
    from quantface_jax.alloc.program import load_bits_map

    bits_map, _ = load_bits_map(args.bits)
    recipe = get_recipe(args.recipe, "W8A8")
  else:
    recipe = get_recipe(args.recipe, args.bits)
  model = load(args.ckpt)
  res = model.config.resolution
  indices = range(args.calib_count)
  batches = calibration_batches(
    args.calib, indices, seed=args.calib_seed, size=res, batch_size=recipe.calibration.batch_size
  )
  qmodel = quantize(model, recipe, calibration=batches, progress=True)
  if bits_map is not None:
    set_bits(qmodel, bits_map)
  info = dict(
    hq_dir=str(pathlib.Path(args.calib).resolve()),
    indices=[0, args.calib_count],
    seed=args.calib_seed,
    bits_map=args.bits if bits_map is not None else None,
  )
  save_quantized(qmodel, recipe, args.out, base_ckpt=args.ckpt, calibration_info=info)
  print(account_table(account(qmodel)))
  print(f"wrote {args.out}")
  return 0


def cmd_restore(args) -> int:
  from quantface_jax.data.io import list_images
  from quantface_jax.inference import DTYPES, make_restore_fn, restore_files

  model = _load_model(args.ckpt, args.quant, args.backend)
  files = list_images(args.input)
  if not files:
    raise SystemExit(f"quantface restore: no images found at {args.input}")
  restore = make_restore_fn(model, dtype=DTYPES[args.dtype])
  result = restore_files(
    restore,
    files,
    pathlib.Path(args.output),
    resolution=model.config.resolution,
    batch_size=args.batch_size,
    compare=args.compare,
  )
  print(
    f"restored {len(result.written)}, skipped {len(result.skipped)} existing, "
    f"failed {len(result.failed)} -> {args.output}"
  )
  for reason in result.failed.values():
    print(f"  failed: {reason}", file=sys.stderr)
  return 1 if result.failed else 0


def cmd_convert(args) -> int:
  from quantface_jax.checkpoint import save_model
  from quantface_jax.convert import convert_release

  model, report = convert_release(
    args.sd, args.osdface, allow_unexpected=args.allow_unexpected, lora_alpha=args.lora_alpha
  )
  save_model(model, args.out, report=report)
  print(report.summary() if hasattr(report, "summary") else report)
  print(f"wrote {args.out}")
  return 0


def _parse_indices(spec: str | None):
  """'4000:4200' -> range(4000, 4200); None -> all."""
  if not spec:
    return None
  start, _, stop = spec.partition(":")
  return range(int(start), int(stop))


def cmd_eval(args) -> int:
  from quantface_jax.checkpoint import load
  from quantface_jax.evaluate import evaluate, folder_set, synthetic_set
  from quantface_jax.inference import DTYPES, make_restore_fn

  model = load(args.ckpt)
  res = model.config.resolution
  if args.lq:
    eval_set = folder_set(args.lq, args.hq)
  elif args.hq:
    eval_set = synthetic_set(
      args.hq,
      args.out,
      resolution=res,
      indices=_parse_indices(args.indices),
      seed=args.degrade_seed,
    )
  else:
    raise SystemExit("quantface eval: give --hq DIR (synthetic LQ) or --lq DIR [--hq DIR]")
  variants = {args.dtype: make_restore_fn(model, dtype=DTYPES[args.dtype])}
  for spec in args.quant or ():
    label, qdir = split_label(spec)
    qmodel, name = _load_quant(qdir, args.backend)
    name = label or name
    if name in variants:
      raise SystemExit(
        f"quantface eval: two rows named {name!r} (the second from {qdir}); "
        f"name them with --quant LABEL=DIR"
      )
    variants[name] = make_restore_fn(qmodel)
  rows = evaluate(variants, eval_set, args.out, resolution=res, batch_size=args.batch_size)
  print(json.dumps(rows, indent=2))
  print(f"report: {pathlib.Path(args.out) / 'report.md'}")
  return 0


def _quant_row_name(manifest: dict) -> str:
  """'<recipe>-W<w>A<a>', or '<recipe>-<bits-map file stem>' for a mixed-precision QDIR."""
  bits_map = manifest["calibration"].get("bits_map")
  if not bits_map:
    return manifest["recipe"]["name"]
  return f"{manifest['recipe']['name'].rsplit('-', 1)[0]}-{pathlib.Path(bits_map).stem}"


def cmd_export(args) -> int:
  from quantface_jax.serve import export, packed_account

  out = export(args.qdir, args.out)
  for bits, row in sorted(packed_account(out)["weights_by_bits"].items()):
    print(
      f"W{bits}: {row['layers']} layers, {row['packed_bytes']:,} bytes packed vs "
      f"{row['bf16_bytes']:,} bf16 ({row['ratio']:.3f})"
    )
  print(f"wrote {out}")
  return 0


def cmd_demo(args) -> int:
  from quantface_jax.demo import run_demo

  rows = run_demo(args.out, ckpt=args.ckpt)
  for r in rows:
    print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
  print(f"report: {pathlib.Path(args.out) / 'report.md'}")
  return 0


def _training_config(args):
  from quantface_jax.train.config_utils import apply_overrides, load_config_file

  return apply_overrides(load_config_file(args.config), args.overrides)


def cmd_train_fp(args) -> int:
  from quantface_jax.train import train_fp

  model, _ = train_fp(_training_config(args), args.workdir)
  print(f"trained model: {pathlib.Path(args.workdir) / 'model'}")
  return 0


def cmd_train(args) -> int:
  from quantface_jax.train.distill import train_qdlora

  train_qdlora(_training_config(args), args.workdir)
  print(f"quantized model (QDIR): {pathlib.Path(args.workdir) / 'model'}")
  return 0


def _add_training_parser(sub, name: str, help_text: str, func) -> None:
  s = sub.add_parser(name, help=help_text)
  s.add_argument("--config", required=True, help="experiment config file (defines get_config())")
  s.add_argument("--workdir", required=True, help="checkpoints, logs and the result (resumable)")
  s.add_argument(
    "overrides",
    nargs="*",
    metavar="--config.KEY=VALUE",
    help="config overrides, e.g. --config.stage.unet.steps=100",
  )
  s.set_defaults(func=func)


def _add_backend_argument(s) -> None:
  s.add_argument(
    "--backend",
    default="auto",
    choices=["auto", "xla", "pallas", "interpret"],
    help="integer kernels of a SERVE_DIR given to --quant (default auto: XLA on CPU, "
    "the measured-fastest on GPU)",
  )


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="quantface", description=__doc__)
  p.add_argument("--version", action="version", version=f"quantface-jax {__version__}")
  p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
  sub = p.add_subparsers(dest="command", required=True)

  s = sub.add_parser(
    "info", help="config and parameter counts of a preset or checkpoint (nothing allocated)"
  )
  s.add_argument("model", help="preset (tiny, sd21, mini) or checkpoint directory")
  s.add_argument("--json", action="store_true", help="print JSON")
  s.set_defaults(func=cmd_info)

  s = sub.add_parser("restore", help="restore a face image or a folder of faces")
  s.add_argument(
    "--ckpt",
    default="mini",
    help="checkpoint dir, or preset: mini (trained, default), "
    "tiny/sd21 (random weights, for trying the command)",
  )
  s.add_argument("--input", required=True, help="image file or folder")
  s.add_argument("--output", required=True, help="output folder")
  s.add_argument("--batch-size", type=int, default=4)
  s.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  s.add_argument("--compare", action="store_true", help="also write LQ|restored side by side")
  s.add_argument(
    "--quant",
    default=None,
    metavar="DIR",
    help="restore with this quantized model instead: a QDIR (`quantface quantize`, fake "
    "quantization) or a SERVE_DIR (`quantface export`, integer kernels)",
  )
  _add_backend_argument(s)
  s.set_defaults(func=cmd_restore)

  s = sub.add_parser("quantize", help="post-training quantization of a checkpoint into a QDIR")
  s.add_argument("--ckpt", default="mini", help="checkpoint dir or preset (default: mini)")
  s.add_argument("--recipe", required=True, help="rtn, smoothquant, rotate, svdquant or quantface")
  s.add_argument(
    "--bits",
    required=True,
    help="W4A4-style widths, or a bits-map JSON "
    "(quantface_jax.alloc.save_bits_map) applied over the recipe at W8A8",
  )
  s.add_argument("--calib", required=True, help="HQ faces, degraded into the calibration set")
  s.add_argument(
    "--calib-count",
    type=int,
    default=64,
    help="use the first N files (default 64; the validation faces are file numbers 4000+)",
  )
  s.add_argument(
    "--calib-seed", type=int, default=1, help="degradation seed of the calibration set"
  )
  s.add_argument("--out", required=True, help="output QDIR")
  s.set_defaults(func=cmd_quantize)

  s = sub.add_parser("convert", help="convert the PyTorch OSDFace release into one checkpoint")
  s.add_argument(
    "--sd", required=True, help="diffusers SD-2.1-base folder (unet/, vae/, scheduler/)"
  )
  s.add_argument(
    "--osdface",
    required=True,
    help="folder with pytorch_lora_weights.safetensors, "
    "associate_2.ckpt, embedding_change_weights.pth",
  )
  s.add_argument("--out", required=True, help="output checkpoint directory")
  s.add_argument("--allow-unexpected", default=None, help="regex of extra keys to tolerate")
  s.add_argument(
    "--lora-alpha", type=float, default=None, help="LoRA alpha if the file lacks it (16)"
  )
  s.set_defaults(func=cmd_convert)

  s = sub.add_parser("eval", help="metrics.json + report.md + image grid for a model on a face set")
  s.add_argument("--ckpt", default="mini", help="checkpoint dir or preset (default: mini)")
  s.add_argument(
    "--hq", default=None, help="ground-truth faces (LQ synthesised unless --lq is given)"
  )
  s.add_argument("--lq", default=None, help="real LQ faces (no degradation applied)")
  s.add_argument("--indices", default=None, help="file numbers of --hq to use, e.g. 4000:4200")
  s.add_argument("--degrade-seed", type=int, default=0, help="seed of the synthetic degradations")
  s.add_argument("--out", required=True, help="output folder (resumable)")
  s.add_argument("--batch-size", type=int, default=8)
  s.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  s.add_argument(
    "--quant",
    action="append",
    metavar="[LABEL=]DIR",
    help="also evaluate this quantized model, a QDIR or a SERVE_DIR (repeatable; one "
    "row each, named LABEL or the recipe, <recipe>-int for a SERVE_DIR)",
  )
  _add_backend_argument(s)
  s.set_defaults(func=cmd_eval)

  s = sub.add_parser("export", help="pack a QDIR for integer serving into a SERVE_DIR")
  s.add_argument("qdir", help="QDIR from `quantface quantize` or `quantface train`")
  s.add_argument("--out", required=True, help="output SERVE_DIR (use it with restore/eval --quant)")
  s.set_defaults(func=cmd_export)

  s = sub.add_parser("demo", help="the main job: restore sample faces with the embedded mini model")
  s.add_argument("--out", default="quantface_demo", help="output folder")
  s.add_argument("--ckpt", default="mini", help="checkpoint dir or preset (default: mini)")
  s.set_defaults(func=cmd_demo)

  from quantface_jax.alloc.allocate import add_allocate_parser

  add_allocate_parser(sub)
  _add_training_parser(
    sub, "train-fp", "train the FP model stages (e.g. configs/mini.py)", cmd_train_fp
  )
  _add_training_parser(
    sub,
    "train",
    "QD-LoRA distillation of a quantized model (e.g. configs/qdlora_w4a4.py)",
    cmd_train,
  )
  return p


def main(argv: list[str] | None = None) -> int:
  # `--config.key=value` overrides are positional for argparse: strip their prefix.
  argv = [
    a[len("--config.") :] if a.startswith("--config.") else a
    for a in (sys.argv[1:] if argv is None else argv)
  ]
  args = build_parser().parse_args(argv)
  configure_logging(verbose=args.verbose)
  return args.func(args)


def configure_logging(*, verbose: bool = False) -> None:
  """INFO (DEBUG if `verbose`) to stderr for our loggers; jax and absl (Orbax) at WARNING."""
  # force: an import may already have configured the root logger (at WARNING) by logging through it.
  logging.basicConfig(
    level=logging.DEBUG if verbose else logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    datefmt="%H:%M:%S",
    force=True,
  )
  for noisy in ("jax", "absl"):  # backend probing and Orbax's checkpoint bookkeeping are not news
    logging.getLogger(noisy).setLevel(logging.WARNING)


if __name__ == "__main__":
  sys.exit(main())
