"""The OSDFace release layout end to end: fake release files -> convert_release -> save_model -> load."""

import dataclasses
import json
import logging
import pathlib

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from reference import osdface as reference
from reference.models import lora_unet, numpy_nchw, rel_err, torch_models, write_release
from safetensors.torch import save_file

from quantface_jax import checkpoint
from quantface_jax.convert import (
  ConversionError,
  convert_release,
  merge_lora,
  read_lightning_state_dict,
)
from quantface_jax.convert.release import _modernize_vae_keys, _module_alpha, lora_alpha_config
from quantface_jax.convert.torch_to_nnx import load_torch_state_dict
from quantface_jax.models import TINY, abstract

LORA_TARGETS = (
  "to_q",
  "to_k",
  "to_v",
  "to_out.0",
  "proj_in",
  "proj_out",
  "ff.net.2",
  "time_emb_proj",
  "conv1",
  "conv2",
  "conv_shortcut",
)
LORA_METADATA = {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 8})}
CONVERT = dict(resolution=TINY.resolution, vre_norm_groups=TINY.vre.norm_num_groups)


@pytest.fixture(scope="module")
def release():
  """The torch models, the UNet with its active LoRA (rank 4, alpha 8), the LoRA file contents."""
  models = torch_models(TINY)
  unet_with_lora, lora = lora_unet(models["unet"], rank=4, alpha=8, targets=LORA_TARGETS)
  return models, unet_with_lora, lora


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory):
  """convert_release -> save_model -> load of a safetensors release (LoRA alpha from the metadata)."""
  models, _, lora = release
  root = tmp_path_factory.mktemp("release")
  sd, osd = write_release(root, TINY, models, lora, lora_metadata=LORA_METADATA)
  model, report = convert_release(sd, osd, **CONVERT)
  saved = checkpoint.save_model(model, root / "ckpt", report=report)
  return root, report, checkpoint.load(saved)


def _params(model):
  return {
    ".".join(map(str, p)): np.asarray(v.get_value())
    for p, v in nnx.iter_graph(model)
    if isinstance(v, nnx.Param)
  }


def test_lora_merge_matches_peft_adapter(release):
  models, unet_with_lora, lora = release
  base = {k: v.numpy() for k, v in models["unet"].state_dict().items()}
  merged, report = merge_lora(
    base,
    {k: v.numpy() for k, v in lora.items()},
    {"lora_alpha": 8.0, "alpha_pattern": {}, "use_rslora": False},
  )
  assert len(report.merged) == len(lora) // 2 and any(base[k].ndim == 4 for k in report.merged)
  ours = abstract(TINY).unet
  load_torch_state_dict(ours, merged)
  rng = np.random.default_rng(0)
  z = rng.standard_normal((1, 16, 16, 4)).astype(np.float32)
  context = rng.standard_normal((1, 77, TINY.unet.cross_attention_dim)).astype(np.float32)
  args = (torch.from_numpy(numpy_nchw(z)), torch.tensor([399]))
  with torch.no_grad():
    want = unet_with_lora(*args, encoder_hidden_states=torch.from_numpy(context)).sample
    without = models["unet"](*args, encoder_hidden_states=torch.from_numpy(context)).sample
  assert rel_err(without, want) > 1e-2  # the LoRA matters
  assert rel_err(numpy_nchw(jax.jit(lambda z, c: ours(z, 399, c))(z, context)), want) <= 1e-4


def test_lora_alpha_sources(tmp_path):
  path = tmp_path / "pytorch_lora_weights.safetensors"
  save_file({"unet.a.lora_A.weight": torch.zeros(2, 4)}, str(path))
  assert lora_alpha_config(path, None)["lora_alpha"] == 16.0  # OSDFace's default
  assert lora_alpha_config(path, 4)["lora_alpha"] == 4.0
  (tmp_path / "adapter_config.json").write_text(
    json.dumps({"lora_alpha": 8, "alpha_pattern": {"to_q": 2}})
  )
  options = lora_alpha_config(path, None)
  assert options == {"lora_alpha": 8.0, "alpha_pattern": {"to_q": 2}, "use_rslora": False}
  assert _module_alpha("mid_block.attn1.to_q", options) == 2.0
  assert _module_alpha("mid_block.attn1.to_k", options) == 8.0


def test_lora_orphans_are_named():
  weights = {"conv_in.weight": np.zeros((8, 4, 3, 3), np.float32)}
  lora = {
    "unet.conv_in.lora_A.weight": np.zeros((2, 4, 3, 3), np.float32),
    "unet.nowhere.lora_A.weight": np.zeros((2, 4), np.float32),
    "unet.nowhere.lora_B.weight": np.zeros((4, 2), np.float32),
    "text_encoder.q.lora_A.weight": np.zeros((2, 4), np.float32),
  }
  with pytest.raises(ConversionError) as info:
    merge_lora(weights, lora, {"lora_alpha": 16.0, "alpha_pattern": {}, "use_rslora": False})
  msg = str(info.value)
  assert (
    "unet.conv_in: lora_B missing" in msg and "unet.nowhere: no UNet weight nowhere.weight" in msg
  )
  assert "text_encoder.q.lora_A.weight" in msg


def test_release_converts_saves_and_loads_like_torch(release, converted):
  models, unet_with_lora, _ = release
  root, report, model = converted
  assert dataclasses.replace(model.config, name="tiny") == TINY
  skipped = dict(report.skipped)
  assert any(k.startswith("associate_2.ckpt:vqvae_HQ.") for k in skipped)
  assert "associate_2.ckpt:vqvae_LQ.decoder.conv_in.weight" in skipped
  assert "associate_2.ckpt:vqvae_LQ.post_quant_conv.weight" in skipped
  assert "associate_2.ckpt:vqvae_LQ.quantize.embedding.weight" in report.loaded
  # OSDFace's attention blocks: norm1 is loaded, norm2 (never read in self-attention) is reported.
  assert "associate_2.ckpt:vqvae_LQ.encoder.mid.attn_1.norm1.weight" in report.loaded
  norm2 = [k for k in skipped if ".attn" in k and ".norm2." in k and "vqvae_LQ.encoder" in k]
  assert len(norm2) == 2 * (1 + TINY.vre.num_res_blocks * len(TINY.vre.attn_resolutions))
  assert all("self-attention uses norm1" in skipped[k] for k in norm2)
  assert report.counts["loaded"] == len(_params(model)) + report.counts["merged"] * 2
  assert (
    json.loads((root / "ckpt" / "conversion_report.json").read_text())["counts"] == report.counts
  )
  assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # no temp dir left

  lq = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  want, want_tokens = reference.restore(
    TINY,
    models["vre"],
    models["embedding_change"],
    models["vae"],
    unet_with_lora,
    torch.from_numpy(numpy_nchw(lq)),
  )
  image, tokens = jax.jit(lambda x: (model.restore(x).image, model.vre(x)))(lq)
  np.testing.assert_array_equal(np.asarray(tokens), want_tokens.numpy())
  assert rel_err(numpy_nchw(image), want) <= 1e-4
  levels = lambda x: np.round(np.clip(np.asarray(x, np.float64), 0, 1) * 255)
  assert np.abs(levels(numpy_nchw(image)) - levels(want)).max() <= 1  # within 8-bit rounding


def test_bin_release_with_lora_alpha_argument(release, converted, tmp_path):
  models, _, lora = release
  sd, osd = write_release(tmp_path, TINY, models, lora, weights="bin")
  assert (sd / "unet" / "diffusion_pytorch_model.bin").is_file()
  model, _ = convert_release(sd, osd, lora_alpha=8, **CONVERT)
  want = _params(converted[2])
  for key, value in _params(model).items():
    np.testing.assert_array_equal(value, want[key], err_msg=key)


def test_lora_alpha_argument_must_agree_with_metadata(release, tmp_path):
  models, _, lora = release
  sd, osd = write_release(tmp_path, TINY, models, lora, lora_metadata=LORA_METADATA)
  with pytest.raises(ConversionError, match="lora_alpha=16 given but the file says 8"):
    convert_release(sd, osd, lora_alpha=16, **CONVERT)


def _rewrite_vre_ckpt(osd, edit):
  ckpt = torch.load(osd / "associate_2.ckpt", weights_only=False)
  edit(ckpt["state_dict"])
  torch.save(ckpt, osd / "associate_2.ckpt")


def test_release_key_errors_name_the_key(release, tmp_path):
  models, _, lora = release
  sd, osd = write_release(tmp_path, TINY, models, lora, lora_metadata=LORA_METADATA)
  _rewrite_vre_ckpt(osd, lambda s: s.update({"vqvae_LQ.encoder.extra.weight": torch.zeros(3)}))
  with pytest.raises(ConversionError, match=r"vqvae_LQ\.encoder\.extra\.weight \(3,\)"):
    convert_release(sd, osd, **CONVERT)
  _, report = convert_release(sd, osd, allow_unexpected=r"vqvae_LQ\.encoder\.extra\..*", **CONVERT)
  assert "associate_2.ckpt:vqvae_LQ.encoder.extra.weight" in dict(report.skipped)

  _rewrite_vre_ckpt(osd, lambda s: s.pop("vqvae_LQ.encoder.mid.attn_1.q.bias"))
  with pytest.raises(
    ConversionError, match=r"missing keys:\n  vqvae_LQ\.encoder\.mid\.attn_1\.q\.bias"
  ):
    convert_release(sd, osd, allow_unexpected=r"vqvae_LQ\.encoder\.extra\..*", **CONVERT)

  emb = torch.load(osd / "embedding_change_weights.pth", weights_only=True)
  emb["conv2.bias"] = torch.zeros(7)
  torch.save(emb, osd / "embedding_change_weights.pth")
  _rewrite_vre_ckpt(
    osd, lambda s: s.update({"vqvae_LQ.encoder.mid.attn_1.q.bias": torch.zeros(32)})
  )
  with pytest.raises(
    ConversionError, match=r"conv2\.bias: expected torch shape \(48,\) \(ours \(48,\)\), got \(7,\)"
  ):
    convert_release(sd, osd, allow_unexpected=r"vqvae_LQ\.encoder\.extra\..*", **CONVERT)


def _payload(path):
  pathlib.Path(path).write_text("executed")


class Malicious:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return _payload, (self.path,)


@pytest.mark.parametrize("zip_format", [True, False])
def test_lightning_reader_executes_no_pickled_code(tmp_path, zip_format):
  flag = tmp_path / "flag"
  ckpt = tmp_path / "associate_2.ckpt"
  torch.save(
    {
      "state_dict": {"vqvae_LQ.quantize.embedding.weight": torch.ones(4, 2)},
      "hyper_parameters": Malicious(str(flag)),
      "optimizer_states": [{"step": torch.zeros(())}],
    },
    ckpt,
    _use_new_zipfile_serialization=zip_format,
  )
  state = read_lightning_state_dict(ckpt)
  assert not flag.exists()
  assert list(state) == ["vqvae_LQ.quantize.embedding.weight"] and state[list(state)[0]].shape == (
    4,
    2,
  )
  torch.load(ckpt, weights_only=False)  # the payload is live: an unrestricted load runs it
  assert flag.read_text() == "executed"


def test_save_model_refuses_to_overwrite_unless_asked(converted):
  root, _, model = converted
  with pytest.raises(FileExistsError):
    checkpoint.save_model(model, root / "ckpt")
  assert checkpoint.save_model(model, root / "ckpt", overwrite=True) == root / "ckpt"
  checkpoint.save_model(model, root / "ckpt16", dtype=jax.numpy.float16)
  params, restored = _params(model), _params(checkpoint.load(root / "ckpt16"))
  for key, value in restored.items():
    assert value.dtype == np.float32
    np.testing.assert_array_equal(
      value, params[key].astype(np.float16).astype(np.float32), err_msg=key
    )


def test_load_presets(monkeypatch, caplog):
  monkeypatch.setattr(checkpoint, "build", lambda name: f"random {name}")
  with caplog.at_level(logging.WARNING):
    assert checkpoint.load("tiny") == "random tiny"
  assert "RANDOM weights" in caplog.text
  if not (checkpoint.MINI_DIR / "config.json").is_file():
    with pytest.raises(FileNotFoundError, match="'mini' weights are not installed"):
      checkpoint.load("mini")
  with pytest.raises(FileNotFoundError, match="neither a model directory"):
    checkpoint.load("no-such-model")


def test_legacy_vae_attention_names_are_read():
  state = torch_models(TINY)["vae"].state_dict()
  legacy = {
    k.replace(".to_q.", ".query.")
    .replace(".to_k.", ".key.")
    .replace(".to_v.", ".value.")
    .replace(".to_out.0.", ".proj_attn."): v
    for k, v in state.items()
  }
  assert "encoder.mid_block.attentions.0.proj_attn.weight" in legacy
  load_torch_state_dict(abstract(TINY).vae, _modernize_vae_keys(legacy))


def test_convert_command_prints_a_short_summary(release, tmp_path, monkeypatch, capsys):
  import functools

  from quantface_jax import cli, convert

  models, _, lora = release
  sd, osd = write_release(tmp_path, TINY, models, lora, lora_metadata=LORA_METADATA)
  # The command converts at the release's 512 px; the tiny release needs its own size and groups.
  monkeypatch.setattr(convert, "convert_release", functools.partial(convert_release, **CONVERT))
  out = tmp_path / "ckpt"
  assert cli.main(["convert", "--sd", str(sd), "--osdface", str(osd), "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  full = json.loads((out / "conversion_report.json").read_text())
  assert len(printed) < 2000 < len(json.dumps(full))
  lines = printed.splitlines()
  counts = {line.split(":")[0]: line for line in lines if not line.startswith(" ")}
  assert f"{full['counts']['merged']} LoRA-merged" in counts["pytorch_lora_weights.safetensors"]
  norm2 = sum(1 for s in full["skipped"] if s["reason"].startswith("MultiHeadAttnBlock.norm2"))
  assert norm2 == 4  # tiny: one attention block at 16 px and the middle one, weight and bias each
  assert any(
    line.strip().startswith(f"skipped {norm2}: MultiHeadAttnBlock.norm2") for line in lines
  )
  assert lines[-1].startswith(f"wrote {out}")
