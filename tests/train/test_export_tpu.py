"""The training and restore programs lower for TPU from this CPU (`jax.export`, platforms=("tpu",)),
at tiny shapes: nothing GPU-only (Triton/Mosaic-GPU kernels, cuBLAS/cuDNN custom calls) sits on the
FP training step, the QD-LoRA training step or the FP restore, and the integer kernels' dispatch
takes XLA there."""

import re

import jax
import numpy as np
import pytest
from flax import nnx
from test_distill import shared_quantized, stage_for
from test_fp_stages import tiny_config

from quantface_jax.models.osdface import build
from quantface_jax.train import distill, fp_stages, trainer
from quantface_jax.train import mesh as mesh_lib

GPU_ONLY = re.compile(
  r"custom_call_target\s*=\s*\"[^\"]*(gpu|cuda|cublas|cudnn|triton|mosaic_gpu)", re.I
)


def export_for_tpu(fn, *args) -> str:
  """`fn` exported for TPU; returns its StableHLO text after checking it has no GPU-only call."""
  exported = jax.export.export(fn, platforms=("tpu",))(*args)
  assert exported.platforms == ("tpu",)
  text = exported.mlir_module()
  assert not GPU_ONLY.search(text), GPU_ONLY.search(text).group(0)
  return text


def pair_batch(rows=2, size=32):
  rng = np.random.default_rng(0)
  return {k: rng.uniform(-1, 1, (rows, size, size, 3)).astype(np.float32) for k in ("lq", "hq")}


def train_step_text(stage, config) -> str:
  program = trainer.build_train_program(stage, config, mesh_lib.make_mesh())
  return export_for_tpu(program.step, *program.abstract_args(pair_batch()))


def test_fp_training_step_exports_for_tpu(tmp_path):
  config = tiny_config(tmp_path)
  stage = fp_stages.unet_stage(build("tiny", seed=0), config, None, [])
  text = train_step_text(stage, fp_stages.stage_config(config, "unet"))
  assert "stablehlo.convolution" in text


@pytest.mark.xdist_group("qdlora")  # with test_distill.py: the same PTQ model
def test_qdlora_training_step_exports_for_tpu(tmp_path_factory):
  config, quantized, _ = shared_quantized(tmp_path_factory)
  text = train_step_text(stage_for(config, quantized, None), distill.trainer_config(config))
  # Fake quantization rounds on the TPU's vector units: XLA ops, no kernel of ours.
  assert "stablehlo.round_nearest_even" in text or "stablehlo.round_nearest_afz" in text


def test_fp_restore_exports_for_tpu():
  graphdef, state = nnx.split(build("tiny", seed=0))
  restore = jax.jit(lambda s, lq: nnx.merge(graphdef, s).restore(lq).image)
  lq = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  text = export_for_tpu(
    restore, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state), lq
  )
  assert "stablehlo.convolution" in text


def test_kernel_dispatch_takes_xla_on_tpu(monkeypatch):
  from quantface_jax.kernels import dispatch

  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert dispatch._resolve("auto", "pallas") == "xla"
