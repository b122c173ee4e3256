"""The recurrent actor-critic of the RL experiments (ALGORITHM §10, ported).

Observation -> encoder (64 features) -> recurrent core (LSTM, RelLSTM or MemLSTM,
hidden 64) -> actor ``Linear(64) tanh Linear(actions)`` and critic
``Linear(64) tanh Linear(1)``. One call is one time step of every environment;
``reset`` [b] restarts the core of the environments whose episode just began.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from relscreen_experiments import memax_peers
import relscreen as rs
from relscreen import models

EMBEDDING = 64
GRID_CODES = 16  # xminigrid tile and colour codes are < 16


def row_normalized(key, shape, dtype=jnp.float32):
  """The reference's ``init_params``: each unit's incoming weights ~ N(0, 1), unit L2 norm."""
  w = jax.random.normal(key, shape, dtype)  # [in, out]: one column per output unit
  return w / jnp.linalg.norm(w, axis=0, keepdims=True)


def _dense(features: int) -> nn.Dense:
  return nn.Dense(features, kernel_init=row_normalized, bias_init=nn.initializers.zeros)


class Encoder(nn.Module):
  """``conv``: the reference trunk for 7x7 grids (integer codes, not normalised);
  ``mlp``: one-hot codes (grids) or raw features (vectors), then ``Linear(64)`` ReLU."""

  kind: str  # "conv" or "mlp"
  grid: bool

  @nn.compact
  def __call__(self, obs):
    b = obs.shape[0]
    if self.kind == "conv":
      x = obs.astype(jnp.float32)
      x = nn.relu(nn.Conv(16, (2, 2), padding="VALID")(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
      x = nn.relu(nn.Conv(32, (2, 2), padding="VALID")(x))
      x = nn.relu(nn.Conv(64, (2, 2), padding="VALID")(x))
      return x.reshape(b, -1)
    if self.grid:
      x = jax.nn.one_hot(obs.astype(jnp.int32), GRID_CODES).reshape(b, -1)
    else:
      x = obs.reshape(b, -1).astype(jnp.float32)
    return nn.relu(_dense(EMBEDDING)(x))


def conv_fits(obs_shape) -> bool:
  """The reference trunk needs a view of at least 7x7 (three 2x2 convs and a 2x2 pool)."""
  return len(obs_shape) == 3 and min(obs_shape[:2]) >= 7


class ActorCritic(nn.Module):
  """``(core_state, obs [b, ...], reset [b]) -> (core_state, logits [b, A], value [b])``."""

  core: models.ModelConfig | memax_peers.CoreConfig  # input_size: the encoder's width
  num_actions: int
  encoder: str
  grid: bool

  def setup(self):
    self.encode = Encoder(self.encoder, self.grid)
    if isinstance(self.core, memax_peers.CoreConfig):
      self.memory = memax_peers.MemaxCore(self.core)
    else:
      self.memory = rs.RecurrentCore(self.core)
    self.actor = [_dense(64), _dense(self.num_actions)]
    self.critic = [_dense(64), _dense(1)]

  def __call__(self, state, obs, reset):
    x = self.encode(obs)
    state, out = self.memory.step(state, x, reset=reset)
    return (state, *self._heads(out["h"]))

  def _heads(self, h):
    logits = self.actor[1](jnp.tanh(self.actor[0](h)))
    value = self.critic[1](jnp.tanh(self.critic[0](h)))[..., 0]
    return logits, value

  def window(self, state, obs, reset):
    """A window of steps at once, time-major: ``obs`` [r, b, ...], ``reset`` [r, b]
    -> (logits [r, b, A], value [r, b]); the same as ``__call__`` step by step.
    A relscreen core runs ``forward`` over the window with the resets inside it
    (the custom reverse pass for relevance-screened and window memories); a
    memax core has no such pass: ``replay`` steps it instead."""
    r, b = reset.shape
    x = self.encode(obs.reshape((r * b,) + obs.shape[2:])).reshape(r, b, -1)
    out, _ = self.memory(jnp.swapaxes(x, 0, 1), state, reset=jnp.swapaxes(reset, 0, 1))
    return self._heads(jnp.swapaxes(out["h"], 0, 1))


def core_config(model: str, obs_shape, encoder: str, hidden: int, nu: int,
                rho: int, **options) -> models.ModelConfig | memax_peers.CoreConfig:
  """The recurrent core's config; ``encoder`` decides its input width; ``options``
  (relevance and eviction rules) go to ``model_config``; a ``memax:*`` name gives
  a memax model's core (``memax_peers.CoreConfig``)."""
  width = EMBEDDING if encoder == "mlp" else 64 * ((min(obs_shape[:2]) - 1) // 2 - 2) ** 2
  if memax_peers.is_memax(model):
    memax_peers.check(model)
    return memax_peers.CoreConfig(model, width, hidden)
  if not model.endswith(("LSTM", "GRU", "LRU")):
    raise ValueError(f"--model={model!r}: the RL agent's core is an LSTM, GRU or LRU cell, "
                     "with or without memory (LSTM, RelLSTM, MemLSTM, WinLSTM, GRU, ...), "
                     "or a memax model (memax:S6, ...)")
  return rs.model_config(model, width, hidden=hidden, nu=nu, rho=rho, **options)


def initial_state(core: models.ModelConfig | memax_peers.CoreConfig, batch: int,
                  capacity: int) -> Any:
  """A fresh core state; MemLSTM keeps up to ``capacity`` states per environment."""
  if isinstance(core, memax_peers.CoreConfig):
    return memax_peers.initial_core_state(core, batch)
  return models.init_state(core, batch, capacity=capacity)


def stored_core(cores, block, env):
  """The core states a rollout stored (``cores``: one per block of steps, each
  [b, ...]) at blocks ``block`` [m] of environments ``env`` [m]."""
  if not isinstance(cores, models.State):  # a memax carry: every leaf is [blocks, b, ...]
    return jax.tree_util.tree_map(lambda a: a[block, env], cores)
  core = jax.tree_util.tree_map(lambda a: a[block, env], cores._replace(t=None))
  return core._replace(t=jnp.max(cores.t))  # t only matters as "not the first step"


def check_capacity(capacity: int, max_episode_steps: int, model: str) -> int:
  """MemLSTM's memory size: the given one, or one episode's worth when 0."""
  if model != "MemLSTM":
    return 1
  return capacity or int(math.ceil(max_episode_steps))
