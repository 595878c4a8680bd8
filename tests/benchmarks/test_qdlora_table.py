"""benchmarks.qdlora_table: the QD-LoRA table from an eval, checked against the PTQ table's model."""

import pytest

from benchmarks import qdlora_table

EVAL = [
  dict(variant="input", psnr=22.3, ssim=0.6, niqe=17.0),
  dict(variant="float32", psnr=23.9, ssim=0.7, niqe=11.4),
] + [
  dict(variant=v, psnr=p, ssim=0.5, niqe=9.0, psnr_vs_fp=25.0)
  for v, p in (
    ("balancing-W4A4", 18.8),
    ("quantface-W4A4", 21.2),
    ("quantface-W4A4-qdlora", 23.3),
    ("quantface-W6A6", 23.6),
    ("quantface-W6A6-qdlora", 23.8),
  )
]
PTQ = [
  dict(variant="fp32", psnr=23.9),
  dict(variant="rtn-W4A4", psnr=17.9, ssim=0.3, niqe=8.0),
  dict(variant="svdquant-W4A4", psnr=21.5, ssim=0.49, niqe=8.6, psnr_vs_fp=24.5),
  dict(variant="svdquant-W6A6", psnr=23.7),
]


def test_rows_in_order_with_the_best_w4a4_baseline():
  rows, md = qdlora_table.build_table(EVAL, PTQ)
  assert [r["variant"] for r in rows] == [
    "input",
    "float32",
    "svdquant-W4A4",
    "balancing-W4A4",
    "quantface-W4A4",
    "quantface-W4A4-qdlora",
    "quantface-W6A6",
    "quantface-W6A6-qdlora",
  ]
  assert "best PTQ baseline at W4A4 (svdquant, ptq_mini.md) | 21.50 | 0.490 | 8.60 | 24.50 |" in md


def test_refuses_a_ptq_table_of_another_model_or_a_missing_variant():
  with pytest.raises(ValueError, match="not the same model"):
    qdlora_table.build_table(EVAL, [dict(PTQ[0], psnr=23.0)] + PTQ[1:])
  with pytest.raises(ValueError, match="quantface-W6A6-qdlora"):
    qdlora_table.build_table(EVAL[:-1], PTQ)
