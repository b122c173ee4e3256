"""Additive (Bahdanau) attention over a masked bank of memory slots (ALGORITHM §2).

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


def _scores(t: Array, v: Array) -> Array:
  """``t @ v`` for ``t`` [b, m, h], as a batched matrix-vector product (v repeated
  per row): XLA's CPU dot runs that about 1.4x as fast as the one [b m, h] x [h]
  product on a large bank, a fused ``sum(t * v)`` slower still (RESULTS)."""
  return jnp.einsum("bmh,bh->bm", t, jnp.broadcast_to(v, (t.shape[0], v.shape[-1])))


def additive_attention_banks(query: Array, banks, v: Array) -> Attended:
  """Additive attention with one softmax over several banks of slots.

  Same result as concatenating the banks first, without copying them every step.

  Args:
    query: [b, h].
    banks: a sequence of ``(keys [b, m_i, h], values [b, m_i, h], valid [b, m_i])``.
    v: [h].

  Returns:
    The context, and alpha and scores over the banks' slots in order [b, sum m_i].
  """
  scores = jnp.concatenate(
      [_scores(jnp.tanh(query[:, None, :] + keys), v) for keys, _, _ in banks], axis=1)
  valid = jnp.concatenate([ok for _, _, ok in banks], axis=1)
  alpha = masked_softmax(scores, valid)
  context, start = 0.0, 0
  for _, values, _ in banks:
    m = values.shape[1]
    context = context + jnp.einsum("bm,bmh->bh", alpha[:, start:start + m], values)
    start += m
  return Attended(context, alpha, jnp.where(valid, scores, -jnp.inf))


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
  return additive_attention_banks(query, ((keys, values, valid),), v)


def additive_attention_vjp(query: Array, keys: Array, values: Array, valid: Array,
                           v: Array, d_context: Array):
  """The reverse of ``additive_attention`` for the context's cotangent, by hand.

  Recomputes ``tanh(q + k_j)`` once and uses it for the weights and for every
  derivative (autodiff's transpose of the same function runs more passes over
  the [b, m, h] slots). Empty slots have weight 0, so their cotangents are 0.

  Args:
    query, keys, values, valid, v: as for ``additive_attention``.
    d_context: the cotangent of the context, [b, h].

  Returns:
    ``(d_query [b, h], d_keys [b, m, h], d_values [b, m, h], d_v [h], alpha [b, m])``.
  """
  return _cotangents(*_score_cotangents(query, keys, values, valid, v, d_context), v, d_context)


def _cotangents(t, alpha, d_scores, v, d_context):
  """The reverse's outputs from tanh(q + k_j), the weights and the scores' cotangents."""
  d_keys = _keys_cotangent(t, d_scores, v)
  d_query = _slot_sum(d_keys)
  return d_query, d_keys, alpha[..., None] * d_context[:, None, :], _v_cotangent(t, d_scores), alpha


def _keys_cotangent(t, d_scores, v):
  """d(q + k_j) [b, m, h], which is also each slot's share of d q."""
  return d_scores[..., None] * (v[None, None, :] * (1.0 - t * t))


# The sums over the slots as batched matrix-vector products: XLA's CPU
# reduction over the middle axis, and its one dot contracting batch and slots
# together, each took about twice as long on a large bank (RESULTS).
def _slot_sum(a):
  """``a`` [b, m, h] summed over the slots: [b, h]."""
  return jnp.einsum("bm,bmh->bh", jnp.ones(a.shape[:2], a.dtype), a)


def _v_cotangent(t, d_scores):
  """d v [h]: the scores' cotangents times tanh(q + k_j), over rows and slots."""
  return jnp.sum(jnp.einsum("bm,bmh->bh", d_scores, t), axis=0)


def _score_cotangents(query, keys, values, valid, v, d_context):
  """``tanh(q + k_j)`` [b, m, h], the weights and the scores' cotangents [b, m]."""
  t = jnp.tanh(query[:, None, :] + keys)
  alpha = masked_softmax(_scores(t, v), valid)
  return t, alpha, _softmax_cotangent(alpha, values, d_context)


def _softmax_cotangent(alpha, values, d_context):
  """The scores' cotangents [b, m] from the weights and the context's cotangent."""
  d_alpha = jnp.einsum("bmh,bh->bm", values, d_context)
  return alpha * (d_alpha - jnp.sum(alpha * d_alpha, axis=-1, keepdims=True))


def additive_attention_vjp_weighted(query: Array, keys: Array, values: Array, alpha: Array,
                                    v: Array, d_context: Array):
  """``additive_attention_vjp`` given the weights ``alpha`` [b, m] the forward pass
  computed (and kept: [b, m] per step, a sliver of the [b, m, h] slots): the
  scores, their softmax and its pass over the slots are not recomputed, only
  ``tanh(q + k_j)``, which the derivatives need. Empty slots have weight 0,
  so their cotangents are 0 with no mask. Returns as ``additive_attention_vjp``
  (the weights given)."""
  t = jnp.tanh(query[:, None, :] + keys)
  return _cotangents(t, alpha, _softmax_cotangent(alpha, values, d_context), v, d_context)


def additive_attention_vjp_into(query: Array, keys: Array, values: Array, valid: Array,
                                v: Array, d_context: Array, acc: Array, acc_sum: Array):
  """``additive_attention_vjp`` for a reverse pass that sums the keys' cotangents
  over many steps: they are added into ``acc`` [b, m, h], whose sum over the
  slots before this step is ``acc_sum`` [b, h], and the query's cotangent (the
  keys' summed over the slots) is read back as the new sum minus the old one.

  That is one pass over the slots fewer than forming the keys' cotangent and
  summing it: on a large bank (the full memory) each pass is a read or write of
  [b, m, h] and the reverse step about a third faster (RESULTS). The price is
  rounding: the difference of two sums over everything ``acc`` holds; a caller
  keeps that to a few dozen steps (``reverse._FullReverse`` empties ``acc``
  every block) and compares with ``additive_attention_vjp`` in float64.

  Returns:
    ``(d_query [b, h], acc + d_keys, its sum over the slots [b, h], d_v [h], alpha [b, m])``.
  """
  t, alpha, d_scores = _score_cotangents(query, keys, values, valid, v, d_context)
  acc = acc + _keys_cotangent(t, d_scores, v)
  acc_sum_new = _slot_sum(acc)
  return acc_sum_new - acc_sum, acc, acc_sum_new, _v_cotangent(t, d_scores), alpha
