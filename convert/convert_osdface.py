"""Converts the PyTorch OSDFace release into one quantface-jax checkpoint (layout: README.md here).

    python convert/convert_osdface.py --sd SD21_BASE_DIR --osdface OSDFACE_DIR --out CKPT_DIR

The work is `quantface_jax.convert.convert_release` (`quantface convert` runs the same); the
checkpoint then loads with ``quantface_jax.load(CKPT_DIR)`` or ``--ckpt CKPT_DIR``.
"""

from __future__ import annotations

import argparse
import sys

from quantface_jax.checkpoint import save_model
from quantface_jax.convert import ConversionError, convert_release


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sd", required=True, help="stable-diffusion-2-1-base diffusers folder")
  parser.add_argument("--osdface", required=True, help="folder of the three OSDFace files")
  parser.add_argument("--out", required=True, help="checkpoint folder to write")
  parser.add_argument("--allow-unexpected", help="regex of extra source keys to skip (reported)")
  parser.add_argument("--lora-alpha", type=float, help="LoRA alpha when the LoRA file lacks it")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  args = parser.parse_args(argv)
  try:
    model, report = convert_release(
      args.sd, args.osdface, allow_unexpected=args.allow_unexpected, lora_alpha=args.lora_alpha
    )
    save_model(model, args.out, report=report, overwrite=args.overwrite)
  except (ConversionError, FileExistsError, FileNotFoundError) as e:
    print(f"convert_osdface: {e}", file=sys.stderr)
    return 1
  print(report.summary())
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
