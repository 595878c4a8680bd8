"""`quantface demo`: the embedded `mini` restorer on public-domain faces that ship in installed packages."""

from __future__ import annotations

import logging
import pathlib
import time

import numpy as np

from quantface_jax.data import io as image_io

log = logging.getLogger(__name__)

# (source, crop box top, bottom, left, right): face crops framed like the CelebA-HQ training faces.
SAMPLE_FACES = {
  "astronaut": ("skimage.astronaut", (30, 220, 130, 320)),  # Eileen Collins, NASA (public domain)
  "grace_hopper": (
    "matplotlib.grace_hopper",
    (95, 375, 122, 402),
  ),  # Grace Hopper, US Navy (public domain)
}


def _load_source(source: str) -> np.ndarray:
  if source == "skimage.astronaut":
    from skimage import data

    return data.astronaut()
  import matplotlib.cbook

  return image_io.to_uint8(
    image_io.read_image(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
  )


def write_sample_faces(out_dir: pathlib.Path) -> pathlib.Path:
  """Writes the cropped sample faces as PNGs into ``out_dir`` and returns it."""
  out_dir.mkdir(parents=True, exist_ok=True)
  for name, (source, (top, bottom, left, right)) in SAMPLE_FACES.items():
    target = out_dir / f"{name}.png"
    if not target.exists():
      image_io.write_image(target, _load_source(source)[top:bottom, left:right])
  return out_dir


# The quantized rows: the trained QuantFace model shipped packed in the package (QD-LoRA), and the
# best untrained W4A4 baseline of the PTQ table (SVDQuant), calibrated on other-seed degradations
# of the same sample faces.
SHIPPED_MODEL = "mini-w4a4"
BASELINE_RECIPE = "svdquant"
DEMO_BITS = "W4A4"
CALIBRATION_SEEDS = (1, 2, 3, 4)


def run_demo(
  out_dir, *, ckpt: str = "mini", seed: int = 0, batch_size: int = 4, quantized: bool = True
) -> list[dict]:
  """Restores synthetic degradations of the sample faces with the FP model and, if ``quantized``,
  the shipped trained W4A4 model (when ``ckpt`` is its base, "mini") and the untrained
  BASELINE_RECIPE at DEMO_BITS, and writes the evaluation report into ``out_dir``."""
  from quantface_jax.checkpoint import load
  from quantface_jax.evaluate import evaluate, synthetic_set
  from quantface_jax.inference import make_restore_fn

  out_dir = pathlib.Path(out_dir)
  model = load(ckpt)
  res = model.config.resolution
  hq_dir = write_sample_faces(out_dir / "samples")
  eval_set = synthetic_set(hq_dir, out_dir, resolution=res, indices=None, seed=seed)
  variants = {"fp32": make_restore_fn(model, name="fp32 restore")}
  if quantized:
    variants.update(_shipped_variant(ckpt))
    variants.update(_quantized_variants(model, hq_dir, res))
  return evaluate(variants, eval_set, out_dir, resolution=res, batch_size=batch_size)


def _shipped_variant(ckpt: str) -> dict:
  """{row name: restore fn} of the packed trained model shipped for ``ckpt`` (none if absent)."""
  from quantface_jax.inference import make_restore_fn
  from quantface_jax.serve import load_served, shipped_models

  if ckpt != "mini" or SHIPPED_MODEL not in shipped_models():
    return {}
  name = f"quantface {DEMO_BITS} + QD-LoRA ({SHIPPED_MODEL}, shipped)"
  return {name: make_restore_fn(load_served(SHIPPED_MODEL), name=f"{SHIPPED_MODEL} restore")}


def _quantized_variants(model, hq_dir: pathlib.Path, res: int) -> dict:
  """{row name: restore fn} of the untrained baseline, calibrated on the sample faces' other-seed
  LQs."""
  from quantface_jax.data.calibration import calibration_faces
  from quantface_jax.inference import make_restore_fn
  from quantface_jax.quant import get_recipe, quantize

  batches = [calibration_faces(res, hq_dir=hq_dir, seeds=CALIBRATION_SEEDS)]
  recipe = get_recipe(BASELINE_RECIPE, DEMO_BITS)
  start = time.perf_counter()
  qmodel = quantize(model, recipe, calibration=batches)
  log.info(
    "calibrated and quantized %s in %.1f s (compiles included)",
    recipe.name,
    time.perf_counter() - start,
  )
  name = f"{recipe.name} (untrained)"
  return {name: make_restore_fn(qmodel, name=f"{recipe.name} restore")}
