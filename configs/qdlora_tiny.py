"""A seconds-on-CPU version of configs/qdlora_w4a4.py for tests: the random `tiny` teacher at 32 px,
a cheap calibration (fixed α, no row sample, no range pass), ranks 4 and a few steps."""

import os

import ml_collections

from quantface_jax.train.config_utils import load_config_file

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config() -> ml_collections.ConfigDict:
  c = load_config_file(os.path.join(_HERE, "qdlora_w4a4.py"))
  tiny = load_config_file(os.path.join(_HERE, "tiny_fp.py"))
  c.model = "tiny"
  c.model_resolution = 32
  c.data = tiny.data  # set data.root to a folder of faces
  c.quant.overrides = ml_collections.ConfigDict(dict(alpha=0.5))
  c.quant.calibration.update(num_images=4, batch_size=4, max_samples=0, range_pass=False)
  c.qdlora.update(rank=4, lora_rank=4, sigma=0.05)
  c.train.update(
    steps=4,
    batch_size=4,
    lr=1e-3,
    warmup_steps=1,
    log_every=1,
    checkpoint_every=2,
    progress=False,
    prefetch=1,
  )
  return c
