"""Session-wide fixtures: one tiny model for the whole suite, and the face data when present."""

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
