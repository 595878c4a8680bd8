"""`quantface demo`: the embedded `mini` restorer on public-domain faces that ship in installed packages."""

from __future__ import annotations

import pathlib

import numpy as np

from quantface_jax.data import io as image_io

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


# Quantized rows of the demo, calibrated on other-seed degradations of the same sample faces.
DEMO_RECIPES = ("rtn", "quantface")
DEMO_BITS = "W4A4"
CALIBRATION_SEEDS = (1, 2, 3, 4)


def run_demo(
  out_dir, *, ckpt: str = "mini", seed: int = 0, batch_size: int = 4, quantized: bool = True
) -> list[dict]:
  """Restores synthetic degradations of the sample faces with the FP model and, if ``quantized``,
  its DEMO_RECIPES at DEMO_BITS, and writes the evaluation report into ``out_dir``."""
  from quantface_jax.checkpoint import load
  from quantface_jax.evaluate import evaluate, synthetic_set
  from quantface_jax.inference import make_restore_fn

  out_dir = pathlib.Path(out_dir)
  model = load(ckpt)
  res = model.config.resolution
  hq_dir = write_sample_faces(out_dir / "samples")
  eval_set = synthetic_set(hq_dir, out_dir, resolution=res, indices=None, seed=seed)
  variants = {"fp32": make_restore_fn(model)}
  if quantized:
    variants.update(_quantized_variants(model, hq_dir, res))
  return evaluate(variants, eval_set, out_dir, resolution=res, batch_size=batch_size)


def _quantized_variants(model, hq_dir: pathlib.Path, res: int) -> dict:
  """recipe name -> restore fn; one shared calibration on the sample faces' other-seed LQs."""
  from quantface_jax.data.datasets import HQFolderDataset
  from quantface_jax.inference import make_restore_fn
  from quantface_jax.quant import calibrate, get_recipe, quantize

  lq = [
    HQFolderDataset(hq_dir, res, seed=s).load(i)[0]
    for s in CALIBRATION_SEEDS
    for i in range(len(SAMPLE_FACES))
  ]
  batches = [np.stack(lq).astype(np.float32) * 2.0 - 1.0]
  recipes = [get_recipe(name, DEMO_BITS) for name in DEMO_RECIPES]
  settings = recipes[0].calibration
  stats = calibrate(
    model,
    batches,
    rules=recipes[0].rules,
    max_samples=settings.max_samples,
    seed=settings.seed,
    progress=False,
  )
  return {
    recipe.name: make_restore_fn(quantize(model, recipe, calibration=stats, images=batches))
    for recipe in recipes
  }
