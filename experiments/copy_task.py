"""Trains a model on the copy task (ALGORITHM §6). See ``experiments/configs/copy.py``.

  relscreen-copy --model=RelRNN --T=100 --steps=10000 --workdir=runs/copy_relrnn_T100

Rerunning the same command resumes from the work directory's last checkpoint.
"""


from relscreen_experiments import flags_lib
from relscreen_experiments.configs import copy as copy_config
import relscreen as rs

_FLAGS = flags_lib.define_flags(copy_config.FIELDS)
_WORKDIR = flags_lib.define_workdir()


def make_task(config):
  kind = rs.VariableCopyTask if config.variable else rs.CopyTask
  return kind(config.T, config.n_symbols, config.c_length)


def main(argv):
  flags_lib.run_online_training(argv, _FLAGS, _WORKDIR, make_task)


def run():
  """Console-script entry point."""
  flags_lib.run_app(main)


if __name__ == "__main__":
  run()
