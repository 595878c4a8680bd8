"""Full-precision training of an OSDFace from scratch: the stages vae -> vre -> unet [-> joint].

`train_fp(config, workdir)` runs them (see `fp_stages`); each finished stage leaves the whole model
in ``workdir/stages/<stage>/`` and a rerun continues after the last finished stage (and inside an
unfinished one from its Orbax checkpoint).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import jax.numpy as jnp
import ml_collections

from quantface_jax import checkpoint
from quantface_jax.checkpoint import load_safetensors, save_safetensors
from quantface_jax.models.configs import PRESETS
from quantface_jax.models.osdface import OSDFace, build
from quantface_jax.train import fp_stages
from quantface_jax.train.mesh import (
  is_main_process,
  maybe_initialize_distributed,
  wait_for_all_processes,
)
from quantface_jax.train.trainer import FitResult, fit


def model_config(config: ml_collections.ConfigDict):
  return dataclasses.replace(PRESETS[config.model], resolution=config.model_resolution)


def initial_model(config: ml_collections.ConfigDict) -> OSDFace:
  """The model the first stage starts from: ``config.init_from`` (a model directory or ``mini``) when
  set, else a fresh `build` of the preset (e.g. ``stages=("unet",) init_from=mini`` continues the
  shipped model's UNet stage)."""
  source = config.get("init_from", "")
  if not source:
    return build(model_config(config), seed=config.seed)
  model = checkpoint.load(source)
  if model.config.resolution != config.model_resolution:
    raise ValueError(
      f"init_from={source!r} is a {model.config.resolution}-px model; "
      f"config.model_resolution is {config.model_resolution}"
    )
  return model


def train_fp(
  config: ml_collections.ConfigDict,
  workdir: str,
  on_stage_done: Callable[[str, FitResult], None] | None = None,
) -> tuple[OSDFace, dict[str, FitResult]]:
  """Runs the stages of config.stages in order, skipping those already finished in `workdir`.

  Ends with the fp16 model in ``workdir/model/{model.safetensors,config.json}``; returns the model
  and the `FitResult` of each stage run by this call. `on_stage_done(name, result)` runs after each
  stage's model is written (e.g. to archive it).
  """
  maybe_initialize_distributed()
  stage_dir = lambda name: os.path.join(workdir, "stages", name)
  names = list(config.stages)
  unknown = sorted(set(names) - set(fp_stages.STAGES))
  if unknown:
    raise ValueError(f"unknown stages {unknown}; known: {fp_stages.STAGES}")
  finished = [
    i
    for i, n in enumerate(names)
    if os.path.exists(os.path.join(stage_dir(n), "model.safetensors"))
  ]
  first = finished[-1] + 1 if finished else 0
  model = load_safetensors(stage_dir(names[first - 1])) if first else initial_model(config)

  train = fp_stages.train_dataset(config)
  remaining = names[first:]
  pairs, pair_processes = None, False
  if {"vre", "unet", "joint"} & set(remaining):
    pairs, pair_processes = fp_stages.training_pairs(config, train)
  val = fp_stages.val_batches(config) if remaining else []
  builders = {
    "vae": fp_stages.vae_stage,
    "vre": fp_stages.vre_stage,
    "unet": fp_stages.unet_stage,
    "joint": functools.partial(fp_stages.unet_stage, name="joint"),
  }

  results = {}
  for i, name in enumerate(remaining, start=first):
    scfg = fp_stages.stage_config(config, name)
    dataset, keys, processes = (
      (fp_stages.HQOnly(train), ("hq",), False)
      if name == "vae"
      else (pairs, ("lq", "hq"), pair_processes)
    )
    stream = fp_stages.batch_stream(
      dataset,
      keys,
      scfg.batch_size,
      seed=config.data.shuffle_seed + i,
      workers=config.data.workers,
      processes=processes,
    )
    stage = builders[name](model, config, stream, val)
    results[name] = fit(stage, scfg, workdir)
    # Every stage hands the next the model as stored, so a resumed run continues from the same bits.
    # Every process holds the same model: process 0 writes it, the others read it once written.
    if is_main_process():
      save_safetensors(model, stage_dir(name), dtype=jnp.dtype(config.stage_export_dtype))
    wait_for_all_processes(f"stage {name} saved")
    model = load_safetensors(stage_dir(name))
    if on_stage_done is not None:
      on_stage_done(name, results[name])
  if is_main_process():
    save_safetensors(model, os.path.join(workdir, "model"), dtype=jnp.float16)
  return model, results
