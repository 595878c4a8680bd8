#!/usr/bin/env bash
# QD-LoRA distillation of mini on the lent H200 (issue #5, DESIGN §2.4), from a PTQ start made on the CPU.
# The PTQ calibration (α search, range pass) is many small compilations: > 5.5 min on the H200, 3.4 min on
# 2 CPU cores, so it runs here first:
#   python benchmarks/qdlora_prepare.py configs/qdlora_w4a4.py runs/qd/w4a4     # -> runs/qd/w4a4/quantized
# and travels (carry: runs/qd/w4a4, a face pack, .whl); the script refuses to start without it. The 64 MiB limit on what travels leaves room for
# one 33 MB QDIR and a 1,700-face pack (faces 0-1499 train, 4000-4199 val):
#   mkdir .facepack/qd1700 && cp .facepack/celebahq128/{0..1499}.jpg .facepack/celebahq128/{4000..4199}.jpg .facepack/qd1700/
# Usage: bash benchmarks/run_qdlora_h200.sh NAME CONFIG BUDGET_S      (e.g. w4a4 configs/qdlora_w4a4.py 240)
# The trained state (the final Orbax checkpoint and metrics.jsonl, without the QDIRs: files back are
# ≤ 16 MiB) comes back as $OUT/NAME.tar.part_*; on the CPU, unpack it into runs/qd/NAME and rerun
# `quantface train` with the same config and workdir: it restores the final step, merges and writes
# the QDIR runs/qd/NAME/model.
name=$1 config=$2 budget=$3 work=runs/qd/$1
if [ ! -f "$work/quantized/manifest.json" ]; then
  echo "no PTQ start at $work/quantized: make it on the CPU with benchmarks/qdlora_prepare.py and carry $work" >&2
  exit 2
fi
source "$(dirname "$0")/h200_env.sh"
timeout $(( budget + 120 )) python3 -m quantface_jax.cli train --config "$config" --workdir "$work" \
  --config.data.root=.facepack/qd1700 --config.data.train_range='(0, 1500)' --config.data.val_start=1500 \
  --config.compute_dtype=bfloat16 --config.data.workers=16 --config.data.lq_epochs=4 \
  --config.train.progress=false --config.train.log_every=50 --config.train.checkpoint_every=1000000 \
  --config.train.steps=20000 --config.train.time_budget_s="$budget" 2>&1 | grep -v cuda_timer | tee "$OUT/$name.log"
tar cf - --exclude=quantized --exclude=model -C runs/qd "$name" | split -b 15m - "$OUT/$name.tar.part_"
ls -la "$OUT"
