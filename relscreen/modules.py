"""Flax Linen modules: they own the parameters and call the pure functions.

Linen (not NNX) on purpose: its variables are plain nested dicts, exactly the
``params`` pytree the pure functions in ``models`` take, so a module's
parameters go straight into ``jax.lax.scan``, ``jax.grad``, optax and Orbax with
no conversion; and Linen's ``nn.RNN`` wrapper accepts our ``RelevanceCell``.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from relscreen import initializers as inits
from relscreen import models
from relscreen.cells import Phi
from relscreen.models import CellType, ModelConfig


class RecurrentCore(nn.Module):
  """Any registered model over a whole sequence, and its streaming ``step``.

  ``__call__(x [b, t, i])`` returns ``(outputs, final_state)`` as
  ``models.forward``; ``step(state, x_t)`` as ``models.step``.
  """

  config: ModelConfig

  def setup(self):
    cfg = self.config
    if cfg.layers > 1:
      self.stack = [RecurrentCore(cfg.layer(i), name=f"layers_{i}")
                    for i in range(cfg.layers)]
      return
    h, i = cfg.hidden, cfg.input_size
    p = {}
    if cfg.cell is CellType.RNN:
      p["U"] = self.param("U", inits.input_kernel(cfg.i_init, i, h), (i, h))
      p["b"] = self.param("b", inits.torch_bias(i), (h,))
      p["V"] = self.param("V", inits.recurrent(cfg.r_init, h), (h, h))
      if cfg.phi is Phi.MODRELU:
        p["mod_b"] = self.param("mod_b", inits.uniform(0.01), (h,))
    elif cfg.cell is CellType.LSTM:
      p["W"] = self.param("W", inits.normal(math.sqrt(2.0 / (i + 2 * h))), (h + i, 4 * h))
      p["b"] = self.param("b", inits.torch_bias(i + h), (4 * h,))
    elif cfg.cell is CellType.GRU:  # flax.linen.GRUCell's initialisers
      zeros = lambda key, shape: jnp.zeros(shape, jnp.float32)
      p["U"] = self.param("U", nn.initializers.lecun_normal(dtype=jnp.float32), (i, 3 * h))
      p["b"] = self.param("b", zeros, (3 * h,))
      p["V"] = self.param("V", _stacked_orthogonal(3), (h, 3 * h))
      p["bn"] = self.param("bn", zeros, (h,))
    else:
      p["cell"] = self.param("cell", lambda key: cfg.user_cell.init(key, i, h, jnp.float32))
    if cfg.attentive:
      p["Ua"] = self.param("Ua", inits.uniform(1.0 / math.sqrt(h)), (h, h))
      p["Va"] = self.param("Va", inits.uniform(1.0 / math.sqrt(h)), (h, h))
      p["v"] = self.param("v", inits.normal(math.sqrt(2.0 / (h + 1))), (h,))
    self.params_dict = p

  @property
  def _params(self):
    if self.config.layers > 1:
      return {f"layers_{i}": layer._params for i, layer in enumerate(self.stack)}  # pylint: disable=protected-access
    return self.params_dict

  def __call__(self, x, state=None, probes=None, h0=None, c0=None, reset=None):
    return models.forward(self._params, self.config, x, state, probes, h0, c0, reset)

  def step(self, state, x_t, probe=None, reset=None):
    return models.step(self._params, self.config, state, x_t, probe, reset)


def _stacked_orthogonal(n: int):
  """n orthogonal [h, h] blocks side by side: [h, n h] (a GRU's three recurrent kernels)."""
  def init(key, shape, dtype=jnp.float32):
    h = shape[0]
    keys = jax.random.split(key, n)
    return jnp.concatenate([nn.initializers.orthogonal()(k, (h, h), dtype) for k in keys],
                           axis=1)
  return init


class SequenceModel(nn.Module):
  """A recurrent core with a linear head on every step's ``h_t`` (or on the last only)."""

  config: ModelConfig
  num_outputs: int
  last_only: bool = False
  core_key = "core"  # where the core's parameters are (``gradient_flow``'s core_key)

  def setup(self):
    h = self.config.hidden
    self.core = RecurrentCore(self.config)
    self.head = nn.Dense(self.num_outputs, kernel_init=inits.xavier(h, self.num_outputs),
                         bias_init=inits.torch_bias(h))

  def __call__(self, x, state=None, probes=None):
    """Returns ``(logits, outputs, final_state)``; logits [b, t, c] or [b, c]."""
    outputs, state = self.core(x, state, probes)
    h = outputs["h"][:, -1] if self.last_only else outputs["h"]
    return self.head(h), outputs, state

  def step(self, state, x_t):
    state, out = self.core.step(state, x_t)
    return self.head(out["h"]), out, state


class ResidualSequenceModel(nn.Module):
  """A core inside the residual block that memax's sequence models use (and many
  RL trunks): the same interface as ``SequenceModel``, a different block.

  ``x [b, t, i]`` -> ``Dense(H)`` -> for each of ``config.layers`` layers: the
  core (one layer of ``config``, reading H features), then ``Dense(H)``,
  ``LayerNorm`` (no scale, no bias) and leaky ReLU (slope 0.01) -> ``Dense(classes)``.
  Every ``Dense`` has Flax's default initialisers (LeCun normal, zero bias), as in
  memax; the cores keep relscreen's (the paper's) initialisers and take their
  own reverse pass. ``SequenceModel`` instead reads ``h_t`` with one linear head,
  as the paper does.

  The state is what ``models.init_state(config, b)`` makes: one ``State``, or a
  tuple of them, one per layer. ``probes`` reach the core (one layer only), so
  the gradient diagnostics measure ``dL/dh_t`` of the core's hidden states.
  """

  config: ModelConfig
  num_outputs: int
  last_only: bool = False
  core_key = "core_0"  # the first core's parameters (``gradient_flow``'s core_key)

  def setup(self):
    cfg, h = self.config, self.config.hidden
    self.map_in = nn.Dense(h)
    self.cores = [RecurrentCore(dataclasses.replace(cfg.layer(i), input_size=h),
                                name=f"core_{i}") for i in range(cfg.layers)]
    self.ff = [nn.Dense(h) for _ in range(cfg.layers)]
    self.norm = nn.LayerNorm(use_scale=False, use_bias=False)  # no parameters
    self.head = nn.Dense(self.num_outputs)

  def _layer_state(self, state, i):
    if state is None or self.config.layers == 1:
      return state
    return state[i]

  def _states(self, states):
    return states[0] if self.config.layers == 1 else tuple(states)

  def _feed_forward(self, i, h):
    return nn.leaky_relu(self.norm(self.ff[i](h)))

  def __call__(self, x, state=None, probes=None):
    """Returns ``(logits, outputs of the top core, final_state)``, as ``SequenceModel``."""
    if probes is not None and self.config.layers > 1:
      raise ValueError("probes are for one layer; this block has "
                       f"{self.config.layers}")
    z, finals, out = self.map_in(x), [], None
    for i, core in enumerate(self.cores):
      out, final = core(z, self._layer_state(state, i), probes)
      finals.append(final)
      z = self._feed_forward(i, out["h"])
    return self.head(z[:, -1] if self.last_only else z), out, self._states(finals)

  def step(self, state, x_t):
    """One streaming step: ``(logits [b, c], outputs of the top core, state)``."""
    z, new, out = self.map_in(x_t), [], None
    for i, core in enumerate(self.cores):
      layer_state, out = core.step(self._layer_state(state, i), z)
      new.append(layer_state)
      z = self._feed_forward(i, out["h"])
    return self.head(z), out, self._states(new)


# What surrounds the core, by the binaries' --block name.
BLOCKS = {"linear": SequenceModel, "residual": ResidualSequenceModel}


class RelevanceCell(nn.RNNCellBase):
  """Any registered model as a Flax recurrent cell, for ``flax.linen.RNN``.

  The carry is a ``models.State`` whose step counter ``t`` has one entry per
  batch row (all equal), so every leaf has the batch axis first: ``nn.RNN``'s
  ``seq_lengths``, ``return_carry`` and ``nn.Bidirectional`` slice carries per
  row. RelRNN/RelLSTM carries have a fixed size; MemRNN/MemLSTM need
  ``capacity`` (how many states to keep). ``dtype`` is the carry's float type
  (the inputs' dtype).
  """

  config: ModelConfig
  capacity: int | None = None
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.config.layers > 1:
      raise ValueError(f"RelevanceCell is one layer; {self.config.name} has "
                       f"{self.config.layers}: stack nn.RNN(RelevanceCell(...)) layers instead")
    super().__post_init__()

  @nn.compact
  def __call__(self, carry, x):
    t = carry.t
    state = carry._replace(t=t[0] if jnp.ndim(t) else t)
    state, out = RecurrentCore(self.config, name="core").step(state, x)
    return state._replace(t=jnp.broadcast_to(state.t, jnp.shape(t))), out["h"]

  def initialize_carry(self, rng, input_shape) -> Any:
    del rng
    batch = input_shape[0]
    state = models.init_state(self.config, batch, capacity=self.capacity, dtype=self.dtype)
    return state._replace(t=jnp.zeros((batch,), state.t.dtype))

  @property
  def num_feature_axes(self) -> int:
    return 1


class LanguageModel(nn.Module):
  """Embedding -> recurrent core -> linear decoder over the vocabulary (char-PTB).

  Inits follow the reference: embedding and decoder weights U(-0.1, 0.1),
  decoder bias 0. ``__call__(tokens [b, t], state)`` returns
  ``(logits [b, t, V], outputs, final_state)``.
  """

  config: ModelConfig
  vocab_size: int

  def setup(self):
    self.embed = nn.Embed(self.vocab_size, self.config.input_size,
                          embedding_init=inits.uniform(0.1))
    self.core = RecurrentCore(self.config)
    self.decoder = nn.Dense(self.vocab_size, kernel_init=inits.uniform(0.1),
                            bias_init=nn.initializers.zeros)

  def __call__(self, tokens, state=None, h0=None, c0=None):
    outputs, state = self.core(self.embed(tokens), state, h0=h0, c0=c0)
    return self.decoder(outputs["h"]), outputs, state
