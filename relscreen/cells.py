"""Recurrent cell steps without attention (ALGORITHM §1).

Dimension legend used in every module of the library:
  b batch, t time, i input features, h hidden units, m memory slots.

A cell step takes the *projected input* ``xp = x @ U + b`` (computed once for a
whole sequence outside the scan) and the recurrent input, so the scan body holds
only the work that truly depends on the previous step.
"""

import enum
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Phi(enum.Enum):
  """The RNN nonlinearity. ``RELU`` is a real ReLU (ALGORITHM §7)."""

  TANH = "tanh"
  RELU = "relu"
  MODRELU = "modrelu"
  SIGMOID = "sigmoid"
  IDENTITY = "identity"


def add_bias(z: Array, bias: Array) -> Array:
  """``z + bias`` with the bias [h] broadcast explicitly over z's leading axes."""
  return z + bias.reshape((1,) * (z.ndim - bias.ndim) + bias.shape)


def modrelu(z: Array, bias: Array) -> Array:
  """``sign(z) * max(|z| + bias, 0)`` with ``sign(0) = 0`` (Arjovsky et al. 2016)."""
  return jnp.sign(z) * jax.nn.relu(add_bias(jnp.abs(z), bias))


def apply_phi(phi: Phi, z: Array, modrelu_bias: Array | None = None) -> Array:
  """Applies the nonlinearity ``phi``; ``modrelu_bias`` is needed for MODRELU only."""
  if phi is Phi.TANH:
    return jnp.tanh(z)
  if phi is Phi.RELU:
    return jax.nn.relu(z)
  if phi is Phi.MODRELU:
    return modrelu(z, modrelu_bias)
  if phi is Phi.SIGMOID:
    return jax.nn.sigmoid(z)
  if phi is Phi.IDENTITY:
    return z
  raise ValueError(f"unknown phi {phi!r}")


def rnn_step(params: dict, phi: Phi, xp: Array, s: Array) -> tuple[Array, Array]:
  """One RNN step ``h = phi(xp + s V)``.

  Args:
    params: holds ``V`` [h, h] and, for modrelu, ``mod_b`` [h].
    phi: the nonlinearity.
    xp: projected input ``x U + b``, [b, h].
    s: the recurrent input (``h_{t-1}``, or the mixed state ``s_t``), [b, h].

  Returns:
    ``(h, a)``: the new hidden state and its pre-activation, both [b, h].
  """
  a = xp + s @ params["V"]
  return apply_phi(phi, a, params.get("mod_b")), a


def lstm_step(params: dict, xp: Array, s: Array, c: Array) -> tuple[Array, Array]:
  """One LSTM step on ``z = [s ; x]`` (state first), gates f, i, o, g.

  ``params["W"]`` is the [h + i, 4h] kernel of the four gate maps stacked in the
  order f, i, o, g; the input half ``W[h:]`` and the bias are already folded into
  ``xp`` [b, 4h], so only the state half is applied here. No forget-bias trick.

  Returns:
    ``(h, c)``, both [b, h].
  """
  hidden = s.shape[-1]
  return lstm_gating(xp + s @ params["W"][:hidden], c)  # gates [b, 4h]


def lstm_gating(gates: Array, c: Array) -> tuple[Array, Array]:
  """The LSTM update from its gate pre-activations [b, 4h] (f, i, o, g): ``(h, c)``."""
  f, i, o, g = jnp.split(gates, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  return jax.nn.sigmoid(o) * jnp.tanh(c), c


def gru_step(params: dict, xp: Array, s: Array) -> Array:
  """One GRU step, the equations of ``flax.linen.GRUCell`` (gates r, z, n).

  ``params["V"]`` [h, 3h] holds the recurrent kernels of r, z and n side by side
  and ``params["bn"]`` [h] the recurrent bias of n; the input kernels and biases
  are folded into ``xp`` [b, 3h] (``x U + b``). With ``s`` the recurrent input::

    r = sigmoid(xp_r + s V_r),  z = sigmoid(xp_z + s V_z)
    n = tanh(xp_n + r * (s V_n + bn)),  h = (1 - z) * n + z * s
  """
  xr, xz, xn = jnp.split(xp, 3, axis=-1)
  hr, hz, hn = jnp.split(s @ params["V"], 3, axis=-1)
  r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
  n = jnp.tanh(xn + r * add_bias(hn, params["bn"]))
  return (1.0 - z) * n + z * s


def _no_extra(batch, hidden, dtype):
  del batch, hidden, dtype
  return ()


class Cell(NamedTuple):
  """A user's recurrent cell as pure functions, for any memory (ALGORITHM §11).

  In the style of optax's ``GradientTransformation``: a name and the functions,
  nothing else. The memory decides what the cell sees as its recurrent input:
  ``h_{t-1}`` without memory, the mixed state ``s_t`` with one.

  Attributes:
    name: used to name composed models (``Rel`` + name).
    init: ``(key, input_size, hidden, dtype) -> params`` (any pytree).
    step: ``(params, s [b, h], extra, x [b, i]) -> (h [b, h], extra)``: ``s`` is the
      recurrent input, ``extra`` the cell's own state besides it (an LSTM's cell
      state; ``()`` when it has none).
    init_extra: ``(batch, hidden, dtype) -> extra`` at the start of a sequence.
  """

  name: str
  init: Callable[[Array, int, int, Any], Any]
  step: Callable[[Any, Array, Any, Array], tuple[Array, Any]]
  init_extra: Callable[[int, int, Any], Any] = _no_extra


def from_flax(module, name: str | None = None) -> Cell:
  """A ``Cell`` from a Flax Linen recurrent cell (``nn.RNNCellBase``).

  The cell's carry is either its hidden state (``GRUCell``, ``SimpleCell``,
  ``MGUCell``) or a tuple whose last entry is it (``LSTMCell``'s ``(c, h)``); the
  memory replaces that hidden state with the mixed state, the rest of the carry
  is the cell's ``extra``.
  """

  def carry_struct(batch, input_size):
    return jax.eval_shape(lambda: module.initialize_carry(jax.random.PRNGKey(0),
                                                          (batch, input_size)))

  def init(key, input_size, hidden, dtype):
    del hidden
    x = jnp.zeros((1, input_size), dtype)
    carry = module.initialize_carry(key, x.shape)
    return module.init(key, carry, x)["params"]

  def step(params, s, extra, x):
    carry = (*extra, s) if isinstance(extra, tuple) and extra else s
    carry, _ = module.apply({"params": params}, carry, x)
    if isinstance(carry, tuple):
      return carry[-1], tuple(carry[:-1])
    return carry, ()

  def init_extra(batch, hidden, dtype):
    struct = carry_struct(batch, 1)
    if isinstance(struct, tuple):
      return tuple(jnp.zeros((batch, hidden), dtype) for _ in struct[:-1])
    return ()

  return Cell(name or type(module).__name__.removesuffix("Cell"), init, step, init_extra)
