"""Char-PTB: corpus derivation, windows, the LM loop's state hand-off and LR rule."""

import json
import math

import jax
import numpy as np
import pytest

from relscreen_experiments import train_lm
from relscreen_experiments.configs import ptb as ptb_config
from relscreen import datasets


def test_treebank_gives_standard_char_ptb():
  splits, vocab = datasets.load_ptb_chars()
  assert len(vocab) == 50 and "_" in vocab and datasets.EOS in vocab
  train = [vocab[i] for i in splits["train"][:30]]
  assert "".join(train[:12]) == "aer_banknote"
  import treebank
  lines = [l for l in treebank.penn["valid"].splitlines() if l.split()]
  assert int(np.sum(splits["valid"] == vocab.index(datasets.EOS))) == len(lines)
  assert len(splits["train"]) == pytest.approx(5.0e6, rel=0.01)


def test_char_files_and_word_text_agree(tmp_path):
  text = " the cat sat \n\n a dog ran on it \n"
  (tmp_path / "x.txt").write_text(" t h e _ c a t _ s a t \n a _ d o g _ r a n _ o n _ i t \n")
  assert datasets.ptb_chars_from_char_file(tmp_path / "x.txt") == \
      datasets.ptb_chars_from_words(text)
  (tmp_path / "empty.txt").write_text("\n\n")
  with pytest.raises(datasets.DatasetError, match="empty.txt holds no characters"):
    datasets.ptb_chars_from_char_file(tmp_path / "empty.txt")
  with pytest.raises(datasets.DatasetError, match="ptb.char.train.txt not found"):
    datasets.load_ptb_chars(tmp_path)


def test_batchify_and_windows():
  data = datasets.batchify(np.arange(23), 2)  # two columns of 11
  np.testing.assert_array_equal(data[1], np.arange(11, 22))
  got = list(train_lm.windows(data, 4))
  assert [x.shape[1] for x, _ in got] == [4, 4, 2]
  for x, y in got:
    np.testing.assert_array_equal(y, x + 1)  # targets are the next character


def write_corpus(folder):
  rng = np.random.default_rng(0)
  words = ["the", "cat", "sat", "on", "a", "mat"]
  folder.mkdir()
  for split, n in (("train", 120), ("valid", 20), ("test", 20)):
    lines = ["_".join(rng.choice(words, rng.integers(2, 5))) for _ in range(n)]
    (folder / f"ptb.char.{split}.txt").write_text(
        "".join(" " + " ".join(l) + " \n" for l in lines))
  return folder


def tiny(**overrides):
  config = ptb_config.get_config()
  config.update(dict(hidden=16, emsize=8, batch=4, bptt=12, epochs=3, nu=2, rho=2,
                     phi="tanh", optimizer="adam", lr=1e-2, eval_batch_size=3,
                     log_every=1000), **overrides)
  return config


def test_lm_learns_and_halves_lr_on_plateaus(tmp_path):
  splits, vocab = datasets.load_ptb_chars(write_corpus(tmp_path / "data"))
  result = train_lm.train_and_evaluate(tiny(), tmp_path / "run", splits, vocab)
  recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert recs[-1]["train_bpc"] < recs[0]["train_bpc"] < math.log2(len(vocab)) + 0.5
  lr, best = 1e-2, math.inf
  for r in recs:  # the rule, checked against what the run recorded
    lr = lr if r["val_bpc"] < best else lr / 2
    best = min(best, r["val_bpc"])
    assert r["next_lr"] == pytest.approx(lr) and r["best_val_bpc"] == pytest.approx(best)
  assert result["best_val_bpc"] == pytest.approx(best)
  assert (tmp_path / "run" / "curves.png").stat().st_size > 0


def test_state_hand_off_between_windows(tmp_path):
  splits, vocab = datasets.load_ptb_chars(write_corpus(tmp_path / "data"))
  data = datasets.batchify(splits["valid"], 3)

  def bpc(model_name, carry):
    config = tiny(model=model_name, carry_memory=carry)
    model = train_lm.build(config, len(vocab))
    params = model.init(jax.random.PRNGKey(0), data[:1, :2])["params"]
    _, eval_step = train_lm.make_steps(model, train_lm.make_optimizer(config), carry)
    return train_lm.evaluate(model, eval_step, params, data, config)

  # Without attention memory the two modes are the same computation.
  assert bpc("LSTM", True) == pytest.approx(bpc("LSTM", False), rel=1e-6)
  # With it, carrying the memory across windows changes what the model sees.
  assert bpc("RelLSTM", True) != pytest.approx(bpc("RelLSTM", False), rel=1e-6)
  with pytest.raises(ValueError, match="--carry_memory needs a fixed-size memory"):
    train_lm.build(tiny(model="MemRNN", carry_memory=True), len(vocab))


def test_ptb_binary_names_missing_file(tmp_path):
  import subprocess
  import sys
  cmd = [sys.executable, "-m", "relscreen_experiments.ptb_task", f"--workdir={tmp_path}/run",
         f"--data_dir={tmp_path}"]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1 and "ptb.char.train.txt not found" in done.stderr


def test_gzipped_char_files_are_read(tmp_path):
  """The not-found message suggests ptb.char.*.txt.gz: such files must then load."""
  import gzip  # pylint: disable=g-import-not-at-top
  for split, text in (("train", "a b _ c\n"), ("valid", "b a\n"), ("test", "c\n")):
    with gzip.open(tmp_path / f"ptb.char.{split}.txt.gz", "wt") as f:
      f.write(text)
  streams, vocab = datasets.load_ptb_chars(tmp_path)
  assert vocab == sorted({"a", "b", "_", "c", datasets.EOS})
  assert [vocab[i] for i in streams["train"]] == ["a", "b", "_", "c", datasets.EOS]
  (tmp_path / "ptb.char.valid.txt.gz").write_bytes(b"not gzip")
  with pytest.raises(datasets.DatasetError, match="ptb.char.valid.txt.gz could not be read"):
    datasets.load_ptb_chars(tmp_path)
