"""The hand-built reverse pass of attentive models equals autodiff through the scan."""

import dataclasses
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import relscreen as rs
from relscreen import models, reverse


@pytest.mark.parametrize("name, phi, nu, rho, block", [
    # Blocks of 3 reverse steps: 10 steps = a short block of 1, then 3 whole ones.
    ("RelRNN", "modrelu", 3, 1, 3), ("RelLSTM", "tanh", 2, 2, 3), ("MemRNN", "relu", 2, 3, 3),
    ("MemLSTM", "tanh", 2, 3, 64),  # one block of 10 steps
    ("MemRNN", "tanh", 2, 3, 1),  # the keys' running sums emptied after every step
    ("RelRNN", "tanh", 1, 12, 64),  # R never fills: every slot screened in unconditionally
    ("RelGRU", "tanh", 2, 2, 3), ("MemGRU", "tanh", 2, 3, 4), ("WinGRU", "tanh", 3, 2, 3),
])
def test_custom_vjp_gradients_equal_autodiff(name, phi, nu, rho, block, float64):
  kw = {"phi": phi} if "RNN" in name else {}
  cfg = rs.model_config(name, 3, hidden=6, nu=nu, rho=rho, reverse_block=block, **kw)
  plain = dataclasses.replace(cfg, custom_vjp=False)
  assert models.gradient_path(cfg) == "custom" and models.gradient_path(plain) == "autodiff"
  params = float64(dict(rs.RecurrentCore(cfg).init(jax.random.PRNGKey(0),
                                                    jnp.zeros((2, 4, 3)))["params"]))
  params["v"] = 6.0 * params["v"]  # peaked attention: some late states outscore R's weakest
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  # Drawn in float32 (the same numbers with or without x64), then widened.
  x, weights, h0, c0 = float64([jax.random.normal(k, shape, jnp.float32) for k, shape in
                                zip(keys, [(2, 11, 3), (2, 11, 6), (2, 6), (2, 6)])])

  def loss(p, x, h0, c0, config):
    out, _ = models.forward(p, config, x, h0=h0, c0=c0)
    return jnp.sum(jnp.sin(out["h"]) * weights)  # a cotangent on every step

  if cfg.memory is rs.MemoryType.RELEVANCE and rho < 12:
    # The reverse pass must undo screening writes that evicted a state from R.
    # (jitted: run op by op, it would compile some 80 small programs)
    _, _, _, _, (slot, evicted, alpha), _ = jax.jit(reverse.attentive_forward, static_argnums=1)(
        params, cfg, jnp.swapaxes(x, 0, 1), h0, c0)
    assert bool(jnp.any((slot >= 0) & (evicted >= 0)))
    # The weights it keeps for the reverse pass are the step's own, slot for slot.
    shown, _ = models.forward(params, dataclasses.replace(plain, diagnostics=True), x, h0=h0,
                              c0=c0)
    np.testing.assert_allclose(jnp.swapaxes(alpha, 0, 1), shown["alpha"][:, 1:], atol=1e-14)
  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), static_argnums=4)
  (value, grads), (value_ref, grads_ref) = (grad(params, x, h0, c0, cfg),
                                            grad(params, x, h0, c0, plain))
  # float64 (the fixture): the two paths sum the same terms in different orders,
  # so they agree to rounding, ~1e-13 here; 1e-9 leaves room for the modrelu case,
  # whose |z| + b amplifies rounding, and still fails on any real error.
  np.testing.assert_allclose(value, value_ref, rtol=1e-10)
  chex.assert_trees_all_close(grads, grads_ref, rtol=1e-9, atol=1e-12)
  assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grads[0])) > 0



def _given_state_grads(cfg, params, x, state, weights):
  """Loss, final state and gradients (parameters, x, state) from ``state``,
  through the custom pass and through autodiff."""
  plain = dataclasses.replace(cfg, custom_vjp=False)

  def loss(p, x, st, config):
    out, final = models.forward(p, config, x, state=st)
    return jnp.sum(jnp.sin(out["h"]) * weights), final

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True, allow_int=True),
                 static_argnums=3)
  return grad(params, x, state, cfg), grad(params, x, state, plain)


def _continuation(name, options, float64, batch):
  """A float64 config (peaked attention), its params, the state 7 steps left
  (S and R full), the 11 steps that continue from it and a loss's weights."""
  kw = {"nu": 2, "rho": 2, "reverse_block": 3} if name.startswith("Rel") else {"nu": 2}
  cfg = rs.model_config(name, 3, hidden=6, **{**kw, **options})
  params = float64(dict(rs.RecurrentCore(cfg).init(jax.random.PRNGKey(0),
                                                    jnp.zeros((batch, 4, 3)))["params"]))
  params["v"] = 6.0 * params["v"]
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  x_before, x, weights = float64([
      jax.random.normal(k, (batch,) + shape, jnp.float32)
      for k, shape in zip(keys, [(7, 3), (11, 3), (11, 6)])])
  _, state = models.forward(params, cfg, x_before)
  return cfg, params, state, x, weights


def _inexact(tree):
  return [a for a in jax.tree_util.tree_leaves(tree) if a.dtype != jax.dtypes.float0]


@pytest.mark.parametrize("name, options", [
    ("RelRNN", {"phi": "modrelu"}), ("RelLSTM", {}), ("RelGRU", {}), ("WinRNN", {}),
    ("RelRNN", {"relevance": "mean", "eviction": "fifo", "reverse_block": 4}),
])
def test_custom_vjp_from_a_given_state_equals_autodiff(name, options, float64):
  """Continuing from the state 7 earlier steps left (S and R full): the custom
  pass (``reverse.attentive_scan_from``) gives autodiff's gradients for the
  parameters, the inputs and the given state's s, c, stored states and keys,
  and the same final state. Its reverse pass puts back states stored before
  the given state, from S and from R."""
  cfg, params, state, x, weights = _continuation(name, options, float64, batch=2)
  assert models.gradient_path(cfg) == "custom"
  assert int(state.t) == 7 and bool(jnp.all(state.memory.time >= 0))
  (value, final), grads = _given_state_grads(cfg, params, x, state, weights)[0]
  (value_ref, final_ref), grads_ref = _given_state_grads(cfg, params, x, state, weights)[1]
  np.testing.assert_allclose(value, value_ref, rtol=1e-10)
  chex.assert_trees_all_close(_inexact(grads), _inexact(grads_ref), rtol=1e-9, atol=1e-12)
  chex.assert_trees_all_close(final, final_ref, rtol=1e-12, atol=1e-13)
  d_state = grads[2]
  assert float(jnp.abs(d_state.memory.vals).max()) > 0 and float(jnp.abs(d_state.s).max()) > 0
  # The reverse pass put back states from before the given state (times < 7).
  _, _, _, _, records, _ = jax.jit(reverse.attentive_forward, static_argnums=1)(
      params, cfg, jnp.swapaxes(x, 0, 1), None, None, state)
  slot, evicted, _, left, _ = records
  assert bool(jnp.any((left >= 0) & (left < 7)))
  if name.startswith("Rel"):
    assert bool(jnp.any((slot >= 0) & (evicted >= 0) & (evicted < 7)))


RESETS = [(0, 4), (0, 5), (1, 0), (1, 8), (2, 9)]  # (row, step): restarts inside the window


@pytest.mark.parametrize("name", ["RelRNN", "RelLSTM", "RelGRU", "WinLSTM"])
def test_custom_vjp_with_resets_equals_autodiff(name, float64):
  """Rows restarting inside the sequence (``forward(..., reset=...)``, as RL
  training windows do): the outputs equal ``step`` with the same resets, step by
  step, and the custom pass's gradients (parameters, inputs, the given state)
  equal autodiff's: the reverse pass gives a restarted row back the memory it
  had just before, and its restarted step sends nothing to the steps before."""
  cfg, params, state, x, weights = _continuation(name, {}, float64, batch=3)
  reset = jnp.zeros((3, 11), bool).at[tuple(zip(*RESETS))].set(True)
  out, final = models.forward(params, cfg, x, state=state, reset=reset)
  stepped = state
  for t in range(11):
    stepped, o = rs.step(params, cfg, stepped, x[:, t], reset=reset[:, t])
    np.testing.assert_allclose(out["h"][:, t], o["h"], rtol=1e-12, atol=1e-13)
  chex.assert_trees_all_close(final, stepped, rtol=1e-12, atol=1e-13)
  plain = dataclasses.replace(cfg, custom_vjp=False)

  def loss(p, x, st, config):
    return jnp.sum(jnp.sin(models.forward(p, config, x, state=st, reset=reset)[0]["h"])
                   * weights)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), allow_int=True), static_argnums=3)
  got, want = grad(params, x, state, cfg), grad(params, x, state, plain)
  chex.assert_trees_all_close(_inexact(got), _inexact(want), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name, given", [("RelRNN", False), ("RelLSTM", True)])
def test_recomputed_queries_and_keys_give_autodiffs_gradients_too(name, given, float64):
  """By default the reverse pass reads each step's query and key from the
  forward pass; with ``keep_projections_mib=0`` it recomputes them by products
  per block. Both give autodiff's gradients, fresh or from a given state."""
  cfg, params, state, x, weights = _continuation(name, {}, float64, batch=2)

  def loss(p, x, st, config):
    out, _ = models.forward(p, config, x, state=st if given else None)
    return jnp.sum(jnp.sin(out["h"]) * weights)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), allow_int=True), static_argnums=3)
  want = _inexact(grad(params, x, state, dataclasses.replace(cfg, custom_vjp=False)))
  recompute = dataclasses.replace(cfg, keep_projections_mib=0)
  fwd = jax.jit(reverse.attentive_forward, static_argnums=1)
  zeros = jnp.zeros((2, 6), x.dtype)  # a fresh state's s and c
  start = (None, None, state) if given else (zeros, zeros)
  assert fwd(params, recompute, jnp.swapaxes(x, 0, 1), *start)[-1] is None
  assert fwd(params, cfg, jnp.swapaxes(x, 0, 1), *start)[-1] is not None
  for config in (cfg, recompute):
    chex.assert_trees_all_close(_inexact(grad(params, x, state, config)), want, rtol=1e-9,
                                atol=1e-12)


def test_the_forward_keeps_each_steps_query_and_key(float64):
  """The kept queries and keys are s_{t-1} Va and h_t Ua (row 0 of the queries
  unused), by NumPy; kept only for a relevance or window memory and only where
  each [t, b, h] array fits ``keep_projections_mib``."""
  cfg, params, state, x, _ = _continuation("RelLSTM", {}, float64, batch=2)
  _, h, s, _, _, (queries, keys) = jax.jit(reverse.attentive_forward, static_argnums=1)(
      params, cfg, jnp.swapaxes(x, 0, 1), None, None, state)
  h, s, va, ua = (np.asarray(a, np.float64) for a in (h, s, params["Va"], params["Ua"]))
  np.testing.assert_allclose(queries[1:], s[:-1] @ va, rtol=1e-12, atol=1e-14)
  np.testing.assert_array_equal(queries[0], 0.0)
  np.testing.assert_allclose(keys, h @ ua, rtol=1e-12, atol=1e-14)
  default = rs.model_config("RelRNN", 3)  # 256 MiB for each array
  assert reverse.keeps_projections(default, 1020, 514, jnp.float32)  # 1020 * 514 * 128 * 4 B
  assert not reverse.keeps_projections(default, 1020, 515, jnp.float32)
  assert not reverse.keeps_projections(default, 100_000, 10, jnp.float32)  # 488 MiB
  assert not reverse.keeps_projections(rs.model_config("MemRNN", 3), 10, 1, jnp.float32)
  with pytest.raises(ValueError, match="keep_projections_mib"):
    rs.model_config("RelRNN", 3, keep_projections_mib=-1)


def test_custom_vjp_from_a_fresh_state_given_explicitly(float64):
  """A state at t = 0 passed in takes step 0's rule (s_0 = the RNN cell's
  pre-activation) on the custom pass too; a full memory's given state takes
  autodiff (its stored states are not in the pass's reach)."""
  cfg = rs.model_config("RelRNN", 3, hidden=6, nu=2, rho=2, reverse_block=3)
  params = float64(dict(rs.RecurrentCore(cfg).init(jax.random.PRNGKey(0),
                                                    jnp.zeros((2, 4, 3)))["params"]))
  x, weights = float64([jax.random.normal(k, shape, jnp.float32) for k, shape in
                        zip(jax.random.split(jax.random.PRNGKey(2)), [(2, 9, 3), (2, 9, 6)])])
  state = rs.init_state(cfg, 2, dtype=jnp.float64)
  (custom, _), (plain, _) = _given_state_grads(cfg, params, x, state, weights)
  chex.assert_trees_all_close(_inexact(custom), _inexact(plain), rtol=1e-9, atol=1e-12)
  out, _ = models.forward(params, cfg, x, state=state)
  np.testing.assert_allclose(out["h"], models.forward(params, cfg, x)[0]["h"], rtol=1e-13)
  assert models._uses_custom_vjp(cfg, False, None)  # pylint: disable=protected-access
  mem_cfg = rs.model_config("MemRNN", 3, hidden=6)
  assert not models._uses_custom_vjp(mem_cfg, False, None)  # pylint: disable=protected-access


@pytest.mark.parametrize("name", ["RelRNN", "MemLSTM", "RelGRU"])
def test_custom_vjp_forward_and_final_state_unchanged(name, float64):
  cfg = rs.model_config(name, 3, hidden=5, nu=2, rho=2)
  params = float64(rs.RecurrentCore(cfg).init(jax.random.PRNGKey(0),
                                              jnp.zeros((2, 4, 3)))["params"])
  x = float64(jax.random.normal(jax.random.PRNGKey(1), (3, 9, 3), jnp.float32))
  out, final = models.forward(params, cfg, x)
  out_ref, final_ref = models.forward(params, dataclasses.replace(cfg, custom_vjp=False), x)
  chex.assert_trees_all_close(out, out_ref, rtol=1e-12, atol=1e-13)
  chex.assert_trees_all_close(final, final_ref, rtol=1e-12, atol=1e-13)


def test_custom_vjp_through_flax_module(float64):
  """Linen hands the pure functions a FrozenDict: the custom path must accept it."""
  cfg = rs.model_config("RelRNN", 3, hidden=5, nu=2, rho=2)
  model = rs.SequenceModel(cfg, 4)
  x = float64(jax.random.normal(jax.random.PRNGKey(1), (2, 7, 3), jnp.float32))
  params = float64(model.init(jax.random.PRNGKey(0), x)["params"])
  loss = lambda p, m: jnp.sum(m.apply({"params": p}, x)[0] ** 2)
  plain = rs.SequenceModel(dataclasses.replace(cfg, custom_vjp=False), 4)
  chex.assert_trees_all_close(jax.grad(loss)(params, model), jax.grad(loss)(params, plain),
                              rtol=1e-10, atol=1e-13)


def test_attention_floor_reverse_is_the_gradient(float64):
  """The benchmark's ``attention-floor`` (the slot work alone) computes what it
  claims: its reverse scan, run in chunks of rows (2, 2 and 1 of 5), equals
  jax.grad of its forward over all the rows at once; so do the chunks' forwards."""
  from relscreen_experiments import timing  # pylint: disable=g-import-not-at-top
  forward, _, args = timing.attention_floor(7, 5, 4, 3, dtype=jnp.float64, rows=5)
  chunked_forward, train, chunked_args = timing.attention_floor(7, 5, 4, 3, dtype=jnp.float64,
                                                                rows=2)
  chex.assert_trees_all_equal(chunked_args, args)
  grads = jax.grad(lambda *a: jnp.sum(forward(*a)[0]), argnums=(0, 1, 2))(*args)
  chex.assert_trees_all_close(train(*args), grads, rtol=1e-11, atol=1e-13)
  chex.assert_trees_all_close(chunked_forward(*args), forward(*args), rtol=1e-12, atol=1e-14)
  assert timing.parse_model(timing.FLOOR) == (timing.FLOOR, True)
  assert timing.streamed_models(["RNN", timing.FLOOR]) == ["RNN"]


@pytest.mark.parametrize("length", [1, 2, 3, 5, 11, 1020])
def test_full_stretches_cover_every_step_once(length):
  """The full memory's forward stretches partition steps 1 .. length - 1 in order
  (a stretch [start, end) attends to end - 1 slots: all its last step sees)."""
  stretches = reverse.full_stretches(length)
  assert [t for start, end in stretches for t in range(start, end)] == list(range(1, length))
  assert len(stretches) == min(reverse.full_segments(length), length - 1)
  assert reverse.full_segments(length) == (8 if length == 1020 else 4)


def _copies_in_loops(hlo: str, shape: str) -> int:
  """How many ``copy`` instructions of ``shape`` (e.g. ``f32[3,5,7]``) the loop
  bodies of an optimised HLO module hold: each runs at every iteration."""
  bodies = set(re.findall(r"body=%([\w.\-]+)", hlo))
  count, current = 0, None
  for line in hlo.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{"):
      current = line.split()[0].lstrip("%") if line.startswith("%") else None
    elif current in bodies and re.search(re.escape(shape) + r"\{[0-9,]*\} copy\(", line):
      count += 1
  return count


@pytest.mark.parametrize("name, bank", [
    ("RelRNN", "f32[3,5,7]"), ("RelLSTM", "f32[3,5,7]"),  # [b, nu + rho, h]
    ("MemRNN", "f32[3,13,7]"),  # [b, L, h]
])
def test_training_step_copies_no_bank_per_step(name, bank):
  """XLA copies a loop-carried array at every step when a read of it is not
  ordered before its in-place update (a select reading the bank at another
  slot, a slice fused into an unrelated output): for RelRNN at L = 1020 such
  copies of the banks were a sixth of the training step. The compiled custom
  pass must have none; a change that brings one back fails here."""
  cfg = rs.model_config(name, 2, hidden=7, nu=3, rho=2)
  params = rs.RecurrentCore(cfg).init(jax.random.PRNGKey(0), jnp.zeros((3, 13, 2)))["params"]
  loss = lambda p, x: jnp.sum(jnp.sin(models.forward(p, cfg, x)[0]["h"]))
  hlo = jax.jit(jax.grad(loss)).lower(params, jnp.ones((3, 13, 2))).compile().as_text()
  assert "body=%" in hlo  # the scans are loops in the compiled program
  assert _copies_in_loops(hlo, bank) == 0
  # The counter itself, on a hand-made module: one copy in a loop body, one outside.
  module = ("%body.1 (p: f32[3,5,7]) -> f32[3,5,7] {\n  %copy.2 = f32[3,5,7]{2,1,0} copy(%p)\n}\n"
            "ENTRY %main {\n  %copy.3 = f32[3,5,7]{2,1,0} copy(%x)\n"
            "  %w = f32[3,5,7] while(%x), condition=%cond.1, body=%body.1\n}\n")
  assert _copies_in_loops(module, "f32[3,5,7]") == 1


def test_more_full_memory_stretches_keep_no_more_slices_alive(monkeypatch):
  """Each reverse stretch of a full memory attends to its own slice of the bank.
  XLA's CPU scheduler took all the slices at the start and kept them alive
  together (MemRNN's plan at L = 1020 grew from 81 to 106 MB going from 4 to 8
  stretches); made in turn, 4 stretches cost no more than 2. (XLA's memory plan
  of the compiled step: deterministic, no timing. 2 and 4 rather than 4 and 8:
  half the compiling; without the ordering, this case's plan grows by 2 banks
  from 2 to 4 stretches, 4 from 4 to 8.)"""
  batch, length, hidden = 2, 129, 16
  cfg = rs.model_config("MemRNN", 2, hidden=hidden, reverse_block=4)
  x = jnp.ones((batch, length, 2))
  params = rs.RecurrentCore(cfg).init(jax.random.PRNGKey(0), x)["params"]

  def plan(segments):
    monkeypatch.setattr(reverse, "full_segments", lambda length: segments)
    jax.clear_caches()  # trace again with this many stretches
    loss = lambda p: jnp.sum(jnp.sin(models.forward(p, cfg, x)[0]["h"]))
    return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes

  bank = batch * length * hidden * 4  # bytes of one [b, L, h] float32 array
  two, four = plan(2), plan(4)
  # All 4 stretches' key and value slices at once: 2 (1 + 2 + 3 + 4) / 4 = 5 banks,
  # 2 more than 2 stretches' 3.
  assert four <= two + bank, (two, four, bank)


def test_full_memory_gradients_with_eight_stretches(monkeypatch, float64):
  """Long sequences cut the full memory's passes into 8 stretches (the tests'
  11 steps get 4): the same gradients with 8 stretches of one or two steps,
  each reverse stretch made after the one before, blocks of 3 across them."""
  monkeypatch.setattr(reverse, "full_segments", lambda length: 8)
  jax.clear_caches()  # trace again with 8 stretches
  assert len(reverse.full_stretches(11)) == 8
  test_custom_vjp_gradients_equal_autodiff("MemRNN", "relu", 2, 3, 3, float64)
  jax.clear_caches()
