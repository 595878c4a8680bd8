"""Session-wide fixtures: one tiny model for the whole suite, and the face data when present."""

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
