"""The Relevancy Screening Mechanism's memory (ALGORITHM §3), vectorised.

State per batch row: a short-term buffer S of the last ``nu`` stored states and a
relevant set R of at most ``rho`` states, kept as one bank of ``nu + rho`` slots
(``RSMState``): S in slots ``[0, nu)``, R in ``[nu, nu + rho)``. Attention reads
the bank in one piece. S is a ring: a store writes the slot of S's oldest state
(an empty slot first), so S's order is its slots' ``time``, not their position;
R fills as a prefix. A store therefore rewrites at most two slots of a row (the
one it fills in S, the one screening fills in R), which XLA does in place inside
a scan or with the state donated, instead of shifting S. Every array has a fixed
size: the state does not grow with the sequence length.

How a state earns its score and which state leaves R are ``Rules`` (ALGORITHM
§11); the defaults are the paper's. With ``rho = 0`` the memory is a plain window
over the last ``nu`` stored states.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from relscreen.config import Eviction, Relevance

Array = jax.Array


class RSMState(NamedTuple):
  """S (slots ``[0, nu)``, a ring) and R (slots ``[nu, nu + rho)``) as one bank.

  The functions below take ``nu`` where they need to tell S from R.
  """

  vals: Array  # [b, nu + rho, h] stored states
  keys: Array  # [b, nu + rho, h] their cached keys Ua m_j
  score: Array  # [b, nu + rho] relevance: accumulated in S, frozen in R (except decay)
  time: Array  # [b, nu + rho] int32 time index of each state, -1 when empty
  seen: Array  # [b] int32 candidates offered to R so far (the fifo / reservoir clock)


class Rules(NamedTuple):
  """The relevance and eviction rules (``config.Relevance``, ``config.Eviction``)."""

  relevance: Relevance = Relevance.SUM
  eviction: Eviction = Eviction.TOP
  decay: float = 0.9  # gamma of Relevance.DECAY
  seed: int = 0  # Eviction.RESERVOIR: row b's draws come from fold_in(key(seed), b)


PAPER = Rules()


class Screened(NamedTuple):
  """What screening did with the candidate (the state leaving S), per row, and
  which S slot the stored state took."""

  time: Array  # [b] int32 time index of the candidate, -1 when none
  score: Array  # [b] its final relevance score (NaN when none)
  admitted: Array  # [b] bool: it entered R
  slot: Array  # [b] int32 the R slot (0 .. rho - 1) it took, -1 when not admitted
  replaced: Array  # [b] int32 time of the state it replaced there, -1 when none
  stored: Array  # [b] int32 the S slot the new state took, -1 where nothing was stored


def init(batch: int, hidden: int, nu: int, rho: int, dtype=jnp.float32) -> RSMState:
  """An empty memory."""
  m = nu + rho
  return RSMState(jnp.zeros((batch, m, hidden), dtype), jnp.zeros((batch, m, hidden), dtype),
                  jnp.zeros((batch, m), dtype), jnp.full((batch, m), -1, jnp.int32),
                  jnp.zeros((batch,), jnp.int32))


def banks(mem: RSMState):
  """The attended bank, S then R, as one ``(keys, values, valid)``."""
  return ((mem.keys, mem.vals, mem.time >= 0),)


def slot_time(mem: RSMState) -> Array:
  """Time index held by each attended slot: [b, nu + rho], -1 when empty."""
  return mem.time


def oldest_slot(mem: RSMState, nu: int) -> Array:
  """Per row, the S slot the next store writes: S's oldest state, or its first
  empty slot while S is not full. [b] int32."""
  return jnp.argmin(mem.time[:, :nu], axis=1).astype(jnp.int32)


def rows_at(a: Array, slot: Array) -> Array:
  """``a[i, slot[i]]`` for every row i of ``a`` [b, m, ...], as a gather (a slice
  or a masked sum over the slots instead lets XLA fuse the read into some other
  output and then copy the whole array at every step)."""
  index = slot.reshape(slot.shape + (1,) * (a.ndim - 1))
  return jnp.take_along_axis(a, index, axis=1)[:, 0]


def newest(mem: RSMState, nu: int) -> Array:
  """The most recently stored state, [b, h] (zeros while S is empty)."""
  return rows_at(mem.vals, jnp.argmax(mem.time[:, :nu], axis=1))


def accumulate(mem: RSMState, alpha: Array, nu: int, rules: Rules = PAPER) -> RSMState:
  """Adds this step's attention weights to the scores (no gradient flows).

  ``alpha`` [b, nu + rho] holds the weights over the bank; empty slots receive
  exactly 0. ``sum`` and ``mean`` add S's weights, ``max`` keeps S's largest,
  ``decay`` decays every score by gamma and adds the weights, in S and in R.
  """
  alpha = jax.lax.stop_gradient(alpha)
  in_s = jnp.arange(mem.score.shape[1])[None, :] < nu
  if rules.relevance is Relevance.MAX:
    score = jnp.where(in_s, jnp.maximum(mem.score, alpha), mem.score)
  elif rules.relevance is Relevance.DECAY:
    score = jnp.where(in_s | (mem.time >= 0), rules.decay * mem.score + alpha, mem.score)
  else:
    score = mem.score + jnp.where(in_s, alpha, 0.0)
  return mem._replace(score=score)


def _row_draws(rules: Rules, seen: Array) -> Array:
  """Row b's uniform draw in [0, seen_b] for its (seen_b + 1)-th candidate."""
  base = jax.random.PRNGKey(rules.seed)

  def draw(row, n):
    key = jax.random.fold_in(jax.random.fold_in(base, row), n)
    return jax.random.randint(key, (), 0, n + 1)

  return jax.vmap(draw)(jnp.arange(seen.shape[0]), seen)


def reservoir_draws(rules: Rules, seen: Array, steps: int) -> Array:
  """[steps, b]: row b's draws (as ``choose`` makes them) for its next
  ``steps`` candidates, the (seen_b + 1)-th first: a step offers a row at most
  one candidate, so a scan of ``steps`` steps reads at most these (the
  forward kernel takes them whole)."""
  return jax.vmap(lambda k: _row_draws(rules, seen + k))(jnp.arange(steps, dtype=seen.dtype))


def _candidate(cand_time: Array, cand_score: Array, do: Array, t, rules: Rules):
  """The candidate's score under ``rules`` (``mean`` divides the sum by the t - t_j
  steps it spent in S) and whether it is offered: where ``do`` and S is full."""
  if rules.relevance is Relevance.MEAN:
    cand_score = cand_score / jnp.maximum(t - cand_time, 1).astype(cand_score.dtype)
  return cand_score, do & (cand_time >= 0)  # S is full exactly when its oldest slot is used


def choose(cand_time: Array, cand_score: Array, r_score: Array, r_time: Array,
           seen: Array, do: Array, t: Array | int = 0, rules: Rules = PAPER):
  """The screening decision for a candidate leaving S (``rho >= 1``), per row.

  Paper (``top``): while R has fewer than rho states the candidate enters
  unconditionally; afterwards it replaces R's minimum only if its score is
  strictly larger (the lowest slot among equal minima); otherwise it is dropped.
  ``fifo``: it always enters, in place of R's oldest state. ``reservoir``: the
  n-th candidate (n from 0) fills slot n while R has room, then replaces slot j
  for a uniform draw j in [0, n] when j < rho (Vitter's Algorithm R): R holds a
  uniform sample of every state that ever left S. ``t`` is the current step (the
  ``mean`` rule divides a candidate's sum by the t - t_j steps it spent in S).

  Args:
    cand_time, cand_score: the candidate's time (-1: none) and summed score, [b].
    r_score, r_time: R's scores and times, [b, rho] (R fills as a prefix).
    seen: candidates offered to R so far, [b]; do: rows that store now, [b].

  Returns:
    ``(score, eligible, admitted, slot)``: the score the candidate keeps, whether
    it was offered, whether it enters R, and the R slot it would take, each [b].
  """
  rho = r_score.shape[1]
  cand_score, eligible = _candidate(cand_time, cand_score, do, t, rules)
  filled = r_time >= 0  # [b, rho]: always a prefix, since R only fills at its end
  count = jnp.sum(filled, axis=1)
  has_room = count < rho
  if rules.eviction is Eviction.TOP:
    slot_min = jnp.argmin(jnp.where(filled, r_score, jnp.inf), axis=1)  # first of ties
    min_score = jnp.take_along_axis(r_score, slot_min[:, None], axis=1)[:, 0]
    admitted = eligible & (has_room | (cand_score > min_score))
    slot = jnp.where(has_room, count, slot_min)
  elif rules.eviction is Eviction.FIFO:
    admitted, slot = eligible, seen % rho  # slot seen mod rho holds the oldest
  else:
    draw = _row_draws(rules, seen)
    admitted = eligible & (has_room | (draw < rho))
    slot = jnp.where(has_room, count, jnp.minimum(draw, rho - 1))
  return cand_score, eligible, admitted, slot


def write_slots(bank: Array, s_col: Array, r_col: Array, into_s: Array,
                into_r: Array) -> Array:
  """``bank`` [b, m, h] with slot ``s_col[i]`` of row i set to ``into_s[i]`` and
  slot ``r_col[i]`` to ``into_r[i]`` (``s_col`` [b] or one slot for every row,
  ``r_col`` [b]; negative: no write), as one scatter that XLA does in place. With
  selects instead, a bank that is also read at another slot in the same step
  (the state leaving S, or the attention reading the bank) is copied whole."""
  b, m = bank.shape[:2]
  cols = jnp.concatenate([jnp.broadcast_to(s_col, (b,)), r_col])
  return bank.at[jnp.tile(jnp.arange(b), 2), jnp.where(cols >= 0, cols, m)].set(
      jnp.concatenate([into_s, into_r]), mode="drop", unique_indices=True)


def select_slots(a: Array, s_col: Array, r_col: Array, into_s, into_r) -> Array:
  """``write_slots`` by select, for any ``a`` [b, m, ...], with ``into_s`` and
  ``into_r`` each a row's value [b, ...] or a scalar. For arrays nothing else
  reads at another slot in the same step: XLA fuses the selects into one loop."""
  b, m = a.shape[:2]
  slots = jnp.arange(m)[None, :]
  trailing = (1,) * (a.ndim - 2)

  def mask(col):
    return (slots == jnp.broadcast_to(col, (b,))[:, None]).reshape((b, m) + trailing)

  def per_slot(v):
    v = jnp.asarray(v)
    return v[:, None] if v.ndim else v

  return jnp.where(mask(s_col), per_slot(into_s), jnp.where(mask(r_col), per_slot(into_r), a))


def store(mem: RSMState, value: Array, key: Array, t: Array, do: Array, nu: int,
          rules: Rules = PAPER) -> tuple[RSMState, Screened]:
  """Stores ``value`` [b, h] with its ``key`` (score 0, time ``t``) in rows where
  ``do`` [b], after screening the state it displaces from S (its score already
  holds this step's weight): ``choose`` decides whether that state enters R. A
  window (rho = 0) lets it leave; nothing is counted in ``seen``."""
  b, m = mem.time.shape
  rho = m - nu
  j = oldest_slot(mem, nu)
  cand_time, cand_score = rows_at(mem.time, j), jax.lax.stop_gradient(rows_at(mem.score, j))
  if rho == 0:
    cand_score, eligible = _candidate(cand_time, cand_score, do, t, rules)
    admitted, counted = jnp.zeros_like(eligible), jnp.zeros_like(eligible)
    slot = jnp.full((b,), -1, jnp.int32)
  else:
    cand_score, eligible, admitted, slot = choose(cand_time, cand_score, mem.score[:, nu:],
                                                  mem.time[:, nu:], mem.seen, do, t, rules)
    slot, counted = jnp.where(admitted, slot, -1).astype(jnp.int32), eligible
  s_col = jnp.where(do, j, -1)
  r_col = jnp.where(slot >= 0, nu + slot, -1)
  replaced = jnp.where(slot >= 0, rows_at(mem.time, jnp.maximum(r_col, 0)), -1)
  new = RSMState(
      write_slots(mem.vals, s_col, r_col, value, rows_at(mem.vals, j)),
      write_slots(mem.keys, s_col, r_col, key, rows_at(mem.keys, j)),
      select_slots(mem.score, s_col, r_col, jnp.zeros((), mem.score.dtype), cand_score),
      select_slots(mem.time, s_col, r_col, jnp.asarray(t, jnp.int32), cand_time),
      mem.seen + counted.astype(jnp.int32))
  info = Screened(jnp.where(eligible, cand_time, -1),
                  jnp.where(eligible, cand_score, jnp.nan), admitted, slot, replaced, s_col)
  return new, info
