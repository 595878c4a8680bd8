#!/usr/bin/env bash
# Re-measures the quantization tables on the shipped `mini` (run it after a new mini lands), on the
# CPU: PTQ (ptq_mini.py: ~40 min on 2 cores), mixed precision (alloc_mini.py: ~15 min) and QD-LoRA
# (three PTQ starts, the W4A4 and W6A6 trainings and one eval: ~100 min), each writing its
# benchmarks/results/ files. Every step resumes. The work folders are keyed by the mini weights'
# hash, so an earlier model's PTQ starts and checkpoints are never reused.
# Usage, from the repo root: bash benchmarks/remeasure_mini.sh [ptq] [alloc] [qdlora]   (default: all)
# Needs ../shared/data/celebahq512 and the packed faces in .facepack/celebahq128 (see train_mini_h200.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
key=$(sha256sum quantface_jax/assets/mini/model.safetensors | cut -c1-10)
work=runs/remeasure-$key
faces=.facepack/celebahq128
train=(--config.data.root=$faces --config.data.workers=2 --config.data.lq_epochs=0 --config.train.batch_size=8)
echo "mini $key -> $work"
for part in ${*:-ptq alloc qdlora}; do
  case $part in
    ptq) python benchmarks/ptq_mini.py --faces 200 --out "$work/ptq" ;;
    alloc) python benchmarks/alloc_mini.py --recipe quantface --budget 4.0 --faces 200 --work "$work/alloc" ;;
    qdlora)
      python benchmarks/qdlora_prepare.py configs/qdlora_w4a4.py "$work/qd/w4a4" data.root=$faces
      python benchmarks/qdlora_prepare.py configs/qdlora_w4a4.py "$work/qd/w4a4_balance_only" data.root=$faces \
        quant.overrides.low_rank=0
      python benchmarks/qdlora_prepare.py configs/qdlora_w6a6.py "$work/qd/w6a6" data.root=$faces
      quantface train --config configs/qdlora_w4a4.py --workdir "$work/qd/w4a4" "${train[@]}" \
        --config.train.steps=400 --config.train.warmup_steps=20
      quantface train --config configs/qdlora_w6a6.py --workdir "$work/qd/w6a6" "${train[@]}" \
        --config.train.steps=120 --config.train.warmup_steps=10
      quantface eval --hq ../shared/data/celebahq512 --indices 4000:4200 --degrade-seed 0 \
        --quant balancing-W4A4="$work/qd/w4a4_balance_only/quantized" --quant quantface-W4A4="$work/qd/w4a4/quantized" \
        --quant quantface-W4A4-qdlora="$work/qd/w4a4/model" --quant quantface-W6A6="$work/qd/w6a6/quantized" \
        --quant quantface-W6A6-qdlora="$work/qd/w6a6/model" --out "$work/qd/eval"
      python benchmarks/qdlora_table.py "$work/qd/eval" ;;  # needs this model's ptq_mini.json
    *) echo "unknown part $part (ptq, alloc, qdlora)"; exit 2 ;;
  esac
done
