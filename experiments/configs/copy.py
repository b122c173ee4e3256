"""Copy task (ALGORITHM §6): recall 10 symbols after T blanks.

What it is for: the paper's first test of long-term memory. A memoryless model
sits at loss ``10 ln 8 / (T + 20)`` ("1.0x memoryless") and 12.5% recall
accuracy; a model that remembers drives the loss to 0 and accuracy to 100%.
With ``--variable``, each batch draws its own T from [1, T - 1] (padded to
T + 20 and masked), the reference's "vari" mode with its bugs fixed.

Expected result (measured here, docs/RESULTS.md): RelRNN with these defaults
(tanh, RMSprop 1e-3, H 128, batch 10, nu 10, rho 15, henaff) first passes 99%
recall accuracy at T = 100 after 5.4k updates with the current code (2.8k and
3.4k with earlier versions whose float rounding differed: the trajectory is
sensitive), with dips that recover, and holds out 99.9% at 6k; LSTM stays at
chance (12.5%) and RNN near 35% in 4k updates.

Command:
  relscreen-copy --model=RelRNN --T=100 --steps=6000 --workdir=runs/copy_relrnn_T100
"""

import ml_collections

from relscreen_experiments.configs import common

FIELDS = common.fields(extra=(
    ("variable", False, "draw T per batch from [1, T - 1] (variable-length copy)", None),))


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({name: default for name, default, _, _ in FIELDS})
