"""The Relevancy Screening Mechanism's memory (ALGORITHM §3), vectorised.

State per batch row: a short-term buffer S of the last ``nu`` stored states and a
relevant set R of at most ``rho`` states. S is right-aligned: its newest state is
at slot ``nu - 1``, its oldest at slot 0, and empty slots (time -1) sit on the
left, so storing is a shift and the screening candidate is always slot 0.
Every array has a fixed size: the state does not grow with the sequence length.

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
  s_vals: Array  # [b, nu, h] short-term buffer S, oldest first
  s_keys: Array  # [b, nu, h] cached keys Ua m_j
  s_score: Array  # [b, nu] relevance accumulated while in S
  s_time: Array  # [b, nu] int32 time index of each state, -1 when empty
  r_vals: Array  # [b, rho, h] relevant set R
  r_keys: Array  # [b, rho, h]
  r_score: Array  # [b, rho] score, frozen when the state entered R (except under decay)
  r_time: Array  # [b, rho] int32, -1 when empty
  seen: Array  # [b] int32 candidates offered to R so far (the fifo / reservoir clock)


class Rules(NamedTuple):
  """The relevance and eviction rules (``config.Relevance``, ``config.Eviction``)."""

  relevance: Relevance = Relevance.SUM
  eviction: Eviction = Eviction.TOP
  decay: float = 0.9  # gamma of Relevance.DECAY
  seed: int = 0  # Eviction.RESERVOIR: row b's draws come from fold_in(key(seed), b)


PAPER = Rules()


class Screened(NamedTuple):
  """What screening did with the candidate (the state leaving S), per row."""

  time: Array  # [b] int32 time index of the candidate, -1 when none
  score: Array  # [b] its final relevance score (NaN when none)
  admitted: Array  # [b] bool: it entered R


def init(batch: int, hidden: int, nu: int, rho: int, dtype=jnp.float32) -> RSMState:
  """An empty memory."""
  def bank(n):
    return (jnp.zeros((batch, n, hidden), dtype), jnp.zeros((batch, n, hidden), dtype),
            jnp.zeros((batch, n), dtype), jnp.full((batch, n), -1, jnp.int32))
  return RSMState(*bank(nu), *bank(rho), jnp.zeros((batch,), jnp.int32))


def banks(mem: RSMState):
  """The attended banks S then R, as ``(keys, values, valid)`` each."""
  return ((mem.s_keys, mem.s_vals, mem.s_time >= 0),
          (mem.r_keys, mem.r_vals, mem.r_time >= 0))


def slot_time(mem: RSMState) -> Array:
  """Time index held by each attended slot, S then R: [b, nu+rho], -1 when empty."""
  return jnp.concatenate([mem.s_time, mem.r_time], axis=1)


def newest(mem: RSMState) -> Array:
  """The most recently stored state, [b, h]."""
  return mem.s_vals[:, -1]


def accumulate(mem: RSMState, alpha: Array, rules: Rules = PAPER) -> RSMState:
  """Adds this step's attention weights to the scores (no gradient flows).

  ``alpha`` [b, nu+rho] holds the weights over S then R; empty slots receive
  exactly 0. ``sum`` and ``mean`` add S's weights, ``max`` keeps S's largest,
  ``decay`` decays every score by gamma and adds the weights, in S and in R.
  """
  nu = mem.s_score.shape[1]
  a_s, a_r = (jax.lax.stop_gradient(a) for a in (alpha[:, :nu], alpha[:, nu:]))
  if rules.relevance is Relevance.MAX:
    return mem._replace(s_score=jnp.maximum(mem.s_score, a_s))
  if rules.relevance is Relevance.DECAY:
    return mem._replace(s_score=rules.decay * mem.s_score + a_s,
                        r_score=jnp.where(mem.r_time >= 0,
                                          rules.decay * mem.r_score + a_r, mem.r_score))
  return mem._replace(s_score=mem.s_score + a_s)


def _row_draws(rules: Rules, seen: Array) -> Array:
  """Row b's uniform draw in [0, seen_b] for its (seen_b + 1)-th candidate."""
  base = jax.random.PRNGKey(rules.seed)

  def draw(row, n):
    key = jax.random.fold_in(jax.random.fold_in(base, row), n)
    return jax.random.randint(key, (), 0, n + 1)

  return jax.vmap(draw)(jnp.arange(seen.shape[0]), seen)


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


def screen(mem: RSMState, do: Array, t: Array | int = 0,
           rules: Rules = PAPER) -> tuple[RSMState, Screened]:
  """Offers S's oldest state to R, in rows where ``do`` [b] and S is full; the
  decision is ``choose``'s. A window (rho = 0) lets the oldest state leave."""
  rho = mem.r_score.shape[1]
  cand_time, cand_score = mem.s_time[:, 0], jax.lax.stop_gradient(mem.s_score[:, 0])
  if rho == 0:
    cand_score, eligible = _candidate(cand_time, cand_score, do, t, rules)
    return mem, Screened(jnp.where(eligible, cand_time, -1),
                         jnp.where(eligible, cand_score, jnp.nan), jnp.zeros_like(eligible))
  cand_score, eligible, admitted, slot = choose(cand_time, cand_score, mem.r_score,
                                                mem.r_time, mem.seen, do, t, rules)
  write = admitted[:, None] & (jnp.arange(rho)[None, :] == slot[:, None])  # [b, rho]

  def put(bank, cand):
    mask = write.reshape(write.shape + (1,) * (bank.ndim - 2))
    return jnp.where(mask, jnp.expand_dims(cand, 1), bank)

  mem = mem._replace(
      r_vals=put(mem.r_vals, mem.s_vals[:, 0]), r_keys=put(mem.r_keys, mem.s_keys[:, 0]),
      r_score=put(mem.r_score, cand_score), r_time=put(mem.r_time, cand_time),
      seen=mem.seen + eligible.astype(jnp.int32))
  info = Screened(jnp.where(eligible, cand_time, -1),
                  jnp.where(eligible, cand_score, jnp.nan), admitted)
  return mem, info


def push(mem: RSMState, value: Array, key: Array, t: Array, do: Array) -> RSMState:
  """Appends ``value`` [b, h] (key, score 0, time ``t``) to S where ``do`` [b]."""
  def shift(bank, new):
    moved = jnp.concatenate([bank[:, 1:], jnp.expand_dims(new, 1)], axis=1)
    return jnp.where(do.reshape(do.shape + (1,) * (bank.ndim - 1)), moved, bank)

  b = value.shape[0]
  return mem._replace(
      s_vals=shift(mem.s_vals, value), s_keys=shift(mem.s_keys, key),
      s_score=shift(mem.s_score, jnp.zeros((b,), mem.s_score.dtype)),
      s_time=shift(mem.s_time, jnp.broadcast_to(t, (b,)).astype(jnp.int32)))


def store(mem: RSMState, value: Array, key: Array, t: Array, do: Array,
          rules: Rules = PAPER) -> tuple[RSMState, Screened]:
  """Screens S's oldest state (its score already holds this step's weight), then pushes."""
  mem, info = screen(mem, do, t, rules)
  return push(mem, value, key, t, do), info
