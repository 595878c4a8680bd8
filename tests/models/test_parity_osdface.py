"""`OSDFace.restore` against the PyTorch one-step pipeline (diffusers UNet/VAE + reference VRE)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from reference import osdface as reference
from reference.models import numpy_nchw, ours_from_torch, rel_err, torch_models

from quantface_jax.models import TINY


@pytest.fixture(scope="module")
def restored():
  ref = torch_models(TINY)
  ours = ours_from_torch(TINY, ref)
  lq = (
    np.random.default_rng(0)
    .uniform(-1, 1, (2, TINY.resolution, TINY.resolution, 3))
    .astype(np.float32)
  )
  want_image, want_tokens = reference.restore(
    TINY,
    ref["vre"],
    ref["embedding_change"],
    ref["vae"],
    ref["unet"],
    torch.from_numpy(numpy_nchw(lq)),
  )
  run = jax.jit(lambda x, dtype: (ours.restore(x, dtype=dtype), ours.vre(x)), static_argnums=1)
  return dict(
    want_image=want_image.numpy(),
    want_tokens=want_tokens.numpy(),
    fp32=run(lq, jnp.float32),
    bf16=run(lq, jnp.bfloat16),
  )


def test_restore_matches_torch_pipeline(restored):
  out, tokens = restored["fp32"]
  np.testing.assert_array_equal(np.asarray(tokens), restored["want_tokens"])
  assert rel_err(numpy_nchw(out.image), restored["want_image"]) <= 1e-4


def test_bf16_restore_close_to_fp32(restored):
  (fp32, _), (bf16, _) = restored["fp32"], restored["bf16"]
  assert bf16.eps.dtype == jnp.bfloat16
  assert rel_err(bf16.image, fp32.image) <= 3e-2
