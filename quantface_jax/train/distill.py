"""QD-LoRA distillation (docs/design.md §2.4): a quantized student learns its branches from the FP
teacher.

Pipeline of `train_qdlora(config, workdir)`:

1. teacher = ``checkpoint.load(config.model)``; calibrate on LQ training faces and ``quantize`` with
   the configured recipe (kept as a QDIR in ``workdir/quantized``, so a rerun resumes from the
   same bits);
2. ``to_qdlora``: frozen quantized residual R + trainable SVD and LoRA branches (+ LSQ ranges);
3. the generic trainer's `fit` on a `distill_stage`: only the student's branches (and ranges)
   train and have optimizer state; the teacher travels in the frozen state. Loss, against the
   teacher on the same LQ batch: latent MSE on z_H + pixel L1 + Sobel-edge L1 + feature loss in the
   frozen VRE encoder's space, weighted by ``config.train.weights``;
4. ``merge_qdlora`` and ``save_quantized``: ``workdir/model`` is a QDIR for ``load_quantized``.

Batches are ``{"lq", "hq"}`` (B, R, R, 3) in [-1, 1]; HQ only serves the validation PSNR.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from quantface_jax import checkpoint
from quantface_jax.data.calibration import as_batches, calibration_faces
from quantface_jax.models.layers import set_remat
from quantface_jax.models.osdface import OSDFace, RestoreOutput
from quantface_jax.models.vre import VQEncoder
from quantface_jax.quant import qdlora
from quantface_jax.quant.api import quantize, set_bits
from quantface_jax.quant.bits_map import load_bits_map
from quantface_jax.quant.export import load_quantized, save_quantized
from quantface_jax.quant.recipes import CalibrationSettings, Recipe, get_recipe
from quantface_jax.train import fp_stages, losses
from quantface_jax.train.mesh import is_main_process, maybe_initialize_distributed
from quantface_jax.train.trainer import FitResult, Stage, fit

log = logging.getLogger("quantface")

STAGE = "qdlora"


class DistillPair(nnx.Module):
  """What `fit` sees: the QD-LoRA student (its branches train) and the frozen FP teacher."""

  def __init__(self, student: OSDFace, teacher: OSDFace):
    self.student = student
    self.teacher = teacher


def distillation_terms(
  student: RestoreOutput, teacher: RestoreOutput, encoder: VQEncoder, *, feature_kind: str | None
) -> dict[str, float]:
  """Unweighted losses of a student restore against the teacher's (images (B, R, R, 3) in [0, 1]).

  feature_kind: "l1"/"mse" distance in ``encoder``'s features, or None to skip that term.
  """
  pred, target = student.image * 2.0 - 1.0, teacher.image * 2.0 - 1.0
  terms = {
    "latent": losses.mse(student.z_high, teacher.z_high),
    "l1": losses.l1(pred, target),
    "sobel": losses.sobel_l1(pred, target),
  }
  if feature_kind is not None:
    terms["feature"] = losses.feature_loss(encoder, pred, target, kind=feature_kind)
  return terms


def distill_stage(
  student: OSDFace, teacher: OSDFace, config: ml_collections.ConfigDict, train_stream, val
) -> Stage:
  """The QD-LoRA stage: `student` from ``to_qdlora``, `teacher` the FP model (both in float32).

  Reads config.compute_dtype, config.train.weights, config.train.feature_kind, config.train.remat
  (recompute the student's resnet/transformer activations in the backward pass: memory for time).
  """
  set_remat(student, config.train.remat)
  weights, dtype = config.train.weights, jnp.dtype(config.compute_dtype)
  feature_kind = config.train.feature_kind if float(weights.feature) else None

  def loss_fn(pair: DistillPair, batch, rng):
    del rng
    target = pair.teacher.restore(batch["lq"], dtype=dtype)
    out = pair.student.restore(batch["lq"], dtype=dtype)
    terms = distillation_terms(out, target, pair.teacher.vre.encoder, feature_kind=feature_kind)
    return losses.weighted_sum(terms, weights), terms

  def eval_fn(pair: DistillPair, batch):
    image = pair.student.restore(batch["lq"], dtype=dtype).image
    return {
      "psnr": losses.psnr(image, batch["hq"] * 0.5 + 0.5),
      "psnr_teacher": losses.psnr(image, pair.teacher.restore(batch["lq"], dtype=dtype).image),
    }

  return Stage(
    name=STAGE,
    module=DistillPair(student, teacher),
    trainable=nnx.All(nnx.PathContains("student"), qdlora.TRAINABLE),
    loss_fn=loss_fn,
    eval_fn=eval_fn,
    train_batches=train_stream,
    val_batches=val,
  )


# ------------------------------------------------------------------------------------ the pipeline


def quant_recipe(config: ml_collections.ConfigDict) -> Recipe:
  """config.quant -> the PTQ recipe (name, bits, seed, calibration settings, body overrides)."""
  q = config.quant
  return get_recipe(
    q.recipe, q.bits, seed=q.seed, calibration=CalibrationSettings(**q.calibration), **q.overrides
  )


def export_recipe(recipe: Recipe, qcfg: ml_collections.ConfigDict) -> Recipe:
  """The recipe that describes the merged model: every quantized layer has one low-rank pair of
  rank rank + lora_rank (capped per layer as `qdlora_layer` does)."""
  rank = qcfg.rank + qcfg.lora_rank
  rules = tuple((p, None if c is None else c.replace(low_rank=rank)) for p, c in recipe.rules)
  return dataclasses.replace(recipe, name=f"{recipe.name}-qdlora", rules=rules)


def calibration_batches(config: ml_collections.ConfigDict) -> list[np.ndarray]:
  """LQ faces (the training degradations, epoch 0) of the first calibration.num_images training
  files, (B, R, R, 3) in [-1, 1]."""
  settings = config.quant.calibration
  faces = calibration_faces(
    config.model_resolution,
    hq_dir=config.data.root,
    count=settings.num_images,
    start=config.data.train_range[0],
    seeds=config.data.degradation_seed,
    degradation=fp_stages.degradation_config(config.data.degradation),
  )
  return as_batches(faces, settings.batch_size)


def prepare_quantized(teacher: OSDFace, config: ml_collections.ConfigDict, qdir: str) -> OSDFace:
  """The PTQ model of `teacher` by config.quant: loaded from the QDIR `qdir` if it exists, else
  calibrated, quantized and saved there."""
  if os.path.isdir(qdir):
    log.info("PTQ start: %s (reused)", qdir)
    return load_quantized(qdir)
  start = time.perf_counter()
  recipe = quant_recipe(config)
  log.info(
    "PTQ start: %s %s on %d calibration faces",
    recipe.name,
    config.quant.bits,
    config.quant.calibration.num_images,
  )
  images = calibration_batches(config)
  quantized = quantize(teacher, recipe, calibration=images, progress=config.train.progress)
  bits_map = config.quant.get("bits_map", "")  # mixed precision: a `quantface allocate` file
  if bits_map:
    set_bits(quantized, load_bits_map(bits_map)[0])
  if is_main_process():  # every process quantized the same; one writes
    save_quantized(
      quantized,
      recipe,
      qdir,
      base_ckpt=str(config.model),
      calibration_info=dict(num_images=sum(map(len, images)), bits_map=bits_map or None),
    )
  log.info("PTQ start: %s in %.0f s", qdir, time.perf_counter() - start)
  return quantized


def trainer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """What `fit` reads: config.train plus the run seed."""
  merged = ml_collections.ConfigDict(config.train.to_dict())
  merged.seed = config.seed
  return merged


def distillation_stage(config: ml_collections.ConfigDict, workdir: str) -> Stage:
  """The stage `train_qdlora` fits: the teacher, its PTQ model (made, or reused from
  ``workdir/quantized``), the QD-LoRA student, and the training and validation input."""
  teacher = checkpoint.load(config.model)
  quantized = prepare_quantized(teacher, config, os.path.join(workdir, "quantized"))
  q = config.qdlora
  student = qdlora.to_qdlora(
    quantized,
    rank=q.rank,
    lora_rank=q.lora_rank,
    sigma=q.sigma,
    seed=q.seed,
    learn_scales=q.learn_scales,
    inplace=True,
  )
  train = fp_stages.train_dataset(config)
  pairs, processes = fp_stages.training_pairs(config, train)
  stream = fp_stages.batch_stream(
    pairs,
    ("lq", "hq"),
    config.train.batch_size,
    seed=config.data.shuffle_seed,
    workers=config.data.workers,
    processes=processes,
  )
  return distill_stage(student, teacher, config, stream, fp_stages.val_batches(config))


def train_qdlora(config: ml_collections.ConfigDict, workdir: str) -> tuple[OSDFace, FitResult]:
  """Quantize, convert, distil, merge; returns the merged quantized model (also written as the
  QDIR ``workdir/model``, by process 0) and the `FitResult`. A rerun resumes from ``workdir``."""
  maybe_initialize_distributed()
  result = fit(distillation_stage(config, workdir), trainer_config(config), workdir)
  merged = qdlora.merge_qdlora(result.module.student)
  if is_main_process():
    save_quantized(
      merged,
      export_recipe(quant_recipe(config), config.qdlora),
      os.path.join(workdir, "model"),
      base_ckpt=str(config.model),
      calibration_info=dict(qdlora=config.qdlora.to_dict(), **result.val_metrics),
    )
  return merged, result
