"""Trains a character-level language model on Penn Treebank (SPEC 6).

See ``experiments/configs/ptb.py``.

  relscreen-ptb --model=RelRNN --phi=tanh --optimizer=adam --hidden=256 --batch=32 \
      --epochs=3 --max_windows=200 --workdir=runs/ptb_relrnn
"""

import sys

from absl import app

from experiments import flags_lib
from experiments import train
from experiments import train_lm
from experiments.configs import ptb as ptb_config
from relscreen import datasets

_FLAGS = flags_lib.define_flags(ptb_config.FIELDS)
_WORKDIR = flags_lib.define_workdir()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  flags_lib.quiet_other_loggers()
  config = flags_lib.config_from_flags(_FLAGS)
  try:
    flags_lib.require_positive(config, ptb_config.POSITIVE, ptb_config.NON_NEGATIVE)
    splits, vocab = datasets.load_ptb_chars(config.data_dir or None)
    train_lm.train_and_evaluate(config, _WORKDIR.value, splits, vocab)
  except (ValueError, train.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def run():
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
