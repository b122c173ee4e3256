"""Denoise (ALGORITHM §6): recall, in order, 10 symbols scattered among T + 9 blanks.

What it is for: unlike copy, the symbols' positions are random, so a model must
decide which past states are relevant; this is the task the paper uses for its
relevance-screening analysis. A memoryless model scores ``10 ln 8 / (T + 20)``
("1.0x memoryless") and 12.5% recall accuracy.

Defaults are the reference's (ALGORITHM §9): nu 15, rho 15, kaiming input
init, henaff recurrent init, modrelu, RMSprop 1e-3 (alpha 0.99), clip 1.0,
H 128, batch 10, T 200, seed 100.

Command:
  relscreen-denoise --model=RelRNN --T=100 --steps=5000 --workdir=runs/denoise_relrnn_T100
"""

import ml_collections

from relscreen_experiments.configs import common

FIELDS = common.fields(T=200, nu=15, rho=15, i_init="kaiming", phi="modrelu", steps=5000)


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({name: default for name, default, _, _ in FIELDS})
