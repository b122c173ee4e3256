"""Agent cores on one RL environment over several seeds, under one frame budget.

What it is for: comparing agent cores on an environment with no length axis
(xminigrid's MiniGrid-*: MemoryS8, MemoryS16, DoorKey-5x5), as
``relscreen-ppo-sweep`` does on MemoryChain across memory lengths. For every
core in ``--models`` and seed in ``--seeds`` it trains ``relscreen-ppo`` with
the same budget (``--frames``) and the reference's PPO defaults, then scores
the final policy on ``--eval_episodes`` fresh episodes. Writes to ``--workdir``:
  summary.json   per core and seed: success, episode length, frames/s, the
                 frames at which it learned (the mean training success of 5
                 logged updates first at 90% or more; none if never) and, on
                 MiniGrid-Memory, success on each side of the evaluation's
                 split (the cue in the first view or not; ALGORITHM §6)
  table.md       one row a core: success per seed, median, the split's
                 medians, how many seeds learned and when, frames/s
  curves.png     training success against frames: per core the median over
                 seeds, shaded from the worst seed to the best
Each run trains in its own sub-directory (``<model>_s<seed>``; single
``relscreen-ppo`` runs with the same flags there are picked up), so a rerun
resumes and skips finished runs.

Command (see docs/RESULTS.md):
  relscreen-ppo-seeds --env=MiniGrid-MemoryS8 --models=LSTM,RelLSTM --seeds=1,2,3,4 \\
      --frames=6000000 --workdir=runs/memoryS8_split
"""


from absl import flags

from relscreen_experiments import flags_lib
from relscreen_experiments import ppo_lib

_ENV = flags.DEFINE_string("env", "MiniGrid-MemoryS8", "environment (relscreen-ppo's --env)")
_MODELS = flags.DEFINE_list("models", ["LSTM", "RelLSTM"], "agent cores to compare; "
                            "RelLSTM:RELEVANCE/EVICTION picks a Rel core's rules")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2"], "seeds: every core trains once per seed")
_FRAMES = flags.DEFINE_integer("frames", 6_000_000, "frame budget of every run")
_EVAL = flags.DEFINE_integer("eval_episodes", 1024, "fresh episodes scored per run")
_WORKDIR = flags_lib.define_workdir()


def main(argv):
  flags_lib.run_training(argv, {}, _WORKDIR, lambda config, workdir: ppo_lib.run_seeds(
      workdir, _ENV.value, _MODELS.value, flags_lib.integers("seeds", _SEEDS.value, distinct=True),
      _FRAMES.value, _EVAL.value))


def run():
  """Console-script entry point (glibc's huge pages off by default: PPO gained
  nothing from them, docs/RESULTS.md)."""
  flags_lib.run_app(main, huge_pages=False)


if __name__ == "__main__":
  run()
