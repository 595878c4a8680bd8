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
# With that cache set, JAX also turns on XLA's per-fusion autotune cache in its
# xla_gpu_per_fusion_autotune_cache_dir/ (jax_persistent_cache_enable_xla_caches): one file per tuned
# fusion or conv, written as it is tuned, so a compile cut off by a call's limit resumes its tuning in
# the next call on the same warm machine (session 8: the sd21 W4 serving compile, cut at 120 s cold,
# took 29 s in the next call). A carried .xla_autotune folder (an earlier $OUT/xla_autotune.tgz,
# unpacked) seeds it on a fresh machine; `save_autotune` (below) returns it.
AUTOTUNE_DIR=$JAX_COMPILATION_CACHE_DIR/xla_gpu_per_fusion_autotune_cache_dir
if [ -d .xla_autotune ]; then mkdir -p "$AUTOTUNE_DIR" && cp -rn .xla_autotune/. "$AUTOTUNE_DIR"/; fi
save_autotune() {  # $OUT/xla_autotune.tgz: the tuning done so far, for a fresh machine
  [ -d "$AUTOTUNE_DIR" ] && tar czf "$OUT/xla_autotune.tgz" -C "$AUTOTUNE_DIR" . \
    && echo "autotune cache: $(ls "$AUTOTUNE_DIR" | wc -l) entries"
}
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
