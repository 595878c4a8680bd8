"""Our UNet and VAE against diffusers 0.42 with the same random weights (fp32, rel <= 1e-4)."""

import jax
import numpy as np
import pytest
import torch
from reference.models import numpy_nchw, ours_from_torch, rel_err, torch_models

from quantface_jax.models import TINY

TOL = 1e-4


@pytest.fixture(scope="module")
def models():
  ref = torch_models(TINY)
  return ref, ours_from_torch(TINY, ref)


def test_unet_matches_diffusers(models):
  ref, ours = models
  rng = np.random.default_rng(0)
  z = rng.standard_normal((2, 16, 16, TINY.unet.in_channels)).astype(np.float32)
  context = rng.standard_normal((2, 77, TINY.unet.cross_attention_dim)).astype(np.float32)
  t = np.array([399, 17])
  got = jax.jit(lambda z, t, c: ours.unet(z, t, c))(z, t, context)
  with torch.no_grad():
    want = ref["unet"](
      torch.from_numpy(numpy_nchw(z)),
      torch.from_numpy(t),
      encoder_hidden_states=torch.from_numpy(context),
    ).sample
  assert rel_err(numpy_nchw(got), want) <= TOL


def test_vae_encode_mean_and_decode_match_diffusers(models):
  ref, ours = models
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  z = rng.standard_normal((2, 16, 16, TINY.vae.latent_channels)).astype(np.float32)
  mean = jax.jit(lambda x: ours.vae.encode(x))(x)
  decoded = jax.jit(lambda z: ours.vae.decode(z))(z)
  with torch.no_grad():
    want_mean = ref["vae"].encode(torch.from_numpy(numpy_nchw(x))).latent_dist.mean
    want_decoded = ref["vae"].decode(torch.from_numpy(numpy_nchw(z))).sample
  assert rel_err(numpy_nchw(mean), want_mean) <= TOL
  assert rel_err(numpy_nchw(decoded), want_decoded) <= TOL
