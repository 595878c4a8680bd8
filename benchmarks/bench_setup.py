"""The quantized student both sd21 benchmarks start from (bench_qdlora.py, bench_sweep_h200.py).

The quantface recipe at W4A4 without its calibration-heavy steps (α fixed at 0.5, one random
calibration face, no reservoir sample, no range pass: the static ranges of rotated inputs are then
the norm bound, which changes values, not speed). Its setup is ~300 small per-layer programs
(balancing, SVD, clip search, one per distinct layer shape) and one fp32 observation pass:
compile-bound on a GPU, so ``setup_device="cpu"`` runs it on the host's CPU backend and moves the
models to the accelerator afterwards, and ``cache`` keeps the student as a QDIR that the next
benchmark process loads.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import time

import jax
import numpy as np
from flax import nnx

from quantface_jax.models import build
from quantface_jax.quant import (CalibrationSettings, get_recipe, load_quantized, quantize, save_quantized,
                                to_qdlora)

log = logging.getLogger(__name__)


def setup_context(setup_device: str):
  """Where setup work runs: "cpu" (the host's CPU backend) or "default" (the default device)."""
  return jax.default_device(jax.devices("cpu")[0]) if setup_device == "cpu" else contextlib.nullcontext()


def bench_recipe():
  """The module docstring's light quantface W4A4 recipe."""
  return get_recipe("quantface", "W4A4", alpha=0.5, calibration=CalibrationSettings(
      num_images=1, batch_size=1, max_samples=0, range_pass=False))


def quick_quantized(preset: str, *, setup_device: str = "default", cache: str | None = None,
                    qdlora_ranks: tuple[int, int] | None = None):
  """(FP model, W4A4 quantface student, recipe, setup seconds); both models on the default device.

  setup_device: "default" (the default device) or "cpu" (build and quantize on the host's CPU).
  cache: a QDIR path: loaded when it exists (the FP model is rebuilt: `build` is deterministic),
    else written after quantizing.
  qdlora_ranks: (SVD rank, LoRA rank) to turn the student into QD-LoRA layers (None: stays PTQ).
  """
  start = time.perf_counter()
  with setup_context(setup_device):
    fp = build(preset)
    res = fp.config.resolution
    face = np.random.default_rng(0).uniform(-1, 1, (1, res, res, 3)).astype(np.float32)
    recipe = bench_recipe()
    if cache and os.path.isdir(cache):  # atomic_directory: it exists only once complete
      student, how = load_quantized(cache), f"loaded from {cache}"
    else:
      student, how = quantize(fp, recipe, calibration=[face]), "quantized"
      if cache:
        save_quantized(student, recipe, cache, base_ckpt=f"random {preset} (seed 0)")
    log.info("%s student %s in %.0f s", preset, how, time.perf_counter() - start)
    if qdlora_ranks is not None:
      student = to_qdlora(student, rank=qdlora_ranks[0], lora_rank=qdlora_ranks[1], inplace=True)
  if setup_device == "cpu":
    target = jax.devices()[0]
    for model in (fp, student):
      nnx.update(model, jax.device_put(nnx.state(model), target))
  jax.block_until_ready((nnx.state(fp), nnx.state(student)))
  log.info("models ready on %s after %.0f s", jax.devices()[0], time.perf_counter() - start)
  return fp, student, recipe, time.perf_counter() - start


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
  """--setup-device and --setup-cache, which `from_args` reads."""
  parser.add_argument("--setup-cache", default=None, help="QDIR of the student: loaded if present, else written")
  parser.add_argument("--setup-device", default="default", choices=("default", "cpu"),
                      help="where the student is quantized (cpu: the host, then moved)")


def from_args(args: argparse.Namespace, *, qdlora_ranks: tuple[int, int] | None = None):
  """`quick_quantized` for ``args.preset`` with the `add_setup_arguments` flags; prints the setup time."""
  models = quick_quantized(args.preset, setup_device=args.setup_device, cache=args.setup_cache,
                           qdlora_ranks=qdlora_ranks)
  print(f"setup ({args.setup_device}): {models[-1]:.0f} s", flush=True)
  return models
