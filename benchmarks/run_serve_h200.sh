#!/usr/bin/env bash
# Integer serving benchmark on the lent H200: SERVE_DIRs (rtn, static activation ranges from one random
# face) W4A8 / W4A4 / W8A8 against our bf16 and the PyTorch fp16 reference, sd21 shapes, random weights,
# batch 1 and 16; one process per part (clean peak memory), each under a timeout.
# Usage (device tool, carrying the wheels in .whl): bash benchmarks/run_serve_h200.sh [PART ...]
#   parts: export W4 W8A8 bf16 torch_eager_fp16 torch_compile_fp16
#   default: export W4 W8A8 bf16 torch_eager_fp16. Measured in session 10 (batch 16, BENCH_ARGS=
#   "--batches 16"): export ~100 s (quantizes on the host's CPU), W4 with its compile 215 s cold, 38 s
#   with a carried .xla_autotune, W8A8 + bf16 ~150 s, torch_eager_fp16 (batches 1 and 16) ~100 s,
#   torch_compile_fp16 ~130 s per batch size: more than one 10-minute call, so chain calls on the warm
#   machine (the SERVE_DIRs stay in /tmp).
# Rows go to $OUT/h200_quantized.json (a JSON list); logs to $OUT/serve_<part>.log.
source "$(dirname "$0")/h200_env.sh"
parts=${*:-export W4 W8A8 bf16 torch_eager_fp16}
for part in $parts; do
  echo "== $part"
  timeout ${PART_TIMEOUT:-300} python3 benchmarks/bench_serve.py --parts "$part" --batches 1,16 \
    --out "$OUT/h200_quantized.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/serve_$part.log" | grep -E '^\{|MiB|Error|error' | cut -c1-400
done
