"""Quantized students of a preset for timing and memory benchmarks (random weights, no data).

Two kinds:

- `quick_quantized`: the quantface recipe at W4A4 without its calibration-heavy steps (α fixed at
  0.5, one random calibration face, no reservoir sample, no range pass: the static ranges of
  rotated inputs are then the norm bound, which changes values, not speed). Its setup is ~300
  small per-layer programs (balancing, SVD, clip search, one per distinct layer shape) and one
  fp32 observation pass: compile-bound on a GPU, so ``setup_device="cpu"`` runs it on the host's
  CPU backend and moves the models to the accelerator afterwards, and ``cache`` keeps the student
  as a QDIR that the next benchmark process loads.
- `structural_qdlora`: the QD-LoRA student's exact structure, built in seconds without
  calibration; its values are meaningless, its compiled training step is the real one's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

import jax
import numpy as np
from flax import nnx

from quantface_jax.models import build
from quantface_jax.models.layers import Conv2d
from quantface_jax.quant import (
  CalibrationSettings,
  get_recipe,
  hadamard,
  load_quantized,
  quantize,
  save_quantized,
  to_qdlora,
)
from quantface_jax.quant import rules as rules_lib
from quantface_jax.quant.qdlora import QDLoRAConv2d, QDLoRALinear, branch_ranks

log = logging.getLogger(__name__)


def setup_context(setup_device: str):
  """Where setup work runs: "cpu" (the host's CPU backend) or "default" (the default device)."""
  return (
    jax.default_device(jax.devices("cpu")[0]) if setup_device == "cpu" else contextlib.nullcontext()
  )


def light_recipe():
  """`quick_quantized`'s light quantface W4A4 recipe (see the module docstring)."""
  return get_recipe(
    "quantface",
    "W4A4",
    alpha=0.5,
    calibration=CalibrationSettings(num_images=1, batch_size=1, max_samples=0, range_pass=False),
  )


def quick_quantized(
  preset: str,
  *,
  setup_device: str = "default",
  cache: str | None = None,
  qdlora_ranks: tuple[int, int] | None = None,
):
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
    recipe = light_recipe()
    if cache and os.path.isdir(cache):  # atomic_directory: it exists only once complete
      student, how = load_quantized(cache), f"loaded from {cache}"
    else:
      student, how = quantize(fp, recipe, calibration=[face]), "quantized"
      if cache:
        save_quantized(student, recipe, cache, base_ckpt=f"random {preset} (seed 0)")
    log.info("%s student %s in %.0f s", preset, how, time.perf_counter() - start)
    if qdlora_ranks is not None:
      student = to_qdlora(student, rank=qdlora_ranks[0], lora_rank=qdlora_ranks[1], inplace=True)
  return _ready(fp, student, recipe, setup_device=setup_device, start=start)


def _ready(fp: nnx.Module, student: nnx.Module, recipe, *, setup_device: str, start: float):
  """Both models on the default device (moved there from the host after a "cpu" setup), waited
  for: (fp, student, recipe, setup seconds since ``start``)."""
  if setup_device == "cpu":
    target = jax.devices()[0]
    for model in (fp, student):
      nnx.update(model, jax.device_put(nnx.state(model), target))
  jax.block_until_ready((nnx.state(fp), nnx.state(student)))
  log.info("models ready on %s after %.0f s", jax.devices()[0], time.perf_counter() - start)
  return fp, student, recipe, time.perf_counter() - start


def structural_qdlora(
  fp: nnx.Module, recipe, *, rank: int, lora_rank: int, seed: int = 0
) -> nnx.Module:
  """A clone of ``fp`` with the structure that ``to_qdlora(quantize(fp, recipe), rank=rank,
  lora_rank=lora_rank)`` has (the same graph definition, state shapes and dtypes, and traced bits,
  so the same compiled training step) but none of its calibration work: R is the FP weight,
  smoothing 1, rotation signs random, static ranges [-4, 4], both branches drawn small. What it
  computes is meaningless; how long that takes and how much memory it holds are the real student's.
  """
  rng = np.random.default_rng(seed)
  model = nnx.clone(fp)

  def convert(path, layer):
    config = rules_lib.match(recipe.rules, path)
    if config is None:
      return None
    kernel = layer.kernel[...]
    taps_in, d_out = kernel.shape[:-1], kernel.shape[-1]
    r, r_lora = branch_ranks(kernel.shape, rank, lora_rank)
    draw = lambda *shape: rng.standard_normal(shape).astype(np.float32) * 0.02
    d_in = taps_in[-1]
    kwargs = dict(
      config=config,
      svd=(draw(*taps_in, r), draw(r, d_out)),
      lora=(draw(*taps_in, r_lora), np.zeros((r_lora, d_out), np.float32)) if r_lora else None,
      smooth=np.ones(d_in, np.float32) if config.smooth else None,
      rotation_signs=(
        hadamard.random_hadamard(d_in, rules_lib.layer_seed(seed, path)).signs
        if config.rotate
        else None
      ),
      a_range=(-4.0, 4.0),
    )
    bias = None if layer.bias is None else layer.bias[...]
    if isinstance(layer, Conv2d):
      return QDLoRAConv2d(kernel, bias, stride=layer.stride, padding=layer.padding, **kwargs)
    return QDLoRALinear(kernel, bias, **kwargs)

  rules_lib.replace_layers(model, list(rules_lib.iter_layers(model, rules_lib.FP_LAYERS)), convert)
  return model


def structural(preset: str, *, setup_device: str = "default", qdlora_ranks: tuple[int, int]):
  """(FP model, `structural_qdlora` student, recipe, setup seconds), as `quick_quantized` returns."""
  start = time.perf_counter()
  with setup_context(setup_device):
    fp = build(preset)
    recipe = light_recipe()
    student = structural_qdlora(fp, recipe, rank=qdlora_ranks[0], lora_rank=qdlora_ranks[1])
  return _ready(fp, student, recipe, setup_device=setup_device, start=start)


def structure_matches(preset: str, *, rank: int = 16, lora_rank: int = 16) -> dict[str, bool]:
  """Builds both students of ``preset`` and compares them: {"graphdef": same graph definition (module
  types, static configs, rotation specs), "state": same state shapes, dtypes and weak types, "bits":
  same traced widths}. All True means the training step traces to the same program."""
  fp, calibrated, recipe, _ = quick_quantized(preset, qdlora_ranks=(rank, lora_rank))
  structure = structural_qdlora(fp, recipe, rank=rank, lora_rank=lora_rank)
  abstract = lambda m: jax.tree.map(
    lambda a: (a.shape, a.dtype, getattr(a, "weak_type", False)), nnx.state(m)
  )
  bits = lambda m: {
    k: np.asarray(v).tolist()
    for k, v in nnx.to_flat_state(nnx.state(m))
    if k[-1] in ("w_bits", "a_bits", "enabled")
  }
  return dict(
    graphdef=nnx.graphdef(structure) == nnx.graphdef(calibrated),
    state=abstract(structure) == abstract(calibrated),
    bits=bits(structure) == bits(calibrated),
  )
