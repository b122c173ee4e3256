"""The vectorised screening (relscreen.rsm) against the per-row NumPy reference."""

import functools

from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from relscreen import rsm
from relscreen.config import Eviction, Relevance
from tests.numpy_reference import Screen

SHAPES = [(3, 2, 1), (4, 3, 2), (2, 1, 3), (5, 4, 4)]  # (batch, nu, rho)
# Scores are sums of at most nu weights in [0, 1]; the reference sums in float64.
# Random weights run in float64 (the fixture), where the sums agree to rounding;
# the dyadic weights of the tie test are exact in float32 too.
RTOL = {np.float64: 1e-12, np.float32: 0.0}


def reservoir_draws(rules, batch):
  """Row b's draw for its n-th candidate, as ``rsm`` makes it (Algorithm R's randomness)."""
  def draw(b, n):
    seen = jnp.zeros((batch,), jnp.int32).at[b].set(n)
    return int(rsm._row_draws(rules, seen)[b])  # pylint: disable=protected-access
  return draw


@functools.lru_cache(maxsize=None)
def _jitted(rules, nu):
  """One jitted store/accumulate per rule set and nu, so the many examples below
  compile once per shape instead of once each."""
  return (jax.jit(functools.partial(rsm.store, nu=nu, rules=rules)),
          jax.jit(functools.partial(rsm.accumulate, nu=nu, rules=rules)))


def s_order(time_row, nu):
  """The S slots of one row holding a state, oldest first (S is a ring)."""
  slots = [j for j in range(nu) if time_row[j] >= 0]
  return sorted(slots, key=lambda j: time_row[j])


def run_both(batch, nu, rho, steps, weights, store_mask, rules=rsm.PAPER, r_weights=None):
  """Feeds the same weights to both; returns the final memory after checking
  every step's screening decision and both sets, row by row.

  ``weights`` [steps, b, nu] go to S's states (oldest first), ``r_weights``
  [steps, b, rho] (default 0) to R's slots. ``store_mask`` [steps] or
  [steps, b]: which rows store at each step (rows may skip stores on their own)."""
  hidden = 2
  dtype = np.float64 if jax.config.x64_enabled else np.float32  # the float64 fixture
  mem = jax.jit(rsm.init, static_argnums=range(5))(batch, hidden, nu, rho, dtype)
  draw = reservoir_draws(rules, batch)
  refs = [Screen(nu, rho, rules.relevance.value, rules.eviction.value, rules.decay,
                 functools.partial(draw, b)) for b in range(batch)]
  store, accumulate = _jitted(rules, nu)
  r_weights = np.zeros((steps, batch, rho)) if r_weights is None else r_weights
  store_mask = np.broadcast_to(np.asarray(store_mask).reshape(steps, -1), (steps, batch))
  time = np.full((batch, nu + rho), -1)
  for t in range(steps):
    # Weights for the states in S, oldest first, put at their ring slots.
    alpha = np.zeros((batch, nu + rho), dtype)
    for b in range(batch):
      order = s_order(time[b], nu)
      assert len(order) == len(refs[b].S)
      alpha[b, order] = weights[t, b, :len(order)]
      n_r = len(refs[b].R)
      alpha[b, nu:nu + n_r] = r_weights[t, b, :n_r]
      refs[b].add_weights(weights[t, b, :len(order)].astype(np.float64),
                          r_weights[t, b, :n_r].astype(np.float64))
    mem = accumulate(mem, jnp.asarray(alpha))
    value = np.full((batch, hidden), t, dtype)
    mem, info = store(mem, jnp.asarray(value), jnp.asarray(value), jnp.int32(t),
                      jnp.asarray(store_mask[t]))
    # Checked on the host: indexing jax arrays row by row compiles a program per index op.
    info, snap = jax.device_get((info, mem))
    time = np.asarray(snap.time)
    for b in range(batch):
      before = list(refs[b].R)
      want = refs[b].store(t, value[b]) if store_mask[t, b] else (-1, np.nan, False)
      assert int(info.time[b]) == want[0], (t, b)
      assert bool(info.admitted[b]) == want[2], (t, b)
      np.testing.assert_allclose(float(info.score[b]), want[1], rtol=RTOL[dtype])
      # The R slot written and the state it replaced (what the reverse pass undoes).
      slot = int(info.slot[b])
      assert (slot >= 0) == want[2], (t, b)
      if slot >= 0:
        assert int(info.replaced[b]) == (before[slot][0] if slot < len(before) else -1)
      else:
        assert int(info.replaced[b]) == -1
      # The S slot the new state took: the one now holding time t (none if not stored).
      stored = int(info.stored[b])
      if store_mask[t, b]:
        assert 0 <= stored < nu and time[b, stored] == t, (t, b)
      else:
        assert stored == -1, (t, b)
    for b in range(batch):
      ref = refs[b]
      r_time = time[b, nu:]
      np.testing.assert_array_equal(r_time[:len(ref.R)], [e[0] for e in ref.R])
      assert np.all(r_time[len(ref.R):] == -1)
      np.testing.assert_allclose(np.asarray(snap.score[b, nu:])[:len(ref.R)],
                                 [e[1] for e in ref.R], rtol=RTOL[dtype])
      # Values and keys travel with their time index.
      for bank in (snap.vals, snap.keys):
        np.testing.assert_array_equal(np.asarray(bank[b, nu:])[:len(ref.R), 0],
                                      r_time[:len(ref.R)])
        held = time[b] >= 0
        np.testing.assert_array_equal(np.asarray(bank[b])[held, 0], time[b, held])
      order = s_order(time[b], nu)
      np.testing.assert_array_equal(time[b, order], [e[0] for e in ref.S])
      np.testing.assert_allclose(np.asarray(snap.score[b])[order], [e[1] for e in ref.S],
                                 rtol=RTOL[dtype], atol=0)
  return mem


@pytest.mark.parametrize("batch,nu,rho", SHAPES)
def test_random_weights_match_reference(batch, nu, rho, float64):
  del float64  # run_both reads the x64 mode
  rng = np.random.default_rng(batch * 100 + nu * 10 + rho)
  steps = 25
  weights = rng.random((steps, batch, nu))
  run_both(batch, nu, rho, steps, weights, np.ones(steps, bool))


@settings(max_examples=15, deadline=None)
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**31 - 1),
       levels=st.sampled_from([2, 4]))
def test_ties_and_skipped_stores_match_reference(shape, seed, levels):
  """Dyadic weights (exact in float32 and float64) make ties frequent; some rows
  skip some stores, each on its own, so S's ring turns at a different place in
  every row."""
  batch, nu, rho = shape
  rng = np.random.default_rng(seed)
  steps = 20
  weights = (rng.integers(0, levels, (steps, batch, nu)) / levels).astype(np.float32)
  run_both(batch, nu, rho, steps, weights, rng.random((steps, batch)) < 0.7)


def test_tie_goes_to_incumbent_and_lowest_slot():
  """Hand-worked: rho = 2, nu = 1; states 0..4 earn scores 1, 1, 1, 2, 2.

  With nu = 1 the weight given at step t goes to state t - 1, which is screened
  at the same step."""
  store, accumulate = _jitted(rsm.PAPER, 1)
  mem = rsm.init(1, 1, nu=1, rho=2)
  events = []
  for t, score in enumerate([0.0, 1.0, 1.0, 1.0, 2.0, 2.0]):
    alpha = jnp.array([[score, 0.0, 0.0]])
    mem = accumulate(mem, alpha)
    mem, info = store(mem, jnp.ones((1, 1)), jnp.ones((1, 1)), jnp.int32(t),
                      jnp.array([True]))
    events.append((int(info.time[0]), bool(info.admitted[0])))
  # t=1: cand 0 (score 1) fills slot 0; t=2: cand 1 (1) fills slot 1;
  # t=3: cand 2 (1) ties the minimum: dropped; t=4: cand 3 (2) replaces slot 0;
  # t=5: cand 4 (2) replaces slot 1 (the remaining minimum).
  assert events == [(-1, False), (0, True), (1, True), (2, False), (3, True), (4, True)]
  np.testing.assert_array_equal(mem.time[:, 1:], [[3, 4]])
  np.testing.assert_array_equal(mem.score[:, 1:], [[2.0, 2.0]])


def test_candidate_score_is_sum_of_exactly_nu_weights():
  """k = 1 and every S slot receiving weight 1: each candidate leaves with score nu."""
  batch, nu, rho = 3, 4, 2
  store, accumulate = _jitted(rsm.PAPER, nu)
  mem = rsm.init(batch, 2, nu, rho)
  counts = []
  for t in range(15):
    alpha = jnp.concatenate([(mem.time[:, :nu] >= 0).astype(jnp.float32),
                             jnp.zeros((batch, rho))], axis=1)
    mem = accumulate(mem, alpha)
    mem, info = store(mem, jnp.zeros((batch, 2)), jnp.zeros((batch, 2)),
                      jnp.int32(t), jnp.ones((batch,), bool))
    if t >= nu:
      np.testing.assert_allclose(info.score, nu)
      assert np.all(info.time == t - nu)
    counts.append(np.asarray(jnp.sum(mem.time[:, nu:] >= 0, axis=1)))
  # |R| is the same in every row at every step.
  assert all(len(set(c.tolist())) == 1 for c in counts)


def test_state_shapes_fixed():
  store, accumulate = _jitted(rsm.PAPER, 4)
  mem = rsm.init(2, 3, 4, 5)
  before = [(x.shape, x.dtype) for x in jax.tree_util.tree_leaves(mem)]
  mem = accumulate(mem, jnp.ones((2, 9)))
  mem, _ = store(mem, jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.int32(0),
                 jnp.ones((2,), bool))
  assert [(x.shape, x.dtype) for x in jax.tree_util.tree_leaves(mem)] == before


RULES = [rsm.Rules(relevance, eviction, decay=0.75, seed=3)
         for relevance in Relevance for eviction in Eviction]


@pytest.mark.parametrize("rules", RULES, ids=lambda r: f"{r.relevance.value}-{r.eviction.value}")
def test_every_rule_matches_reference(rules, float64):
  """Every relevance x eviction rule against the per-row reference, R receiving
  weights too (only ``decay`` counts them); one shape with R filling and cycling."""
  del float64
  batch, nu, rho, steps = 3, 2, 2, 16
  rng = np.random.default_rng(7)
  run_both(batch, nu, rho, steps, rng.random((steps, batch, nu)), rng.random(steps) < 0.8,
           rules, rng.random((steps, batch, rho)))


@settings(max_examples=10, deadline=None)
@given(rule=st.sampled_from(RULES), seed=st.integers(0, 2**31 - 1))
def test_every_rule_with_ties_matches_reference(rule, seed):
  """Dyadic weights (exact in float32) make ties between scores frequent."""
  batch, nu, rho, steps = 3, 2, 2, 14
  rng = np.random.default_rng(seed)
  weights = (rng.integers(0, 2, (steps, batch, nu)) / 2).astype(np.float32)
  r_weights = (rng.integers(0, 2, (steps, batch, rho)) / 2).astype(np.float32)
  run_both(batch, nu, rho, steps, weights, np.ones(steps, bool),
           rule._replace(decay=0.5), r_weights)


def test_window_never_admits(float64):
  """rho = 0 is the window memory: the oldest state just leaves."""
  del float64
  rng = np.random.default_rng(0)
  mem = run_both(2, 3, 0, 10, rng.random((10, 2, 3)), np.ones(10, bool))
  assert mem.time.shape == (2, 3)  # S only
  assert np.all(np.asarray(mem.seen) == 0)  # nothing offered to an R


def test_mean_ranks_as_sum_does(float64):
  """Every state spends the same number of steps in S (nu k), so mean = sum / (nu k)
  and the two rules admit the same states: a property, not a coincidence."""
  del float64
  rng = np.random.default_rng(1)
  weights = rng.random((30, 4, 3))
  mean = run_both(4, 3, 2, 30, weights, np.ones(30, bool),
                  rsm.Rules(Relevance.MEAN, Eviction.TOP))
  total = run_both(4, 3, 2, 30, weights, np.ones(30, bool))
  np.testing.assert_array_equal(mean.time[:, 3:], total.time[:, 3:])


def test_reservoir_keeps_a_uniform_sample():
  """Algorithm R: after n candidates each was kept with probability rho / n.
  1000 rows, rho = 4, n = 20: each candidate's kept-fraction is 0.2 +- 0.013 (1
  sd); a bound of 5 sd fails with probability ~1e-5 over the 20 candidates."""
  batch, nu, rho, steps = 1000, 1, 4, 21
  mem = rsm.init(batch, 1, nu, rho)
  store = jax.jit(functools.partial(rsm.store, nu=nu,
                                    rules=rsm.Rules(eviction=Eviction.RESERVOIR)))
  for t in range(steps):
    mem, _ = store(mem, jnp.zeros((batch, 1)), jnp.zeros((batch, 1)), jnp.int32(t),
                   jnp.ones((batch,), bool))
  kept = np.asarray(mem.time[:, nu:])
  assert np.all(np.sort(kept, 1)[:, :-1] < np.sort(kept, 1)[:, 1:])  # distinct
  fractions = np.array([(kept == n).any(1).mean() for n in range(steps - 1)])
  sd = np.sqrt(0.2 * 0.8 / batch)
  assert np.all(np.abs(fractions - 0.2) < 5 * sd), fractions
