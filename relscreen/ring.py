"""The relevancy screening memory in the layout the custom gradient path runs:
one bank, S a ring (ALGORITHM §3, §11).

``rsm.RSMState`` keeps S in order of storage, so that a streaming user reads it
oldest first; storing then shifts every S array by a slot and attention reads
S and R as two banks. Here S and R are one bank of ``nu + rho`` slots (S in
``[0, nu)``, R after it) and, with a store at every step (``k = 1``), h_t sits in
S slot ``t mod nu``: a store writes one S slot and screening at most one R slot
(``write_slots``: one scatter per bank, in place; ``select_slots`` for the small
arrays), and attention reads the bank in one piece. The states, scores and
screening decisions are ``rsm``'s (the rules are shared: ``rsm.choose``); only
the order of S's slots differs, and ``to_rsm`` puts it back. The reverse pass
(``relscreen.reverse``) undoes the stores in the same layout.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from relscreen import rsm

Array = jax.Array


class Ring(NamedTuple):
  vals: Array  # [b, nu + rho, h] S (ring) then R
  keys: Array  # [b, nu + rho, h] cached keys Ua m_j
  score: Array  # [b, nu + rho]
  time: Array  # [b, nu + rho] int32, -1 when empty
  seen: Array  # [b] int32 candidates offered to R so far


class Admission(NamedTuple):
  """What a store did to R, per row: the slot written (-1: none) and the time of
  the state it held before (-1: the slot was empty). The reverse pass needs no more
  to undo it."""

  slot: Array  # [b] int32
  evicted: Array  # [b] int32


def from_rsm(mem: rsm.RSMState, stored: int) -> Ring:
  """The ring holding ``mem`` after ``stored`` stores (one per step from t = 0)."""
  shift = stored % mem.s_vals.shape[1]  # S's newest (slot nu - 1) goes to (stored - 1) mod nu
  return Ring(*(jnp.concatenate([jnp.roll(a, shift, axis=1), b], axis=1) for a, b in (
      (mem.s_vals, mem.r_vals), (mem.s_keys, mem.r_keys), (mem.s_score, mem.r_score),
      (mem.s_time, mem.r_time))), mem.seen)


def to_rsm(ring: Ring, nu: int, stored: int) -> rsm.RSMState:
  """``rsm``'s layout of ``ring`` after ``stored`` stores: S oldest first."""
  def split(a):
    return jnp.roll(a[:, :nu], -(stored % nu), axis=1), a[:, nu:]
  (sv, rv), (sk, rk), (ss, rs), (st, rt) = (split(a) for a in ring[:4])
  return rsm.RSMState(sv, sk, ss, st, rv, rk, rs, rt, ring.seen)


def write_slots(bank: Array, j: Array, r_col: Array, into_s: Array, into_r: Array) -> Array:
  """``bank`` [b, m, h] with slot ``j`` of every row set to ``into_s`` [b, h] and
  slot ``r_col[i]`` of row i to ``into_r[i]`` (``r_col`` [b], negative: no second
  write), as one scatter that XLA does in place. With selects instead, a bank
  that is also read at another slot in the same step (the state leaving S, or
  the attention reading the undone bank) is copied whole at every step."""
  b, m = bank.shape[:2]
  rows = jnp.tile(jnp.arange(b), 2)
  cols = jnp.concatenate([jnp.full((b,), j), jnp.where(r_col >= 0, r_col, m)])
  return bank.at[rows, cols].set(jnp.concatenate([into_s, into_r]), mode="drop",
                                 unique_indices=True)


def select_slots(a: Array, j: Array, r_col: Array, into_s, into_r) -> Array:
  """``write_slots`` by select, for any ``a`` [b, m, ...]: slot ``j`` of every row
  set to ``into_s`` and slot ``r_col[i]`` of row i to ``into_r`` (each a row's
  value [b, ...] or a scalar). For arrays nothing else reads at another slot in
  the same step: XLA fuses the selects into one loop."""
  slots = jnp.arange(a.shape[1])[None, :]
  trailing = (1,) * (a.ndim - 2)

  def mask(m):
    return m.reshape(m.shape + trailing)

  def per_slot(v):
    v = jnp.asarray(v)
    return v[:, None] if v.ndim else v

  return jnp.where(mask(slots == j), per_slot(into_s),
                   jnp.where(mask(slots == r_col[:, None]), per_slot(into_r), a))


def accumulate(ring: Ring, alpha: Array, nu: int, rules: rsm.Rules = rsm.PAPER) -> Ring:
  """``rsm.accumulate`` on the bank: ``alpha`` [b, nu + rho] in the bank's order."""
  alpha = jax.lax.stop_gradient(alpha)
  in_s = jnp.arange(ring.score.shape[1])[None, :] < nu
  if rules.relevance is rsm.Relevance.MAX:
    score = jnp.where(in_s, jnp.maximum(ring.score, alpha), ring.score)
  elif rules.relevance is rsm.Relevance.DECAY:
    score = jnp.where(in_s | (ring.time >= 0), rules.decay * ring.score + alpha, ring.score)
  else:
    score = ring.score + jnp.where(in_s, alpha, 0.0)
  return ring._replace(score=score)


def store(ring: Ring, value: Array, key: Array, t: Array, nu: int,
          rules: rsm.Rules = rsm.PAPER) -> tuple[Ring, Admission]:
  """Screens the state leaving S (slot ``t mod nu``, stored at t - nu), then writes
  ``value`` [b, h] and its ``key`` there: ``rsm.store`` with ``do`` true in every row."""
  b, slots = ring.time.shape
  j = t % nu

  def at_j(a):
    return jax.lax.dynamic_index_in_dim(a, j, axis=1, keepdims=False)

  cand_time, cand_score = at_j(ring.time), jax.lax.stop_gradient(at_j(ring.score))
  if slots == nu:  # a window: the oldest state just leaves
    # rsm.screen counts no candidates for a window (``seen`` stays 0)
    slot, score, eligible = jnp.full((b,), -1, jnp.int32), cand_score, jnp.zeros((b,), bool)
  else:
    do = jnp.ones((b,), bool)
    score, eligible, admitted, slot = rsm.choose(cand_time, cand_score, ring.score[:, nu:],
                                                 ring.time[:, nu:], ring.seen, do, t, rules)
    slot = jnp.where(admitted, slot, -1).astype(jnp.int32)
  r_col = jnp.where(slot >= 0, nu + slot, -1)  # the R slot written, -1: none
  evicted = jnp.take_along_axis(ring.time, jnp.maximum(r_col, 0)[:, None], axis=1)[:, 0]
  new = Ring(write_slots(ring.vals, j, r_col, value, at_j(ring.vals)),
             write_slots(ring.keys, j, r_col, key, at_j(ring.keys)),
             select_slots(ring.score, j, r_col, jnp.zeros((), ring.score.dtype), score),
             select_slots(ring.time, j, r_col, jnp.asarray(t, jnp.int32), cand_time),
             ring.seen + eligible.astype(jnp.int32))
  return new, Admission(slot, jnp.where(slot >= 0, evicted, -1))
