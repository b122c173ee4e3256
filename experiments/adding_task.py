"""Trains a model on the adding problem. See ``experiments/configs/adding.py``.

  relscreen-adding --model=RelRNN --T=100 --steps=5000 --workdir=runs/adding_relrnn
"""


from relscreen_experiments import flags_lib
from relscreen_experiments.configs import adding as adding_config
import relscreen as rs

_FLAGS = flags_lib.define_flags(adding_config.FIELDS)
_WORKDIR = flags_lib.define_workdir()


def main(argv):
  flags_lib.run_online_training(argv, _FLAGS, _WORKDIR, lambda config: rs.AddingTask(config.T),
                         positive=adding_config.POSITIVE)


def run():
  """Console-script entry point."""
  flags_lib.run_app(main)


if __name__ == "__main__":
  run()
