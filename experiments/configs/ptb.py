"""Character-level Penn Treebank (ALGORITHM §6): next-character prediction, bits per char.

What it is for: a real sequence-modelling benchmark where memory over long
contexts pays. The corpus is the standard char-PTB: with ``--data_dir``, the
files ``ptb.char.{train,valid,test}.txt``; without, derived from the word-level
PTB that the ``treebank`` package ships (50 symbols, 5.0M training characters).
The recurrent state is carried across BPTT windows; ``--carry_memory`` also
carries RelRNN/RelLSTM's attention memory (the reference clears it per window).

Defaults are the reference's PTBtask.py (ALGORITHM §9): embedding 200,
H 1024, batch 128 (evaluation 10), bptt 150, nu = rho = 10, RMSprop 1e-4 with
alpha 0.9, no clipping, cayley/kaiming, modrelu, learning rate halved whenever
validation does not improve, seed 400. The reference reached 1.43 BPC (LSTM,
RMSprop 1e-3) and 1.54 BPC (RelRNN, tanh, Adam 1e-4) on GPUs; a full epoch at
these sizes takes hours on a 2-core CPU, so ``--max_windows`` caps an epoch.

Command (small CPU budget, see docs/RESULTS.md):
  relscreen-ptb --model=RelRNN --phi=tanh --optimizer=adam --hidden=256 --batch=32 \
      --epochs=3 --max_windows=200 --workdir=runs/ptb_relrnn
"""

import ml_collections

from relscreen_experiments.configs import common

# block: the language model has its own embedding and decoder around the core.
_DROP = ("T", "steps", "n_symbols", "c_length", "checkpoint_every", "eval_batches", "block")

FIELDS = tuple(f for f in common.fields(
    model="RelRNN", hidden=1024, nu=10, rho=10, batch=128, lr=1e-4, alpha=0.9, clip=0.0,
    r_init="cayley", i_init="kaiming", phi="modrelu", seed=400, eval_batch_size=10,
    log_every=20) if f[0] not in _DROP) + (
        ("data_dir", "", "folder with ptb.char.{train,valid,test}.txt ('' = treebank)", None),
        ("emsize", 200, "embedding size (the core's input size)", None),
        ("bptt", 150, "characters per BPTT window", None),
        ("carry_memory", False, "carry RelRNN/RelLSTM's memory across windows", None),
        ("epochs", 100, "training epochs (rerun with a larger value to extend)", None),
        ("max_windows", 0, "cap on training windows per epoch (0: the whole corpus)", None),
    )

POSITIVE = ("batch", "hidden", "nu", "rho", "k", "lr", "eval_batch_size", "epochs",
            "emsize", "bptt", "log_every")
NON_NEGATIVE = ("clip", "remat_chunk", "max_windows")


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({name: default for name, default, _, _ in FIELDS})
