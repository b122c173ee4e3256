"""Sequential and permuted MNIST (ALGORITHM §6): classify an image read one pixel a step.

What it is for: long sequences (784 steps) with a single label at the end, the
paper's test of credit assignment over long spans. With ``--data_dir`` it reads
the four standard MNIST IDX files (raw or gzipped): the first 50k training
images train, the last 10k validate, t10k tests. Without it, the same protocol
runs on scikit-learn's built-in 8x8 digits (64 steps: 1000 train, 297
validation, 500 test), which fits a CPU. ``--permute`` applies
``numpy.random.RandomState(100).permutation`` to the pixel order. The test
accuracy reported is that of the epoch with the best validation accuracy.

Defaults follow the reference's pixelmnist.py (ALGORITHM §9): H 100,
nu 10, rho 10, RMSprop 1e-3 (alpha 0.99), clip 1.0, batch 100, seed 100.

Command (permuted digits, RelLSTM; see docs/RESULTS.md):
  relscreen-mnist --model=RelLSTM --epochs=30 --workdir=runs/pdigits_rellstm
"""

import ml_collections

from relscreen_experiments.configs import common

_DROP = ("T", "steps", "n_symbols", "c_length", "checkpoint_every", "eval_batches")

FIELDS = tuple(f for f in common.fields(
    model="RelLSTM", hidden=100, nu=10, rho=10, batch=100, i_init="kaiming",
    eval_batch_size=500, log_every=50) if f[0] not in _DROP) + (
        ("dataset", "digits", "digits (scikit-learn, built in) or mnist (IDX files)",
         ("digits", "mnist")),
        ("data_dir", "", "folder with the MNIST IDX files (needed for --dataset=mnist)",
         None),
        ("permute", True, "permute the pixel order (pMNIST)", None),
        ("epochs", 30, "training epochs (rerun with a larger value to extend)", None),
        ("max_batches", 0, "cap on training batches per epoch (0: the whole training "
         "set; an MNIST epoch is 500 batches, about 40 minutes for RelLSTM on a 2-core "
         "CPU)", None),
    )

POSITIVE = ("batch", "hidden", "nu", "rho", "k", "lr", "eval_batch_size", "epochs",
            "log_every")
NON_NEGATIVE = ("clip", "remat_chunk", "max_batches")


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({name: default for name, default, _, _ in FIELDS})
