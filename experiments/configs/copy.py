"""Copy task (SPEC 6): recall 10 symbols after T blanks.

What it is for: the paper's first test of long-term memory. A memoryless model
sits at loss ``10 ln 8 / (T + 20)`` ("1.0x baseline") and 12.5% recall accuracy;
a model that remembers drives both to 0 loss and 100% accuracy.

Expected result (measured here, see docs/RESULTS.md): RelRNN with these defaults
reaches >= 99% recall accuracy at T = 100 within about 2k updates, while LSTM and
RNN stay near chance in the same budget.

Command:
  relscreen-copy --model=RelRNN --T=100 --steps=3000 --workdir=runs/copy_relrnn_T100
"""

import ml_collections

from relscreen.models import REGISTRY

# (name, default, help, choices or None). Each field is also an absl flag.
FIELDS = (
    ("model", "RelRNN", "registered model to train", tuple(REGISTRY)),
    ("T", 100, "delay between the symbols and the marker (sequence length T + 20)", None),
    ("steps", 3000, "total training updates (rerun with a larger value to extend)", None),
    ("seed", 100, "seed for parameters and data: same seed, same run", None),
    ("batch", 10, "sequences per update", None),
    ("hidden", 128, "hidden units H", None),
    ("phi", "tanh", "RNN nonlinearity", ("tanh", "relu", "modrelu", "sigmoid", "identity")),
    ("nu", 10, "short-term buffer size (RelRNN/RelLSTM)", None),
    ("rho", 15, "relevant-set size (RelRNN/RelLSTM)", None),
    ("k", 1, "store every k-th state (attentive models)", None),
    ("attn", 1.0, "weight of the attended context in the mixed state (RNN family)", None),
    ("r_init", "henaff", "recurrent kernel init",
     ("henaff", "cayley", "random", "xavier", "kaiming", "identity")),
    ("i_init", "xavier", "input kernel init", ("xavier", "kaiming")),
    ("optimizer", "rmsprop", "torch-equivalent optimiser", ("rmsprop", "adam")),
    ("lr", 1e-3, "learning rate", None),
    ("alpha", 0.99, "RMSprop smoothing constant", None),
    ("clip", 1.0, "clip gradients to this global norm (0: no clipping)", None),
    ("n_symbols", 8, "alphabet size of the symbols to copy", None),
    ("c_length", 10, "number of symbols to copy", None),
    ("remat_chunk", 0, "rematerialise the scan in chunks of this many steps (0: off)", None),
    ("log_every", 100, "updates between progress lines and metrics records", None),
    ("checkpoint_every", 500, "updates between checkpoints", None),
    ("eval_batches", 10, "held-out batches evaluated at the end", None),
    ("eval_batch_size", 100, "sequences per held-out batch", None),
)


def get_config() -> ml_collections.ConfigDict:
  """The defaults of the copy binary (RelRNN, tanh, RMSprop 1e-3, H 128, batch 10)."""
  return ml_collections.ConfigDict({name: default for name, default, _, _ in FIELDS})
