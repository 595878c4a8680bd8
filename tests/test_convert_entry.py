"""convert/convert_osdface.py, the entry point beside convert/README.md: a bad release is one line."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]  # the repository's root


def test_a_missing_release_folder_is_a_one_line_error(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      str(REPO / "convert" / "convert_osdface.py"),
      "--sd",
      str(tmp_path / "sd21"),
      "--osdface",
      str(tmp_path / "osdface"),
      "--out",
      str(tmp_path / "out"),
    ],
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
    f"convert_osdface: {tmp_path / 'sd21' / 'unet' / 'config.json'} not found"
  ]
  assert not (tmp_path / "out").exists()
