"""The field table shared by the supervised binaries (copy, denoise, ...).

Each field is ``(name, default, help, choices or None)`` and becomes an absl
flag of the same name; a binary's config module overrides the defaults.
"""

from relscreen.config import REGISTRY, Eviction, Relevance
from relscreen.modules import BLOCKS
from relscreen_experiments import memax_peers

# Every name --model takes: relscreen's registry, then memax's models (optional).
MODEL_NAMES = tuple(REGISTRY) + memax_peers.MODELS

_BASE = (
    ("model", "RelRNN", "model to train: a memory prefix (Mem, Rel, Win or none) and a "
     "cell (RNN, LSTM, GRU), or LRU (a linear recurrent unit, no memory), or a memax model "
     "(memax:S6, memax:FART, memax:LRU, memax:GRU; needs .[peers])", MODEL_NAMES),
    ("T", 100, "delay T of the task (sequence length T + 2 c_length)", None),
    ("steps", 3000, "total training updates (rerun with a larger value to extend)", None),
    ("seed", 100, "seed for parameters and data: same seed, same run", None),
    ("batch", 10, "sequences per update", None),
    ("hidden", 128, "hidden units H", None),
    ("phi", "tanh", "RNN nonlinearity", ("tanh", "relu", "modrelu", "sigmoid", "identity")),
    ("nu", 10, "short-term buffer size (RelRNN/RelLSTM)", None),
    ("rho", 15, "relevant-set size (RelRNN/RelLSTM)", None),
    ("k", 1, "store every k-th state (attentive models)", None),
    ("relevance", "sum", "how a state in S earns its score (Rel models; sum is the paper's)",
     tuple(r.value for r in Relevance)),
    ("eviction", "top", "what a candidate leaving S does to R (Rel models; top is the "
     "paper's)", tuple(e.value for e in Eviction)),
    ("decay", 0.9, "gamma of --relevance=decay, in [0, 1]", None),
    ("layers", 1, "stacked layers, each with its own memory", None),
    ("block", "linear", "what surrounds the core: linear (one linear readout of h_t, the "
     "paper's) or residual (memax's block: input projection to --hidden, then per layer "
     "the core and dense + layer norm + leaky ReLU, then the readout; memax:* models "
     "always have it)", tuple(BLOCKS)),
    ("custom_vjp", True, "differentiate attentive RNN/LSTM models with the hand-built "
     "reverse pass (same gradients as autodiff, O(L B H) memory)", None),
    ("attn", 1.0, "weight of the attended context in the mixed state (RNN family)", None),
    ("r_init", "henaff", "recurrent kernel init",
     ("henaff", "cayley", "random", "xavier", "kaiming", "identity")),
    ("i_init", "xavier", "input kernel init", ("xavier", "kaiming")),
    ("optimizer", "rmsprop", "torch-equivalent optimiser", ("rmsprop", "adam")),
    ("lr", 1e-3, "learning rate", None),
    ("lr_half_life", 0, "halve the learning rate every this many updates after "
     "--lr_decay_from, smoothly (0: constant, the paper's)", None),
    ("lr_decay_from", 0, "update after which --lr_half_life applies", None),
    ("lr_decay_at_accuracy", 0.0, "start --lr_half_life's decay only after the first "
     "logged block (at or after --lr_decay_from) whose training accuracy reaches this, "
     "in [0, 1] (0: at --lr_decay_from)", None),
    ("alpha", 0.99, "RMSprop smoothing constant", None),
    ("clip", 1.0, "clip gradients to this global norm (0: no clipping)", None),
    ("n_symbols", 8, "alphabet size of the symbols to remember", None),
    ("c_length", 10, "number of symbols to remember", None),
    ("remat_chunk", 0, "rematerialise the scan in chunks of this many steps (0: off)", None),
    ("log_every", 100, "updates between progress lines and metrics records", None),
    ("checkpoint_every", 500, "updates between checkpoints", None),
    ("eval_batches", 10, "held-out batches evaluated at the end", None),
    ("eval_batch_size", 100, "sequences per held-out batch", None),
    ("diag_every", 0, "updates between gradient-flow diagnostics, written to "
     "gradients.jsonl (0: off)", None),
    ("data_parallel", False, "split each batch over all devices (jax.sharding); the "
     "result equals the single-device run", None),
)

# Flags that must be > 0, and those that may also be 0.
POSITIVE = ("T", "batch", "hidden", "nu", "rho", "k", "layers", "lr", "n_symbols", "c_length",
            "log_every", "checkpoint_every", "eval_batch_size")
NON_NEGATIVE = ("steps", "eval_batches", "clip", "remat_chunk", "diag_every", "decay",
                "lr_half_life", "lr_decay_from", "lr_decay_at_accuracy")

# Fields added after runs were first written: a config.json without one ran with
# this value (so those runs still resume and load).
LATER_FIELDS = {"relevance": "sum", "eviction": "top", "decay": 0.9, "layers": 1,
                "custom_vjp": True, "lr_half_life": 0, "lr_decay_from": 0,
                "block": "linear", "lr_decay_at_accuracy": 0.0}
# The later fields that configure the model (the others configure training).
MODEL_FIELDS = ("relevance", "eviction", "decay", "layers", "custom_vjp")


def fields(extra=(), **defaults):
  """The shared table with ``defaults`` overridden, plus ``extra`` fields."""
  names = {f[0] for f in _BASE}
  unknown = set(defaults) - names
  if unknown:
    raise KeyError(f"unknown config fields {sorted(unknown)}")
  return tuple((n, defaults.get(n, d), h, c) for n, d, h, c in _BASE) + tuple(extra)
