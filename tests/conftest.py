"""Fixtures shared by the whole test run: one tiny model, and the face data when present."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# One persistent XLA compilation cache for the suite, its xdist workers and its subprocesses: many
# tests build the same tiny-model programs (a fresh jit per fit, per process), and on 2 CPU cores
# compiling them is most of the suite's time. Set before jax is imported; the key is the program.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# LLVM at -O0: a quarter less compile time for the tiny programs, whose run time is negligible. It
# changes float rounding (FMA contraction), so no test compares against values from another setting.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


def pytest_collection_modifyitems(items):
  """The tests marked `slow` first: xdist hands tests out in this order, so the long ones start
  early on both workers instead of leaving one worker alone at the end."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Each module's compiled programs are freed after it: a worker keeps the persistent cache on disk,
  not every executable of the run in memory (which grew one worker past 8 GB)."""
  yield
  import gc

  import jax

  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope="session")
def tiny_model():
  from quantface_jax.models import build

  return build("tiny", seed=0)


@pytest.fixture(scope="session")
def faces_dir():
  d = SHARED_DATA / "celebahq512"
  if not d.is_dir():
    pytest.skip(f"face data not found at {d}")
  return d


def write_random_faces(root: pathlib.Path, count: int, size: int, seed: int = 0) -> pathlib.Path:
  """``count`` random RGB images ``0.png`` ... of ``size``² pixels in ``root``; returns ``root``."""
  import numpy as np

  from quantface_jax.data import io as image_io

  rng = np.random.default_rng(seed)
  for i in range(count):
    image_io.write_image(root / f"{i}.png", rng.uniform(0, 1, (size, size, 3)).astype(np.float32))
  return root
