"""Tests for quantface_jax.data.datasets."""

import json
import logging
import pathlib

import numpy as np
import pytest

from quantface_jax.data import datasets
from quantface_jax.data import io as image_io

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def face_dir(tmp_path):
  """A folder of 7 small synthetic 'faces' (non-square ones included)."""
  root = tmp_path / "hq"
  rng = np.random.default_rng(0)
  for i in range(7):
    shape = (40, 48, 3) if i % 3 == 0 else (40, 40, 3)
    image_io.write_image(root / f"{i}.png", rng.random(shape, dtype=np.float32))
  return root


def _as_lists(batches):
  return [[np.asarray(f) if isinstance(f, np.ndarray) else f for f in b] for b in batches]


def test_hq_dataset_items_are_deterministic_per_seed_epoch_index(face_dir):
  ds = datasets.HQFolderDataset(face_dir, 32, indices=[1, 2, 5], seed=3)
  assert len(ds) == 3
  lq, hq = ds[0]
  assert lq.shape == hq.shape == (32, 32, 3) and lq.dtype == hq.dtype == np.float32
  np.testing.assert_array_equal(ds.load(0, epoch=1)[0], ds.load(0, epoch=1)[0])
  assert not np.array_equal(ds.load(0, epoch=0)[0], ds.load(0, epoch=1)[0])
  assert not np.array_equal(
    ds.load(0)[0], datasets.HQFolderDataset(face_dir, 32, indices=[1], seed=4).load(0)[0]
  )
  # A face keeps its LQ whichever subset it is in.
  np.testing.assert_array_equal(
    ds.load(2)[0], datasets.HQFolderDataset(face_dir, 32, indices=[5], seed=3).load(0)[0]
  )
  with pytest.raises(IndexError):
    datasets.HQFolderDataset(face_dir, 32, indices=[7])


def test_hflip_mirrors_about_half_and_keeps_the_degradation_stream(face_dir):
  plain = datasets.HQFolderDataset(face_dir, 32, seed=3)
  flipping = datasets.HQFolderDataset(face_dir, 32, seed=3, hflip=True)
  mirrored = 0
  for epoch in range(4):
    for i in range(len(plain)):
      (lq_p, hq_p), (lq_f, hq_f) = plain.load(i, epoch), flipping.load(i, epoch)
      np.testing.assert_array_equal(lq_f, flipping.load(i, epoch)[0])  # deterministic
      if np.array_equal(hq_f, hq_p):
        np.testing.assert_array_equal(lq_f, lq_p)
      else:
        np.testing.assert_array_equal(hq_f, hq_p[:, ::-1])
        rng = np.random.default_rng([3, epoch, i])  # the same degradation draws, on the mirror
        np.testing.assert_array_equal(lq_f, datasets.degrade(hq_f, rng, plain.degradation))
        mirrored += 1
  assert 7 <= mirrored <= 21, mirrored  # of 28 (face, epoch) pairs


def test_iterate_batches_resumes_exactly(face_dir):
  ds = datasets.HQFolderDataset(face_dir, 16, seed=1)
  full = _as_lists(datasets.iterate_batches(ds, 2, seed=5, num_epochs=3, workers=2))
  assert len(full) == 3 * 3  # 7 // 2 batches per epoch
  resumed = _as_lists(
    datasets.iterate_batches(ds, 2, seed=5, num_epochs=3, start_step=4, workers=3)
  )
  assert len(resumed) == len(full) - 4
  for a, b in zip(full[4:], resumed):
    for fa, fb in zip(a, b):
      np.testing.assert_array_equal(fa, fb)
  lq, hq = full[0]
  assert lq.shape == (2, 16, 16, 3) and lq.dtype == np.float32 and 0 <= lq.min() and hq.max() <= 1
  # Epochs are reshuffled.
  assert not all(np.array_equal(full[i][1], full[i + 3][1]) for i in range(3))


def test_process_loader_yields_the_thread_loaders_batches(face_dir):
  (face_dir / "3.png").write_bytes(b"garbage")  # skipped in the worker process too
  ds = datasets.HQFolderDataset(face_dir, 16, seed=1, hflip=True)
  threads = _as_lists(
    datasets.iterate_batches(ds, 3, seed=5, num_epochs=2, start_step=1, workers=2)
  )
  procs = _as_lists(
    datasets.iterate_batches(ds, 3, seed=5, num_epochs=2, start_step=1, workers=2, processes=True)
  )
  assert (
    len(procs) == len(threads) == 3 and sum(len(b[0]) for b in procs) < 9
  )  # a 3-face batch lost 3.png
  for a, b in zip(threads, procs):
    for fa, fb in zip(a, b):
      np.testing.assert_array_equal(fa, fb)


def test_iterate_batches_order_and_remainder(face_dir):
  ds = datasets.LQFolderDataset(face_dir, 8)
  batches = list(datasets.iterate_batches(ds, 3, shuffle=False, num_epochs=1, drop_remainder=False))
  assert [names for _, names in batches] == [
    ["0.png", "1.png", "2.png"],
    ["3.png", "4.png", "5.png"],
    ["6.png"],
  ]
  assert batches[0][0].shape == (3, 8, 8, 3)
  infinite = datasets.iterate_batches(ds, 3, shuffle=True)
  assert len([next(infinite) for _ in range(10)]) == 10
  infinite.close()


def test_unreadable_images_are_skipped_with_a_warning(face_dir, caplog):
  (face_dir / "3.png").write_bytes(b"garbage")
  ds = datasets.LQFolderDataset(face_dir, 8)
  with caplog.at_level(logging.WARNING):
    batches = list(
      datasets.iterate_batches(ds, 4, shuffle=False, num_epochs=1, drop_remainder=False)
    )
  assert [names for _, names in batches] == [
    ["0.png", "1.png", "2.png"],
    ["4.png", "5.png", "6.png"],
  ]
  assert "3.png" in caplog.text


def test_make_eval_set_is_idempotent_and_matches_dataset(face_dir, tmp_path):
  out = tmp_path / "eval"
  datasets.make_eval_set(face_dir, [0, 4], 16, 9, out)
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["files"] == ["0.png", "4.png"] and manifest["seed"] == 9
  lq = image_io.read_image(out / "lq" / "4.png")
  expected = datasets.HQFolderDataset(face_dir, 16, indices=[0, 4], seed=9).load(1)[0]
  np.testing.assert_array_equal(lq, np.round(expected * 255) / np.float32(255))
  stamp = (out / "lq" / "4.png").stat().st_mtime_ns
  datasets.make_eval_set(face_dir, [0, 4], 16, 9, out)
  assert (out / "lq" / "4.png").stat().st_mtime_ns == stamp
  (out / "hq" / "0.png").unlink()
  datasets.make_eval_set(face_dir, [0, 4], 16, 9, out)
  assert (out / "hq" / "0.png").exists()
  assert sorted(p.name for p in out.iterdir()) == ["hq", "lq", "manifest.json"]
  with pytest.raises(ValueError, match="other settings"):
    datasets.make_eval_set(face_dir, [0, 4], 16, 10, out)


def test_pack_faces(face_dir, tmp_path, caplog):
  (face_dir / "bad.png").write_bytes(b"")
  with caplog.at_level(logging.WARNING):
    packed = datasets.pack_faces(face_dir, tmp_path / "pack", 24, quality=90)
  assert [p.name for p in packed] == [f"{i}.jpg" for i in range(7)]
  assert image_io.read_image(packed[0]).shape == (24, 24, 3)
  assert "bad.png" in caplog.text
  assert datasets.pack_faces(face_dir, tmp_path / "pack", 24) == packed


@pytest.mark.skipif(not (SHARED_DATA / "celebahq512").is_dir(), reason=f"{SHARED_DATA} not present")
def test_real_faces_at_128():
  ds = datasets.HQFolderDataset(SHARED_DATA / "celebahq512", 128, indices=range(4000, 4004), seed=0)
  lq, hq = next(datasets.iterate_batches(ds, 4, shuffle=False))
  assert lq.shape == hq.shape == (4, 128, 128, 3)
  assert np.abs(lq - hq).mean() > 0.005
  real = datasets.LQFolderDataset(SHARED_DATA / "real_lq", 128)
  assert len(real) == 20 and real[0][0].shape == (128, 128, 3)
