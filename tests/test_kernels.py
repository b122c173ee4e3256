"""The attention step's CPU kernels (``relscreen.kernels``) against XLA's version
of the same step, their build and their fallback."""

import dataclasses
import os
import stat
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import relscreen as rs
from relscreen import kernels, models, reverse

needs_compiler = pytest.mark.skipif(
    kernels.find_compiler() is None or os.environ.get(kernels.ENV) == "0",
    reason="no C++ compiler here (or RELSCREEN_KERNELS=0): the kernel is off and XLA's "
           "version runs; tests/test_custom_vjp.py checks that one")


def _step_inputs(dtype, b=4, nu=3, rho=3, h=5, seed=0):
  """One reverse step's banks, undo and attention inputs: rows with and without
  an R slot written, empty slots (weight 0) and peaked weights."""
  m = nu + rho
  rng = np.random.default_rng(seed)
  banks = tuple(rng.normal(size=(b, m, h)) for _ in range(4))
  s_col = rng.integers(0, nu, b)
  r_col = np.where(np.arange(b) % 2 == 1, -1, rng.integers(nu, m, b))  # odd rows: no R slot
  rows = tuple(rng.normal(size=(b, h)) for _ in range(4))
  scores = 3 * rng.normal(size=(b, m))
  scores[1, m - 2:] = -np.inf  # empty slots in row 1
  alpha = np.exp(scores - scores.max(-1, keepdims=True))
  alpha /= alpha.sum(-1, keepdims=True)
  query, d_context = rng.normal(size=(b, h)), rng.normal(size=(b, h))
  v = rng.normal(size=h)
  cast = lambda a: jnp.asarray(a, dtype)
  return (tuple(map(cast, banks)), (jnp.asarray(s_col, jnp.int32), jnp.asarray(r_col, jnp.int32),
                                    *map(cast, rows)),
          cast(query), cast(alpha), cast(v), cast(d_context))


def _xla(*args):
  banks, undo, query, alpha, v, d_context = args
  return reverse._RelevanceReverse._undo_and_attend(banks, undo, query, alpha, v, d_context)


@needs_compiler
@pytest.mark.parametrize("b, nu, rho, h", [
    (4, 3, 3, 5),
    (41, 10, 15, 128),  # 131,200 bank elements: rows in chunks of 8 on XLA's threads
])
def test_kernel_step_equals_xlas_in_float64(b, nu, rho, h, float64):
  """The kernel's undo and attention reverse give XLA's banks, d q and d v; on
  XLA's threads too, with the same bits every time (d v's shares are summed in
  a fixed order)."""
  del float64
  assert kernels.available(), kernels.why_not()
  args = _step_inputs(jnp.float64, b, nu, rho, h)
  run = jax.jit(kernels.slots_reverse)
  dq, d_v, banks = run(*args)
  dq_ref, d_v_ref, banks_ref = jax.jit(_xla)(*args)
  chex.assert_trees_all_close((dq, d_v, banks), (dq_ref, d_v_ref, banks_ref), rtol=1e-12,
                              atol=1e-13)
  for _ in range(3):
    chex.assert_trees_all_equal(run(*args), (dq, d_v, banks))
  # The undo did happen: slot s_col of row 0 holds the state that left S, and the
  # R slot row 0 wrote its evicted state, with a zero cotangent so far.
  (s_col, r_col, back, _, put_back, _) = args[1]
  np.testing.assert_array_equal(banks[0][0, int(s_col[0])], back[0])
  np.testing.assert_array_equal(banks[0][0, int(r_col[0])], put_back[0])
  # ... which the attention then added alpha * d_context to.
  alpha, d_context = args[3], args[5]
  np.testing.assert_allclose(banks[2][0, int(r_col[0])], alpha[0, int(r_col[0])] * d_context[0],
                             rtol=1e-12)


@needs_compiler
def test_kernel_step_in_float32_within_its_rounding():
  """float32: the kernel's tanh is a rational approximation within 5 ulp (a few
  1e-7 relative), and each output sums at most b * m = 24 terms of order one,
  so it stays within 2e-5 of the float64 step; a wrong term would be off by
  order one."""
  args32 = _step_inputs(jnp.float32)
  with jax.enable_x64(True):
    args64 = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, args32)
    ref = jax.jit(_xla)(*args64)
  got = jax.jit(kernels.slots_reverse)(*args32)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b), rtol=0, atol=2e-5)


@needs_compiler
@pytest.mark.parametrize("b, m, h", [(3, 5, 4), (41, 25, 128)])  # the second on XLA's threads
def test_forward_kernel_equals_additive_attention_in_float64(b, m, h, float64):
  """``slots_attend`` is ``attention.additive_attention`` over the slots holding a
  state: empty slots get weight 0, and a row with none gets 0 weights and a 0
  context (no NaN)."""
  del float64
  assert kernels.available(), kernels.why_not()
  rng = np.random.default_rng(1)
  query, keys, vals = (jnp.asarray(rng.normal(size=shape)) for shape in
                       ((b, h), (b, m, h), (b, m, h)))
  v = jnp.asarray(rng.normal(size=h))
  time = rng.integers(0, 50, (b, m)).astype(np.int32)
  time[0, 1:] = -1  # one slot held
  time[1, :] = -1  # none
  time[2, m // 2:] = -1
  context, alpha = jax.jit(kernels.slots_attend)(query, keys, vals, jnp.asarray(time), v)
  ref = rs.additive_attention(query, keys, vals, jnp.asarray(time) >= 0, v)
  chex.assert_trees_all_close((context, alpha), (ref.context, ref.alpha), rtol=1e-12,
                              atol=1e-14)
  np.testing.assert_array_equal(alpha[1], 0.0)
  np.testing.assert_array_equal(context[1], 0.0)
  np.testing.assert_allclose(alpha[0, 0], 1.0, rtol=1e-15)
  assert float(jnp.abs(alpha[2, m // 2:]).max()) == 0.0


@needs_compiler
def test_the_attentions_tanh_saturates_to_one():
  """float32: beyond the rational tanh's clamp (|x| > 7.905) the kernel's tanh
  is exactly +-1, as float32's tanh is from x = 9.01 on (the rational function
  at the clamp gives 0.99999976). With v all ones, a query of 0 and keys of
  +20 and -20 in every unit, the two slots score +h and -h exactly, so the
  second one's weight is exp(-2h) / (1 + exp(-2h)); at 0.99999976 it is
  4e-6 off at h = 32 (two 512-bit vectors; at 16 the scores' float32 sums
  round the difference away, at 64 the weight underflows)."""
  h = 32
  query = jnp.zeros((1, h), jnp.float32)
  keys = jnp.stack([jnp.full((h,), 20.0), jnp.full((h,), -20.0)])[None].astype(jnp.float32)
  vals = jnp.asarray(np.random.default_rng(0).normal(size=(1, 2, h)), jnp.float32)
  time = jnp.asarray([[0, 1]], jnp.int32)
  _, alpha = jax.jit(kernels.slots_attend)(query, keys, vals, time, jnp.ones((h,), jnp.float32))
  expected = np.exp(-2.0 * h) / (1 + np.exp(-2.0 * h))
  np.testing.assert_allclose(float(alpha[0, 1]), expected, rtol=2e-6)
  assert float(alpha[0, 0]) == 1.0


def _grads(cfg, params, x, state, reset):
  def loss(p, x, st):
    out, _ = models.forward(p, cfg, x, state=st, reset=reset)
    return jnp.sum(jnp.sin(out["h"]) * jnp.arange(1, cfg.hidden + 1)[None, None, :])
  fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2), allow_int=True))
  return _float_leaves(fn(params, x, state)), fn.lower(params, x, state).compile().as_text()


def _float_leaves(grads):
  """The gradients' float leaves (a state's times and counts get none)."""
  return [a for a in jax.tree_util.tree_leaves(grads) if jnp.issubdtype(a.dtype, jnp.inexact)]


FORWARD, BLOCK, STEP, ATTEND = ("relscreen_rnn_forward", "relscreen_rnn_block_reverse",
                                "relscreen_slots_reverse", "relscreen_slots_attend")


@needs_compiler
@pytest.mark.parametrize("name, given, expected", [("RelRNN", None, {FORWARD, BLOCK}),
                                                   ("WinRNN", None, {FORWARD, BLOCK}),
                                                   ("RelLSTM", None, {FORWARD, BLOCK}),
                                                   ("RelRNN", "state", {FORWARD, BLOCK}),
                                                   ("RelLSTM", "state", {FORWARD, BLOCK}),
                                                   ("RelRNN", "resets", {FORWARD, BLOCK}),
                                                   ("RelLSTM", "resets", {FORWARD, BLOCK})])
def test_training_gradients_with_and_without_the_kernel(name, given, expected, float64,
                                                        monkeypatch):
  """The custom pass's gradients with the kernels and with XLA's version of the
  step are the same (float64), from a fresh state and from a given state,
  with and without rows restarting; the compiled program calls the kernels
  only when they are on: for an RNN (tanh) or LSTM cell the whole forward
  scan as one call (``FORWARD``) and each block of reverse steps as one
  (``BLOCK``; blocks of 4 steps here, so the loop over blocks and the short
  first block both run; from a given state, 7 steps before it, undoing
  stores puts back states the given memory held, and a restarting row's
  memory is put back as it was), from a fresh state whatever the bank's
  size (``ATTEND_FROM``, the forward attention step's threshold, lowered to
  0 for the second check). (tests/test_custom_vjp.py checks the pass
  against autodiff, with the kernels where they build.)"""
  cfg = rs.model_config(name, 3, hidden=6, nu=2, rho=2, reverse_block=4)
  params = float64(rs.RecurrentCore(cfg).init(jax.random.PRNGKey(0), jnp.zeros((3, 4, 3)))["params"])
  x = float64(jax.random.normal(jax.random.PRNGKey(1), (3, 11, 3)))
  state, reset = None, None
  if given:
    before = float64(jax.random.normal(jax.random.PRNGKey(2), (3, 7, 3)))
    _, state = models.forward(params, cfg, before, state=float64(rs.init_state(cfg, 3)))
  if given == "resets":
    reset = jnp.zeros((3, 11), bool).at[0, 4].set(True).at[2, 9].set(True)
  if not given:  # at the default ATTEND_FROM a small bank gets XLA's forward attention
    _, hlo_small = _grads(cfg, params, x, state, reset)
    assert {t for t in kernels.TARGETS if t in hlo_small} == expected - {ATTEND}
  monkeypatch.setattr(kernels, "ATTEND_FROM", 0)
  jax.clear_caches()  # models.forward's programs are cached by config: trace them again
  on, hlo_on = _grads(cfg, params, x, state, reset)
  off, hlo_off = _grads(dataclasses.replace(cfg, cpu_kernel=False), params, x, state, reset)
  assert {t for t in kernels.TARGETS if t in hlo_on} == expected
  assert not any(t in hlo_off for t in kernels.TARGETS)
  chex.assert_trees_all_close(on, off, rtol=1e-10, atol=1e-13)
  assert max(float(jnp.abs(a).max()) for a in jax.tree_util.tree_leaves(on)) > 0


def _rnn_grads(params, cfg, x):
  loss = lambda p: jnp.sum(jnp.sin(models.forward(p, cfg, x)[0]["h"]) *
                           jnp.linspace(-1, 1, cfg.hidden)[None, None, :])
  return jax.jit(jax.grad(loss))(params)


@needs_compiler
@pytest.mark.parametrize("name", ["RelRNN", "RelLSTM"])
def test_the_rnn_kernels_at_their_tile_sizes(name):
  """The forward and block kernels' matrix products go in tiles of 7 or 8
  rows and 2 vectors of columns (32 float32, 16 float64 columns) or of up to 6
  rows and 4 vectors, then whole vectors one at a time, then the rest column
  by column; at H = 72 (an LSTM's gates: 288 columns; the reverse's [dpre, dq]
  rows: 144 and 360) and batch 13 (groups of 7 and 6 rows on XLA's threads)
  every kind of column block runs (float32 H: 2 x 32 or 64, then 8 single
  columns; float64 H: 4 x 16 or 2 x 32, then one vector; float32 gates: 9 x 32,
  or 4 x 64 and two vectors), and over 14 steps R (4 slots) fills and then
  evicts. float64: XLA's outputs and final state (the
  slots' times, scores and the screening count exactly or to 1e-12) and its
  gradients to 1e-10, the same bits on every call. float32: as far from the
  float64 gradients as XLA's own float32 gradients are, within a factor of 4
  (their sums go in another order)."""
  cfg = rs.model_config(name, 3, hidden=72, nu=3, rho=4, reverse_block=4)
  init = rs.RecurrentCore(cfg).init(jax.random.PRNGKey(0), jnp.zeros((10, 4, 3)))["params"]
  x32 = jax.random.normal(jax.random.PRNGKey(1), (13, 14, 3))
  with jax.enable_x64(True):
    cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)
    params, x = cast(init), cast(x32)
    run = lambda c: jax.jit(lambda p, x: models.forward(p, c, x))(params, x)
    (out, final), (out_ref, final_ref) = run(cfg), run(dataclasses.replace(cfg, cpu_kernel=False))
    chex.assert_trees_all_close((out, final), (out_ref, final_ref), rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(final.memory.time, final_ref.memory.time)
    assert int(final.memory.seen.min()) == 14 - 3  # every state that left S was offered
    on = _rnn_grads(params, cfg, x)
    off = _rnn_grads(params, dataclasses.replace(cfg, cpu_kernel=False), x)
    chex.assert_trees_all_close(on, off, rtol=1e-10, atol=1e-13)
    chex.assert_trees_all_equal(_rnn_grads(params, cfg, x), on)
  on32 = _rnn_grads(init, cfg, x32)
  off32 = _rnn_grads(init, dataclasses.replace(cfg, cpu_kernel=False), x32)
  leaves = lambda t: jax.tree_util.tree_flatten_with_path(t)[0]
  for (path, ref), (_, kernel32), (_, xla32) in zip(leaves(off), leaves(on32), leaves(off32)):
    ref = np.asarray(ref)
    scale = np.abs(ref).max()
    err_kernel = np.abs(np.asarray(kernel32, np.float64) - ref).max() / scale
    err_xla = np.abs(np.asarray(xla32, np.float64) - ref).max() / scale
    assert err_kernel <= 4 * err_xla + 1e-7, (path, err_kernel, err_xla)


@needs_compiler
@pytest.mark.parametrize("name, mib, given", [  # mib 0: no queries or keys kept for a reverse
    ("RelRNN", 256, False), ("RelRNN", 0, False), ("RelLSTM", 256, False),
    ("RelLSTM", 0, True)])
def test_a_forward_alone_keeps_only_h(name, mib, given, float64):
  """A forward pass with no gradient taken runs the forward kernel lean: s, q,
  k (and c) as rings of two steps, so its scratch memory is one [L, b, h]
  array (h) and a little, as XLA's scan's, not five; it runs even where the
  queries and keys would not be kept (``keep_projections_mib=0``), from a
  fresh or a given state. Outputs and final state are XLA's (float64) at an
  odd length (the rings end in row 0)."""
  cfg = rs.model_config(name, 3, hidden=16, nu=3, rho=4, keep_projections_mib=mib)
  off = dataclasses.replace(cfg, cpu_kernel=False)
  params = float64(rs.RecurrentCore(cfg).init(jax.random.PRNGKey(0), jnp.zeros((10, 4, 3)))["params"])
  x = float64(jax.random.normal(jax.random.PRNGKey(1), (5, 301, 3)))
  state = None
  if given:
    _, state = models.forward(params, off, x[:, :9], state=float64(rs.init_state(cfg, 5)))
  run = lambda c: jax.jit(lambda p, x, st: models.forward(p, c, x, state=st))
  chex.assert_trees_all_close(run(cfg)(params, x, state), run(off)(params, x, state),
                              rtol=1e-12, atol=1e-13)
  compiled = run(cfg).lower(params, x, state).compile()
  assert FORWARD in compiled.as_text()
  lbh = 301 * 5 * 16 * 8  # one [L, b, h] float64 array
  assert compiled.memory_analysis().temp_size_in_bytes < 1.5 * lbh


@needs_compiler
@pytest.mark.parametrize("name, relevance, eviction", [
    ("RelRNN", "mean", "top"), ("RelRNN", "max", "fifo"), ("RelLSTM", "decay", "top"),
    ("RelLSTM", "sum", "fifo"), ("RelRNN", "sum", "reservoir"), ("RelLSTM", "max", "reservoir")])
def test_the_forward_kernel_with_other_rules(name, relevance, eviction, float64):
  """The forward kernel runs the memory's other rules (mean, max and decay
  relevance, fifo and reservoir eviction) as ``rsm`` does: float64 outputs,
  final scores, slot times (exactly) and screening count of XLA's scan over
  23 steps, and its gradients; the rules change which states R keeps or their
  scores, so a kernel that ran the paper's rules instead would leave others
  there. Reservoir's draws come from ``rsm``'s generator by the count of
  candidates offered: from a given state (9 steps before) they continue where
  its count stands."""
  def run(cfg):
    params = float64(jax.tree_util.tree_map(lambda a: 2 * a, rs.RecurrentCore(cfg).init(
        jax.random.PRNGKey(0), jnp.zeros((10, 4, 3)))["params"]))
    x = float64(jax.random.normal(jax.random.PRNGKey(1), (5, 23, 3)))
    fwd = jax.jit(lambda p, x: models.forward(p, cfg, x))
    grads = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(models.forward(p, cfg, x)[0]["h"]))))
    return fwd(params, x), grads(params), fwd.lower(params, x).compile().as_text()

  cfg = rs.model_config(name, 3, hidden=16, nu=3, rho=3, relevance=relevance,
                        eviction=eviction)
  (out, final), grads, hlo = run(cfg)
  (out_ref, final_ref), grads_ref, _ = run(dataclasses.replace(cfg, cpu_kernel=False))
  assert FORWARD in hlo
  chex.assert_trees_all_close((out, final), (out_ref, final_ref), rtol=1e-12, atol=1e-13)
  np.testing.assert_array_equal(final.memory.time, final_ref.memory.time)
  chex.assert_trees_all_close(grads, grads_ref, rtol=1e-10, atol=1e-13)
  paper = run(rs.model_config(name, 3, hidden=16, nu=3, rho=3))[0][1].memory
  # The rules made a difference: other states in R, or other scores (mean
  # divides each candidate's sum by the nu steps it spent in S, so it keeps
  # the paper's states but not its scores).
  assert not (np.array_equal(paper.time, final.memory.time)
              and np.allclose(paper.score, final.memory.score))
  if eviction == "reservoir":  # from a given state: the draws continue from its count
    params = float64(rs.RecurrentCore(cfg).init(jax.random.PRNGKey(0), jnp.zeros((10, 4, 3)))[
        "params"])
    x = float64(jax.random.normal(jax.random.PRNGKey(2), (5, 32, 3)))
    finals = [jax.jit(lambda p, x, c=c: models.forward(p, c, x[:, 9:], state=models.forward(
        p, c, x[:, :9])[1]))(params, x)[1] for c in (cfg, dataclasses.replace(cfg, cpu_kernel=False))]
    assert int(finals[0].memory.seen.min()) > 6  # it had offered candidates before
    np.testing.assert_array_equal(finals[0].memory.time, finals[1].memory.time)
    chex.assert_trees_all_close(finals[0], finals[1], rtol=1e-12, atol=1e-13)


@needs_compiler
@pytest.mark.parametrize("name, eviction", [("RelRNN", "top"), ("RelLSTM", "fifo"),
                                            ("RelLSTM", "reservoir")])
def test_the_forward_kernel_with_restarting_rows(name, eviction, float64):
  """Windows with rows restarting inside them (PPO's training windows) run
  the forward kernel, which empties a restarting row's memory and steps it
  from a zero s (and c) by step 0's rule: float64 outputs, final state (slot
  times and screening count exactly; restarts at the last step, so its s is
  the RNN cell's pre-activation) and gradients of XLA's scan, from a given
  state whose R is full; the same outputs from the lean forward (not
  differentiated). Reservoir eviction with restarts stays on XLA's scan
  (its draws are counted from the window's start)."""
  cfg = rs.model_config(name, 3, hidden=16, nu=3, rho=3, eviction=eviction)
  params = float64(jax.tree_util.tree_map(lambda a: 2 * a, rs.RecurrentCore(cfg).init(
    jax.random.PRNGKey(0), jnp.zeros((10, 4, 3)))["params"]))
  x = float64(jax.random.normal(jax.random.PRNGKey(1), (5, 30, 3)))
  reset = np.zeros((5, 18), bool)
  reset[0, 4] = reset[0, 11] = reset[2, 17] = reset[3, 0] = reset[4, 1] = True

  def run(c):
    def loss(p, x, state):
      out, final = models.forward(p, c, x, state=state, reset=jnp.asarray(reset))
      return jnp.sum(jnp.sin(out["h"])), (out, final)
    state = jax.jit(lambda p, x: models.forward(p, c, x)[1])(params, x[:, :12])
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 2), has_aux=True, allow_int=True))
    (_, (out, final)), grads = fn(params, x[:, 12:], state)
    # Not differentiated: the lean forward (only h kept for every step).
    lean = jax.jit(lambda p, x, st: models.forward(p, c, x, state=st, reset=jnp.asarray(reset)))
    return ((out, final), lean(params, x[:, 12:], state), _float_leaves(grads),
            fn.lower(params, x[:, 12:], state).compile().as_text())

  kept, lean, grads, hlo = run(cfg)
  ref, _, grads_ref, _ = run(dataclasses.replace(cfg, cpu_kernel=False))
  assert (FORWARD in hlo) == (eviction != "reservoir")
  chex.assert_trees_all_close((kept, lean), (ref, ref), rtol=1e-12, atol=1e-13)
  final, final_ref = kept[1], ref[1]
  np.testing.assert_array_equal(final.memory.time, final_ref.memory.time)
  np.testing.assert_array_equal(final.memory.seen, final_ref.memory.seen)
  chex.assert_trees_all_close(grads, grads_ref, rtol=1e-10, atol=1e-13)
  # Row 2 restarted at the last step: its memory holds that step's state alone.
  assert sorted(np.asarray(final.memory.time[2]).tolist())[-2:] == [-1, 29]
  assert int((np.asarray(final.memory.time[1]) >= 0).sum()) == 6  # R full before, still


def _stream(cfg, params, xs, resets, dtype):
  """Steps ``rs.step`` over ``xs`` [t, b, i] from a fresh state, rows restarting
  where ``resets`` [t, b] (every other step without a reset argument): every
  step's (state, outputs), and the compiled program of one step."""
  state, steps = rs.init_state(cfg, xs.shape[1], dtype=dtype), []
  for t in range(xs.shape[0]):
    state, out = rs.step(params, cfg, state, xs[t], reset=resets[t] if t % 2 else None)
    steps.append((state, out))
  hlo = jax.jit(lambda p, s, x: rs.step(p, cfg, s, x)).lower(params, state, xs[0]).compile()
  return steps, hlo.as_text()


@needs_compiler
@pytest.mark.parametrize("name, rho, rules", [
    ("RelRNN", 2, {}), ("WinRNN", 0, {}), ("RelRNN", 2, {"relevance": "mean", "eviction": "fifo"}),
    ("RelRNN", 2, {"eviction": "reservoir"}), ("RelLSTM", 2, {})])
def test_the_streaming_step_as_one_kernel_call(name, rho, rules):
  """An RNN or LSTM cell's streaming step over a relevance memory or a window is one
  kernel call: float64, step by step over 16 steps with rows restarting, the
  state (slot times and the screening count exactly) and outputs of XLA's
  step; R fills and evicts (also under the mean and fifo rules, whose
  candidate's score divides by the steps since its stored time). Its gradients (``jax.grad`` and ``jax.jvp``
  through the steps: XLA's, by ``custom_jvp``) are XLA's. float32: as far
  from float64 as XLA's own float32 step, within a factor of 4."""
  kw = {"rho": rho, **rules} if rho else {}
  cfg = rs.model_config(name, 3, hidden=6, nu=3, **kw)
  off = dataclasses.replace(cfg, cpu_kernel=False)
  init = rs.RecurrentCore(cfg).init(jax.random.PRNGKey(0), jnp.zeros((4, 2, 3)))["params"]
  init = jax.tree_util.tree_map(lambda a: 2 * a, init)  # weights that make the scores differ
  xs32 = jax.random.normal(jax.random.PRNGKey(1), (16, 4, 3))
  resets = np.zeros((16, 4), bool)
  resets[5, 1] = resets[9, 3] = resets[11, 1] = True
  with jax.enable_x64(True):
    cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)
    params, xs = cast(init), cast(xs32)
    on, hlo_on = _stream(cfg, params, xs, resets, jnp.float64)
    ref, hlo_off = _stream(off, params, xs, resets, jnp.float64)
    assert FORWARD in hlo_on and not any(t in hlo_off for t in kernels.TARGETS)
    for t, ((state, out), (state_ref, out_ref)) in enumerate(zip(on, ref)):
      chex.assert_trees_all_close((state, out), (state_ref, out_ref), rtol=1e-12, atol=1e-13)
      np.testing.assert_array_equal(state.memory.time, state_ref.memory.time, err_msg=f"step {t}")
      np.testing.assert_array_equal(state.memory.seen, state_ref.memory.seen)
    final = on[-1][0].memory
    assert int(final.time[1].max()) == 15 and int((final.time[1] >= 0).sum()) == min(5, 3 + rho)
    if rho:
      assert int(final.seen[0]) == 16 - 3  # row 0 never restarted: every state that left S

    def loss(p, c, x0):
      state, total = rs.init_state(c, 4, dtype=jnp.float64), 0.0
      for t in range(6):
        state, out = rs.step(p, c, state, x0 if t == 0 else xs[t])
        total = total + jnp.sum(jnp.sin(out["h"]) * jnp.arange(1, 7)[None, :])
      return total
    grads = [jax.grad(loss, argnums=(0, 2))(params, c, xs[0]) for c in (cfg, off)]
    chex.assert_trees_all_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)
    tangent = jax.tree_util.tree_map(jnp.ones_like, params)
    jvps = [jax.jvp(lambda p, c=c: loss(p, c, xs[0]), (params,), (tangent,)) for c in (cfg, off)]
    chex.assert_trees_all_close(jvps[0], jvps[1], rtol=1e-12)
  on32, _ = _stream(cfg, init, xs32, resets, jnp.float32)
  off32, _ = _stream(off, init, xs32, resets, jnp.float32)
  h = lambda steps: np.stack([np.asarray(out["h"], np.float64) for _, out in steps])
  scale = np.abs(h(ref)).max()
  err_kernel, err_xla = (np.abs(h(run) - h(ref)).max() / scale for run in (on32, off32))
  assert err_kernel <= 4 * err_xla + 1e-7, (err_kernel, err_xla)


def test_build_caches_and_names_what_fails(tmp_path, monkeypatch):
  """A build goes to the cache directory once (a second call finds it); a
  compiler that is missing, or fails, gives a BuildError naming it and saying why.
  (A one-line source stands in for the kernels' own, which the other tests build.)"""
  with pytest.raises(kernels.BuildError, match="nowhere/c\\+\\+"):
    kernels.build("/nowhere/c++", tmp_path)
  failing = tmp_path / "cc"
  failing.write_text("#!/bin/sh\n[ \"$1\" = --version ] && exit 0\n"
                     "echo 'fake.cc:1: error: no such thing' >&2\nexit 1\n")
  failing.chmod(failing.stat().st_mode | stat.S_IEXEC)
  with pytest.raises(kernels.BuildError, match="error: no such thing"):
    kernels.build(str(failing), tmp_path / "out")
  assert not any((tmp_path / "out").iterdir())  # nothing half-written left behind
  cxx = kernels.find_compiler()
  if cxx is None:
    pytest.skip("no C++ compiler here")
  source = tmp_path / "one.cc"
  source.write_text('extern "C" int relscreen_one() { return 1; }\n')
  monkeypatch.setattr(kernels, "SOURCE", source)
  path = kernels.build(cxx, tmp_path / "ok")
  made = path.stat().st_mtime_ns
  assert kernels.build(cxx, tmp_path / "ok") == path and path.stat().st_mtime_ns == made
  assert [p.name for p in (tmp_path / "ok").iterdir()] == [path.name]


def test_without_a_compiler_a_warning_and_xlas_version(monkeypatch, tmp_path, float64):
  """No compiler: one warning names the reason, and models train on XLA's
  version of the step (the program has no kernel call)."""
  monkeypatch.setattr(kernels, "_loaded", {})
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  monkeypatch.setenv(kernels.ENV, "1")
  with pytest.warns(UserWarning, match="no-such-compiler"):
    assert not kernels.available()
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # warned once, not at every trace
    assert not kernels.available()
  assert "no-such-compiler" in kernels.why_not()
  cfg = rs.model_config("RelRNN", 2, hidden=4, nu=2, rho=1)
  params = float64(rs.RecurrentCore(cfg).init(jax.random.PRNGKey(0), jnp.zeros((2, 5, 2)))["params"])
  grads, hlo = _grads(cfg, params, float64(jnp.ones((2, 5, 2))), None, None)
  assert not any(target in hlo for target in kernels.TARGETS)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))


@needs_compiler
@pytest.mark.parametrize("name", ["RelRNN", "RelLSTM"])
def test_gradients_under_vmap(name, float64):
  """vmap over two models' parameters (an ensemble, per-example gradients) runs
  the kernel once per member and gives each member's own gradients."""
  cfg = rs.model_config(name, 2, hidden=4, nu=2, rho=1)
  init = lambda k: rs.RecurrentCore(cfg).init(k, jnp.zeros((2, 5, 2)))["params"]
  params = float64(jax.vmap(init)(jax.random.split(jax.random.PRNGKey(0), 2)))
  x = float64(jax.random.normal(jax.random.PRNGKey(1), (2, 5, 2)))
  loss = lambda p: jnp.sum(jnp.sin(models.forward(p, cfg, x)[0]["h"]))
  both = jax.jit(jax.vmap(jax.grad(loss)))(params)
  for i in range(2):
    one = jax.jit(jax.grad(loss))(jax.tree_util.tree_map(lambda a, i=i: a[i], params))
    chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a, i=i: a[i], both), one,
                                rtol=1e-12, atol=1e-14)
