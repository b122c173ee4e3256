"""MNIST IDX loading (fixtures written by the test), digits, permutation, and the
classifier binary end to end on tiny configurations."""

import json
import subprocess
import sys

import numpy as np
import pytest

from relscreen_experiments import train_classifier
from relscreen_experiments.configs import mnist as mnist_config
from relscreen import datasets


def write_mnist(folder, n_train=30, n_test=8, gz=True, side=4):
  """Tiny IDX files: class c images are bright in row c % side."""
  rng = np.random.default_rng(0)
  folder.mkdir(parents=True, exist_ok=True)
  ext = ".gz" if gz else ""
  for split, n in (("train", n_train), ("t10k", n_test)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, side, side)).astype(np.uint8)
    images[np.arange(n), labels % side] = 255
    datasets.write_idx(folder / f"{split}-images-idx3-ubyte{ext}", images)
    datasets.write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", labels)
  return folder


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_and_split(tmp_path, gz):
  write_mnist(tmp_path, gz=gz)
  splits = datasets.load_mnist(tmp_path, n_val=10)
  assert splits.train_x.shape == (20, 16, 1) and splits.val_x.shape == (10, 16, 1)
  assert splits.test_x.shape == (8, 16, 1) and splits.train_x.dtype == np.float32
  raw = datasets.read_idx(datasets.find_file(tmp_path, "train-images-idx3-ubyte"), 3)
  np.testing.assert_allclose(splits.train_x[:, :, 0], raw[:20].reshape(20, 16) / 255.0)
  np.testing.assert_allclose(splits.val_x[:, :, 0], raw[20:].reshape(10, 16) / 255.0,
                             rtol=1e-6)


def test_missing_and_malformed_files_are_named(tmp_path):
  with pytest.raises(datasets.DatasetError, match="train-images-idx3-ubyte not found"):
    datasets.load_mnist(tmp_path)
  write_mnist(tmp_path)
  (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
  with pytest.raises(datasets.DatasetError, match="t10k-labels-idx1-ubyte.gz could not"):
    datasets.load_mnist(tmp_path, n_val=10)
  datasets.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros((3, 2), np.uint8))
  with pytest.raises(datasets.DatasetError, match="expected magic 0x00000801"):
    datasets.load_mnist(tmp_path, n_val=10)
  path = tmp_path / "t10k-labels-idx1-ubyte"
  (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
  path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
  with pytest.raises(datasets.DatasetError, match="should hold 9 bytes"):
    datasets.load_mnist(tmp_path, n_val=10)


def test_digits_and_permutation():
  splits = datasets.load_digits()
  assert splits.steps == 64 and len(splits.train_x) == 1000 and len(splits.test_x) == 500
  assert 0.0 <= splits.train_x.min() and splits.train_x.max() == 1.0
  # The UCI digits as scikit-learn ships them: the label counts, and the first
  # image's first two rows (pixel values 0..16, scaled by 1/16).
  labels = np.concatenate([splits.train_y, splits.val_y, splits.test_y])
  assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
  np.testing.assert_array_equal(16 * splits.train_x[0, :16, 0],
                                [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0])
  permuted = datasets.permute(splits)
  order = np.random.RandomState(100).permutation(64)
  np.testing.assert_array_equal(permuted.test_x, splits.test_x[:, order])
  np.testing.assert_array_equal(permuted.train_y, splits.train_y)


def tiny(**overrides):
  config = mnist_config.get_config()
  config.update(dict(model="RelRNN", hidden=16, nu=2, rho=2, batch=10, epochs=3,
                     eval_batch_size=7, lr=1e-2), **overrides)
  return config


def test_classifier_learns_selects_best_and_resumes(tmp_path):
  splits = datasets.load_mnist(write_mnist(tmp_path / "data", n_train=60), n_val=20)
  result = train_classifier.train_and_evaluate(tiny(epochs=2), tmp_path / "run", splits)
  recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in recs] == [1, 2]
  resumed = train_classifier.train_and_evaluate(tiny(epochs=4), tmp_path / "run", splits)
  recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in recs] == [1, 2, 3, 4]
  assert recs[-1]["train_loss"] < recs[0]["train_loss"]
  best = max(recs, key=lambda r: r["val_accuracy"])
  assert resumed["best_epoch"] == best["epoch"]
  assert resumed["best_val_accuracy"] == pytest.approx(best["val_accuracy"])
  assert 0.0 <= result["test_accuracy"] <= 1.0
  assert (tmp_path / "run" / "curves.png").stat().st_size > 0


def test_mnist_binary_trains_on_the_built_in_digits(tmp_path):
  """The binary end to end (a missing IDX file is tested in-process above, and a
  binary's one-line exit on a missing data file in test_ptb.py)."""
  digits = [sys.executable, "-m", "relscreen_experiments.mnist_task", f"--workdir={tmp_path}/d",
            "--epochs=1", "--max_batches=2", "--hidden=8", "--nu=2", "--rho=2",
            "--model=RNN"]
  done = subprocess.run(digits, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0 and "test accuracy" in done.stderr, done.stderr
  assert json.loads((tmp_path / "d" / "eval.json").read_text())["best_epoch"] == 1


def test_dotted_idx_file_names_are_accepted(tmp_path):
  """Several mirrors ship train-images.idx3-ubyte (a dot before idx)."""
  write_mnist(tmp_path, gz=False)
  for path in list(tmp_path.iterdir()):
    path.rename(path.with_name(path.name.replace("-idx", ".idx")))
  assert datasets.load_mnist(tmp_path, n_val=10).train_x.shape == (20, 16, 1)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(datasets.DatasetError,
                     match=r"accepted names: train-images-idx3-ubyte, "
                           r"train-images-idx3-ubyte.gz, train-images.idx3-ubyte, "
                           r"train-images.idx3-ubyte.gz"):
    datasets.load_mnist(empty)


def test_epoch_cap_and_progress_inside_an_epoch(tmp_path, caplog):
  splits = datasets.load_mnist(write_mnist(tmp_path / "data", n_train=60), n_val=20)
  caplog.set_level("INFO")
  train_classifier.train_and_evaluate(tiny(epochs=1, max_batches=3, log_every=1),
                                      tmp_path / "run", splits)
  lines = [r.getMessage() for r in caplog.records]
  assert any(l.startswith("compiling the update step") for l in lines)
  progress = [l.split(" |")[0] for l in lines if l.startswith("epoch 1 batch")]
  assert progress == ["epoch 1 batch 1/3", "epoch 1 batch 2/3"]  # 4 would be uncapped
