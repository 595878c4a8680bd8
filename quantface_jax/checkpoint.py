"""Save and load a whole OSDFace model, in one of two layouts beside its ``config.json``:

- ``params/``: an Orbax checkpoint of the ``nnx.Param`` state as a pure dict (converted releases,
  sharded restores), optionally with ``conversion_report.json``;
- ``model.safetensors``: flat dotted NNX keys (``unet.down_blocks.0.resnets.0.conv1.kernel``), one
  file, usually float16 (the packaged ``mini`` and trained-model exports).

`load` takes either.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import safetensors.numpy
from flax import nnx

from quantface_jax.convert.torch_to_nnx import ConversionReport
from quantface_jax.fileio import atomic_directory, atomic_write_file, atomic_write_text
from quantface_jax.models.configs import PRESETS, OSDFaceConfig
from quantface_jax.models.osdface import OSDFace, abstract, build

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
WEIGHTS_FILE = "model.safetensors"
REPORT_FILE = "conversion_report.json"
# The packaged `mini` model (a directory written by save_safetensors).
MINI_DIR = Path(__file__).parent / "assets" / "mini"
_RANDOM_PRESETS = ("tiny", "sd21")


def save_model(
  model: OSDFace,
  out_dir: str | Path,
  *,
  report: ConversionReport | None = None,
  overwrite: bool = False,
  dtype: jnp.dtype | None = None,
) -> Path:
  """Writes ``model`` to ``out_dir`` atomically: into a temporary directory beside it, then renamed.

  ``dtype`` (e.g. ``jnp.float16``) stores the parameters narrower (restored as the model's float32).
  Single-process only (conversion runs on one host). Returns the directory.
  """
  out_dir = Path(out_dir).absolute()
  with atomic_directory(out_dir, overwrite=overwrite) as tmp:
    (tmp / CONFIG_FILE).write_text(model.config.to_json())
    if report is not None:
      (tmp / REPORT_FILE).write_text(report.to_json())
    with ocp.StandardCheckpointer() as checkpointer:
      params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
      if dtype is not None:
        params = jax.tree.map(lambda x: x.astype(dtype), params)
      checkpointer.save(tmp / PARAMS_DIR, params)
      checkpointer.wait_until_finished()
  return out_dir


def restore_model(
  model_dir: str | Path, *, sharding: jax.sharding.Sharding | None = None
) -> OSDFace:
  """Loads a directory written by `save_model`.

  Parameters are restored straight into ``sharding`` (default: the first local device), whatever
  devices the checkpoint was written from, so a GPU-written checkpoint restores on a CPU-only host.
  """
  model_dir = Path(model_dir).absolute()
  config = OSDFaceConfig.from_dict(json.loads((model_dir / CONFIG_FILE).read_text()))
  model = abstract(config)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  state = nnx.state(model, nnx.Param)
  target = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), nnx.to_pure_dict(state)
  )
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(model_dir / PARAMS_DIR, target)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)
  return model


def _paths(path: str) -> tuple[str, str]:
  """(weights file, config file) for a folder or a ``.safetensors`` file path."""
  if path.endswith(".safetensors"):
    return path, os.path.join(os.path.dirname(path) or ".", CONFIG_FILE)
  return os.path.join(path, WEIGHTS_FILE), os.path.join(path, CONFIG_FILE)


def flat_params(model: nnx.Module, filt=nnx.Param) -> dict[str, jax.Array]:
  """{dotted path: array} of every variable `filt` selects (default nnx.Param; ``...``: all state,
  as the QDIR and SERVE_DIR files store it)."""
  return {
    ".".join(str(p) for p in path): v[...] for path, v in nnx.to_flat_state(nnx.state(model, filt))
  }


def read_checked_manifest(
  directory: str | os.PathLike, *, fmt: str, version: int, name: str = "manifest.json"
) -> dict:
  """The JSON manifest of a QDIR/SERVE_DIR-style directory, checked to be `fmt` at `version`."""
  manifest = json.loads((Path(directory) / name).read_text())
  if manifest.get("format") != fmt or manifest.get("version") != version:
    raise ValueError(f"{directory}: not a {fmt} v{version} directory")
  return manifest


def save_safetensors(model: OSDFace, path: str, *, dtype=jnp.float16) -> str:
  """Writes ``model.safetensors`` (params cast to `dtype`) and ``config.json`` atomically; `path` is a
  folder or a ``.safetensors`` file. Returns the weights path."""
  weights_path, config_path = _paths(path)
  tensors = {k: np.asarray(jax.device_get(v)).astype(dtype) for k, v in flat_params(model).items()}
  atomic_write_file(
    weights_path,
    lambda tmp: safetensors.numpy.save_file(tensors, tmp, metadata={"format": "quantface_jax.nnx"}),
  )  # one key: multi-key metadata order varies
  atomic_write_text(config_path, model.config.to_json())
  return weights_path


def fill_strict(
  model: nnx.Module,
  tensors: Mapping[str, np.ndarray],
  source: str | os.PathLike,
  *,
  dtype=None,
  check_dtypes: bool = False,
) -> nnx.Module:
  """``model`` (abstract or concrete) with every variable set from the tensor of its dotted path.

  The one strict loader of every weights file here (model, QDIR, SERVE_DIR): raises ValueError
  naming ``source`` and every missing, unexpected, mis-shaped (and, with ``check_dtypes``,
  mis-typed) key. ``dtype``: cast the tensors (None keeps each file dtype).
  """
  graphdef, state = nnx.split(model)
  expected = {".".join(str(p) for p in path): (path, v) for path, v in nnx.to_flat_state(state)}
  common = [(k, tensors[k], v) for k, (_, v) in expected.items() if k in tensors]
  problems = {
    "missing keys": sorted(set(expected) - set(tensors)),
    "unexpected keys": sorted(set(tensors) - set(expected)),
    "mis-shaped keys": sorted(
      f"{k}: file {tuple(t.shape)} vs model {tuple(v.shape)}"
      for k, t, v in common
      if tuple(t.shape) != tuple(v.shape)
    ),
    "mis-typed keys": sorted(
      f"{k}: file {t.dtype} vs model {np.dtype(v.dtype)}"
      for k, t, v in common
      if check_dtypes and t.dtype != np.dtype(v.dtype)
    ),
  }
  found = [f"{name}: {keys}" for name, keys in problems.items() if keys]
  if found:
    raise ValueError(f"{source}: " + "; ".join(found))
  filled = nnx.from_flat_state(
    [(path, v.replace(jnp.asarray(tensors[k], dtype))) for k, (path, v) in expected.items()]
  )
  return nnx.merge(graphdef, filled)


def load_safetensors(path: str, *, dtype=jnp.float32) -> OSDFace:
  """Builds the OSDFace of ``config.json`` and fills it from the weights, strictly (`fill_strict`)."""
  weights_path, config_path = _paths(path)
  with open(config_path) as f:
    cfg = OSDFaceConfig.from_dict(json.load(f))
  tensors = safetensors.numpy.load_file(weights_path)
  return fill_strict(
    nnx.eval_shape(lambda: OSDFace(cfg, rngs=nnx.Rngs(0))), tensors, weights_path, dtype=dtype
  )


def restore_any(model_dir: Path, *, sharding=None) -> OSDFace:
  """A model directory in either layout."""
  if (model_dir / WEIGHTS_FILE).is_file():
    model = load_safetensors(str(model_dir))
    if sharding is not None:
      nnx.update(model, jax.device_put(nnx.state(model), sharding))
    return model
  return restore_model(model_dir, sharding=sharding)


def load(path_or_name: str | Path, *, sharding: jax.sharding.Sharding | None = None) -> OSDFace:
  """A ready model from a `save_model` directory or a preset name.

  ``tiny`` and ``sd21`` give random weights (with a warning); ``mini`` gives the packaged trained
  weights (``quantface_jax/assets/mini``).
  """
  if str(path_or_name) == "mini":
    if not (MINI_DIR / CONFIG_FILE).is_file():
      raise FileNotFoundError(
        f"the packaged 'mini' weights are not installed ({MINI_DIR} has no {CONFIG_FILE})"
      )
    return restore_any(MINI_DIR, sharding=sharding)
  if str(path_or_name) in _RANDOM_PRESETS:
    logging.warning(
      "quantface_jax.load(%r): RANDOM weights (a preset, not a trained model)", path_or_name
    )
    model = build(str(path_or_name))
    if sharding is not None:
      nnx.update(model, jax.device_put(nnx.state(model), sharding))
    return model
  path = Path(path_or_name)
  if (path / CONFIG_FILE).is_file():
    return restore_any(path, sharding=sharding)
  raise FileNotFoundError(
    f"{path_or_name!r} is neither a model directory (with {CONFIG_FILE}) nor a preset "
    f"{sorted(PRESETS)}"
  )
