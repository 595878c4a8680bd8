"""The shipped `mini` meets its bar on the README's validation faces: it beats the LQ input
by at least 2 dB PSNR and has a lower NIQE (faces 4000-4199, degradation seed 0, as `quantface eval`)."""

import pytest


@pytest.mark.slow
def test_mini_beats_input_by_2db_with_lower_niqe(faces_dir, tmp_path):
  from quantface_jax.checkpoint import load
  from quantface_jax.evaluate import evaluate, synthetic_set
  from quantface_jax.inference import make_restore_fn

  model = load("mini")
  resolution = model.config.resolution
  eval_set = synthetic_set(
    faces_dir, tmp_path, resolution=resolution, indices=range(4000, 4200), seed=0
  )
  rows = {
    r["variant"]: r
    for r in evaluate(
      {"mini": make_restore_fn(model)}, eval_set, tmp_path, resolution=resolution, batch_size=25
    )
  }
  assert rows["mini"]["n"] == 200
  assert rows["mini"]["psnr"] >= rows["input"]["psnr"] + 2.0, rows
  assert rows["mini"]["niqe"] < rows["input"]["niqe"], rows
