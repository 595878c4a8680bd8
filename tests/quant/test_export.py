"""Tests of the QDIR format and of `quantface quantize` / `restore --quant` on `tiny`."""

import json

import numpy as np
import pytest
import safetensors.numpy
from PIL import Image

from quantface_jax import cli
from quantface_jax.inference import make_restore_fn
from quantface_jax.quant import calibrate, get_bits, get_recipe, quantize, set_bits
from quantface_jax.quant.export import (
  STATE_FILE,
  load_quantized,
  read_qdir_manifest,
  save_quantized,
)

pytestmark = pytest.mark.slow  # started first: see tests/conftest.py


@pytest.fixture(scope="module")
def quantized(tiny_model):
  images = [np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)]
  recipe = get_recipe("quantface", "W4A4", alpha=0.5)
  stats = calibrate(tiny_model, images, rules=recipe.rules, max_samples=32, progress=False)
  qmodel = quantize(tiny_model, recipe, calibration=stats, images=images)
  set_bits(qmodel, {"unet.conv_out": (6, 5)})
  return qmodel, recipe, images[0]


def test_round_trip_gives_identical_outputs(quantized, tmp_path):
  qmodel, recipe, lq = quantized
  qdir = save_quantized(
    qmodel, recipe, tmp_path / "q", base_ckpt="tiny", calibration_info={"images": 2}
  )
  loaded = load_quantized(qdir)
  assert get_bits(loaded) == get_bits(qmodel)
  np.testing.assert_array_equal(
    np.asarray(make_restore_fn(loaded)(lq)), np.asarray(make_restore_fn(qmodel)(lq))
  )
  manifest = read_qdir_manifest(qdir)
  assert manifest["recipe"]["name"] == "quantface-W4A4" and manifest["base_checkpoint"] == "tiny"
  assert manifest["bits"]["unet.conv_out"] == [6, 5]
  assert 0 < manifest["account"]["param_reduction_vs_fp32"] < 100
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic: no leftovers


def test_load_is_strict(quantized, tmp_path):
  qmodel, recipe, _ = quantized
  qdir = save_quantized(qmodel, recipe, tmp_path / "q", base_ckpt="tiny")
  tensors = safetensors.numpy.load_file(str(qdir / STATE_FILE))
  smooth = "unet.conv_out.smooth"
  cases = {
    "missing keys": lambda t: t.pop(smooth),
    "unexpected keys": lambda t: t.update(extra=np.zeros(1, np.float32)),
    "mis-shaped keys": lambda t: t.update({smooth: np.zeros(3, np.float32)}),
  }
  for problem, edit in cases.items():
    broken = dict(tensors)
    edit(broken)
    safetensors.numpy.save_file(broken, str(qdir / STATE_FILE))
    with pytest.raises(ValueError, match=problem):
      load_quantized(qdir)


def test_cli_quantize_then_restore(tmp_path, capsys):
  from quantface_jax.quant.bits_map import save_bits_map

  calib, out, qdir = tmp_path / "calib", tmp_path / "out", tmp_path / "qdir"
  calib.mkdir()
  rng = np.random.default_rng(0)
  for i in range(4):
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(calib / f"{i}.png")
  bits_json = tmp_path / "bits.json"
  save_bits_map(
    bits_json,
    {"unet.conv_out": (4, 6)},
    dict(mean_width=6, bops=0, perceptual_weight=0, budget=6, budget_kind="mean_width"),
  )
  assert (
    cli.main(
      [
        "quantize",
        "--ckpt",
        "tiny",
        "--recipe",
        "rtn",
        "--bits",
        str(bits_json),
        "--calib",
        str(calib),
        "--calib-count",
        "4",
        "--out",
        str(qdir),
      ]
    )
    == 0
  )
  assert "BOPs" in capsys.readouterr().out
  manifest = json.loads((qdir / "manifest.json").read_text())
  assert manifest["bits"]["unet.conv_out"] == [4, 6]
  assert manifest["bits"]["unet.conv_in"] == [8, 8]
  assert (
    cli.main(["restore", "--quant", str(qdir), "--input", str(calib), "--output", str(out)]) == 0
  )
  assert sorted(p.name for p in out.iterdir()) == [f"{i}.png" for i in range(4)]
