#!/usr/bin/env bash
# sd21-shape figures of QD-LoRA (issue 5) and the sensitivity sweep (issue 6) on the lent H200, random
# weights, 512² faces; one process per part (clean peak memory), each under a timeout.
# Usage (device tool, carrying the wheels in .whl): bash benchmarks/run_sd21_h200.sh [PART ...]
#   parts: qdlora_b8 (plain step, batch 8)  qdlora_remat_b16 (rematerialized, batch 16)  sweep
#   default: sweep qdlora_b8
# The student is quantized on the host's 16 CPU cores (the GPU compile path took > 5 min) and kept as a
# QDIR in /tmp/sd21_w4a4 that the later parts (and later calls, while the machine stays warm) load.
# Rows go to $OUT/qdlora_sd21.jsonl and $OUT/sweep_sd21.json (rewritten after every sweep chunk, so a
# cut run still gives the rate); logs to $OUT/sd21_<part>.log.
source "$(dirname "$0")/h200_env.sh"
parts=${*:-sweep qdlora_b8}
setup=(--setup-device cpu --setup-cache /tmp/sd21_w4a4)
for part in $parts; do
  echo "== $part"
  case $part in
    qdlora_b8) cmd=(benchmarks/bench_qdlora.py --preset sd21 --batch 8 --steps 6 "${setup[@]}" --out "$OUT/qdlora_sd21.jsonl") ;;
    qdlora_remat_b16) cmd=(benchmarks/bench_qdlora.py --preset sd21 --batch 16 --steps 6 --remat "${setup[@]}" --out "$OUT/qdlora_sd21.jsonl") ;;
    sweep) cmd=(benchmarks/bench_sweep_h200.py --preset sd21 "${setup[@]}" --out "$OUT/sweep_sd21.json") ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
  start=$SECONDS
  timeout ${PART_TIMEOUT:-300} python3 "${cmd[@]}" > "$OUT/sd21_$part.log" 2>&1
  echo "rc=$? in $((SECONDS - start)) s"
  grep -vE '^\s*$' "$OUT/sd21_$part.log" | tail -n 8 | cut -c1-300
done
