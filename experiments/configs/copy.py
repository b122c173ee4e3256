"""Copy task (ALGORITHM §6): recall 10 symbols after T blanks.

What it is for: the paper's first test of long-term memory. A memoryless model
sits at loss ``10 ln 8 / (T + 20)`` ("1.0x memoryless") and 12.5% recall
accuracy; a model that remembers drives the loss to 0 and accuracy to 100%.
With ``--variable``, each batch draws its own T from [1, T - 1] (padded to
T + 20 and masked), the reference's "vari" mode with its bugs fixed.

Expected result (docs/RESULTS.md, over seeds 100-104 on a 2-core CPU): RelRNN
with these defaults (tanh, RMSprop 1e-3, H 128, batch 10, nu 10, rho 15,
henaff) climbs from chance with plateaus and dips; every seed's 100-update
block accuracy passes 99% at T = 100 by update 8,200 (median 2,900). At the
constant learning rate the recall keeps dipping (held out at 10,000: 70.7%-100%,
>= 99% in 3 of 5); with --lr_decay_from=10000 --lr_half_life=1000 every seed
holds out 100% at 15,000. A seed's trajectory reproduces exactly only on the
machine that made it. In 4k updates over the same seeds: LSTM at chance
(12.2%-13.2% held out), RNN 24%-49%, RelLSTM 23%-47%.

Command:
  relscreen-copy --model=RelRNN --T=100 --steps=15000 --lr_decay_from=10000 \
      --lr_half_life=1000 --workdir=runs/copy_relrnn_T100
"""

import ml_collections

from relscreen_experiments.configs import common

FIELDS = common.fields(extra=(
    ("variable", False, "draw T per batch from [1, T - 1] (variable-length copy)", None),))


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({name: default for name, default, _, _ in FIELDS})
