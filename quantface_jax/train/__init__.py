"""Training: losses, a data-parallel/FSDP NNX trainer with exact resume, the FP stages of the model
(`fp`) and QD-LoRA distillation (`distill`)."""

from quantface_jax.checkpoint import load_safetensors, save_safetensors
from quantface_jax.train.config_utils import apply_overrides
from quantface_jax.train.fp import initial_model, model_config, train_fp
from quantface_jax.train.mesh import make_mesh, maybe_initialize_distributed
from quantface_jax.train.trainer import FitResult, Stage, TrainState, fit, make_optimizer

__all__ = [
  "FitResult",
  "Stage",
  "TrainState",
  "apply_overrides",
  "fit",
  "initial_model",
  "load_safetensors",
  "make_mesh",
  "make_optimizer",
  "model_config",
  "maybe_initialize_distributed",
  "save_safetensors",
  "train_fp",
]
