"""Packed SERVE_DIRs: lossless half floats, int8 low-rank factors, branches cut to the layers'
widths, and models found by name in the package's assets."""

import importlib
import pathlib

import numpy as np
import pytest
from flax import nnx

from quantface_jax.quant import quant_layers, save_quantized
from quantface_jax.quant import rules as rules_lib
from quantface_jax.serve import (
  INT_LAYERS,
  Packing,
  export,
  load_served,
  served_dir,
  shipped_models,
)
from quantface_jax.serve.export import WEIGHTS_FILE

# The module, not the function `export` that quantface_jax.serve re-exports under its name.
export_lib = importlib.import_module("quantface_jax.serve.export")


@pytest.fixture(scope="module")
def qdir(quantized, tmp_path_factory):
  qmodel, recipe = quantized
  return save_quantized(qmodel, recipe, tmp_path_factory.mktemp("q") / "qdir", base_ckpt="tiny")


def _flat(model):
  return {str(k): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model))}


def test_half_floats_are_lossless_and_int8_branches_close(qdir, tmp_path):
  exact = _flat(load_served(export(qdir, tmp_path / "exact")))
  half = export(qdir, tmp_path / "half", packing=Packing(half_floats=True))
  packed = export(qdir, tmp_path / "int8", packing=Packing(half_floats=True, low_rank_bits=8))
  for key, value in _flat(load_served(half)).items():
    np.testing.assert_array_equal(value, exact[key], err_msg=key)
  for key, value in _flat(load_served(packed)).items():
    assert value.dtype == exact[key].dtype, key
    tolerance = np.abs(exact[key]).max() / 127 if "low_rank" in key else 0
    np.testing.assert_allclose(value, exact[key], rtol=0, atol=tolerance, err_msg=key)
  sizes = [(d / WEIGHTS_FILE).stat().st_size for d in (tmp_path / "exact", half, packed)]
  assert sizes[0] > sizes[1] > sizes[2]


def test_rank_fraction_keeps_the_best_branch_of_each_width(quantized, qdir, tmp_path):
  served = load_served(export(qdir, tmp_path / "cut", packing=Packing(rank_fraction=0.25)))
  cut_layers = dict(rules_lib.iter_layers(served, INT_LAYERS))
  for path, layer in quant_layers(quantized[0]).items():
    if layer.low_rank_down is None:
      continue
    down, up = np.asarray(layer.low_rank_down[...]), np.asarray(layer.low_rank_up[...])
    rank = min(down.shape[1], int(np.ceil(0.25 * min(down.shape[0], up.shape[1]))))
    cut = cut_layers[path]
    assert cut.spec.low_rank == rank, path
    product = np.asarray(cut.low_rank_down[...]) @ np.asarray(cut.low_rank_up[...])
    singular = np.linalg.svd(down.astype(np.float64) @ up, compute_uv=False)
    error = np.linalg.norm(down @ up - product)  # Eckart-Young: the dropped singular values
    np.testing.assert_allclose(error, np.linalg.norm(singular[rank:]), rtol=1e-3, atol=1e-5)


def test_a_shipped_model_loads_by_name(qdir, tmp_path, monkeypatch):
  monkeypatch.setattr(export_lib, "ASSETS_DIR", tmp_path)
  export(qdir, tmp_path / "tiny-w4a4")
  assert shipped_models() == ["tiny-w4a4"]
  assert served_dir("tiny-w4a4") == tmp_path / "tiny-w4a4"
  assert load_served("tiny-w4a4").config.name == "tiny"
  assert served_dir("no-such-model") == pathlib.Path("no-such-model")
