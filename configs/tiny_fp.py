"""A seconds-on-CPU version of configs/mini.py for tests: the `tiny` preset at 32 px."""

import os

import ml_collections

from quantface_jax.train.config_utils import load_config_file


def get_config() -> ml_collections.ConfigDict:
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mini.py"))
  c.model = "tiny"
  c.model_resolution = 32
  c.data.train_range = (0, 16)
  c.data.val_start = 16
  c.data.num_val = 4
  c.data.val_batch_size = 4
  c.data.lq_epochs = 0
  c.data.workers = 2
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.train.progress = False
  c.train.prefetch = 1
  c.stage.vae.update(steps=4, batch_size=4, warmup_steps=1)
  c.stage.vre.update(steps=4, batch_size=4, warmup_steps=1, decoder_widths=(16, 16))
  c.stage.unet.update(steps=4, batch_size=4, warmup_steps=1)
  c.stage.joint.update(steps=2, batch_size=4, warmup_steps=1)
  return c
