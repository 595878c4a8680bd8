#!/usr/bin/env bash
# FP restore benchmark on the lent H200: our JAX bf16/fp32 against the PyTorch reference (diffusers UNet+VAE
# and the test suite's PyTorch VRE), sd21 shapes, random weights, batch 1 and 16; one process per variant.
# Usage (device tool, carrying the wheels in .whl): bash benchmarks/run_fp_h200.sh [PART ...]
#   parts: jax_bf16 jax_fp32 torch_eager_fp16 torch_eager_fp32 torch_compile_fp16 (default: all)
# Rows go to $OUT/h200_fp.jsonl (one JSON row per variant x batch); logs to $OUT/fp_<part>.log.
source "$(dirname "$0")/h200_env.sh"
parts=${*:-jax_bf16 jax_fp32 torch_eager_fp16 torch_eager_fp32 torch_compile_fp16}
for part in $parts; do
  case $part in
    jax_bf16) args="--impl jax --dtype bfloat16 --components ${COMPONENTS-16}" ;;
    jax_fp32) args="--impl jax --dtype float32" ;;
    torch_eager_fp16) args="--impl torch --mode eager_fp16 --components 16" ;;
    torch_eager_fp32) args="--impl torch --mode eager_fp32" ;;
    torch_compile_fp16) args="--impl torch --mode compile_fp16" ;;
    *) echo "unknown part $part"; continue ;;
  esac
  echo "== $part"
  timeout ${PART_TIMEOUT:-420} python3 benchmarks/bench_fp.py $args --batches 1,16 --out "$OUT/h200_fp.jsonl" 2>&1 | tee "$OUT/fp_$part.log" | grep -E '^\{|Error|error' | cut -c1-400
done
