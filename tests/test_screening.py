"""The vectorised screening (relscreen.rsm) against the per-row NumPy reference."""

from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from relscreen import rsm
from tests.numpy_reference import Screen

SHAPES = [(3, 2, 1), (4, 3, 2), (2, 1, 3), (5, 4, 4)]  # (batch, nu, rho)
# Scores are sums of at most nu weights in [0, 1]; the reference sums in float64.
# Random weights run in float64 (the fixture), where the sums agree to rounding;
# the dyadic weights of the tie test are exact in float32 too.
RTOL = {np.float64: 1e-12, np.float32: 0.0}


def run_both(batch, nu, rho, steps, weights, store_mask):
  """Feeds the same weights to both; returns per-step (ours, reference) snapshots."""
  hidden = 2
  dtype = np.float64 if jax.config.x64_enabled else np.float32  # the float64 fixture
  mem = rsm.init(batch, hidden, nu, rho, dtype)
  refs = [Screen(nu, rho) for _ in range(batch)]
  store = jax.jit(rsm.store)
  accumulate = jax.jit(rsm.accumulate)
  for t in range(steps):
    m = len(refs[0].S)
    # Weights for the m states in S, oldest first; ours are right-aligned in S.
    w = weights[t, :, :m]
    alpha = np.zeros((batch, nu + rho), dtype)
    alpha[:, nu - m:nu] = w
    mem = accumulate(mem, jnp.asarray(alpha))
    for b in range(batch):
      refs[b].add_weights(w[b].astype(np.float64))
    value = np.full((batch, hidden), t, dtype)
    do = bool(store_mask[t])
    mem, info = store(mem, jnp.asarray(value), jnp.asarray(value), jnp.int32(t),
                      jnp.full((batch,), do))
    for b in range(batch):
      want = refs[b].store(t, value[b]) if do else (-1, np.nan, False)
      assert int(info.time[b]) == want[0], (t, b)
      assert bool(info.admitted[b]) == want[2], (t, b)
      np.testing.assert_allclose(float(info.score[b]), want[1], rtol=RTOL[dtype])
    for b in range(batch):
      ref = refs[b]
      r_time = np.asarray(mem.r_time[b])
      np.testing.assert_array_equal(r_time[:len(ref.R)], [e[0] for e in ref.R])
      assert np.all(r_time[len(ref.R):] == -1)
      np.testing.assert_allclose(np.asarray(mem.r_score[b])[:len(ref.R)],
                                 [e[1] for e in ref.R], rtol=RTOL[dtype])
      # Values and keys travel with their time index.
      np.testing.assert_array_equal(np.asarray(mem.r_vals[b])[:len(ref.R), 0],
                                    r_time[:len(ref.R)])
      s_time = np.asarray(mem.s_time[b])
      np.testing.assert_array_equal(s_time[nu - len(ref.S):], [e[0] for e in ref.S])
      np.testing.assert_allclose(np.asarray(mem.s_score[b])[nu - len(ref.S):],
                                 [e[1] for e in ref.S], rtol=RTOL[dtype], atol=0)
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
  """Dyadic weights (exact in float32 and float64) make ties frequent; some steps
  store nothing (as with k > 1)."""
  batch, nu, rho = shape
  rng = np.random.default_rng(seed)
  steps = 20
  weights = (rng.integers(0, levels, (steps, batch, nu)) / levels).astype(np.float32)
  run_both(batch, nu, rho, steps, weights, rng.random(steps) < 0.7)


def test_tie_goes_to_incumbent_and_lowest_slot():
  """Hand-worked: rho = 2, nu = 1; states 0..4 earn scores 1, 1, 1, 2, 2.

  With nu = 1 the weight given at step t goes to state t - 1, which is screened
  at the same step."""
  mem = rsm.init(1, 1, nu=1, rho=2)
  events = []
  for t, score in enumerate([0.0, 1.0, 1.0, 1.0, 2.0, 2.0]):
    alpha = jnp.array([[score, 0.0, 0.0]])
    mem = rsm.accumulate(mem, alpha)
    mem, info = rsm.store(mem, jnp.ones((1, 1)), jnp.ones((1, 1)), jnp.int32(t),
                          jnp.array([True]))
    events.append((int(info.time[0]), bool(info.admitted[0])))
  # t=1: cand 0 (score 1) fills slot 0; t=2: cand 1 (1) fills slot 1;
  # t=3: cand 2 (1) ties the minimum: dropped; t=4: cand 3 (2) replaces slot 0;
  # t=5: cand 4 (2) replaces slot 1 (the remaining minimum).
  assert events == [(-1, False), (0, True), (1, True), (2, False), (3, True), (4, True)]
  np.testing.assert_array_equal(mem.r_time, [[3, 4]])
  np.testing.assert_array_equal(mem.r_score, [[2.0, 2.0]])


def test_candidate_score_is_sum_of_exactly_nu_weights():
  """k = 1 and every S slot receiving weight 1: each candidate leaves with score nu."""
  batch, nu, rho = 3, 4, 2
  mem = rsm.init(batch, 2, nu, rho)
  counts = []
  for t in range(15):
    alpha = jnp.concatenate([(mem.s_time >= 0).astype(jnp.float32),
                             jnp.zeros((batch, rho))], axis=1)
    mem = rsm.accumulate(mem, alpha)
    mem, info = rsm.store(mem, jnp.zeros((batch, 2)), jnp.zeros((batch, 2)),
                          jnp.int32(t), jnp.ones((batch,), bool))
    if t >= nu:
      np.testing.assert_allclose(info.score, nu)
      assert np.all(info.time == t - nu)
    counts.append(np.asarray(jnp.sum(mem.r_time >= 0, axis=1)))
  # |R| is the same in every row at every step.
  assert all(len(set(c.tolist())) == 1 for c in counts)


def test_state_shapes_fixed():
  mem = rsm.init(2, 3, 4, 5)
  before = [(x.shape, x.dtype) for x in jax.tree_util.tree_leaves(mem)]
  mem = rsm.accumulate(mem, jnp.ones((2, 9)))
  mem, _ = rsm.store(mem, jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.int32(0),
                     jnp.ones((2,), bool))
  assert [(x.shape, x.dtype) for x in jax.tree_util.tree_leaves(mem)] == before
