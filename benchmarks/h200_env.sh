# Sourced by the benchmarks/run_*_h200.sh drivers: shell options, the unpacked wheels (.whl, carried
# to the device), $OUT, and a record of the GPU and the library versions in $OUT/gpu.txt.
set -uo pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# JAX's default cap is 75% of the GPU (106 GiB of the H200); XLA estimates 129 GiB for the sd21 fp32
# passes (calibration forward, sensitivity sweep), which run anyway. 95% leaves the headroom.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
# Compiled programs persist in /tmp for the life of the machine: a part rerun on a warm machine (calls
# chained within its idle window) skips the compiles that finished (the sd21 steps take minutes).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}
# XLA's per-fusion autotune cache (opt in with XLA_AUTOTUNE_CACHE=1; carry .xla_autotune to reuse it):
# meant to let a compile cut off by a call's limit resume its tuning in the next call. Off by default:
# in session 8 (nvidia-h200, jax 0.11.2) the sd21 W4 serving model, which compiles in 29 s and runs
# its benchmark in 52 s without it, had not finished within 120 s (and 200 s with the Pallas conv)
# with it; the mini training run with it (and other changes) also compiled and stepped slower (benchmarks/results/
# h200_session8.json).
if [ "${XLA_AUTOTUNE_CACHE:-0}" = 1 ]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_per_fusion_autotune_cache_dir=$PWD/.xla_autotune"
fi
OUT=${OUT:-benchmarks/results}
# Installed once per machine (a marker names the wheels): drivers started side by side, or chained on
# a warm machine, must not reinstall under each other's imports.
if [ -d .whl ]; then
  wheels=$(cd .whl && ls *.whl)
  if [ "$(cat /tmp/site/.wheels 2>/dev/null)" != "$wheels" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
      && echo "$wheels" > /tmp/site/.wheels
  fi
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
