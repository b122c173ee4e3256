"""Trains a model on the denoise task (ALGORITHM §6). See ``experiments/configs/denoise.py``.

  relscreen-denoise --model=RelRNN --T=100 --steps=5000 --workdir=runs/denoise_relrnn_T100

Rerunning the same command resumes from the work directory's last checkpoint.
"""


from relscreen_experiments import flags_lib
from relscreen_experiments.configs import denoise as denoise_config
import relscreen as rs

_FLAGS = flags_lib.define_flags(denoise_config.FIELDS)
_WORKDIR = flags_lib.define_workdir()


def main(argv):
  flags_lib.run_online_training(
      argv, _FLAGS, _WORKDIR,
      lambda config: rs.DenoiseTask(config.T, config.n_symbols, config.c_length))


def run():
  """Console-script entry point."""
  flags_lib.run_app(main)


if __name__ == "__main__":
  run()
