"""Save and load a whole OSDFace model: an Orbax checkpoint of its parameters beside its config.

Layout of a model directory: ``config.json`` (``OSDFaceConfig.to_json``), ``params/`` (Orbax, the
``nnx.Param`` state as a pure dict), optionally ``conversion_report.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from quantface_jax.convert.torch_to_nnx import ConversionReport
from quantface_jax.models.configs import PRESETS, OSDFaceConfig
from quantface_jax.models.osdface import OSDFace, abstract, build

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
REPORT_FILE = "conversion_report.json"
# The packaged `mini` model (a directory written by save_model).
MINI_DIR = Path(__file__).parent / "assets" / "mini"
_RANDOM_PRESETS = ("tiny", "sd21")


def save_model(model: OSDFace, out_dir: str | Path, *, report: ConversionReport | None = None,
               overwrite: bool = False, dtype: jnp.dtype | None = None) -> Path:
  """Writes ``model`` to ``out_dir`` atomically: into a temporary directory beside it, then renamed.

  ``dtype`` (e.g. ``jnp.float16``) stores the parameters narrower (restored as the model's float32).
  Single-process only (conversion runs on one host). Returns the directory.
  """
  out_dir = Path(out_dir).absolute()
  if out_dir.exists() and not overwrite:
    raise FileExistsError(f"{out_dir} exists (pass overwrite=True to replace it)")
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
  try:
    (tmp / CONFIG_FILE).write_text(model.config.to_json())
    if report is not None:
      (tmp / REPORT_FILE).write_text(report.to_json())
    with ocp.StandardCheckpointer() as checkpointer:
      params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
      if dtype is not None:
        params = jax.tree.map(lambda x: x.astype(dtype), params)
      checkpointer.save(tmp / PARAMS_DIR, params)
      checkpointer.wait_until_finished()
    if out_dir.exists():
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir


def restore_model(model_dir: str | Path, *, sharding: jax.sharding.Sharding | None = None) -> OSDFace:
  """Loads a directory written by `save_model`.

  Parameters are restored straight into ``sharding`` (default: the first local device), whatever
  devices the checkpoint was written from, so a GPU-written checkpoint restores on a CPU-only host.
  """
  model_dir = Path(model_dir).absolute()
  config = OSDFaceConfig.from_dict(json.loads((model_dir / CONFIG_FILE).read_text()))
  model = abstract(config)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  state = nnx.state(model, nnx.Param)
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        nnx.to_pure_dict(state))
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(model_dir / PARAMS_DIR, target)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)
  return model


def load(path_or_name: str | Path, *, sharding: jax.sharding.Sharding | None = None) -> OSDFace:
  """A ready model from a `save_model` directory or a preset name.

  ``tiny`` and ``sd21`` give random weights (with a warning); ``mini`` gives the packaged trained
  weights (``quantface_jax/assets/mini``).
  """
  if str(path_or_name) == "mini":
    if not (MINI_DIR / CONFIG_FILE).is_file():
      raise FileNotFoundError(f"the packaged 'mini' weights are not installed ({MINI_DIR} has no {CONFIG_FILE})")
    return restore_model(MINI_DIR, sharding=sharding)
  if str(path_or_name) in _RANDOM_PRESETS:
    logging.warning("quantface_jax.load(%r): RANDOM weights (a preset, not a trained model)", path_or_name)
    model = build(str(path_or_name))
    if sharding is not None:
      nnx.update(model, jax.device_put(nnx.state(model), sharding))
    return model
  path = Path(path_or_name)
  if (path / CONFIG_FILE).is_file():
    return restore_model(path, sharding=sharding)
  raise FileNotFoundError(f"{path_or_name!r} is neither a model directory (with {CONFIG_FILE}) nor a preset "
                          f"{sorted(PRESETS)}")
