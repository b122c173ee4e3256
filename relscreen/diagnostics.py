"""Gradient-flow diagnostics (ALGORITHM §7): ``||dL/dh_t||`` for every t.

Zero "probes" are added to every hidden state inside the scan (``forward``'s
``probes``); the gradient with respect to them is the total derivative of the
loss with respect to ``h_t`` through every later path, recurrent and attentive,
the quantity the paper's bounds are about. One reverse pass gives it for all t,
together with the parameter gradients, and it is computed on diagnostic steps
only, never in the training step.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from relscreen import tasks
from relscreen.models import CellType, ModelConfig

Array = jax.Array


class GradientFlow(NamedTuple):
  loss: Array  # [] the differentiated loss
  hidden_norms: Array  # [t] Frobenius norm of dL/dh_t over batch and hidden units
  recurrent_norm: Array  # [] norm of dL/dV (RNN family) or dL/dW (LSTM, all gates)


def recurrent_kernel_norm(core_grads: dict, config: ModelConfig) -> Array:
  """``||dL/dV||`` for RNN and GRU cells (all three GRU gate maps); the norm over
  all four LSTM gate maps (input and recurrent parts together, as the original)
  for LSTM cells; over all of a user cell's parameters for a user cell."""
  if config.cell is CellType.USER:
    leaves = jax.tree_util.tree_leaves(core_grads["cell"])
    return jnp.sqrt(sum(jnp.sum(leaf ** 2) for leaf in leaves))
  return jnp.linalg.norm(core_grads["W" if config.cell is CellType.LSTM else "V"])


def gradient_flow(apply_fn: Callable, params, config: ModelConfig, batch: tasks.Batch,
                  loss_fn: Callable = tasks.recall_loss,
                  core_key: str = "core") -> GradientFlow:
  """One reverse pass of ``loss_fn(logits, batch)`` with probes on every ``h_t``.

  Args:
    apply_fn: ``(params, x, probes) -> logits`` [b, t, c].
    params: the model parameters; ``params[core_key]`` holds the recurrent core's.
    config: the core's config.
    batch: the inputs and targets.
    loss_fn: ``(logits, batch) -> loss`` to differentiate (default: the recall loss).
  """
  b, t = batch.x.shape[:2]
  probes = jnp.zeros((b, t, config.hidden), batch.x.dtype)

  def loss(p, pr):
    return loss_fn(apply_fn(p, batch.x, pr), batch)

  value, (g_params, g_probes) = jax.value_and_grad(loss, argnums=(0, 1))(params, probes)
  norms = jnp.sqrt(jnp.sum(g_probes ** 2, axis=(0, 2)))  # [t]
  return GradientFlow(value, norms, recurrent_kernel_norm(g_params[core_key], config))
