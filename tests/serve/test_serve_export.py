"""SERVE_DIR: export from a QDIR, strict loading, byte-exact round trip, sizes, CLI, restore parity."""

import json

import jax
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx
from PIL import Image

from quantface_jax import cli
from quantface_jax.inference import make_restore_fn
from quantface_jax.quant import get_bits, quant_layers, set_bits
from quantface_jax.quant.export import save_quantized
from quantface_jax.serve import (
  export,
  load_served,
  packed_account,
  read_serve_manifest,
  save_served,
  serve_model,
)
from quantface_jax.serve.export import WEIGHTS_FILE


@pytest.fixture(scope="module")
def serve_dir(quantized, tmp_path_factory):
  qmodel, recipe = quantized
  qdir = save_quantized(qmodel, recipe, tmp_path_factory.mktemp("q") / "qdir", base_ckpt="tiny")
  return export(qdir, tmp_path_factory.mktemp("s") / "serve")


def test_round_trip_is_bit_exact(quantized, serve_dir, tmp_path):
  loaded = load_served(serve_dir)
  in_memory = serve_model(quantized[0])
  for (path, a), (_, b) in zip(
    nnx.to_flat_state(nnx.state(loaded)), nnx.to_flat_state(nnx.state(in_memory))
  ):
    assert a[...].dtype == b[...].dtype, path
    if path[-1] == "w_scale":  # rebuilt from the QDIR's codes: within an ulp (quant/export.py)
      np.testing.assert_array_max_ulp(np.asarray(a[...]), np.asarray(b[...]), maxulp=1)
      continue
    np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(path))
  manifest = read_serve_manifest(serve_dir)
  again = save_served(
    loaded,
    tmp_path / "again",
    recipe=quantized[1],
    base_ckpt="tiny",
    calibration_info=manifest["calibration"],
    source=manifest["source"],
  )
  assert (again / WEIGHTS_FILE).read_bytes() == (serve_dir / WEIGHTS_FILE).read_bytes()
  assert manifest["bits"]["unet.conv_in"] == [8, 8] and manifest["bits"]["unet.conv_out"] == [8, 8]
  assert manifest["layers"]["vae.encoder.down_blocks.0.downsamplers.0.conv"]["padding"] == [
    [0, 1],
    [0, 1],
  ]
  assert not [p for p in serve_dir.parent.iterdir() if p.name.startswith(".")]  # atomic


def test_load_is_strict(serve_dir, tmp_path):
  import shutil

  broken_dir = tmp_path / "broken"
  shutil.copytree(serve_dir, broken_dir)
  tensors = safetensors.numpy.load_file(str(serve_dir / WEIGHTS_FILE))
  weight = "unet.down_blocks.0.resnets.0.conv1.weight"
  cases = {
    "missing keys": lambda t: t.pop(weight),
    "unexpected keys": lambda t: t.update(extra=np.zeros(1, np.float32)),
    "mis-shaped keys": lambda t: t.update({weight: t[weight][:, :-1]}),
    "mis-typed keys": lambda t: t.update({weight: t[weight].view(np.int8)}),
  }
  for problem, edit in cases.items():
    broken = dict(tensors)
    edit(broken)
    safetensors.numpy.save_file(broken, str(broken_dir / WEIGHTS_FILE))
    with pytest.raises(
      ValueError, match=f"{problem}.*{'extra' if 'unexpected' in problem else weight}"
    ):
      load_served(broken_dir)
  manifest = json.loads((serve_dir / "manifest.json").read_text())
  manifest["layers"]["unet.conv_in"]["kernel_shape"] = [1, 1, 4, 32]
  (broken_dir / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match="unet.conv_in"):
    load_served(broken_dir)


def test_w4_weights_are_small(serve_dir):
  account = packed_account(serve_dir)
  assert account == read_serve_manifest(serve_dir)["account"]
  w4 = account["weights_by_bits"]["4"]
  assert w4["packed_bytes"] <= 0.3 * w4["bf16_bytes"]
  assert account["weights_by_bits"]["8"]["ratio"] <= 0.6


@pytest.mark.slow
@pytest.mark.parametrize("bits", [(8, 8), (4, 8), (4, 4)])
def test_restore_matches_fake_quant(quantized, lq, bits):
  """Every layer agrees to float rounding (test_serve_layers), but a quantized network is discontinuous:
  a rounding-size change of one layer's output can flip an activation code downstream, and that
  spreads. So the served restore is held to the fake-quant model's own sensitivity to exactly
  that: its change when every weight scale moves by 2^-22 (about one float32 ulp)."""
  model = nnx.clone(quantized[0])
  set_bits(model, {p: bits for p in get_bits(model)}, refit_clip=False)
  nudged = nnx.clone(model)
  for layer in quant_layers(nudged).values():
    layer.w_clip[...] = layer.w_clip[...] * (1 + 2.0**-22)
  graphdef = nnx.graphdef(model)
  fake = jax.jit(lambda state, x: nnx.merge(graphdef, state).restore(x).image)
  want = np.asarray(fake(nnx.state(model), lq))
  sensitivity = np.abs(np.asarray(fake(nnx.state(nudged), lq)) - want).mean()
  error = np.abs(np.asarray(make_restore_fn(serve_model(model))(lq)) - want).mean()
  assert error <= 4 * sensitivity + 1e-6, (error, sensitivity)


def test_cli_export_then_restore_and_eval(quantized, tmp_path):
  qmodel, recipe = quantized
  qdir = save_quantized(qmodel, recipe, tmp_path / "qdir", base_ckpt="tiny")
  serve = tmp_path / "serve"
  assert cli.main(["export", str(qdir), "--out", str(serve)]) == 0
  assert read_serve_manifest(serve)["source"] == str(qdir)
  faces, out = tmp_path / "faces", tmp_path / "out"
  faces.mkdir()
  rng = np.random.default_rng(0)
  for i in range(2):
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(faces / f"{i}.png")
  assert (
    cli.main(
      [
        "restore",
        "--quant",
        str(serve),
        "--backend",
        "xla",
        "--input",
        str(faces),
        "--output",
        str(out),
      ]
    )
    == 0
  )
  assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png"]
