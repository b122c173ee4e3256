"""Trains a character-level language model on Penn Treebank (ALGORITHM §6).

See ``experiments/configs/ptb.py``.

  relscreen-ptb --model=RelRNN --phi=tanh --optimizer=adam --hidden=256 --batch=32 \
      --epochs=3 --max_windows=200 --workdir=runs/ptb_relrnn
"""


from relscreen_experiments import flags_lib
from relscreen_experiments import train_lm
from relscreen_experiments.configs import ptb as ptb_config
from relscreen import datasets

_FLAGS = flags_lib.define_flags(ptb_config.FIELDS)
_WORKDIR = flags_lib.define_workdir()


def train_fn(config, workdir):
  splits, vocab = datasets.load_ptb_chars(config.data_dir or None)
  return train_lm.train_and_evaluate(config, workdir, splits, vocab)


def main(argv):
  flags_lib.run_training(argv, _FLAGS, _WORKDIR, train_fn, ptb_config.POSITIVE,
                         ptb_config.NON_NEGATIVE)


def run():
  """Console-script entry point."""
  flags_lib.run_app(main)


if __name__ == "__main__":
  run()
