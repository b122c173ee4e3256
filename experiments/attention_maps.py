"""Attention maps of a trained copy or denoise run: what the memory holds, and why.

What it is for: seeing relevancy screening work. Loads the latest checkpoint of
a ``relscreen-copy`` or ``relscreen-denoise`` work directory, runs held-out
sequences with per-step diagnostics, and draws to ``--workdir``:
  attention.png  time x past position: the weight each step gives each stored
                 state (heatmap), with the symbol positions marked
  relevance.png  histogram of the relevance scores of screened candidates,
                 symbol positions against the rest
  relevant_set.png  the relevant set R at the last step against the input
and attention.json with the numbers behind them (per-step weights by position,
R's final time indices, symbol positions). For copy and denoise a trained
RelRNN's R should hold the symbol positions.

Command:
  relscreen-attention --checkpoint_dir=runs/denoise_relrnn_T100 --workdir=runs/maps_denoise
"""

import json

from absl import flags
import numpy as np

from relscreen_experiments import rundir
from relscreen_experiments import flags_lib
from relscreen_experiments.attention_lib import collect, draw

_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint_dir", None,
                                      "work directory of a copy or denoise run")
_SEQUENCES = flags.DEFINE_integer("sequences", 100, "held-out sequences for the statistics")
_SEED = flags.DEFINE_integer("seed", 7, "seed of the held-out sequences")
_WORKDIR = flags_lib.define_workdir()
flags.mark_flag_as_required("checkpoint_dir")


def train_fn(config, workdir):
  del config
  if _SEQUENCES.value < 1:
    raise ValueError("--sequences must be >= 1")
  workdir = rundir.prepare(workdir)  # before the work, not after
  info = collect(_CHECKPOINT_DIR.value, _SEQUENCES.value, _SEED.value)
  draw(info, workdir)
  (workdir / "attention.json").write_text(json.dumps(
      {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in info.items()}) + "\n")


def main(argv):
  flags_lib.run_training(argv, {}, _WORKDIR, train_fn)


def run():
  """Console-script entry point."""
  flags_lib.run_app(main)


if __name__ == "__main__":
  run()
