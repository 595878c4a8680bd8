"""The `quantface` command end to end on the random-weight `tiny` preset."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from quantface_jax import cli


def _write_inputs(folder):
  rng = np.random.default_rng(0)
  folder.mkdir()
  Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(folder / "rgb.png")
  Image.fromarray(rng.integers(0, 255, (32, 48), np.uint8), "L").save(folder / "gray_wide.png")
  Image.fromarray(rng.integers(0, 255, (32, 32, 4), np.uint8), "RGBA").save(folder / "rgba.png")
  Image.fromarray(rng.integers(0, 65535, (32, 32), np.uint16)).save(folder / "sixteen.png")
  (folder / "broken.jpg").write_bytes(b"not a jpeg at all")


def test_info_json_counts_sd21_abstractly(capsys):
  assert cli.main(["info", "sd21", "--json"]) == 0
  info = json.loads(capsys.readouterr().out)
  assert info["parameters"]["unet"] == 865_910_724
  assert info["parameters"]["vae"] == 83_653_863


def test_restore_converts_odd_inputs_reports_failures_and_resumes(tmp_path, capsys):
  inputs, out = tmp_path / "in", tmp_path / "out"
  _write_inputs(inputs)
  rc = cli.main(
    [
      "restore",
      "--ckpt",
      "tiny",
      "--input",
      str(inputs),
      "--output",
      str(out),
      "--batch-size",
      "3",
      "--compare",
    ]
  )
  assert rc == 1  # one input is unreadable: the others are done, and the run says so
  err = capsys.readouterr().err
  assert "broken.jpg" in err
  written = sorted(p.name for p in out.iterdir())
  assert written == sorted(
    [
      "gray_wide.png",
      "gray_wide_compare.png",
      "rgb.png",
      "rgb_compare.png",
      "rgba.png",
      "rgba_compare.png",
      "sixteen.png",
      "sixteen_compare.png",
    ]
  )
  assert np.asarray(Image.open(out / "rgb.png")).shape == (32, 32, 3)
  assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

  (inputs / "broken.jpg").unlink()
  before = (out / "rgb.png").stat().st_mtime_ns
  assert cli.main(["restore", "--ckpt", "tiny", "--input", str(inputs), "--output", str(out)]) == 0
  assert "skipped 4 existing" in capsys.readouterr().out
  assert (out / "rgb.png").stat().st_mtime_ns == before


def test_unknown_model_is_a_clear_error():
  with pytest.raises(SystemExit, match="neither a preset"):
    cli.main(["info", "no/such/dir"])


def test_quant_labels_split_only_when_the_spec_is_not_a_path(tmp_path):
  assert cli.split_label("runs/w4a4/model") == (None, "runs/w4a4/model")
  assert cli.split_label("qdlora=runs/w4a4/model") == ("qdlora", "runs/w4a4/model")
  odd = tmp_path / "a=b"
  odd.mkdir()
  assert cli.split_label(str(odd)) == (None, str(odd))  # an existing folder with '=' in its name
  assert cli.split_label("=x") == (None, "=x")


def test_cli_logs_at_info(capsys):
  assert cli.main(["info", "tiny"]) == 0
  logging.getLogger("quantface").info("phase marker")
  assert "phase marker" in capsys.readouterr().err
