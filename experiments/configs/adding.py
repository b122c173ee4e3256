"""The adding problem (the authors' addtask.py, not in the paper): a small extra.

What it is for: a classic long-range regression test. The model reads 2T
steps and must output, at the last step, the sum of the two values marked in
the second half. Predicting 1 scores MSE 1/6 ("1.0x memoryless"); "accuracy"
is the fraction of answers within 0.04 of the target.

Defaults follow addtask.py (ALGORITHM §9): RMSprop 1e-4, batch 10, clip
1.0, T 100, H 128, with the reference's MSE broadcasting bug fixed; RelRNN and
RelLSTM work here (the reference could not build them for this task).

Command:
  relscreen-adding --model=RelRNN --T=100 --steps=5000 --workdir=runs/adding_relrnn
"""

import ml_collections

from relscreen_experiments.configs import common

_DROP = ("n_symbols", "c_length")

FIELDS = tuple(f for f in common.fields(lr=1e-4, steps=5000) if f[0] not in _DROP)
POSITIVE = tuple(n for n in common.POSITIVE if n not in _DROP)


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({name: default for name, default, _, _ in FIELDS})
