"""Export round trip and strictness; the config override parser; losses."""

import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy

from quantface_jax.checkpoint import flat_params, load_safetensors, save_safetensors
from quantface_jax.models.osdface import build
from quantface_jax.train import apply_overrides, losses


def test_export_round_trip_fp16(tmp_path):
  model = build("tiny", seed=3)
  path = save_safetensors(model, str(tmp_path / "m"))
  assert os.path.exists(tmp_path / "m" / "config.json")
  loaded = load_safetensors(str(tmp_path / "m"))
  assert loaded.config == model.config
  for key, value in flat_params(model).items():
    expected = np.asarray(value).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(flat_params(loaded)[key]), expected, err_msg=key)
  assert load_safetensors(path).config == model.config  # a .safetensors path works too


@pytest.mark.parametrize(
  "edit,message",
  [
    (lambda t: t.pop("unet.conv_in.kernel"), "missing keys: ['unet.conv_in.kernel']"),
    (
      lambda t: t.__setitem__("unet.extra.kernel", np.zeros(2, np.float16)),
      "unexpected keys: ['unet.extra.kernel']",
    ),
    (
      lambda t: t.__setitem__("vae.quant_conv.bias", np.zeros(3, np.float16)),
      "mis-shaped keys: ['vae.quant_conv.bias",
    ),
  ],
)
def test_export_strict_errors(tmp_path, edit, message):
  path = save_safetensors(build("tiny"), str(tmp_path))
  tensors = safetensors.numpy.load_file(path)
  edit(tensors)
  safetensors.numpy.save_file(tensors, path)
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(".", r"\.")):
    load_safetensors(str(tmp_path))


def _config():
  return ml_collections.ConfigDict(
    dict(
      seed=0,
      lr=1e-3,
      name="a",
      flag=False,
      shape=(1, 2),
      opt=None,
      stage=dict(unet=dict(steps=10)),
      quant=dict(overrides=dict(alpha=0.5)),
    )
  )


def test_overrides_coerce_to_existing_types():
  c = apply_overrides(
    _config(),
    [
      "seed=3",
      "--config.lr=2e-4",
      "name=b",
      "flag=true",
      "shape=(3, 4, 5)",
      "opt=[1, 2]",
      "stage.unet.steps=100",
    ],
  )
  assert (c.seed, c.lr, c.name, c.flag, c.shape, c.opt, c.stage.unet.steps) == (
    3,
    2e-4,
    "b",
    True,
    (3, 4, 5),
    [1, 2],
    100,
  )
  assert isinstance(c.lr, float) and isinstance(c.stage.unet.steps, int)


@pytest.mark.parametrize(
  "override,key",
  [
    ("stage.vae.steps=1", "stage.vae"),
    ("stage.unet.stepz=1", "stage.unet.stepz"),
    ("nope=1", "nope"),
  ],
)
def test_overrides_unknown_key_names_it(override, key):
  with pytest.raises(KeyError, match=key):
    apply_overrides(_config(), [override])


def test_overrides_free_form_section_takes_new_keys():
  c = apply_overrides(
    _config(),
    ["quant.overrides.low_rank=0", "quant.overrides.a_mode=dynamic", "quant.overrides.alpha=0.7"],
  )
  assert dict(c.quant.overrides) == dict(alpha=0.7, low_rank=0, a_mode="dynamic")
  with pytest.raises(KeyError, match="quant.low_rank"):  # the section above it stays closed
    apply_overrides(_config(), ["quant.low_rank=0"])


def test_overrides_bad_values():
  with pytest.raises(ValueError):
    apply_overrides(_config(), ["seed=x"])
  with pytest.raises(ValueError):
    apply_overrides(_config(), ["flag=maybe"])


def test_losses():
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.uniform(size=(2, 16, 16, 3)), jnp.float32)
  assert float(losses.sobel_l1(a, a)) == 0.0
  assert float(losses.sobel_l1(a + 0.3, a)) < 1e-6  # edges ignore a constant shift
  assert float(losses.sobel_l1(jnp.zeros_like(a), a)) > 0.0
  np.testing.assert_allclose(np.asarray(losses.psnr(a, a + 0.1)), [20.0, 20.0], rtol=1e-4)
  assert float(losses.weighted_sum({"l1": 2.0, "kl": 5.0}, {"l1": 0.5, "kl": 0.0})) == 1.0
  with pytest.raises(KeyError, match="sobel"):
    losses.weighted_sum({"sobel": 1.0}, {})
  from quantface_jax.models.osdface import build

  enc = build("tiny").vre.encoder
  assert float(losses.feature_loss(enc, a[:, :32, :32] * 2 - 1, a * 2 - 1)) == 0.0
  assert float(losses.feature_loss(enc, -a * 2 + 1, a * 2 - 1)) > 0.0
