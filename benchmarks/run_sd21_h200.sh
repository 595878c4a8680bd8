#!/usr/bin/env bash
# sd21-shape figures of QD-LoRA (issue 5) and the sensitivity sweep (issue 6) on the lent H200, random
# weights, 512² faces; one process per part (clean peak memory), each in what is left of DEADLINE.
# Usage (device tool, carrying the wheels in .whl): bash benchmarks/run_sd21_h200.sh [PART ...]
#   parts: qdlora_bN (plain step, batch N, e.g. qdlora_b8)  qdlora_remat_bN (blocks rematerialized)  sweep
#   default: sweep qdlora_b8; QDLORA_ARGS adds bench_qdlora.py flags (e.g. "--profile-steps 3,4")
#   A QD-LoRA part written PART:setup or PART:compile stops there, leaving the student QDIR (setup) or
#   also the compiled step (compile, in the persistent cache) in /tmp for the next call on the same
#   warm machine: the sd21 step does not fit one 10-minute call cold, so chain
#   `qdlora_b8:setup`, `qdlora_b8:compile`, `qdlora_b8`, one call each. With
#   QDLORA_ARGS="--student structure" (bench_setup.structural_qdlora: the same compiled step, built in
#   seconds without calibration) there is no setup to chain: `qdlora_b4:compile`, then `qdlora_b4`.
# The calibrated student is quantized on the host's 16 CPU cores (the GPU compile path took > 5 min) and
# kept as a QDIR in /tmp/sd21_w4a4 that the later parts (and later calls, while the machine stays warm) load.
# Rows go to $OUT/qdlora_sd21.jsonl and $OUT/sweep_sd21.json (rewritten after every sweep chunk, so a
# cut run still gives the rate); logs to $OUT/sd21_<part>.log (the trainer logs the step's trace, lower and
# XLA compile seconds as soon as it has compiled).
source "$(dirname "$0")/h200_env.sh"
parts=${*:-sweep qdlora_b8}
setup=(--setup-device cpu --setup-cache /tmp/sd21_w4a4)
# The QD-LoRA step's compile is XLA's (trace and lowering: 40 s). Session 5 on the H200: with Triton GEMMs
# off (the default below: cuBLAS takes the fake-quantized dots, fewer fusions to tune) it passed 448 s,
# the autotuner still timing kernels at 356 s. Do not turn autotuning off to save that time: with
# --xla_gpu_autotune_level=0 the step took 272 s, because cuDNN's untuned conv algorithms run sd21's
# convs 200-4700x slower (benchmarks/results/h200_qdlora_layers.json). The autotune cache that JAX keeps
# beside its compilation cache (h200_env.sh) lets the tuning span calls instead; the driver returns it
# as $OUT/xla_autotune.tgz (unpack into .xla_autotune and carry it to seed a fresh machine).
# QDLORA_XLA_FLAGS replaces the default.
qdlora_xla_flags=${QDLORA_XLA_FLAGS---xla_gpu_enable_triton_gemm=false}
deadline=${DEADLINE:-570}  # seconds from the start; a part gets what is left of it (at most PART_TIMEOUT)
for part in $parts; do
  echo "== $part"
  flags=""
  stop=()  # PART:STAGE stops after STAGE (setup | trace | compile): bench_qdlora.py --stop-after
  if [[ $part == *:* ]]; then stop=(--stop-after "${part#*:}"); fi
  case ${part%%:*} in
    qdlora_b[0-9]*|qdlora_remat_b[0-9]*)
      name=${part%%:*}
      remat=(); if [[ $name == qdlora_remat_* ]]; then remat=(--remat); fi
      # shellcheck disable=SC2206  # QDLORA_ARGS is split on purpose (e.g. "--profile-steps 3,4")
      cmd=(benchmarks/bench_qdlora.py --preset sd21 --batch "${name##*_b}" --steps 6 "${remat[@]}" "${setup[@]}"
        "${stop[@]}" ${QDLORA_ARGS:-} --out "$OUT/qdlora_sd21.jsonl")
      flags=$qdlora_xla_flags ;;
    sweep) cmd=(benchmarks/bench_sweep_h200.py --preset sd21 "${setup[@]}" --out "$OUT/sweep_sd21.json") ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
  limit=$(( deadline - SECONDS < ${PART_TIMEOUT:-600} ? deadline - SECONDS : ${PART_TIMEOUT:-600} ))
  if (( limit < 60 )); then echo "skipped: ${limit} s left"; continue; fi
  start=$SECONDS
  log="$OUT/sd21_${part/:/_}.log"
  XLA_FLAGS="${XLA_FLAGS:-} $flags" timeout $limit python3 "${cmd[@]}" > "$log" 2>&1
  echo "rc=$? in $((SECONDS - start)) s (limit $limit s, XLA_FLAGS:${XLA_FLAGS:-} $flags)"
  grep -vE '^\s*$' "$log" | grep -vE 'Memory|XLA requested' | tail -n 8 | cut -c1-400
done
save_autotune  # the autotuning done so far, for a fresh machine (h200_env.sh)
