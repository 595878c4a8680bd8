"""The PTQ start of a QD-LoRA run on the CPU: `workdir/quantized`, which `quantface train` then loads.

    python -m benchmarks.qdlora_prepare configs/qdlora_w4a4.py runs/qd/w4a4 [key=value ...]

The PTQ calibration (α search, range pass) is hundreds of small compilations: minutes on a GPU,
fewer on a few CPU cores, so `python -m benchmarks.gpu qdlora` trains from a start made here.
Overrides as in `quantface train`, e.g. `quant.overrides.low_rank=0` for the ablation's
"balancing only" start.
"""

import os
import sys
import time

from quantface_jax import checkpoint
from quantface_jax.train import apply_overrides
from quantface_jax.train.config_utils import load_config_file
from quantface_jax.train.distill import prepare_quantized


def main(config_file: str, workdir: str, *overrides: str) -> None:
  config = load_config_file(config_file)
  apply_overrides(config, overrides)
  start = time.perf_counter()
  prepare_quantized(checkpoint.load(config.model), config, os.path.join(workdir, "quantized"))
  print(f"{workdir}/quantized in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  if len(sys.argv) < 3:
    raise SystemExit(__doc__.splitlines()[2].strip())
  main(*sys.argv[1:])
