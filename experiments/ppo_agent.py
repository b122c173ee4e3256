"""Trains a recurrent PPO agent on a memory task. See ``experiments/configs/ppo.py``.

  relscreen-ppo --env=MemoryChain-bsuite --memory_length=30 --model=RelLSTM \\
      --frames=300000 --workdir=runs/ppo_chain30_rellstm

Rerunning the same command resumes from the work directory's last checkpoint.
"""


from relscreen_experiments import flags_lib
from relscreen_experiments.configs import ppo as ppo_config

_FLAGS = flags_lib.define_flags(ppo_config.FIELDS)
_WORKDIR = flags_lib.define_workdir()


def main(argv):
  from relscreen_experiments import train_ppo  # pylint: disable=g-import-not-at-top
  flags_lib.run_training(argv, _FLAGS, _WORKDIR, train_ppo.train_and_evaluate)


def run():
  """Console-script entry point (glibc's huge pages off by default: PPO gained
  nothing from them, docs/RESULTS.md)."""
  flags_lib.run_app(main, huge_pages=False)


if __name__ == "__main__":
  run()
