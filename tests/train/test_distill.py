"""QD-LoRA distillation on the tiny preset and synthetic faces: learning, what trains, exact resume,
the exported QDIR."""

import os

import numpy as np
import pytest
from flax import nnx
from test_fp_stages import synthetic_faces
from test_trainer import Interrupted, flat, interrupted_at

from quantface_jax import checkpoint
from quantface_jax.quant import qdlora, quant_layers
from quantface_jax.quant.export import load_quantized, weight_codes
from quantface_jax.train import distill, fp_stages
from quantface_jax.train.config_utils import apply_overrides, load_config_file
from quantface_jax.train.logging import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# One worker runs the QD-LoRA tests (here, the TPU export's and the multi-process one) in turn: they
# share the PTQ model and, through the persistent compilation cache, the compiled training step.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("qdlora")]
TRAIN = ["train.lr=3e-3"]
BRANCHES = {"svd_down", "svd_up", "lora_down", "lora_up"}  # QD-LoRA's trainable branches
SCALES = {
  "w_clip",
  "a_min",
  "a_max",
}  # and the learnt quantization ranges  # every training here compiles the same step (the peak lr is a constant)


def tiny_config(root, *overrides):
  config = load_config_file(os.path.join(REPO, "configs", "qdlora_tiny.py"))
  return apply_overrides(config, [f"data.root={root}", *overrides])


def shared_quantized(tmp_path_factory):
  """(config, quantized tiny model, its QDIR): quantized once per test run, then loaded."""
  base = tmp_path_factory.getbasetemp()
  faces, qdir = base / "qdlora_faces", base / "qdlora_qdir"
  if not faces.is_dir():
    faces.mkdir()
    synthetic_faces(faces)
  config = tiny_config(faces)
  return config, distill.prepare_quantized(checkpoint.load("tiny"), config, str(qdir)), qdir


def stage_for(config, quantized, batches):
  student = qdlora.to_qdlora(
    quantized,
    rank=config.qdlora.rank,
    lora_rank=config.qdlora.lora_rank,
    sigma=config.qdlora.sigma,
    seed=config.qdlora.seed,
    learn_scales=config.qdlora.learn_scales,
  )
  return distill.distill_stage(student, checkpoint.load("tiny"), config, batches, [])


def stream(config):
  train = fp_stages.train_dataset(config)
  return fp_stages.batch_stream(train, ("lq", "hq"), config.train.batch_size, seed=0, workers=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  return shared_quantized(tmp_path_factory)


def test_loss_falls_only_branches_train_and_resume_is_bit_exact(setup, tmp_path):
  config, quantized, _ = setup
  config = apply_overrides(config.copy_and_resolve_references(), ["train.steps=6", *TRAIN])
  batch = next(stream(config)(0))

  def fixed(start):  # one batch over and over: its loss must fall
    del start
    while True:
      yield batch

  stage = stage_for(config, quantized, fixed)
  before = flat(stage.module, ...)
  full = distill.fit(stage, distill.trainer_config(config), str(tmp_path / "full"))
  after = flat(full.module, ...)
  losses = [r["loss"] for r in read_metrics(str(tmp_path / "full"), distill.STAGE)]
  assert losses[-1] < 0.95 * losses[0], losses  # 6 steps, the first at lr 0 (warmup)
  trained = {k for k, _ in nnx.to_flat_state(nnx.state(stage.module, stage.trainable))}
  kinds = {k[-1] for k in trained}
  assert all(k[0] == "student" for k in trained)
  assert BRANCHES <= kinds <= BRANCHES | SCALES and kinds & SCALES, kinds  # LSQ: scales train too
  changed = {key for key in before if not np.array_equal(before[key], after[key])}
  assert changed <= trained, changed - trained  # nothing else moves
  # Every branch moves (lora_down too: its gradient is 0 only while lora_up is, at step 1); a range
  # moves where its layer has a gradient for it (a W8A8 layer whose activations never clip may not).
  assert {k for k in trained if k[-1] in BRANCHES} <= changed
  assert any(k[-1] in SCALES for k in changed)

  with pytest.raises(Interrupted):
    distill.fit(
      stage_for(config, quantized, interrupted_at(fixed, 3)),
      distill.trainer_config(config),
      str(tmp_path / "cut"),
    )
  resumed = distill.fit(
    stage_for(config, quantized, fixed), distill.trainer_config(config), str(tmp_path / "cut")
  )
  assert resumed.steps_run == 4  # restored at step 2 (checkpoint_every=2)
  for key, value in flat(resumed.module, ...).items():
    np.testing.assert_array_equal(value, after[key], err_msg=str(key))


def test_train_qdlora_writes_a_loadable_merged_qdir(setup, tmp_path):
  config, _, qdir = setup
  config = apply_overrides(config.copy_and_resolve_references(), ["train.steps=1", *TRAIN])
  workdir = tmp_path / "work"
  workdir.mkdir()
  os.symlink(qdir, workdir / "quantized")  # the shared PTQ model
  merged, result = distill.train_qdlora(config, str(workdir))
  assert result.steps_run == 1 and "val_psnr" in result.val_metrics
  assert not any(isinstance(m, qdlora.QDLORA_LAYERS) for _, m in nnx.iter_modules(merged))
  loaded = load_quantized(workdir / "model")
  # A QDIR stores quantized weights as codes and scales: the codes come back identical, the scales
  # within an ulp (see tests/serve/test_qdir_codes.py), and every other state leaf exactly.
  before, after = quant_layers(merged), quant_layers(loaded)
  assert before.keys() == after.keys()
  for path, layer in before.items():
    (codes, scale), (codes_back, scale_back) = weight_codes(layer), weight_codes(after[path])
    np.testing.assert_array_equal(codes_back, codes, err_msg=path)
    np.testing.assert_array_max_ulp(scale_back, scale, maxulp=1)
  a, b = flat(merged, ...), flat(loaded, ...)
  assert a.keys() == b.keys()
  stored_as_codes = {f"{path}.{leaf}" for path in before for leaf in ("kernel", "w_clip")}
  for key in a:
    if ".".join(map(str, key)) not in stored_as_codes:
      np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
