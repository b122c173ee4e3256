"""memax's Flax memory models as peers in relscreen's supervised loops (issue 13).

`memax <https://github.com/smorad/memax>`_ (MIT licence) collects recurrent
memory models behind one sequence interface: a stack of residual layers, each a
recurrent model run over ``(inputs, start flags)``. Four of them have Flax
(linen) versions, and relscreen trains those through the same loops, tasks,
budgets and seeds as its own models, under the model names

  memax:S6    the selective diagonal state space model of Mamba (Gu and Dao 2023)
  memax:FART  the fast autoregressive (linear) transformer (Katharopoulos et al. 2020)
  memax:LRU   the linear recurrent unit (Orvieto et al. 2023)
  memax:GRU   a gated recurrent unit (Cho et al. 2014)

each built as memax builds it (``memax.linen.train_utils``): an input
projection to ``--hidden`` units, ``--layers`` residual layers of the model, and
a linear readout to the classes, with memax's own initialisers. The wrapper
only adds the batch axis (memax's models see one sequence at a time): the
tests check that it computes exactly what memax computes row by row.

memax is an optional dependency: ``pip install -e '.[peers]'`` (the test extra
includes it). The names are always accepted by ``--model``; building one
without memax installed says what to install. They are also the RL agent's
core under ``relscreen-ppo --model=memax:S6`` (``MemaxCore``: one step at a
time, memax's start flags restarting finished episodes). Not supported for
them: the gradient diagnostics (``--diag_every``, whose probes read a
relscreen core's hidden states).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PREFIX = "memax:"
MODELS = tuple(PREFIX + kind for kind in ("S6", "FART", "LRU", "GRU"))


def is_memax(name: str) -> bool:
  return name.startswith(PREFIX)


def _train_utils():
  try:
    from memax.linen import train_utils  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("the memax:* models need the optional memax package: "
                     "pip install -e '.[peers]'") from e
  return train_utils


def check(name: str):
  """Raises a ValueError naming the model when it is unknown or memax is missing."""
  if name not in MODELS:
    raise ValueError(f"unknown memax model {name!r}; choose from {', '.join(MODELS)}")
  _train_utils()


def trunk(kind: str, hidden: int, num_outputs: int, layers: int) -> Any:
  """memax's residual model, unbatched: ``(carry, (x [t, i], start [t])) -> (carry, y)``."""
  return _train_utils().get_residual_memory_models(hidden, num_outputs, layers,
                                                   models=[kind])[kind]


def _batched_trunk(model: str, hidden: int, num_outputs: int, layers: int, **kwargs):
  """``trunk`` for ``model`` ("memax:S6", ...) over a leading batch axis (parameters
  shared by the rows); ``kwargs`` go to the Flax module (its ``name``)."""
  from memax.linen.models.residual import ResidualModel  # pylint: disable=g-import-not-at-top
  proto = trunk(model[len(PREFIX):], hidden, num_outputs, layers)
  batched = nn.vmap(ResidualModel, in_axes=0, out_axes=0, variable_axes={"params": None},
                    split_rngs={"params": False})
  return batched(make_layer_fn=proto.make_layer_fn, output_size=num_outputs,
                 recurrent_size=hidden, num_layers=layers, activation=proto.activation,
                 **kwargs)


class MemaxSequenceModel(nn.Module):
  """A memax model with relscreen's ``SequenceModel`` interface:
  ``x [b, t, i] -> (logits [b, t, c] (or [b, c] with last_only), {}, None)``."""

  name_: str  # "memax:S6", ...
  hidden: int
  num_outputs: int
  layers: int = 1
  last_only: bool = False

  @nn.compact
  def __call__(self, x, state=None, probes=None):
    if state is not None or probes is not None:
      raise ValueError(f"{self.name_}: no initial state or probes (memax models start "
                       "fresh on every sequence and expose no per-step hidden state)")
    model = _batched_trunk(self.name_, self.hidden, self.num_outputs, self.layers,
                           name="trunk")
    carry = _train_utils().add_batch_dim(model.initialize_carry(), x.shape[0])
    _, logits = model(carry, (x, jnp.zeros(x.shape[:2], bool)))
    return (logits[:, -1] if self.last_only else logits), {}, None


# --- As the recurrent core of the RL agent (experiments/rl_agent.py) ---------------


@dataclasses.dataclass(frozen=True)
class CoreConfig:
  """An RL agent's core made of a memax model: one residual layer of ``hidden``
  units reading the encoder's ``input_size`` features (rl_agent.core_config)."""

  name: str
  input_size: int
  hidden: int
  attentive: bool = False


class MemaxCore(nn.Module):
  """``step(state, x [b, i], reset [b]) -> (state, {"h": [b, hidden]})``, the
  interface of ``relscreen.RecurrentCore.step``: one time step of every
  environment, as a memax sequence of length one whose start flag is ``reset``
  (memax then starts that row from its initial carry)."""

  config: CoreConfig

  def setup(self):
    self.trunk = _batched_trunk(self.config.name, self.config.hidden, self.config.hidden, 1)

  def step(self, state, x, reset):
    states, y = self.trunk(state, (x[:, None], reset[:, None]))
    return jax.tree_util.tree_map(lambda a: a[:, -1], states), {"h": y[:, 0]}


def initial_core_state(config: CoreConfig, batch: int):
  """Zeros in memax's carry layout; every environment's first step has its reset
  flag set, which replaces them with memax's initial carry."""
  proto = trunk(config.name[len(PREFIX):], config.hidden, config.hidden, 1)
  return _train_utils().add_batch_dim(proto.zero_carry(), batch)
