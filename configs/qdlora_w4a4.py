"""QD-LoRA distillation of the `mini` OSDFace at W4A4 (recipe `quantface`), for one H200.

Usage: `quantface_jax.train.distill.train_qdlora(get_config(), workdir)`; override with
`quantface_jax.train.apply_overrides(cfg, ["train.steps=100"])`. The data section is configs/mini.py's.

The steps from the FP model to the packed model (`quantface_jax/assets/mini-w4a4`):

    python benchmarks/qdlora_prepare.py configs/qdlora_w4a4.py runs/qd/w4a4   # PTQ start, CPU
    quantface train --config configs/qdlora_w4a4.py --workdir runs/qd/w4a4 \
      --config.compute_dtype=bfloat16 --config.train.time_budget_s=SECONDS
    quantface export runs/qd/w4a4/model --out quantface_jax/assets/mini-w4a4 \
      --half-floats --low-rank-bits 8 --rank-fraction 0.125

The PTQ start is made on a CPU: its calibration is hundreds of small compilations (106-118 s on
16 host cores, three at once). On the GPU the training step's first compilation dominates: 354 s
(XLA 331 s, mostly autotuning) with three runs compiling at once on one H200, after which a step
at batch 32 takes about 0.1 s (benchmarks/results/qdlora_mini_h200.json).
"""

import os

import ml_collections

from quantface_jax.train.config_utils import load_config_file

_HERE = os.path.dirname(os.path.abspath(__file__))


def get_config() -> ml_collections.ConfigDict:
  mini = load_config_file(os.path.join(_HERE, "mini.py"))
  c = ml_collections.ConfigDict()
  c.model = "mini"  # the FP teacher: a preset name or a model directory (checkpoint.load)
  c.model_resolution = 128  # face size the teacher was trained at
  c.seed = 0  # trainer RNG
  c.compute_dtype = "float32"  # VAE/UNet compute dtype ("bfloat16" on GPU)
  c.data = mini.data  # CelebA-HQ 0-3999 train, 4000+ val, the same degradations

  c.quant = ml_collections.ConfigDict()
  c.quant.recipe = "quantface"  # smoothing (α search) + randomized Hadamard + low-rank split
  c.quant.bits = "W4A4"  # body width; first/last layers stay W8A8
  c.quant.seed = 0  # rotation seeds
  c.quant.overrides = (
    ml_collections.ConfigDict()
  )  # LayerQuantConfig fields of the body (free-form: --config.quant.overrides.low_rank=0 adds one)
  c.quant.calibration = ml_collections.ConfigDict(
    dict(num_images=64, batch_size=16, max_samples=256, seed=0, range_pass=True)
  )

  c.qdlora = ml_collections.ConfigDict()
  c.qdlora.rank = 16  # SVD-branch rank per layer
  c.qdlora.lora_rank = 16  # LoRA-branch rank per layer
  c.qdlora.sigma = 0.02  # std of the LoRA down factor (the up factor starts at 0)
  c.qdlora.seed = 0  # LoRA init draws
  c.qdlora.learn_scales = True  # LSQ: weight clip ratios and static activation ranges train too

  c.train = ml_collections.ConfigDict(mini.train.to_dict())  # optimizer/logging/mesh defaults
  c.train.update(
    dict(
      steps=2000,
      batch_size=32,
      lr=1e-4,
      warmup_steps=100,
      time_budget_s=0.0,
      checkpoint_every=500,
      feature_kind="l1",
    )
  )
  c.train.weights = ml_collections.ConfigDict(dict(latent=1.0, l1=1.0, sobel=0.5, feature=0.1))
  c.train.remat = (
    False  # recompute the student's block activations in the backward pass (sd21 at 512²)
  )
  return c
