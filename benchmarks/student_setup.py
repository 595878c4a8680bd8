"""Command-line flags for the quantized students of `quantface_jax.quant.students`, shared by the
sd21 benchmarks (bench_qdlora, bench_sweep).

    python -m benchmarks.student_setup [PRESET]   # does the structural student match the calibrated one?
"""

from __future__ import annotations

import argparse
import sys

from quantface_jax.quant import students


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
  """--setup-device and --setup-cache, which `from_args` reads."""
  parser.add_argument(
    "--setup-cache", default=None, help="QDIR of the student: loaded if present, else written"
  )
  parser.add_argument(
    "--setup-device",
    default="default",
    choices=("default", "cpu"),
    help="where the student is quantized (cpu: the host, then moved)",
  )


def from_args(args: argparse.Namespace, *, qdlora_ranks: tuple[int, int] | None = None):
  """`students.quick_quantized` (or, with ``--student structure`` and QD-LoRA ranks,
  `students.structural`) for ``args.preset`` with the `add_setup_arguments` flags; prints the
  setup time."""
  if getattr(args, "student", "calibrated") == "structure" and qdlora_ranks is not None:
    models = students.structural(
      args.preset, setup_device=args.setup_device, qdlora_ranks=qdlora_ranks
    )
  else:
    models = students.quick_quantized(
      args.preset, setup_device=args.setup_device, cache=args.setup_cache, qdlora_ranks=qdlora_ranks
    )
  print(f"setup ({args.setup_device}): {models[-1]:.0f} s", flush=True)
  return models


if __name__ == "__main__":
  print(students.structure_matches(sys.argv[1] if len(sys.argv) > 1 else "tiny"))
