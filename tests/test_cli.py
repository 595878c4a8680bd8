"""The `quantface` command end to end on the random-weight `tiny` preset: aligned crops, whole
photos, and one-line errors."""

import json
import logging
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image
from skimage import data

from quantface_jax import cli


def _write_inputs(folder):
  rng = np.random.default_rng(0)
  folder.mkdir()
  Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(folder / "rgb.png")
  Image.fromarray(rng.integers(0, 255, (32, 48), np.uint8), "L").save(folder / "gray_wide.png")
  Image.fromarray(np.repeat(rng.integers(0, 255, (36, 36, 1), np.uint8), 3, -1)).save(
    folder / "gray_rgb.png"
  )
  Image.fromarray(rng.integers(0, 255, (32, 32, 4), np.uint8), "RGBA").save(folder / "rgba.png")
  Image.fromarray(rng.integers(0, 65535, (32, 32), np.uint16)).save(folder / "sixteen.png")
  Image.fromarray(rng.integers(0, 255, (20, 40, 3), np.uint8)).save(folder / "small.png")
  (folder / "broken.jpg").write_bytes(b"not a jpeg at all")


def test_info_json_counts_sd21_abstractly(capsys):
  assert cli.main(["info", "sd21", "--json"]) == 0
  info = json.loads(capsys.readouterr().out)
  assert info["parameters"]["unet"] == 865_910_724
  assert info["parameters"]["vae"] == 83_653_863


def test_restore_converts_odd_inputs_reports_failures_and_resumes(tmp_path, capsys):
  inputs, out = tmp_path / "in", tmp_path / "out"
  _write_inputs(inputs)
  aligned = ["restore", "--aligned", "--ckpt", "tiny", "--input", str(inputs), "--output", str(out)]
  rc = cli.main([*aligned, "--batch-size", "3"])
  assert rc == 1  # one input is unreadable, one too small: the others are done, and the run says so
  err = capsys.readouterr().err
  assert "broken.jpg: cannot read image" in err
  assert "small.png: 40x20 pixels, smaller than 32 on a side" in err
  assert cli.main([*aligned, "--compare"]) == 1
  assert "skipped 5 existing" in capsys.readouterr().out  # compare pictures of existing outputs
  written = sorted(p.name for p in out.iterdir())
  assert written == sorted(
    [
      "gray_rgb.png",
      "gray_rgb_compare.png",
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
  assert Image.open(out / "gray_wide.png").mode == "L"  # gray in, gray out
  assert Image.open(out / "sixteen.png").mode == "L"
  gray_rgb = np.asarray(Image.open(out / "gray_rgb.png"))  # an RGB file without colour stays so
  assert gray_rgb.shape == (32, 32, 3) and (gray_rgb == gray_rgb[..., :1]).all()
  assert np.ptp(np.asarray(Image.open(out / "rgb.png")).astype(int), axis=-1).max() > 0
  assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
  assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir())

  (inputs / "broken.jpg").unlink()
  (inputs / "small.png").unlink()
  before = (out / "rgb.png").stat().st_mtime_ns
  assert cli.main(aligned) == 0
  assert "skipped 5 existing" in capsys.readouterr().out
  assert (out / "rgb.png").stat().st_mtime_ns == before


def _canvas(*places, size=(600, 700)):
  """A gray canvas with skimage's astronaut (public domain, NASA) at each (top, left)."""
  canvas = np.full((*size, 3), 90, np.uint8)
  for top, left in places:
    canvas[top : top + 512, left : left + 512] = data.astronaut()
  return canvas


def _faces_changed(before, after, boxes):
  """Whether each (top, bottom, left, right) box holds changed pixels."""
  moved = np.any(before != after, axis=-1)
  return [bool(moved[top:bottom, left:right].any()) for top, bottom, left, right in boxes]


FACE = (100, 250, 290, 410)  # the astronaut's face, at (top, left) = (40, 100) of the canvas


def test_whole_photos_restore_every_face_in_place(tmp_path, capsys):
  pytest.importorskip("dlib")
  inputs, out = tmp_path / "in", tmp_path / "out"
  inputs.mkdir()
  one, two = _canvas((40, 100)), _canvas((40, 40), (40, 620), size=(600, 1180))
  Image.fromarray(one).save(inputs / "one.png")
  Image.fromarray(two).save(inputs / "two.png")
  Image.fromarray(np.tile(np.linspace(0, 255, 96, dtype=np.uint8)[:, None, None], (1, 80, 3))).save(
    inputs / "sky.png"
  )
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
      "2",
      "--save-faces",
    ]
  )
  assert rc == 0
  captured = capsys.readouterr()
  assert f"no face found, written unchanged: {inputs / 'sky.png'}" in captured.err
  np.testing.assert_array_equal(
    np.asarray(Image.open(out / "sky.png")), np.asarray(Image.open(inputs / "sky.png"))
  )

  restored = np.asarray(Image.open(out / "one.png"))
  assert restored.shape == one.shape
  assert _faces_changed(one, restored, [FACE]) == [True]
  moved = np.any(restored != one, axis=-1)
  far = np.ones_like(moved)
  far[40:420, 200:500] = False  # everything but the face and its surroundings
  assert not moved[far].any()  # pixels away from the face are exactly the input's
  top, bottom, left, right = FACE
  shifted = [(top, bottom, left - 60, right - 60), (top, bottom, left + 520, right + 520)]
  assert _faces_changed(two, np.asarray(Image.open(out / "two.png")), shifted) == [True, True]
  assert sorted(p.name for p in (out / "faces").iterdir()) == [
    f"{stem}_{k}{kind}.png"
    for stem, k in [("one", 0), ("two", 0), ("two", 1)]
    for kind in ("", "_restored")
  ]


def test_whole_photo_upscale(tmp_path):
  pytest.importorskip("dlib")
  Image.fromarray(_canvas((40, 100))).save(tmp_path / "one.png")
  argv = [
    "restore",
    "--ckpt",
    "tiny",
    "--input",
    str(tmp_path / "one.png"),
    "--output",
    str(tmp_path / "out"),
    "--upscale",
    "2",
  ]
  assert cli.main(argv) == 0
  assert np.asarray(Image.open(tmp_path / "out" / "one.png")).shape == (1200, 1400, 3)


@pytest.mark.parametrize(
  "command,named",
  [
    ("restore --input /nonexistent --output OUT", "/nonexistent: no such file or folder"),
    ("restore --ckpt /nonexistent --input IMG --output OUT", "/nonexistent"),
    (
      "restore --input IMG --output OUT --batch-size 0",
      "argument --batch-size: 0 is not a positive integer",
    ),
    (
      "quantize --ckpt tiny --recipe rtn --bits W4A4 --calib /nonexistent --out OUT",
      "/nonexistent: no such file or folder",
    ),
    ("quantize --ckpt /nonexistent --recipe rtn --bits W4A4 --calib IMG --out OUT", "/nonexistent"),
    (
      "quantize --ckpt tiny --recipe rtn --bits W4A4 --out OUT",
      "one of the arguments --calib --calib-lq is required",
    ),
    (
      "quantize --ckpt tiny --recipe rtn --bits /nonexistent.json --calib IMG --out OUT",
      "/nonexistent.json",
    ),
    ("convert --sd /nonexistent --osdface /nonexistent --out OUT", "/nonexistent"),
    ("eval --ckpt tiny --lq /nonexistent --out OUT", "/nonexistent"),
    ("export /nonexistent --out OUT", "/nonexistent"),
    ("info /nonexistent", "/nonexistent"),
    ("allocate --ckpt tiny --calib-lq /nonexistent --out OUT.json", "/nonexistent"),
  ],
)
def test_errors_are_one_line_naming_the_path_or_value(command, named, tmp_path, capsys):
  image = tmp_path / "img.png"
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
  argv = [
    str(image) if a == "IMG" else str(tmp_path / a) if a.startswith("OUT") else a
    for a in command.split()
  ]
  rc = cli.main(argv)
  err = capsys.readouterr().err.strip()
  assert rc == 2 and named in err and len(err.splitlines()) == 1, err
  assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "img.png")
  argv = ["restore", "--ckpt", "/nonexistent", "--input", str(tmp_path), "--output", "out"]
  with pytest.raises(FileNotFoundError, match="/nonexistent"):
    cli.main(["--debug", *argv])


def test_calib_lq_uses_real_faces_and_fewer_than_asked(tmp_path, capsys):
  lq = tmp_path / "lq"
  lq.mkdir()
  rng = np.random.default_rng(0)
  for i in range(2):
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8)).save(lq / f"{i}.png")
  qdir = tmp_path / "q"
  argv = [
    "quantize",
    "--ckpt",
    "tiny",
    "--recipe",
    "rtn",
    "--bits",
    "W8A8",
    "--calib-lq",
    str(lq),
    "--calib-count",
    "5",
    "--out",
    str(qdir),
  ]
  assert cli.main(argv) == 0
  assert "5 calibration faces asked, using the 2 there" in capsys.readouterr().err
  manifest = json.loads((qdir / "manifest.json").read_text())
  assert (
    manifest["calibration"]["lq_dir"] == str(lq.resolve())
    and manifest["calibration"]["seed"] is None
  )
  assert all(p.stat().st_mode & 0o777 == 0o644 for p in qdir.iterdir())


def test_compile_cache_folder_and_switches(monkeypatch, tmp_path):
  monkeypatch.setenv("QUANTFACE_COMPILE_CACHE", "0")
  assert cli.enable_compile_cache() is None
  monkeypatch.delenv("QUANTFACE_COMPILE_CACHE")
  assert cli.enable_compile_cache(enabled=False) is None
  previous = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    assert cli.enable_compile_cache() == tmp_path / "quantface" / "jax"
    jax.config.update("jax_compilation_cache_dir", "/elsewhere")
    assert cli.enable_compile_cache() == pathlib.Path("/elsewhere")  # a folder already set stays
  finally:
    jax.config.update("jax_compilation_cache_dir", previous)


def test_unknown_model_is_a_clear_error(capsys):
  assert cli.main(["info", "no/such/dir"]) == 2
  assert "neither a preset" in capsys.readouterr().err


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


def test_whole_photos_without_dlib_say_how_to_install(tmp_path, monkeypatch, capsys):
  from quantface_jax.metrics import faces

  def missing():
    raise ImportError("No module named 'dlib'")

  monkeypatch.setattr(faces, "_models", missing)
  Image.fromarray(_canvas((40, 100))).save(tmp_path / "one.png")
  argv = ["restore", "--ckpt", "tiny", "--input", str(tmp_path / "one.png"), "--output", "out"]
  assert cli.main(argv) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1] == (
    'quantface restore: face detection needs the `faces` extra: pip install "quantface-jax[faces]"'
  )
