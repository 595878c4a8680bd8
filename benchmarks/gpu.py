"""One driver for the GPU benchmark suites: every part of a suite in its own process (clean peak
memory), under a timeout, resumable.

    python -m benchmarks.gpu SUITE[:PART,PART...] [SUITE ...] [--out DIR] [--budget-s N]
        [--part-timeout-s N] [--wheels DIR] [--autotune DIR] [--cache DIR] [--dry-run] [suite options]

Suites and their parts (the default parts; ``fp:jax_bf16,torch_compile_fp16`` picks some):

  fp          jax_bf16 jax_fp32 torch_eager_fp16 torch_eager_fp32 torch_compile_fp16 (bench_fp)
  serve       export W4 W8A8 bf16 torch_eager_fp16; also torch_compile_fp16 (bench_serve)
  kernels     conv quantize gemm (bench_kernels --sections)
  sd21        sweep qdlora_b8; also qdlora_bN and qdlora_remat_bN for any batch N (bench_sweep,
              bench_qdlora). A QD-LoRA part runs as its stages, each a part of its own:
              PART:setup (the calibrated student, cached as a QDIR), PART:compile (into the
              persistent compilation cache), then PART (the timed steps); name a stage to run only
              it. With ``--qdlora-args "--student structure"`` there is no setup stage.
  qdlora      train: QD-LoRA distillation of mini (`quantface train`) from the PTQ start that
              ``python -m benchmarks.qdlora_prepare CONFIG WORK/NAME`` made on the CPU
  train_mini  train: the mini OSDFace with the shipped model's stage budgets (benchmarks.train_mini)

OUT (``--out``, default out/benchmarks) receives, per suite, ``SUITE.json``: the rows of
its finished parts in one results file (each row names the command that measured it), and
``parts/SUITE/PART.{json,log}``: a finished part's rows and its output. A rerun skips every part
whose rows exist (and whose outputs, such as the student QDIR, still do); a part cut by its timeout
or the budget keeps the rows it finished in ``PART.cut.json`` and runs again next time. `qdlora`
also leaves ``qdlora_NAME.tar`` (the trained state; unpacked into WORK/NAME, `quantface train` with
the same config restores it and writes the merged model), `train_mini` the folder ``train_mini/``
(the model, metrics.jsonl and checkpoints.tar, from which a rerun resumes).

Environment, set here for every part: the compilation cache (``--cache``; with it JAX keeps XLA's
per-fusion autotune results in ``xla_gpu_per_fusion_autotune_cache_dir/``, so a compile cut short
resumes its tuning), seeded from ``--autotune DIR`` when it exists and copied to OUT/xla_autotune
at the end (to seed a fresh machine); XLA_PYTHON_CLIENT_MEM_FRACTION 0.95 (the sd21 fp32 passes
need more than JAX's default 75%); PYTHONPATH with tests/ (the torch reference) and the wheels
that ``--wheels DIR`` (default .whl) holds, installed once into ``--site``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from benchmarks import results

REPO = pathlib.Path(__file__).resolve().parents[1]
PYTHON = sys.executable
AUTOTUNE_SUBDIR = "xla_gpu_per_fusion_autotune_cache_dir"


@dataclasses.dataclass(frozen=True)
class Part:
  """One process of a suite. In ``argv``, ``{rows}`` stands for the results file it writes."""

  name: str
  argv: tuple[str, ...]
  timeout_s: float = 600.0
  xla_flags: str = ""
  mem_fraction: float = 0.95
  rows_file: pathlib.Path | None = None  # a results file the command writes (else {rows})
  outputs: tuple[pathlib.Path, ...] = ()  # must still exist for the part to count as done
  before: Callable[[], str | None] | None = None  # a reason not to start, or None
  finish: Callable[[pathlib.Path], None] | None = None  # writes the rows file after success

  @property
  def command(self) -> str:
    return display(self.argv)


def module(name: str, *args: str) -> tuple[str, ...]:
  return (PYTHON, "-m", name, *args)


def display(argv) -> str:
  """``argv`` as the shell command a results file records (``python``, not this interpreter's path)."""
  return shlex.join("python" if a == PYTHON else a for a in argv)


def fp_parts(names: list[str], args) -> list[Part]:
  modes = {
    "jax_bf16": ("--impl", "jax", "--dtype", "bfloat16", "--components", args.fp_components),
    "jax_fp32": ("--impl", "jax", "--dtype", "float32"),
    "torch_eager_fp16": ("--impl", "torch", "--mode", "eager_fp16", "--components", "16"),
    "torch_eager_fp32": ("--impl", "torch", "--mode", "eager_fp32"),
    "torch_compile_fp16": ("--impl", "torch", "--mode", "compile_fp16"),
  }
  return [
    Part(
      name,
      module("benchmarks.bench_fp", *modes[name], "--batches", args.batches) + ("--out", "{rows}"),
      timeout_s=420,
    )
    for name in names
  ]


def serve_parts(names: list[str], args) -> list[Part]:
  workdir = pathlib.Path(args.serve_workdir)
  parts = []
  for name in names:
    argv = module(
      "benchmarks.bench_serve",
      "--parts",
      name,
      "--batches",
      args.batches,
      "--workdir",
      str(workdir),
      "--out",
      "{rows}",
      *shlex.split(args.serve_args),
    )
    # The SERVE_DIRs are too big to keep beside the rows: a fresh machine exports them again.
    outputs = tuple(workdir / n for n in ("W4A8", "W4A4", "W8A8")) if name == "export" else ()
    parts.append(Part(name, argv, timeout_s=300, outputs=outputs))
  return parts


def kernel_parts(names: list[str], args) -> list[Part]:
  return [
    Part(
      name,
      module("benchmarks.bench_kernels", "--sections", name, "--out", "{rows}")
      + tuple(shlex.split(args.kernels_args)),
      timeout_s=480,
    )
    for name in names
  ]


def sd21_parts(names: list[str], args) -> list[Part]:
  cache = pathlib.Path(args.setup_cache)
  setup = ("--setup-device", "cpu", "--setup-cache", str(cache))
  qdlora_args = tuple(shlex.split(args.qdlora_args))
  structure = "structure" in qdlora_args
  parts = []
  for name in names:
    if name == "sweep":
      argv = module("benchmarks.bench_sweep", "--preset", "sd21", *setup, "--out", "{rows}")
      parts.append(Part(name, argv, timeout_s=600))
      continue
    base, _, stage = name.partition(":")
    batch, remat = qdlora_batch(base)
    stages = [stage] if stage else ["compile", ""] if structure else ["setup", "compile", ""]
    for step in stages:
      argv = module(
        "benchmarks.bench_qdlora",
        "--preset",
        "sd21",
        "--batch",
        str(batch),
        "--steps",
        "6",
        *(("--remat",) if remat else ()),
        *setup,
        *(("--stop-after", step) if step else ()),
        *qdlora_args,
        "--out",
        "{rows}",
      )
      parts.append(
        Part(
          f"{base}:{step}" if step else base,
          argv,
          timeout_s=600,
          # Autotuning is what makes the step fast: cuDNN's untuned convs run sd21's 200-4700x
          # slower. Triton GEMMs off leaves fewer fusions to tune (cuBLAS takes the dots).
          xla_flags=args.qdlora_xla_flags,
          outputs=(cache,) if step == "setup" else (),
        )
      )
  return parts


def qdlora_batch(name: str) -> tuple[int, bool] | None:
  """(batch, remat) of a part named qdlora_bN or qdlora_remat_bN, else None."""
  for prefix, remat in (("qdlora_remat_b", True), ("qdlora_b", False)):
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
      return int(name[len(prefix) :]), remat
  return None


def is_sd21_part(name: str) -> bool:
  base, _, stage = name.partition(":")
  return name == "sweep" or (qdlora_batch(base) is not None and stage in QDLORA_STAGES)


def qdlora_parts(names: list[str], args) -> list[Part]:
  work = pathlib.Path(args.qdlora_work) / args.qdlora_name
  start = work / "quantized" / "manifest.json"
  argv = module(
    "quantface_jax.cli",
    "train",
    "--config",
    args.qdlora_config,
    "--workdir",
    str(work),
    f"--config.data.root={args.faces}",
    "--config.compute_dtype=bfloat16",
    "--config.data.workers=16",
    "--config.data.lq_epochs=4",
    "--config.train.progress=false",
    "--config.train.log_every=50",
    "--config.train.checkpoint_every=1000000",
    "--config.train.steps=20000",
    f"--config.train.time_budget_s={args.qdlora_budget_s}",
    *shlex.split(args.qdlora_train_args),
  )

  def before():
    if not start.exists():
      return (
        f"no PTQ start at {start.parent}: make it on the CPU with `python -m "
        f"benchmarks.qdlora_prepare {args.qdlora_config} {work}` and bring {work} here"
      )
    return None

  def finish(rows_path: pathlib.Path) -> None:
    # The trained state (final checkpoint and metrics, not the QDIRs): unpacked into WORK/NAME,
    # `quantface train` with the same config and workdir restores it, merges and writes the model.
    archive = pathlib.Path(args.out) / f"qdlora_{args.qdlora_name}.tar"
    subprocess.run(
      [
        "tar",
        "cf",
        str(archive),
        "--exclude=quantized",
        "--exclude=model",
        "-C",
        str(work.parent),
        work.name,
      ],
      check=True,
    )
    metrics = work / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    results.write(rows_path, rows, command=display(argv))

  return [Part("train", argv, timeout_s=args.qdlora_budget_s + 120, before=before, finish=finish)]


def train_mini_parts(names: list[str], args) -> list[Part]:
  out = pathlib.Path(args.out) / "train_mini"
  budgets = dict(vae=(20000, 125), vre=(10000, 60), unet=(40000, 265), joint=(40000, 420))
  argv = module(
    "benchmarks.train_mini",
    "--out",
    str(out),
    "--resume",  # an interrupted run resumes after its last finished stage
    args.train_resume or str(out / "checkpoints.tar"),
    f"data.root={args.faces}",
    "compute_dtype=bfloat16",
    "stage_export_dtype=float16",
    "data.workers=12",
    "data.lq_epochs=8",
    "train.progress=false",
    "train.log_every=100",
    *[
      f"stage.{s}.{k}={v}"
      for s, (n, b) in budgets.items()
      for k, v in (("steps", n), ("time_budget_s", b))
    ],
    *shlex.split(args.train_overrides),
  )
  return [Part("train", argv, timeout_s=1800, mem_fraction=0.9, rows_file=out / "summary.json")]


@dataclasses.dataclass(frozen=True)
class Suite:
  defaults: tuple[str, ...]  # the parts run when none are named
  build: Callable[[list[str], argparse.Namespace], list[Part]]
  valid: Callable[[str], bool]  # whether a part name is one of the suite's
  choices: str  # for the error message


FP_PARTS = ("jax_bf16", "jax_fp32", "torch_eager_fp16", "torch_eager_fp32", "torch_compile_fp16")
SERVE_PARTS = ("export", "W4", "W8A8", "bf16", "torch_eager_fp16", "torch_compile_fp16")
KERNEL_PARTS = ("conv", "quantize", "gemm")
QDLORA_STAGES = ("", "setup", "trace", "compile")  # bench_qdlora --stop-after
SUITES = {
  "fp": Suite(FP_PARTS, fp_parts, FP_PARTS.__contains__, ", ".join(FP_PARTS)),
  "serve": Suite(SERVE_PARTS[:5], serve_parts, SERVE_PARTS.__contains__, ", ".join(SERVE_PARTS)),
  "kernels": Suite(KERNEL_PARTS, kernel_parts, KERNEL_PARTS.__contains__, ", ".join(KERNEL_PARTS)),
  "sd21": Suite(
    ("sweep", "qdlora_b8"),
    sd21_parts,
    is_sd21_part,
    "sweep, qdlora_bN, qdlora_remat_bN, each QD-LoRA one with :setup, :trace or :compile",
  ),
  "qdlora": Suite(("train",), qdlora_parts, "train".__eq__, "train"),
  "train_mini": Suite(("train",), train_mini_parts, "train".__eq__, "train"),
}


def plan(specs: list[str], args: argparse.Namespace) -> list[tuple[str, list[Part]]]:
  """(suite, its parts) for each SUITE[:PART,PART...] of the command line; SystemExit naming an
  unknown suite or part."""
  planned = []
  for spec in specs:
    name, _, listed = spec.partition(":")
    suite = SUITES.get(name)
    if suite is None:
      raise SystemExit(f"unknown suite {name!r} (one of {', '.join(SUITES)})")
    names = listed.split(",") if listed else list(suite.defaults)
    for part in names:
      if not suite.valid(part):
        raise SystemExit(f"{name}: unknown part {part!r} (one of {suite.choices})")
    planned.append((name, suite.build(names, args)))
  return planned


def environment(args: argparse.Namespace) -> dict[str, str]:
  """The variables every part runs with (see the module docstring)."""
  env = dict(os.environ)
  paths = [str(REPO), str(REPO / "tests")]
  if site := install_wheels(pathlib.Path(args.wheels), pathlib.Path(args.site)):
    paths.insert(0, str(site))
  env.update(
    PYTHONUNBUFFERED="1",
    XLA_PYTHON_CLIENT_PREALLOCATE="false",
    JAX_COMPILATION_CACHE_DIR=args.cache,
    QUANTFACE_COMMIT=results.commit(),  # one for every part, also where the tree has no .git
    PYTHONPATH=os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p]),
  )
  return env


def install_wheels(wheels: pathlib.Path, site: pathlib.Path) -> pathlib.Path | None:
  """Installs the wheels in ``wheels`` (when it holds any) into ``site``, once: a marker names
  them, so drivers run side by side or one after another do not reinstall under each other."""
  names = sorted(p.name for p in wheels.glob("*.whl")) if wheels.is_dir() else []
  if not names:
    return None
  marker = site / ".wheels"
  if not marker.exists() or marker.read_text().split() != names:
    subprocess.run(
      [PYTHON, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
      + ["--upgrade", "--target", str(site), *(str(wheels / n) for n in names)],
      check=True,
    )
    marker.write_text("\n".join(names))
  return site


def copy_new(source: pathlib.Path, target: pathlib.Path) -> int:
  """Copies the files of ``source`` that ``target`` lacks (autotune entries); how many."""
  copied = 0
  for path in source.rglob("*"):
    dest = target / path.relative_to(source)
    if path.is_file() and not dest.exists():
      dest.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(path, dest)
      copied += 1
  return copied


def run_part(part: Part, folder: pathlib.Path, env: dict, deadline: float, args) -> str:
  """Runs ``part`` unless its rows exist; its status: done, skipped, cut or failed."""
  rows = folder / f"{part.name.replace(':', '_')}.json"
  cut, log = rows.with_suffix(".cut.json"), rows.with_suffix(".log")
  if rows.exists() and all(p.exists() for p in part.outputs):
    print(f"== {part.name}: done before ({rows})", flush=True)
    return "done"
  limit = min(args.part_timeout_s or part.timeout_s, deadline - time.monotonic())
  reason = part.before() if part.before else None
  if reason is None and limit < args.min_part_s:
    reason = f"{max(limit, 0):.0f} s of the budget left"
  if reason:
    print(f"== {part.name}: skipped: {reason}", flush=True)
    return "skipped"
  written = part.rows_file or folder / f"{rows.stem}.partial.json"
  for stale in (rows, cut, written):
    stale.unlink(missing_ok=True)
  argv = [a.replace("{rows}", str(written)) for a in part.argv]
  part_env = dict(
    env,
    XLA_FLAGS=" ".join(f for f in (env.get("XLA_FLAGS", ""), part.xla_flags) if f),
    XLA_PYTHON_CLIENT_MEM_FRACTION=env.get(
      "XLA_PYTHON_CLIENT_MEM_FRACTION", str(part.mem_fraction)
    ),
  )
  print(f"== {part.name}: {shlex.join(argv)} (limit {limit:.0f} s)", flush=True)
  start = time.monotonic()
  with open(log, "w") as out:
    process = subprocess.Popen(
      argv, stdout=out, stderr=subprocess.STDOUT, env=part_env, cwd=REPO, process_group=0
    )
    try:
      code = process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
      stop(process)
      code = None
  seconds = time.monotonic() - start
  tail = [line[:300] for line in log.read_text(errors="replace").splitlines() if line.strip()]
  print("\n".join("   " + line for line in tail[-8:]), flush=True)
  if code == 0 and part.finish:
    part.finish(written)
  keep = shutil.copy2 if part.rows_file else os.replace  # the command's own file stays in place
  if code == 0:
    if not written.exists():  # a stage that leaves a cache, not rows
      results.write(written, [], command=part.command)
    keep(written, rows)
    print(f"   done in {seconds:.0f} s: {rows}", flush=True)
    return "done"
  if written.exists():
    keep(written, cut)
  status = f"cut at its {limit:.0f}-s limit" if code is None else f"failed (exit {code})"
  print(f"   {status} after {seconds:.0f} s; log {log}", flush=True)
  return "cut" if code is None else "failed"


def stop(process: subprocess.Popen) -> None:
  """Ends ``process`` and its children (its own process group): TERM, then KILL."""
  for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
    try:
      os.killpg(process.pid, sig)
      process.wait(timeout=grace)
      return
    except ProcessLookupError:
      return
    except subprocess.TimeoutExpired:
      continue


def arguments() -> argparse.ArgumentParser:
  """The driver's command line."""
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.gpu",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("suites", nargs="+", metavar="SUITE[:PART,...]")
  parser.add_argument("--out", default="out/benchmarks", help="where the results go")
  parser.add_argument("--budget-s", type=float, default=None, help="for all parts together")
  parser.add_argument("--part-timeout-s", type=float, default=None, help="replaces each part's own")
  parser.add_argument("--min-part-s", type=float, default=60, help="start no part with less left")
  parser.add_argument("--dry-run", action="store_true", help="print the parts' commands only")
  group = parser.add_argument_group("environment")
  group.add_argument(
    "--cache", default=os.environ.get("JAX_COMPILATION_CACHE_DIR", "/tmp/jax_cache")
  )
  group.add_argument("--autotune", default=".xla_autotune", help="autotune results to seed from")
  group.add_argument("--wheels", default=".whl", help="a folder of wheels to install, if present")
  group.add_argument("--site", default="/tmp/quantface_site", help="where the wheels go")
  group = parser.add_argument_group("suite options")
  group.add_argument("--batches", default="1,16", help="fp, serve: batch sizes")
  group.add_argument("--fp-components", default="16", help="fp: batches timed per component too")
  group.add_argument("--serve-args", default="", help="serve: more bench_serve flags")
  group.add_argument("--serve-workdir", default="/tmp/quantface_bench_serve", help="SERVE_DIRs")
  group.add_argument("--kernels-args", default="", help="kernels: more bench_kernels flags")
  group.add_argument("--qdlora-args", default="", help="sd21: more bench_qdlora flags")
  group.add_argument(
    "--qdlora-xla-flags", default="--xla_gpu_enable_triton_gemm=false", help="sd21: QD-LoRA parts"
  )
  group.add_argument("--setup-cache", default="/tmp/sd21_w4a4", help="sd21: the student's QDIR")
  group.add_argument("--faces", default=".facepack/celebahq128", help="qdlora, train_mini: faces")
  group.add_argument("--qdlora-name", default="w4a4", help="qdlora: the run, WORK/NAME")
  group.add_argument("--qdlora-config", default="configs/qdlora_w4a4.py")
  group.add_argument("--qdlora-work", default="runs/qd")
  group.add_argument("--qdlora-budget-s", type=int, default=240, help="qdlora: training seconds")
  group.add_argument(
    "--qdlora-train-args",
    default="",
    help="qdlora: more `quantface train` flags, e.g. \"--config.data.train_range='(0, 1500)' "
    '--config.data.val_start=1500" for a pack of fewer faces',
  )
  group.add_argument("--train-overrides", default="", help="train_mini: more key=value overrides")
  group.add_argument(
    "--train-resume", default=None, help="train_mini: a checkpoints.tar to resume from"
  )
  return parser


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  args = arguments().parse_args(argv)
  args.out = str(pathlib.Path(args.out).resolve())  # the parts run in the repository root
  planned = plan(args.suites, args)
  if args.dry_run:
    for suite, parts in planned:
      for part in parts:
        print(f"{suite}:{part.name}  {part.command}")
    return
  out = pathlib.Path(args.out)
  env = environment(args)
  tuned = pathlib.Path(args.cache) / AUTOTUNE_SUBDIR
  if pathlib.Path(args.autotune).is_dir():
    print(f"autotune: {copy_new(pathlib.Path(args.autotune), tuned)} entries seeded", flush=True)
  probe = subprocess.run(
    [PYTHON, "-c", "import jax; from benchmarks import results; print(results.machine())"],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  print(f"machine: {probe.stdout.strip() or probe.stderr.strip()[-300:]}", flush=True)
  deadline = time.monotonic() + (args.budget_s if args.budget_s else float("inf"))
  for suite, parts in planned:
    folder = out / "parts" / suite
    folder.mkdir(parents=True, exist_ok=True)
    statuses = {part.name: run_part(part, folder, env, deadline, args) for part in parts}
    finished = [folder / f"{p.name.replace(':', '_')}.json" for p in parts]
    merged = out / f"{suite}.json"
    command = shlex.join(["python", "-m", "benchmarks.gpu", *argv])
    results.merge(merged, [f for f in finished if f.exists()], command=command)
    print(f"{suite}: {statuses} -> {merged}", flush=True)
  if tuned.is_dir():
    print(f"autotune: {copy_new(tuned, out / 'xla_autotune')} entries saved", flush=True)


if __name__ == "__main__":
  main()
