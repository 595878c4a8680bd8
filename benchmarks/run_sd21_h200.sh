#!/usr/bin/env bash
# sd21-shape figures of QD-LoRA (issue 5) and the sensitivity sweep (issue 6) on the lent H200, random
# weights, 512² faces; one process per part (clean peak memory), each in what is left of DEADLINE.
# Usage (device tool, carrying the wheels in .whl): bash benchmarks/run_sd21_h200.sh [PART ...]
#   parts: qdlora_b8 (plain step, batch 8)  qdlora_remat_b16 (rematerialized, batch 16)  sweep
#   default: sweep qdlora_b8
# The student is quantized on the host's 16 CPU cores (the GPU compile path took > 5 min) and kept as a
# QDIR in /tmp/sd21_w4a4 that the later parts (and later calls, while the machine stays warm) load.
# Rows go to $OUT/qdlora_sd21.jsonl and $OUT/sweep_sd21.json (rewritten after every sweep chunk, so a
# cut run still gives the rate); logs to $OUT/sd21_<part>.log (the trainer logs the step's trace, lower and
# XLA compile seconds as soon as it has compiled).
source "$(dirname "$0")/h200_env.sh"
parts=${*:-sweep qdlora_b8}
setup=(--setup-device cpu --setup-cache /tmp/sd21_w4a4)
# The QD-LoRA step's XLA compile took > 5 min with the defaults (its trace and lowering take 29 s on the
# host). Most likely the GEMM autotuner: every fake-quantized dot becomes its own Triton GEMM fusion,
# compiled in many tilings. With Triton GEMMs off, cuBLAS takes the dots (QDLORA_XLA_FLAGS= restores them).
qdlora_xla_flags=${QDLORA_XLA_FLAGS---xla_gpu_enable_triton_gemm=false}
deadline=${DEADLINE:-570}  # seconds from the start; a part gets what is left of it (at most PART_TIMEOUT)
for part in $parts; do
  echo "== $part"
  flags=""
  case $part in
    qdlora_b8) cmd=(benchmarks/bench_qdlora.py --preset sd21 --batch 8 --steps 6 "${setup[@]}" --out "$OUT/qdlora_sd21.jsonl")
      flags=$qdlora_xla_flags ;;
    qdlora_remat_b16) cmd=(benchmarks/bench_qdlora.py --preset sd21 --batch 16 --steps 6 --remat "${setup[@]}" --out "$OUT/qdlora_sd21.jsonl")
      flags=$qdlora_xla_flags ;;
    sweep) cmd=(benchmarks/bench_sweep_h200.py --preset sd21 "${setup[@]}" --out "$OUT/sweep_sd21.json") ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
  limit=$(( deadline - SECONDS < ${PART_TIMEOUT:-600} ? deadline - SECONDS : ${PART_TIMEOUT:-600} ))
  if (( limit < 60 )); then echo "skipped: ${limit} s left"; continue; fi
  start=$SECONDS
  XLA_FLAGS="${XLA_FLAGS:-} $flags" timeout $limit python3 "${cmd[@]}" > "$OUT/sd21_$part.log" 2>&1
  echo "rc=$? in $((SECONDS - start)) s (limit $limit s, XLA_FLAGS:${XLA_FLAGS:-} $flags)"
  grep -vE '^\s*$' "$OUT/sd21_$part.log" | grep -vE 'Memory|XLA requested' | tail -n 8 | cut -c1-400
done
