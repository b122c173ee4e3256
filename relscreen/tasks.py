"""Synthetic tasks of SPEC 6 as pure JAX generators, plus their losses and metrics."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


class CopyTask(NamedTuple):
  """Copy (SPEC 6): ``c`` symbols, ``T - 1`` blanks, a marker, ``c`` blanks.

  The target is class 0 until the marker has been read, then the ``c`` symbols.
  Blank is 0, symbols are 1..n_symbols, the marker is n_symbols + 1.
  """

  T: int
  n_symbols: int = 8
  c_length: int = 10

  @property
  def length(self) -> int:
    return self.T + 2 * self.c_length

  @property
  def input_size(self) -> int:
    return self.n_symbols + 2

  @property
  def num_classes(self) -> int:
    return self.n_symbols + 1

  def batch(self, key: Array, batch: int) -> tuple[Array, Array]:
    """Returns one-hot inputs [b, L, n+2] float32 and integer targets [b, L]."""
    c = self.c_length
    symbols = jax.random.randint(key, (batch, c), 1, self.n_symbols + 1)
    tokens = jnp.zeros((batch, self.length), jnp.int32).at[:, :c].set(symbols)
    tokens = tokens.at[:, self.T + c - 1].set(self.n_symbols + 1)
    targets = jnp.zeros((batch, self.length), jnp.int32).at[:, self.T + c:].set(symbols)
    return jax.nn.one_hot(tokens, self.input_size), targets

  def baseline_loss(self) -> float:
    """Loss of the best memoryless model: ``c ln n / L``."""
    return self.c_length * math.log(self.n_symbols) / self.length


def sequence_loss(logits: Array, targets: Array) -> Array:
  """Mean over all steps and the batch of the cross-entropy."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))


def recall_accuracy(logits: Array, targets: Array, c_length: int) -> Array:
  """Accuracy over the last ``c_length`` (recall) steps only."""
  return jnp.mean(jnp.argmax(logits[:, -c_length:], -1) == targets[:, -c_length:])
