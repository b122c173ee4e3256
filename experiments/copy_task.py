"""Trains a model on the copy task (SPEC 6). See ``experiments/configs/copy.py``.

  relscreen-copy --model=RelRNN --T=100 --steps=3000 --workdir=runs/copy_relrnn_T100

Rerunning the same command resumes from the work directory's last checkpoint.
"""

import sys

from absl import app
from absl import flags

from experiments import flags_lib
from experiments import train
from experiments.configs import copy as copy_config
import relscreen as rs

_FLAGS = flags_lib.define_flags(copy_config.FIELDS)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for metrics, checkpoints, plots")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  flags_lib.quiet_other_loggers()
  config = flags_lib.config_from_flags(_FLAGS)
  try:
    flags_lib.require_positive(config, "T", "batch", "hidden", "nu", "rho", "k", "lr",
                               "n_symbols", "c_length", "log_every", "checkpoint_every",
                               "eval_batch_size", allow_zero=("steps", "eval_batches",
                                                              "clip", "remat_chunk"))
    task = rs.CopyTask(config.T, config.n_symbols, config.c_length)
    train.train_and_evaluate(config, _WORKDIR.value, task)
  except (ValueError, train.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def run():
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
