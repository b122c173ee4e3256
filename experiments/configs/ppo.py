"""PPO with a recurrent actor-critic on memory tasks (ALGORITHM §6, §10).

What it is for: the paper's RL use of RelLSTM as an agent's memory. The
defaults are the reference's PPO hyperparameters (torch-ac 1.1.0): 16
environments x 128 steps per update, 4 epochs, minibatches of 256 frames = 16
windows of recurrence 16, gamma 0.99, GAE 0.95, entropy 0.01, value 0.5, clip
0.2, gradient norm 0.5, Adam 1e-3; core hidden 64 with nu = rho = 5. Unlike the
reference, every environment's memory restarts when its episode ends, in acting
and in learning alike (ALGORITHM §7), so the attention never reads another episode.

Environments: gymnax MemoryChain-bsuite (``--memory_length``: how many steps the
first observation's bit must be kept), and xminigrid MiniGrid-DoorKey-5x5,
MiniGrid-MemoryS8 / S16 (success: positive reward at the episode's end).

Expected result (measured here, docs/RESULTS.md): with 1M frames, RelLSTM
keeps >= 95% success on MemoryChain up to memory length 128, the LSTM up to 16
(94% at 32, chance from 64); both solve DoorKey-5x5 (100% of 256 fresh
episodes) after about 60k frames; MemoryS8 stays at chance for both in 1M frames
and needs about 6M (memax:S6, GRU, LRU: 4 seeds of 4, S6 by 0.7M frames; LSTM 3 of 4;
RelLSTM 1 of 4; the others at 60%: the evaluation's ``by_start`` shows they remember
the object whenever it is in the first view but never learned to turn back and
look); MemoryS16 stays at chance for memax:S6 after 20M frames.

Commands:
  relscreen-ppo --env=MemoryChain-bsuite --memory_length=30 --model=RelLSTM \\
      --frames=300000 --workdir=runs/ppo_chain30_rellstm
  relscreen-ppo --env=MiniGrid-DoorKey-5x5 --model=LSTM --frames=1000000 \\
      --workdir=runs/ppo_doorkey_lstm
"""

import ml_collections

from relscreen_experiments import memax_peers
from relscreen_experiments import rl_envs
from relscreen.config import Eviction, Relevance

FIELDS = (
    ("env", "MemoryChain-bsuite", "environment: MemoryChain-bsuite or an xminigrid "
     f"MiniGrid-* id ({', '.join(rl_envs.ENVS[1:])}, ...)", None),
    ("memory_length", 5, "MemoryChain: steps between the bit and the query", None),
    ("model", "RelLSTM", "recurrent core of the agent",
     ("LSTM", "RelLSTM", "MemLSTM", "WinLSTM", "GRU", "RelGRU", "MemGRU", "WinGRU", "LRU")
     + memax_peers.MODELS),
    ("frames", 200_000, "total environment frames (rerun with more to extend)", None),
    ("seed", 1, "seed for parameters, environments and sampling: same seed, same run", None),
    ("hidden", 64, "hidden units of the core", None),
    ("nu", 5, "short-term buffer size (RelLSTM)", None),
    ("rho", 5, "relevant-set size (RelLSTM)", None),
    ("relevance", "sum", "how a state in S earns its score (Rel cores; sum is the paper's)",
     tuple(r.value for r in Relevance)),
    ("eviction", "top", "what a candidate leaving S does to R (Rel cores; top is the "
     "paper's)", tuple(e.value for e in Eviction)),
    ("decay", 0.9, "gamma of --relevance=decay, in [0, 1]", None),
    ("mem_capacity", 0, "MemLSTM: states kept per episode (0: the longest episode)", None),
    ("encoder", "auto", "observation encoder: conv (reference trunk, grids >= 7x7), "
     "mlp, or auto", ("auto", "conv", "mlp")),
    ("num_envs", 16, "parallel environments", None),
    ("frames_per_env", 128, "rollout steps per environment per update", None),
    ("epochs", 4, "PPO epochs per update", None),
    ("batch_size", 256, "frames per minibatch (windows x recurrence)", None),
    ("recurrence", 16, "steps per training window (truncated backpropagation)", None),
    ("gamma", 0.99, "discount", None),
    ("gae_lambda", 0.95, "GAE lambda", None),
    ("entropy_coef", 0.01, "entropy bonus coefficient", None),
    ("value_coef", 0.5, "value loss coefficient", None),
    ("clip_eps", 0.2, "PPO clip for the ratio and the value", None),
    ("max_grad_norm", 0.5, "clip gradients to this global norm", None),
    ("lr", 1e-3, "Adam learning rate", None),
    ("adam_eps", 1e-8, "Adam epsilon", None),
    ("log_every", 1, "updates between progress lines and metrics records", None),
    ("checkpoint_every", 10, "updates between checkpoints", None),
    ("eval_episodes", 256, "fresh episodes (each run to its end, actions sampled) scored "
     "at the end", None),
)


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({name: default for name, default, _, _ in FIELDS})
