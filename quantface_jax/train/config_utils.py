"""`--config.key=value` style overrides for ml_collections configs, without absl flags."""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable
from typing import Any

import ml_collections

# Sections with this name are free-form (e.g. `quant.overrides`, LayerQuantConfig fields): an
# override may add a key there, parsed as a Python literal; everywhere else a new key is an error.
FREE_FORM_SECTION = "overrides"
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(text: str, current: Any, key: str) -> Any:
  """Parses `text` to the type of the value it replaces."""
  if isinstance(current, bool):
    if text.lower() in _TRUE | _FALSE:
      return text.lower() in _TRUE
    raise ValueError(f"{key}: expected a bool, got {text!r}")
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    return text
  if isinstance(current, (tuple, list)):
    value = ast.literal_eval(text)
    value = value if isinstance(value, (tuple, list)) else (value,)
    return type(current)(value)
  try:  # None or another type: a Python literal if it parses, else the string
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(
  config: ml_collections.ConfigDict, overrides: Iterable[str]
) -> ml_collections.ConfigDict:
  """Applies ``["stage.unet.steps=100", "--config.seed=3", ...]`` in place and returns `config`.

  Each value is parsed to the type of the value it replaces; an unknown key raises KeyError naming it,
  except inside a section named `FREE_FORM_SECTION`, which takes new keys.
  """
  for item in overrides:
    key, sep, text = item.removeprefix("--").removeprefix("config.").partition("=")
    if not sep:
      raise ValueError(f"override {item!r} is not key=value")
    *parents, leaf = key.split(".")
    node = config
    for i, name in enumerate(parents):
      if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        raise KeyError(f"unknown config key {'.'.join(parents[: i + 1])!r} (in override {item!r})")
      node = node[name]
    if not isinstance(node, ml_collections.ConfigDict):
      raise KeyError(f"unknown config key {key!r}")
    if leaf not in node and parents[-1:] != [FREE_FORM_SECTION]:
      raise KeyError(
        f"unknown config key {key!r} (only `{FREE_FORM_SECTION}` sections take new keys)"
      )
    node[leaf] = _coerce(text, node.get(leaf), key)
  return config


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a Python config file (e.g. configs/mini.py)."""
  spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
