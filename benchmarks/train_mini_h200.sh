#!/usr/bin/env bash
# Trains the mini OSDFace (configs/mini.py: vae, vre, unet in < 8 min, then joint in 7) on one H200, over
# two calls when all four stages run (the second resumes from the first's checkpoints.tar); writes to $OUT:
# model.safetensors + config.json (fp16, -> quantface_jax/assets/mini/), metrics.jsonl, checkpoints.tar,
# val_grid.png, summary.json, train.log.
#
# Needs (carried, git-ignored) the packed faces, made once from the repo root with:
#   python -c "from quantface_jax.data import pack_faces; pack_faces('../shared/data/celebahq512', '.facepack/celebahq128', 128, workers=16)"
# To resume an interrupted run, carry its checkpoints.tar as runs/mini/checkpoints.tar.
# Run from the repo root:  bash benchmarks/train_mini_h200.sh   (carry: .facepack [, runs])
OUT=${OUT:-out/train_mini}
mkdir -p "$OUT"
source "$(dirname "$0")/h200_env.sh"  # the carried wheels (ml_collections), $OUT/gpu.txt
set -e
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
# Per-stage time budgets (compile included) cap the schedules; steps are maxima.
python3 benchmarks/train_mini.py --out "$OUT" --resume runs/mini/checkpoints.tar \
  data.root=.facepack/celebahq128 compute_dtype=bfloat16 stage_export_dtype=float16 \
  data.workers=12 data.lq_epochs=8 train.progress=false train.log_every=100 \
  stage.vae.steps=20000 stage.vae.time_budget_s=125 \
  stage.vre.steps=10000 stage.vre.time_budget_s=60 \
  stage.unet.steps=40000 stage.unet.time_budget_s=265 \
  stage.joint.steps=40000 stage.joint.time_budget_s=420 \
  "$@" 2>&1 | tee "$OUT/train.log"
