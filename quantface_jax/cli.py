"""The `quantface` command: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import sys

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
  from quantface_jax.quant.export import load_quantized, read_qdir_manifest
  from quantface_jax.serve import is_serve_dir, load_served, read_serve_manifest

  if is_serve_dir(path):
    return load_served(path, backend=backend), f"{_quant_row_name(read_serve_manifest(path))}-int"
  return load_quantized(path), _quant_row_name(read_qdir_manifest(path))


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
  from quantface_jax.data.calibration import as_batches, calibration_faces
  from quantface_jax.quant import account, account_table, get_recipe, quantize, set_bits
  from quantface_jax.quant.bits_map import load_bits_map
  from quantface_jax.quant.export import save_quantized

  bits_map = None
  if args.bits.lower().endswith(".json"):
    try:
      bits_map, _ = load_bits_map(args.bits)
    except ValueError as e:
      raise SystemExit(f"quantface quantize: {e}") from None
    recipe = get_recipe(args.recipe, "W8A8")
  else:
    recipe = get_recipe(args.recipe, args.bits)
  model = load(args.ckpt)
  res = model.config.resolution
  source = _calibration_source(args)
  faces = calibration_faces(res, count=args.calib_count, seeds=args.calib_seed, **source)
  batches = as_batches(faces, recipe.calibration.batch_size)
  qmodel = quantize(model, recipe, calibration=batches, progress=True)
  if bits_map is not None:
    set_bits(qmodel, bits_map)
  info = dict(
    **{key: str(pathlib.Path(folder).resolve()) for key, folder in source.items()},
    indices=[0, len(faces)],
    seed=args.calib_seed if args.calib else None,
    bits_map=args.bits if bits_map is not None else None,
  )
  save_quantized(qmodel, recipe, args.out, base_ckpt=args.ckpt, calibration_info=info)
  print(account_table(account(qmodel)))
  print(f"wrote {args.out}")
  return 0


def _add_calibration_arguments(s) -> None:
  """``--calib HQ_DIR`` (degraded with the project's pipeline) or ``--calib-lq LQ_DIR`` (as is)."""
  group = s.add_mutually_exclusive_group(required=True)
  group.add_argument(
    "--calib",
    metavar="HQ_DIR",
    type=_existing_path,
    help="HQ faces, degraded into the calibration set",
  )
  group.add_argument(
    "--calib-lq",
    metavar="LQ_DIR",
    type=_existing_path,
    help="real low-quality faces, calibrated on as they are",
  )


def _calibration_source(args) -> dict[str, str]:
  """calibration_faces' folder argument of ``--calib`` / ``--calib-lq``."""
  return {"hq_dir": args.calib} if args.calib else {"lq_dir": args.calib_lq}


def cmd_restore(args) -> int:
  from quantface_jax.data.io import list_images
  from quantface_jax.inference import DTYPES, make_restore_fn, restore_files, restore_photos

  files = list_images(args.input)
  if not files:
    raise SystemExit(f"quantface restore: no images found at {args.input}")
  if args.aligned and (args.upscale != 1 or args.save_faces):
    raise SystemExit(
      "quantface restore: --upscale and --save-faces are for whole photos, not --aligned"
    )
  model = _load_model(args.ckpt, args.quant, args.backend)
  restore = make_restore_fn(model, dtype=DTYPES[args.dtype])
  common = dict(
    resolution=model.config.resolution, batch_size=args.batch_size, compare=args.compare
  )
  if args.aligned:
    result = restore_files(restore, files, pathlib.Path(args.output), **common)
  else:
    result = restore_photos(
      restore,
      files,
      pathlib.Path(args.output),
      upscale=args.upscale,
      save_faces=args.save_faces,
      min_face_score=args.min_face_score,
      **common,
    )
  print(
    f"restored {len(result.written)}, skipped {len(result.skipped)} existing, "
    f"failed {len(result.failed)} -> {args.output}"
  )
  for name in result.no_face:
    print(f"  no face found, written unchanged: {name}", file=sys.stderr)
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
  print(report.summary())
  print(f"wrote {args.out} (every key: {pathlib.Path(args.out) / 'conversion_report.json'})")
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
  rows = evaluate(
    variants,
    eval_set,
    args.out,
    resolution=res,
    batch_size=args.batch_size,
    with_faces=args.faces,
  )
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
  from quantface_jax.serve import Packing, export, packed_account

  packing = Packing(args.half_floats, args.low_rank_bits, args.rank_fraction)
  out = export(args.qdir, args.out, packing=packing)
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


# Launch flags of the training commands -> the variables `maybe_initialize_distributed` reads.
_LAUNCH_VARIABLES = {
  "coordinator": "JAX_COORDINATOR_ADDRESS",
  "num_processes": "JAX_NUM_PROCESSES",
  "process_id": "JAX_PROCESS_ID",
}


def _training_config(args):
  from quantface_jax.train.config_utils import apply_overrides, load_config_file

  for flag, variable in _LAUNCH_VARIABLES.items():
    if getattr(args, flag) is not None:
      os.environ[variable] = str(getattr(args, flag))
  return apply_overrides(load_config_file(args.config), args.overrides)


def cmd_train_fp(args) -> int:
  from quantface_jax.train import fp_stages, initial_model, maybe_initialize_distributed, train_fp

  config = _training_config(args)
  if args.dry_run:
    maybe_initialize_distributed()
    print(fp_stages.describe_stages(initial_model(config), config))
    return 0
  model, _ = train_fp(config, args.workdir)
  print(f"trained model: {pathlib.Path(args.workdir) / 'model'}")
  return 0


def cmd_train(args) -> int:
  from quantface_jax.train import distill, maybe_initialize_distributed
  from quantface_jax.train.trainer import describe_stage

  config = _training_config(args)
  if args.dry_run:
    maybe_initialize_distributed()
    stage = distill.distillation_stage(config, args.workdir)
    print(describe_stage(stage, distill.trainer_config(config)))
    return 0
  distill.train_qdlora(config, args.workdir)
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
  s.add_argument(
    "--dry-run",
    action="store_true",
    help="print the mesh, the per-process batch and the sharding of the largest arrays of each "
    "stage, then stop before compiling the train step (train makes its PTQ model first unless "
    "WORKDIR/quantized holds it)",
  )
  launch = s.add_argument_group("multi-process launch (docs/distributed.md)")
  launch.add_argument("--coordinator", help="host:port of process 0 (JAX_COORDINATOR_ADDRESS)")
  launch.add_argument("--num-processes", type=int, help="processes in the run (JAX_NUM_PROCESSES)")
  launch.add_argument("--process-id", type=int, help="this process, 0..N-1 (JAX_PROCESS_ID)")
  s.set_defaults(func=func)


def _add_backend_argument(s) -> None:
  s.add_argument(
    "--backend",
    default="auto",
    choices=["auto", "xla", "pallas", "interpret"],
    help="integer kernels of a SERVE_DIR given to --quant (default auto: XLA on CPU, "
    "the measured-fastest on GPU)",
  )


# `--objective` -> the program's budget kind.
_OBJECTIVES = {"bits": "bits", "bops": "bops_fraction"}


def cmd_allocate(args) -> int:
  from quantface_jax.alloc.allocate import allocate

  try:
    result = allocate(
      args.ckpt,
      args.calib or args.calib_lq,
      calib_lq=args.calib_lq is not None,
      recipe=args.recipe,
      budget=args.budget,
      perceptual_weight=args.perceptual_weight,
      budget_kind=_OBJECTIVES[args.objective],
      widths=tuple(int(w) for w in args.widths.split(",")),
      which=args.which,
      w_bits=args.w_bits,
      a_bits=args.a_bits,
      calib_count=args.calib_count,
      calib_seed=args.calib_seed,
      sweep_count=args.sweep_count,
      chunk_size=args.chunk_size,
      out=args.out,
      cache_dir=args.cache_dir,
    )
  except ValueError as e:
    raise SystemExit(f"quantface allocate: {e}") from e
  meta = result.meta
  print(
    f"{meta['allocated_layers']} layers: mean width {meta['mean_width']:.4f} "
    f"(budget {meta['budget']:g} {meta['budget_kind']}, perceptual weight "
    f"{meta['perceptual_weight']:g}), sweep {meta['sweep_time_s']:.1f} s -> {args.out}"
  )
  return 0


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(prog="quantface", description=__doc__)
  p.add_argument("--version", action="version", version=f"quantface-jax {__version__}")
  p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
  p.add_argument("--debug", action="store_true", help="show the traceback of an error")
  p.add_argument(
    "--no-compile-cache",
    dest="compile_cache",
    action="store_false",
    help="do not use JAX's persistent compilation cache (~/.cache/quantface/jax; "
    "QUANTFACE_COMPILE_CACHE=0 also turns it off)",
  )
  sub = p.add_subparsers(dest="command", required=True)

  s = sub.add_parser(
    "info", help="config and parameter counts of a preset or checkpoint (nothing allocated)"
  )
  s.add_argument("model", help="preset (tiny, sd21, mini) or checkpoint directory")
  s.add_argument("--json", action="store_true", help="print JSON")
  s.set_defaults(func=cmd_info)

  s = sub.add_parser(
    "restore",
    help="restore the faces of a photo or a folder of photos (--aligned: of aligned face crops)",
  )
  s.add_argument(
    "--ckpt",
    default="mini",
    help="checkpoint dir, or preset: mini (trained, default), "
    "tiny/sd21 (random weights, for trying the command)",
  )
  s.add_argument("--input", required=True, type=_existing_path, help="image file or folder")
  s.add_argument("--output", required=True, help="output folder")
  s.add_argument("--batch-size", type=_positive_int, default=4, help="faces per model call")
  s.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  s.add_argument("--compare", action="store_true", help="also write LQ|restored side by side")
  s.add_argument(
    "--aligned",
    action="store_true",
    help="inputs are aligned face crops: centre-crop and resize each to the model's resolution "
    "(default: whole photos; every face is detected, aligned, restored and pasted back)",
  )
  s.add_argument(
    "--upscale", type=_positive_int, default=1, help="whole photos: output N times the input size"
  )
  s.add_argument(
    "--save-faces",
    action="store_true",
    help="whole photos: also write each aligned and restored face crop into OUTPUT/faces",
  )
  s.add_argument(
    "--min-face-score",
    type=float,
    default=None,
    help="whole photos: dlib detection score a face needs (default 0.5; dlib's own cut is 0)",
  )
  s.add_argument(
    "--quant",
    default=None,
    metavar="DIR",
    help="restore with this quantized model instead: a QDIR (`quantface quantize`, fake "
    "quantization), a SERVE_DIR (`quantface export`, integer kernels) or the name of one shipped "
    "in the package (e.g. mini-w4a4)",
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
    "(quantface_jax.quant.bits_map, written by `quantface allocate`) applied over the recipe "
    "at W8A8",
  )
  _add_calibration_arguments(s)
  s.add_argument(
    "--calib-count",
    type=_positive_int,
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
    "--sd",
    required=True,
    type=_existing_path,
    help="diffusers SD-2.1-base folder (unet/, vae/, scheduler/)",
  )
  s.add_argument(
    "--osdface",
    required=True,
    type=_existing_path,
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
    "--hq",
    default=None,
    type=_existing_path,
    help="ground-truth faces (LQ synthesised unless --lq is given)",
  )
  s.add_argument(
    "--lq", default=None, type=_existing_path, help="real LQ faces (no degradation applied)"
  )
  s.add_argument("--indices", default=None, help="file numbers of --hq to use, e.g. 4000:4200")
  s.add_argument("--degrade-seed", type=int, default=0, help="seed of the synthetic degradations")
  s.add_argument(
    "--faces",
    action="store_true",
    help="also the dlib identity (ids) and landmark (lmd) distances to ground truth (faces extra)",
  )
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
  s.add_argument(
    "qdir", type=_existing_path, help="QDIR from `quantface quantize` or `quantface train`"
  )
  s.add_argument("--out", required=True, help="output SERVE_DIR (use it with restore/eval --quant)")
  s.add_argument(
    "--half-floats", action="store_true", help="float tensors float16 holds exactly as float16"
  )
  s.add_argument(
    "--low-rank-bits", type=int, choices=[8], default=None, help="int8 low-rank factors"
  )
  s.add_argument(
    "--rank-fraction",
    type=float,
    default=None,
    help="keep ceil(F * min(K, N)) singular pairs of each low-rank branch (0 < F <= 1)",
  )
  s.set_defaults(func=cmd_export)

  s = sub.add_parser("demo", help="the main job: restore sample faces with the embedded mini model")
  s.add_argument("--out", default="quantface_demo", help="output folder")
  s.add_argument("--ckpt", default="mini", help="checkpoint dir or preset (default: mini)")
  s.set_defaults(func=cmd_demo)

  s = sub.add_parser("allocate", help="per-layer bit widths under a budget (bits map JSON)")
  s.add_argument("--ckpt", default="mini", help="checkpoint dir or preset (default: mini)")
  _add_calibration_arguments(s)
  s.add_argument(
    "--budget",
    type=float,
    default=4.0,
    help="mean width (--objective bits) or fraction of W8A8 BOPs (bops)",
  )
  s.add_argument(
    "--perceptual-weight",
    "--lambda",
    dest="perceptual_weight",
    type=float,
    default=1.0,
    help="weight of the perceptual cost (1 - SSIM) against the latent error",
  )
  s.add_argument(
    "--objective", choices=sorted(_OBJECTIVES), default="bits", help="what --budget limits"
  )
  s.add_argument("--recipe", default="quantface", help="quantization recipe")
  s.add_argument("--which", choices=["activations", "weights", "both"], default="activations")
  s.add_argument("--widths", default="3,4,5,6", help="candidate widths, comma separated")
  s.add_argument("--w-bits", type=int, default=4, help="recipe weight width")
  s.add_argument("--a-bits", type=int, default=4, help="recipe activation width")
  s.add_argument("--calib-count", type=int, default=32)
  s.add_argument("--calib-seed", type=int, default=1)
  s.add_argument("--sweep-count", type=int, default=8, help="faces in the sweep's batch")
  s.add_argument("--chunk-size", type=int, default=8, help="sweep configurations per call")
  s.add_argument("--cache-dir", default=None, help="sweep cache (default: OUT.sweep)")
  s.add_argument("--out", required=True, help="bits map JSON to write")
  s.set_defaults(func=cmd_allocate)

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
  try:
    args = build_parser().parse_args(argv)
  except SystemExit as e:  # --help, --version, or a usage error already printed
    return e.code
  configure_logging(verbose=args.verbose)
  enable_compile_cache(enabled=args.compile_cache)
  if args.debug:
    return args.func(args)
  try:
    return args.func(args)
  except SystemExit as e:  # a command's own one-line refusal
    if not isinstance(e.code, str):
      raise
    print(e.code, file=sys.stderr)
    return 2
  except (OSError, ValueError) as e:  # a missing or unreadable path, a bad value
    print(f"quantface {args.command}: {_one_line(e)}", file=sys.stderr)
    return 2
  except ImportError as e:  # an optional extra that is not installed
    print(f"quantface {args.command}: {e}", file=sys.stderr)
    return 1
  except Exception as e:  # pylint: disable=broad-exception-caught
    print(
      f"quantface {args.command}: {type(e).__name__}: {_one_line(e)} (--debug shows where)",
      file=sys.stderr,
    )
    return 1


def _one_line(error: BaseException) -> str:
  """An exception as its message; an OSError as 'path: reason'."""
  if isinstance(error, OSError) and error.filename is not None and error.strerror:
    return f"{error.filename}: {error.strerror}"
  return str(error)


class _Parser(argparse.ArgumentParser):
  """Usage errors as one line naming the argument (exit 2), not the full usage text."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _existing_path(text: str) -> str:
  if not os.path.exists(text):
    raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
  return text


def _positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
  return value


def enable_compile_cache(*, enabled: bool = True) -> pathlib.Path | None:
  """Turns on JAX's persistent compilation cache in ``$XDG_CACHE_HOME/quantface/jax`` (default
  ``~/.cache/quantface/jax``), so a second run skips its compiles; ``QUANTFACE_COMPILE_CACHE=0``
  or ``enabled=False`` leaves it off, and a folder already set for JAX (``JAX_COMPILATION_CACHE_DIR``)
  is kept. Returns the folder in use, or None when off."""
  if not enabled or os.environ.get("QUANTFACE_COMPILE_CACHE", "1") == "0":
    return None
  import jax

  if jax.config.jax_compilation_cache_dir:
    return pathlib.Path(jax.config.jax_compilation_cache_dir)
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  folder = pathlib.Path(base) / "quantface" / "jax"
  jax.config.update("jax_compilation_cache_dir", str(folder))
  return folder


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
