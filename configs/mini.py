"""Training config of the `mini` OSDFace (128 px, CelebA-HQ 0-3999, val 4000-4499) for one H200.

Usage: `get_config()`; override with `quantface_jax.train.apply_overrides(cfg, ["stage.unet.steps=100"])`.
Sized for all three stages in < 8 min on one H200 (see benchmarks/train_mini_h200.sh).
"""

import os

import ml_collections

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stage(*, steps, batch_size, lr, warmup_steps, weights, **extra):
  """steps: schedule length (the maximum when time_budget_s > 0, which fits the schedule to that
  many seconds, compile included)."""
  return ml_collections.ConfigDict(
    dict(
      steps=steps,
      batch_size=batch_size,
      lr=lr,
      warmup_steps=warmup_steps,
      weights=weights,
      time_budget_s=0.0,
      **extra,
    )
  )


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = "mini"  # preset in quantface_jax.models.configs
  c.model_resolution = 128  # face size the model trains at
  c.seed = 0  # model init, RNG keys, codebook init
  c.compute_dtype = "float32"  # VAE/UNet compute dtype in training ("bfloat16" on GPU)
  c.stage_export_dtype = "float32"  # dtype a finished stage's model is stored (and handed on) in
  c.stages = ("vae", "vre", "unet", "joint")
  c.init_from = ""  # model dir or "mini" the first stage starts from ("" builds a fresh preset)

  c.data = ml_collections.ConfigDict()
  c.data.root = os.path.join(
    _REPO, "..", "shared", "data", "celebahq512"
  )  # or a packed 128-px folder
  c.data.train_range = (0, 4000)  # file numbers [start, stop) in the sorted folder
  c.data.val_start = 4000  # validation faces are val_start, val_start + 1, ...
  c.data.num_val = 200
  c.data.val_batch_size = 50
  c.data.degradation_seed = 0  # LQ of face i in epoch e is a function of (seed, e, i)
  c.data.shuffle_seed = 0
  c.data.hflip = False  # mirror ~half the training faces per epoch (off in the shipped run)
  c.data.lq_epochs = 8  # LQ degradations precomputed per face (recycled); 0: degrade on the fly
  c.data.workers = 12  # loader threads, or processes when degrading on the fly (lq_epochs=0); leaves cores to the step
  c.data.degradation = ml_collections.ConfigDict(
    dict(  # 512-px units; blur scaled to the resolution
      blur_sigma=(0.1, 10.0), downsample=(1.0, 8.0), noise_sigma=(0.0, 20.0), jpeg_quality=(60, 100)
    )
  )

  c.train = ml_collections.ConfigDict()  # shared by every stage, overridable per stage
  c.train.final_lr_fraction = 0.05
  c.train.weight_decay = 0.0
  c.train.b1 = 0.9
  c.train.b2 = 0.99
  c.train.grad_clip = 1.0
  c.train.log_every = 50
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 1
  c.train.eval_every = 0  # 0: validate at the end of a stage only
  c.train.prefetch = 4
  c.train.calibrate_steps = 20  # steps timed (after the compiled first) to fit a time budget
  c.train.reserve_s = (
    15.0  # seconds of a stage's time budget kept for the final validation and save
  )
  c.train.progress = True
  c.train.profile_steps = ()  # (first, last): trace these steps into WORKDIR/<stage>/profile (train.profiling)
  c.train.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))

  c.stage = ml_collections.ConfigDict()
  c.stage.vae = _stage(
    steps=3000,
    batch_size=32,
    lr=4e-4,
    warmup_steps=200,
    weights=dict(l1=1.0, mse=0.0, sobel=0.5, kl=1e-5),
  )
  c.stage.vre = _stage(
    steps=1000,
    batch_size=32,
    lr=4e-4,
    warmup_steps=100,
    weights=dict(l1=1.0, mse=0.0, sobel=0.5, codebook=1.0, commit=0.25, code_pull=0.1),
    decoder_widths=(128, 96, 64, 32),
  )
  c.stage.unet = _stage(
    steps=4000,
    batch_size=32,
    lr=3e-4,
    warmup_steps=200,
    weights=dict(latent=1.0, l1=1.0, mse=0.0, sobel=0.5, feature=0.0),
    feature_kind="l1",
    train_vae_encoder=True,
    train_vae_decoder=False,
  )
  c.stage.joint = _stage(
    steps=4000,
    batch_size=64,
    lr=2e-4,
    warmup_steps=100,
    weights=dict(latent=0.1, l1=1.0, mse=0.0, sobel=0.1, feature=0.0),
    feature_kind="l1",
    train_vae_encoder=True,
    train_vae_decoder=True,
  )
  return c
