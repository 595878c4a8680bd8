"""Atomic file writes: a reader (or a resumed run) never sees a partial file."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import IO


@contextlib.contextmanager
def _replacing(path: os.PathLike | str) -> Iterator[str]:
  """A hidden temporary file name beside ``path`` that replaces ``path`` when the block ends without
  an exception (and is removed otherwise). Creates missing folders."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


@contextlib.contextmanager
def atomic_open(path: os.PathLike | str, mode: str = "w") -> Iterator[IO]:
  """``open`` for writing, atomically: the file appears at ``path`` complete or not at all."""
  with _replacing(path) as tmp, open(tmp, mode) as f:
    yield f
    f.flush()
    os.fsync(f.fileno())


def atomic_write_text(path: os.PathLike | str, text: str) -> None:
  with atomic_open(path) as f:
    f.write(text)


def atomic_write_file(path: os.PathLike | str, write_to: Callable[[str], object]) -> None:
  """For writers that take a file name (safetensors, np.savez): ``write_to(tmp_name)``, then rename."""
  with _replacing(path) as tmp:
    write_to(tmp)


@contextlib.contextmanager
def atomic_directory(path: os.PathLike | str, *, overwrite: bool) -> Iterator[pathlib.Path]:
  """A temporary directory beside ``path`` to fill; it then replaces ``path`` (removed on error).

  Raises FileExistsError when ``path`` exists and ``overwrite`` is False.
  """
  path = pathlib.Path(path).absolute()
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  try:
    yield tmp
    # Writers that make their own temporary files (safetensors) leave them 0600.
    for item in tmp.rglob("*"):
      os.chmod(item, 0o755 if item.is_dir() else 0o644)
    os.chmod(tmp, 0o755)
    if path.exists():
      shutil.rmtree(path)
    os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
