"""Synthetic tasks of ALGORITHM §6 as pure JAX generators, plus their losses and metrics.

Every generator returns a ``Batch``: one-hot inputs, integer targets, and two
masks, the steps that count in the loss and the recall steps whose accuracy is
reported. Masks let sequences of different lengths share one padded shape.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


class Batch(NamedTuple):
  x: Array  # [b, t, i] float one-hot inputs
  y: Array  # [b, t] int targets
  loss_mask: Array  # [b, t] float: 1 where the step counts in the loss
  recall_mask: Array  # [b, t] float: 1 on the recall steps


@dataclasses.dataclass(frozen=True)
class RecallTask:
  """Shared by the symbol-recall tasks: ``c_length`` symbols from 1..n_symbols,
  recalled in the last ``c_length`` steps, scored by cross-entropy and accuracy."""

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

  def metrics(self, logits: Array, batch: Batch):
    """``(loss, (recall accuracy, memoryless loss))`` of a batch."""
    return classification_metrics(logits, batch, self.n_symbols)

  def diagnostic_loss(self, logits: Array, batch: Batch) -> Array:
    """The loss whose gradient flow is measured: the recall steps' (``loss2``)."""
    return recall_loss(logits, batch)


@dataclasses.dataclass(frozen=True)
class CopyTask(RecallTask):
  """Copy (ALGORITHM §6): ``c`` symbols, ``T - 1`` blanks, a marker, ``c`` blanks.

  The target is class 0 until the marker has been read, then the ``c`` symbols.
  Blank is 0, symbols are 1..n_symbols, the marker is n_symbols + 1.
  """

  def batch(self, key: Array, batch: int) -> Batch:
    return _copy_batch(key, batch, self.T, self.length, self.n_symbols, self.c_length,
                       self.input_size)

  def baseline_loss(self) -> float:
    """Loss of the best memoryless model: ``c ln n / L``."""
    return self.c_length * math.log(self.n_symbols) / self.length


@dataclasses.dataclass(frozen=True)
class VariableCopyTask(RecallTask):
  """Copy with ``T`` drawn per batch from ``[1, T_max - 1]``, padded to ``T_max + 2c``.

  The padding comes after each sequence's recall window, so a causal model's
  outputs on the real steps do not see it; it is masked out of the loss. Here
  ``T`` is that largest delay, ``T_max``.
  """

  @property
  def T_max(self) -> int:
    return self.T

  def batch(self, key: Array, batch: int) -> Batch:
    key_t, key = jax.random.split(key)
    T = jax.random.randint(key_t, (), 1, max(self.T_max, 2))
    return _copy_batch(key, batch, T, self.length, self.n_symbols, self.c_length,
                       self.input_size)


def _copy_batch(key, batch, T, length, n_symbols, c, input_size) -> Batch:
  """Copy sequences of delay ``T`` (may be traced), padded to ``length``."""
  symbols = jax.random.randint(key, (batch, c), 1, n_symbols + 1)
  t = jnp.arange(length)[None, :]  # [1, t]
  recall = (t >= T + c) & (t < T + 2 * c)
  marker = t == T + c - 1
  first = jnp.take_along_axis(symbols, jnp.broadcast_to(jnp.minimum(t, c - 1), (batch, length)), 1)
  later = jnp.take_along_axis(
      symbols, jnp.broadcast_to(jnp.clip(t - (T + c), 0, c - 1), (batch, length)), 1)
  tokens = jnp.where(t < c, first, jnp.where(marker, n_symbols + 1, 0))
  targets = jnp.where(recall, later, 0)
  loss_mask = jnp.broadcast_to(t < T + 2 * c, (batch, length)).astype(jnp.float32)
  recall_mask = jnp.broadcast_to(recall, (batch, length)).astype(jnp.float32)
  return Batch(jax.nn.one_hot(tokens, input_size), targets, loss_mask, recall_mask)


@dataclasses.dataclass(frozen=True)
class DenoiseTask(RecallTask):
  """Denoise (ALGORITHM §6): ``c`` symbols at random sorted positions among the first
  ``T + c - 1`` steps, the marker (n_symbols + 2) at ``T + c - 1``, then recall.

  Inputs are one-hot of size n_symbols + 3; there are n_symbols + 2 classes (the
  top one never occurs, as in the reference).
  """

  @property
  def input_size(self) -> int:
    return self.n_symbols + 3

  @property
  def num_classes(self) -> int:
    return self.n_symbols + 2

  def batch(self, key: Array, batch: int) -> Batch:
    c, span = self.c_length, self.T + self.c_length - 1
    key_s, key_p = jax.random.split(key)
    symbols = jax.random.randint(key_s, (batch, c), 1, self.n_symbols + 1)
    positions = jnp.sort(jax.vmap(
        lambda k: jax.random.choice(k, span, (c,), replace=False))(
            jax.random.split(key_p, batch)), axis=1)  # [b, c]
    rows = jnp.arange(batch)[:, None]
    tokens = jnp.zeros((batch, self.length), jnp.int32).at[rows, positions].set(symbols)
    tokens = tokens.at[:, span].set(self.n_symbols + 2)
    targets = jnp.zeros((batch, self.length), jnp.int32).at[:, -c:].set(symbols)
    recall = jnp.zeros((batch, self.length)).at[:, -c:].set(1.0)
    return Batch(jax.nn.one_hot(tokens, self.input_size), targets,
                 jnp.ones((batch, self.length)), recall)


@dataclasses.dataclass(frozen=True)
class AddingTask:
  """The adding problem (Hochreiter & Schmidhuber 1997; the authors' addtask.py).

  Length 2T, one input feature: the first T steps carry values U(0, 1); the
  second T steps are 0 except for markers 1.0 at T + a, a in [0, T/2), and
  T + b, b in [T/2, T). The target, read from the last step's output, is the
  sum of the values at a and b. Predicting the mean, 1, scores MSE 1/6 (the
  memoryless baseline); "accuracy" counts answers within 0.04 of the target.
  """

  T: int
  tolerance: float = 0.04
  input_size: int = 1
  num_classes: int = 1  # one regression output

  @property
  def length(self) -> int:
    return 2 * self.T

  def batch(self, key: Array, batch: int) -> Batch:
    key_v, key_a, key_b = jax.random.split(key, 3)
    half = max(self.T // 2, 1)
    values = jax.random.uniform(key_v, (batch, self.T))
    a = jax.random.randint(key_a, (batch,), 0, half)
    b = jax.random.randint(key_b, (batch,), half, max(self.T, half + 1))
    t = jnp.arange(self.T)[None, :]
    markers = ((t == a[:, None]) | (t == b[:, None])).astype(jnp.float32)
    x = jnp.concatenate([values, markers], axis=1)[..., None]  # [b, 2T, 1]
    target = jnp.sum(values * markers, axis=1)  # [b]
    ones = jnp.ones((batch, self.length))
    return Batch(x, target, ones, ones)

  def metrics(self, logits: Array, batch: Batch):
    """``(MSE, (fraction within tolerance, memoryless MSE 1/6))`` of the last output."""
    err = logits[:, -1, 0] - batch.y
    within = jnp.mean((jnp.abs(err) < self.tolerance).astype(jnp.float32))
    return jnp.mean(err ** 2), (within, jnp.asarray(1.0 / 6.0))

  def diagnostic_loss(self, logits: Array, batch: Batch) -> Array:
    return self.metrics(logits, batch)[0]


def sequence_loss(logits: Array, targets: Array, mask: Array | None = None) -> Array:
  """Cross-entropy averaged over the (masked) steps and the batch."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  if mask is None:
    return jnp.mean(ce)
  return jnp.sum(ce * mask) / jnp.sum(mask)


def recall_accuracy(logits: Array, targets: Array, recall_mask: Array) -> Array:
  """Accuracy over the recall steps only."""
  hits = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return jnp.sum(hits * recall_mask) / jnp.sum(recall_mask)


def recall_loss(logits: Array, batch: Batch) -> Array:
  """The reference's ``loss2``: cross-entropy summed over the recall steps, divided
  by the number of loss steps (L for copy and denoise), averaged over the batch."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch.y)
  return jnp.sum(ce * batch.recall_mask) / jnp.sum(batch.loss_mask)


def classification_metrics(logits: Array, batch: Batch, n_symbols: int):
  """``(cross-entropy, (recall accuracy, memoryless loss))`` of a masked batch."""
  return (sequence_loss(logits, batch.y, batch.loss_mask),
          (recall_accuracy(logits, batch.y, batch.recall_mask),
           memoryless_loss(batch, n_symbols)))


def memoryless_loss(batch: Batch, n_symbols: int) -> Array:
  """The best memoryless loss on this batch: ``ln(n) * recall steps / loss steps``."""
  return math.log(n_symbols) * jnp.sum(batch.recall_mask) / jnp.sum(batch.loss_mask)
