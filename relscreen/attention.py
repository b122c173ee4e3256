"""Additive (Bahdanau) attention over a masked bank of memory slots (SPEC section 2).

Keys ``k_j = m_j Ua`` are computed once, when a state is stored; a step only adds
its query ``q = s_{t-1} Va`` to every cached key.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Attended(NamedTuple):
  context: Array  # [b, h]: sum_j alpha_j m_j
  alpha: Array  # [b, m]: softmax weights, exactly 0 on empty slots
  scores: Array  # [b, m]: raw scores e_j, -inf on empty slots


def masked_softmax(scores: Array, valid: Array) -> Array:
  """Softmax over the last axis restricted to ``valid`` slots.

  Empty slots get weight 0; a row with no valid slot gets all zeros (never NaN),
  so the function is safe to differentiate in any branch.
  """
  peak = jnp.max(jnp.where(valid, scores, -jnp.inf), axis=-1, keepdims=True)
  peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
  unnorm = jnp.where(valid, jnp.exp(jnp.where(valid, scores - peak, 0.0)), 0.0)
  total = jnp.sum(unnorm, axis=-1, keepdims=True)
  return unnorm / jnp.where(total > 0, total, 1.0)


def additive_attention(query: Array, keys: Array, values: Array, valid: Array,
                       v: Array) -> Attended:
  """``e_j = v . tanh(q + k_j)``, ``alpha = softmax(e)``, ``c = sum_j alpha_j m_j``.

  Args:
    query: ``s_{t-1} Va``, [b, h].
    keys: cached keys, [b, m, h].
    values: stored states, [b, m, h].
    valid: which slots hold a state, [b, m] bool.
    v: the score vector, [h].
  """
  scores = jnp.tanh(query[:, None, :] + keys) @ v  # [b, m]
  alpha = masked_softmax(scores, valid)
  context = jnp.einsum("bm,bmh->bh", alpha, values)
  return Attended(context, alpha, jnp.where(valid, scores, -jnp.inf))
