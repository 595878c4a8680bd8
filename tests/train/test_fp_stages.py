"""The FP stages on the tiny preset and synthetic faces: what trains, stage skipping, export."""

import os

import numpy as np
import pytest
from flax import nnx

from quantface_jax.checkpoint import save_safetensors
from quantface_jax.data import io as image_io
from quantface_jax.models.osdface import build
from quantface_jax.train import fp_stages, initial_model, train_fp
from quantface_jax.train.config_utils import apply_overrides, load_config_file
from quantface_jax.train.logging import read_metrics
from quantface_jax.train.trainer import split_trainable

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(root, *overrides):
  c = load_config_file(os.path.join(REPO, "configs", "tiny_fp.py"))
  return apply_overrides(c, [f"data.root={root}", *overrides])


def synthetic_faces(folder, n=20, size=32):
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:size, :size] / size
  for i in range(n):
    f = rng.uniform(1, 4, 3)
    img = 0.5 + 0.4 * np.sin(2 * np.pi * (f[0] * xx + f[1] * yy)[..., None] + rng.uniform(0, 6, 3))
    image_io.write_image(os.path.join(folder, f"{i}.png"), img)
  return str(folder)


def trainable_roots(stage):
  _, params, frozen = split_trainable(stage.module, stage.trainable)
  paths = lambda s: {".".join(map(str, k[:2])) for k, _ in nnx.to_flat_state(s)}
  return paths(params), paths(frozen)


def test_unet_stage_trains_unet_embedding_and_vae_encoder_only(tmp_path):
  config = tiny_config(synthetic_faces(tmp_path))
  stage = fp_stages.unet_stage(build("tiny"), config, lambda s: iter(()), [])
  trained, frozen = trainable_roots(stage)
  assert {p.split(".")[0] for p in trained} == {"unet", "embedding_change", "vae"}
  assert {p for p in trained if p.startswith("vae")} == {"vae.encoder", "vae.quant_conv"}
  assert {"vae.decoder", "vae.post_quant_conv", "vre.encoder", "vre.quantize"} <= frozen
  config.stage.unet.train_vae_encoder = False
  trained, _ = trainable_roots(fp_stages.unet_stage(build("tiny"), config, lambda s: iter(()), []))
  assert not any(p.startswith("vae") for p in trained)


def test_vae_stage_runs_skips_when_done_and_exports(tmp_path):
  config = tiny_config(synthetic_faces(tmp_path / "faces"), 'stages=("vae",)', "stage.vae.steps=3")
  workdir = str(tmp_path / "work")
  model, results = train_fp(config, workdir)
  assert results["vae"].steps_run == 3 and "val_psnr" in results["vae"].val_metrics
  assert os.path.exists(os.path.join(workdir, "model", "model.safetensors"))
  assert [r["step"] for r in read_metrics(workdir, "vae")] == [1, 2, 3]
  again, results = train_fp(config, workdir)
  assert results == {}
  a, b = nnx.state(model, nnx.Param), nnx.state(again, nnx.Param)
  for (k, x), (_, y) in zip(nnx.to_flat_state(a), nnx.to_flat_state(b)):
    np.testing.assert_array_equal(np.asarray(x[...]), np.asarray(y[...]), err_msg=str(k))


def test_init_from_starts_the_first_stage_from_a_saved_model(tmp_path):
  source = build("tiny", seed=7)
  save_safetensors(source, str(tmp_path / "source"), dtype=np.float32)
  config = tiny_config(tmp_path, f"init_from={tmp_path / 'source'}")
  start = initial_model(config)
  for (k, x), (_, y) in zip(
    nnx.to_flat_state(nnx.state(source, nnx.Param)), nnx.to_flat_state(nnx.state(start, nnx.Param))
  ):
    np.testing.assert_array_equal(np.asarray(x[...]), np.asarray(y[...]), err_msg=str(k))
  fresh = initial_model(tiny_config(tmp_path))  # no init_from: the preset at config.seed
  assert not np.array_equal(
    np.asarray(fresh.unet.conv_in.kernel[...]), np.asarray(source.unet.conv_in.kernel[...])
  )
  with pytest.raises(ValueError, match="model_resolution is 64"):
    initial_model(tiny_config(tmp_path, f"init_from={tmp_path / 'source'}", "model_resolution=64"))


def test_joint_stage_also_trains_the_decoder_and_keeps_the_vre_frozen(tmp_path):
  config = tiny_config(synthetic_faces(tmp_path))
  stage = fp_stages.unet_stage(build("tiny"), config, lambda s: iter(()), [], name="joint")
  trained, frozen = trainable_roots(stage)
  assert stage.name == "joint"
  assert {"vae.encoder", "vae.quant_conv", "vae.decoder", "vae.post_quant_conv"} <= trained
  assert {"vre.encoder", "vre.quantize"} <= frozen and not any(p.startswith("vre") for p in trained)


def test_only_the_training_set_takes_the_mirror_augmentation(tmp_path):
  config = tiny_config(synthetic_faces(tmp_path, n=8), "data.hflip=True", "data.train_range=(0, 6)")
  train = fp_stages.train_dataset(config)
  assert train.hflip and len(train) == 6
  assert not fp_stages.pair_dataset(config, range(6, 8)).hflip
