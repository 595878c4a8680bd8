"""The generic state-dict mapping: layouts, round trips, strict accounting, sd21 key coverage."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from reference.models import random_ours, torch_models, unet_diffusers_config, vae_diffusers_config

from quantface_jax.convert import (
  ConversionError,
  load_torch_state_dict,
  nnx_to_torch_state_dict,
  torch_shapes,
)
from quantface_jax.convert.torch_to_nnx import key_mismatch
from quantface_jax.models import SD21, TINY, abstract


def _state(module):
  return {k: v.numpy() for k, v in module.state_dict().items()}


def test_layouts_linear_conv_conv1d():
  ref = torch_models(TINY)
  model = abstract(TINY)
  load_torch_state_dict(model.embedding_change, ref["embedding_change"].state_dict())
  load_torch_state_dict(model.unet, ref["unet"].state_dict())
  conv1d = ref["embedding_change"].conv1.weight.detach().numpy()  # (out, in, 1)
  np.testing.assert_array_equal(model.embedding_change.conv1.kernel[...], conv1d[:, :, 0].T)
  conv = ref["unet"].conv_in.weight.detach().numpy()  # OIHW
  np.testing.assert_array_equal(model.unet.conv_in.kernel[...], conv.transpose(2, 3, 1, 0))
  linear = ref["unet"].time_embedding.linear_1.weight.detach().numpy()
  np.testing.assert_array_equal(model.unet.time_embedding.linear_1.kernel[...], linear.T)


def test_our_weights_load_strictly_into_diffusers_and_back():
  """ours -> torch layout -> diffusers (strict) -> ours again: bit-identical."""
  tiny_model = random_ours(TINY)
  unet = UNet2DConditionModel(**unet_diffusers_config(TINY.unet))
  vae = AutoencoderKL(**vae_diffusers_config(TINY.vae))
  for ours, theirs in ((tiny_model.unet, unet), (tiny_model.vae, vae)):
    theirs.load_state_dict(
      {k: torch.from_numpy(v) for k, v in nnx_to_torch_state_dict(ours).items()}, strict=True
    )
  emb_like = torch_models(TINY)["embedding_change"].state_dict()
  emb = nnx_to_torch_state_dict(tiny_model.embedding_change, like=emb_like)
  assert emb["conv1.weight"].shape == tuple(emb_like["conv1.weight"].shape)  # Conv1d (out, in, 1)
  back = abstract(TINY)
  load_torch_state_dict(back.unet, unet.state_dict())
  load_torch_state_dict(back.vae, vae.state_dict())
  load_torch_state_dict(back.embedding_change, emb)
  for name in ("unet", "vae", "embedding_change"):
    ours, again = (
      nnx_to_torch_state_dict(getattr(tiny_model, name)),
      nnx_to_torch_state_dict(getattr(back, name)),
    )
    for key in ours:
      np.testing.assert_array_equal(again[key], ours[key], err_msg=key)


def _error(model, state, **kw):
  with pytest.raises(ConversionError) as info:
    load_torch_state_dict(model, state, **kw)
  return str(info.value)


def test_missing_key_is_named():
  state = _state(torch_models(TINY)["embedding_change"])
  del state["conv2.bias"]
  msg = _error(abstract(TINY).embedding_change, state)
  assert "1 missing keys" in msg and "conv2.bias" in msg and "(48,)" in msg


def test_unexpected_key_is_named_unless_allowed():
  state = _state(torch_models(TINY)["embedding_change"])
  state["conv3.weight"] = np.zeros((4, 4, 1), np.float32)
  msg = _error(abstract(TINY).embedding_change, state)
  assert (
    "1 unexpected keys" in msg and "conv3.weight (4, 4, 1)" in msg and "allow_unexpected" in msg
  )
  report = load_torch_state_dict(
    abstract(TINY).embedding_change, state, allow_unexpected=r"conv3\..*"
  )
  assert report.skipped == (("conv3.weight", "unexpected, allowed by 'conv3\\\\..*'"),)
  assert report.counts == {"loaded": 4, "skipped": 1, "merged": 0}


def test_misshaped_key_is_named_with_shapes():
  state = _state(torch_models(TINY)["unet"])
  state["conv_in.weight"] = np.zeros((32, 4, 1, 1), np.float32)
  msg = _error(abstract(TINY).unet, state)
  assert (
    "conv_in.weight: expected torch shape (32, 4, 3, 3) (ours (3, 3, 4, 32)), got (32, 4, 1, 1)"
    in msg
  )


def test_many_offenders_are_counted():
  msg = _error(abstract(TINY).unet, {})
  assert "missing keys" in msg and "... and" in msg


def test_sd21_key_coverage_against_diffusers_on_meta_device():
  """Our sd21 UNet/VAE keys and torch shapes equal diffusers', with nothing allocated on either side."""
  model = abstract("sd21")
  with torch.device("meta"):
    unet = UNet2DConditionModel(**{**unet_diffusers_config(SD21.unet), "sample_size": 64})
    vae = AutoencoderKL(**{**vae_diffusers_config(SD21.vae), "sample_size": 512})
  for ours, theirs in ((model.unet, unet), (model.vae, vae)):
    assert next(theirs.parameters()).is_meta
    assert (
      key_mismatch(torch_shapes(ours), {k: tuple(v.shape) for k, v in theirs.state_dict().items()})
      == []
    )
