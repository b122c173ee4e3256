"""Recurrent cell steps without attention (ALGORITHM §1).

Dimension legend used in every module of the library:
  b batch, t time, i input features, h hidden units, m memory slots.

A cell step takes the *projected input* ``xp = x @ U + b`` (computed once for a
whole sequence outside the scan) and the recurrent input, so the scan body holds
only the work that truly depends on the previous step.
"""

import enum

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
