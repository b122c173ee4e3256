"""Whole models: NumPy reference forward, step-0 rule, causality, scan == streaming,
jit == no jit, no retrace, fixed-size state, remat gradients, boundary checks."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import relscreen as rs
from relscreen import models
from tests import numpy_reference

B, L, I, H = 3, 12, 4, 5
ALL = rs.PAPER_MODELS  # other cells and memories: tests/test_composable.py


def setup(name, length=L, **options):
  """Config, params and inputs; widened to float64 under the ``float64`` fixture
  (drawn in float32 first, so the numbers are the same either way)."""
  options = {"nu": 2, "rho": 3, **options}
  cfg = rs.model_config(name, I, hidden=H, **options)
  x = jax.random.normal(jax.random.PRNGKey(0), (B, length, I), jnp.float32)
  params = jax.jit(rs.RecurrentCore(cfg).init)(jax.random.PRNGKey(1), x)["params"]
  if jax.config.x64_enabled:
    params, x = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), (params, x))
  return cfg, params, x


@pytest.mark.parametrize("name,options", [
    ("RNN", {}), ("LSTM", {}), ("MemRNN", {}), ("MemLSTM", {}),
    ("RelRNN", {}), ("RelLSTM", {}),
    ("RelRNN", {"phi": "modrelu", "k": 2}), ("RelLSTM", {"k": 3, "nu": 1, "rho": 1}),
    ("MemRNN", {"k": 2, "attn": 0.5, "phi": "relu"}), ("RelRNN", {"nu": 1, "rho": 1}),
])
def test_forward_matches_numpy_reference(name, options, float64):
  cfg, params, x = setup(name, **options)
  out, _ = rs.forward(params, cfg, x)
  want = numpy_reference.forward(params, name, x, phi=cfg.phi.value, nu=cfg.nu,
                                 rho=cfg.rho, k=cfg.k, attn=cfg.attn)
  np.testing.assert_allclose(out["h"], want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name", ["MemRNN", "RelRNN", "MemLSTM", "RelLSTM"])
def test_second_step_mixed_state_is_first_hidden_state(name):
  """At t = 1 the memory holds only h_0: alpha = 1 and s_1 = h_0 (ALGORITHM §2)."""
  cfg, params, x = setup(name, diagnostics=True)
  state = rs.init_state(cfg, B, capacity=L)
  state, out0 = rs.step(params, cfg, state, x[:, 0])
  state, out1 = rs.step(params, cfg, state, x[:, 1])
  np.testing.assert_allclose(state.s, out0["h"], atol=1e-6)
  np.testing.assert_allclose(jnp.sum(out1["alpha"], -1), 1.0, atol=1e-6)
  np.testing.assert_allclose(jnp.max(out1["alpha"], -1), 1.0, atol=1e-6)


def test_step_zero_rule_is_observable_in_scores():
  """RelRNN: s_0 is the pre-activation a_0, so the t = 1 query is a_0 Va."""
  cfg, params, x = setup("RelRNN", diagnostics=True)
  out, _ = rs.forward(params, cfg, x)
  a0 = x[:, 0] @ params["U"] + params["b"][None]  # h_init = 0
  h0 = out["h"][:, 0]
  want = jnp.tanh(a0 @ params["Va"] + h0 @ params["Ua"]) @ params["v"]
  slot = np.asarray(out["slot_time"][:, 1]) == 0  # h_0's slot at t = 1 (the only one held)
  assert np.all(slot.sum(-1) == 1)
  np.testing.assert_allclose(out["scores"][:, 1][slot], want, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_causal(name):
  cfg, params, x = setup(name)
  cut = 6
  x2 = x.at[:, cut:].set(jax.random.normal(jax.random.PRNGKey(9), (B, L - cut, I)))
  h1 = rs.forward(params, cfg, x)[0]["h"]
  h2 = rs.forward(params, cfg, x2)[0]["h"]
  np.testing.assert_array_equal(h1[:, :cut], h2[:, :cut])
  assert not np.allclose(h1[:, cut:], h2[:, cut:])


@pytest.mark.parametrize("name", ALL)
def test_scan_equals_streaming(name, float64):
  cfg, params, x = setup(name, diagnostics=True)
  out, final = rs.forward(params, cfg, x)
  state = rs.init_state(cfg, B, capacity=L, dtype=x.dtype)
  step = jax.jit(lambda s, xt: rs.step(params, cfg, s, xt))
  for t in range(L):
    state, o = step(state, x[:, t])
    for key in o:
      np.testing.assert_allclose(o[key], out[key][:, t], atol=1e-12, err_msg=key)
  chex.assert_trees_all_close(state, final, atol=1e-12)


@pytest.mark.parametrize("name,layers", [("RNN", 1), ("RelRNN", 1), ("MemLSTM", 1),
                                         ("RelLSTM", 2)])
def test_donated_step_equals_step_and_consumes_the_old_state(name, layers, float64):
  """``rs.step(..., donate=True)``: the same states and outputs, with resets in
  some rows; the old state's buffers went to the new one."""
  cfg, params, x = setup(name, diagnostics=name != "RNN" and layers == 1, layers=layers)
  kept = rs.init_state(cfg, B, capacity=L, dtype=x.dtype)
  given = rs.init_state(cfg, B, capacity=L, dtype=x.dtype)
  reset = jnp.array([False, True, False])
  for t in range(L):
    old = given
    r = None if name == "MemLSTM" or t % 4 else reset  # per-row resets need k = 1: all do
    kept, want = rs.step(params, cfg, kept, x[:, t], reset=r)
    given, got = rs.step(params, cfg, given, x[:, t], reset=r, donate=True)
    chex.assert_trees_all_close((given, got), (kept, want), atol=1e-12)
  leaves = jax.tree_util.tree_leaves(old)
  assert all(a.is_deleted() for a in leaves)
  with pytest.raises((RuntimeError, ValueError), match="deleted"):
    rs.step(params, cfg, old, x[:, 0])


@pytest.mark.parametrize("name", ["RelRNN", "RelLSTM", "MemRNN"])
def test_forward_continues_from_a_given_state(name, float64):
  cfg, params, x = setup(name)
  full, _ = rs.forward(params, cfg, x)
  first, state = rs.forward(params, cfg, x[:, :5],
                            rs.init_state(cfg, B, capacity=L, dtype=x.dtype))
  second, _ = rs.forward(params, cfg, x[:, 5:], state)
  np.testing.assert_allclose(jnp.concatenate([first["h"], second["h"]], 1), full["h"],
                             atol=1e-12)


class JitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_equals_no_jit(self):
    for name in ALL:
      cfg, params, x = setup(name)
      fwd = self.variant(lambda p, x: rs.forward(p, cfg, x)[0]["h"])
      np.testing.assert_allclose(fwd(params, x), rs.forward(params, cfg, x)[0]["h"],
                                 atol=1e-6)


def test_no_retrace_on_second_call():
  cfg, params, x = setup("RelRNN")

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fwd(p, x):
    return rs.forward(p, cfg, x)[0]["h"]

  fwd(params, x)
  fwd(params, x + 1.0)


@pytest.mark.parametrize("name", ["RelRNN", "RelLSTM"])
def test_state_size_independent_of_length(name):
  def shapes(length):
    cfg, params, x = setup(name, length=length)
    _, state = jax.jit(lambda p, x: rs.forward(p, cfg, x))(params, x)
    return [(leaf.shape, leaf.dtype) for leaf in jax.tree_util.tree_leaves(state)]
  assert shapes(10) == shapes(1000)


@pytest.mark.parametrize("name", ["RelRNN", "MemLSTM"])
def test_rematerialised_scan_gradients_equal_plain(name, float64):
  cfg, params, x = setup(name, length=23)
  remat = models.ModelConfig(**{**cfg.__dict__, "remat_chunk": 5})

  def loss(p, c):
    return jnp.sum(rs.forward(p, c, x)[0]["h"] ** 2)

  chex.assert_trees_all_close(jax.grad(loss)(params, remat), jax.grad(loss)(params, cfg),
                              atol=1e-11)


def test_probes_give_gradient_with_respect_to_hidden_states():
  """Through a plain RNN, dL/dh_{t} = V (dL/dh_{t+1} * phi') with L = sum(h_T)."""
  cfg, params, x = setup("RNN", phi="identity")
  probes = jnp.zeros((B, L, H))
  grad = jax.grad(lambda pr: jnp.sum(rs.forward(params, cfg, x, probes=pr)[0]["h"][:, -1]))(
      probes)
  np.testing.assert_allclose(grad[:, -1], 1.0)
  np.testing.assert_allclose(grad[:, -2], jnp.ones((B, H)) @ params["V"].T, rtol=1e-5)


def test_attention_diagnostics_are_consistent():
  cfg, params, x = setup("RelRNN", diagnostics=True, nu=2, rho=2)
  out, _ = rs.forward(params, cfg, x)
  alpha, times = np.asarray(out["alpha"]), np.asarray(out["slot_time"])
  assert np.all(alpha[times < 0] == 0)
  np.testing.assert_allclose(alpha[:, 1:].sum(-1), 1.0, atol=1e-6)
  # Every slot holds a strictly earlier step; the buffer holds the last nu steps.
  t = np.arange(L)[None, :, None]
  assert np.all((times < t) | (times == -1))
  np.testing.assert_array_equal(np.sort(times[:, 5, :2], -1), [[3, 4]] * B)  # S: a ring
  # What screening admits at step t is in R at step t + 1.
  adm, ev = np.asarray(out["admitted"]), np.asarray(out["evicted_time"])
  for b, s in zip(*np.nonzero(adm[:, :-1])):
    assert ev[b, s] in times[b, s + 1, 2:]


def test_masked_softmax_with_empty_relevant_set_is_short_term_softmax():
  e = jax.random.normal(jax.random.PRNGKey(0), (4, 7))
  valid = jnp.array([True] * 3 + [False] * 4)[None].repeat(4, 0)
  np.testing.assert_allclose(rs.masked_softmax(e, valid)[:, :3], jax.nn.softmax(e[:, :3]),
                             rtol=1e-6)
  np.testing.assert_array_equal(rs.masked_softmax(e, jnp.zeros_like(valid)), 0.0)


def test_hand_written_attention_reverse_equals_autodiff(float64):
  """``additive_attention_vjp`` (the custom reverse pass's) against jax.vjp of the
  forward, with empty slots (their cotangents are exactly 0) and a row with none."""
  k = jax.random.split(jax.random.PRNGKey(3), 5)
  q, d_ctx = (jax.random.normal(kk, (3, 4), jnp.float64) for kk in k[:2])
  keys, values = (jax.random.normal(kk, (3, 6, 4), jnp.float64) for kk in k[2:4])
  v = 3.0 * jax.random.normal(k[4], (4,), jnp.float64)
  valid = jnp.array([[1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 0, 1], [0] * 6], bool)
  attended, pullback = jax.vjp(
      lambda q, keys, values, v: rs.additive_attention(q, keys, values, valid, v).context,
      q, keys, values, v)
  expected = pullback(d_ctx)
  dq, d_keys, d_values, d_v, alpha = rs.attention.additive_attention_vjp(q, keys, values,
                                                                         valid, v, d_ctx)
  for got, want in zip((dq, d_keys, d_values, d_v), expected):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(jnp.einsum("bm,bmh->bh", alpha, values), attended, rtol=1e-13)
  assert not np.any(np.asarray(d_keys)[~np.asarray(valid)])
  assert not np.any(np.asarray(d_values)[~np.asarray(valid)])
  # The accumulating form (the full memory's reverse pass): the keys' cotangent
  # lands in the accumulator, the query's is read back from its sums.
  acc = jax.random.normal(k[0], (3, 6, 4), jnp.float64)
  acc_sum = jnp.sum(acc, axis=1)
  dq2, acc2, acc2_sum, d_v2, alpha2 = rs.attention.additive_attention_vjp_into(
      q, keys, values, valid, v, d_ctx, acc, acc_sum)
  np.testing.assert_allclose(dq2, expected[0], rtol=1e-11, atol=1e-13)
  np.testing.assert_allclose(acc2 - acc, expected[1], rtol=1e-11, atol=1e-13)
  np.testing.assert_allclose(acc2_sum, np.sum(np.asarray(acc2), axis=1), rtol=1e-13)
  np.testing.assert_allclose(d_v2, expected[3], rtol=1e-12, atol=1e-14)
  np.testing.assert_array_equal(alpha2, alpha)
  # Given the forward's weights (the relevance-screened reverse pass): no mask;
  # the empty slots' zero weights give them zero cotangents.
  got = rs.attention.additive_attention_vjp_weighted(q, keys, values, alpha, v, d_ctx)
  for got_one, want in zip(got[:4], expected):
    np.testing.assert_allclose(got_one, want, rtol=1e-12, atol=1e-14)
  assert not np.any(np.asarray(got[1])[~np.asarray(valid)])


def test_flax_rnn_wrapper_matches_forward(float64):
  cfg, params, x = setup("RelLSTM")
  rnn = nn.RNN(rs.RelevanceCell(cfg, dtype=x.dtype))
  out = rnn.apply({"params": {"cell": {"core": params}}}, x)
  np.testing.assert_allclose(out, rs.forward(params, cfg, x)[0]["h"], atol=1e-12)


@pytest.mark.parametrize("field,value", [("nu", 0), ("rho", 0), ("k", 0), ("hidden", -1),
                                         ("phi", "gelu"), ("r_init", "ortho")])
def test_bad_options_name_the_argument(field, value):
  with pytest.raises(ValueError, match=field):
    rs.model_config("RelRNN", I, **{field: value})


@pytest.mark.parametrize("name", ["MemRNN", "LSTM", "RelRNN"])
def test_forward_with_resets_equals_stepping(name, float64):
  """``forward(..., reset=...)`` from a fresh state: each row's outputs equal
  ``step`` with the same resets, and a row restarted at step 3 gives from there
  on what a fresh run over its own steps 3.. gives (full memory and plain cell
  through the autodiff path, RelRNN through the custom one)."""
  del float64
  cfg, params, x = setup(name)
  reset = jnp.zeros(x.shape[:2], bool).at[0, 3].set(True)
  out, final = rs.forward(params, cfg, x, reset=reset)
  state = rs.init_state(cfg, B, capacity=x.shape[1], dtype=x.dtype)
  for t in range(x.shape[1]):
    state, o = rs.step(params, cfg, state, x[:, t], reset=reset[:, t])
    np.testing.assert_allclose(out["h"][:, t], o["h"], rtol=1e-12, atol=1e-13)
  again, _ = rs.forward(params, cfg, x[:1, 3:])
  np.testing.assert_allclose(out["h"][:1, 3:], again["h"], rtol=1e-12, atol=1e-13)
  assert int(final.t) == x.shape[1]
  with pytest.raises(ValueError, match="reset must be a bool array"):
    rs.forward(params, cfg, x, reset=reset[:, :-1])


def test_bad_shapes_and_names_are_clear():
  cfg, params, x = setup("RelRNN")
  with pytest.raises(ValueError, match="x must have shape"):
    rs.forward(params, cfg, x[..., :2])
  with pytest.raises(ValueError, match="x must be floating point"):
    rs.forward(params, cfg, x.astype(jnp.int32))
  with pytest.raises(ValueError, match="x_t must have shape"):
    rs.step(params, cfg, rs.init_state(cfg, B), x)
  with pytest.raises(ValueError, match="unknown model 'RelTransformer'"):
    rs.model_config("RelTransformer", I)
  with pytest.raises(ValueError, match="capacity"):
    rs.init_state(rs.model_config("MemRNN", I), B)


@pytest.mark.parametrize("name", ["RelRNN", "MemLSTM"])
def test_flax_rnn_with_seq_lengths_and_return_carry(name, float64):
  """Each row's carry is its state after its own length; the outputs up to it are
  what ``forward`` gives on that row's prefix alone."""
  cfg, params, x = setup(name)
  lengths = jnp.array([L, 5, 9])
  rnn = nn.RNN(rs.RelevanceCell(cfg, capacity=L, dtype=x.dtype), return_carry=True)
  variables = {"params": {"cell": {"core": params}}}
  # jitted: nn.RNN's masking and carry selection run op by op otherwise (~50 programs)
  carry, out = jax.jit(lambda v, x, n: rnn.apply(v, x, seq_lengths=n))(variables, x, lengths)
  assert carry.t.shape == (B,)
  for b, n in enumerate(lengths.tolist()):
    want, final = rs.forward(params, cfg, x[b:b + 1, :n],
                             rs.init_state(cfg, 1, capacity=L, dtype=x.dtype))
    np.testing.assert_allclose(out[b, :n], want["h"][0], atol=1e-12)
    np.testing.assert_array_equal(carry.t[b], n)
    row = jax.tree_util.tree_map(lambda a, b=b: a[b:b + 1], carry._replace(t=None))
    chex.assert_trees_all_close(row, final._replace(t=None), atol=1e-12)


def test_flax_bidirectional_runs_each_direction_on_the_valid_prefix(float64):
  cfg, params, x = setup("RelLSTM")
  lengths = jnp.array([L, 4, 7])
  bi = nn.Bidirectional(nn.RNN(rs.RelevanceCell(cfg, dtype=x.dtype)),
                        nn.RNN(rs.RelevanceCell(cfg, dtype=x.dtype)))
  variables = jax.jit(lambda k, x, n: bi.init(k, x, seq_lengths=n))(
      jax.random.PRNGKey(0), x, lengths)
  variables = jax.tree_util.tree_map(lambda a: a.astype(x.dtype), variables)
  out = jax.jit(lambda v, x, n: bi.apply(v, x, seq_lengths=n))(variables, x, lengths)
  fwd_p = variables["params"]["forward_rnn"]["cell"]["core"]
  bwd_p = variables["params"]["backward_rnn"]["cell"]["core"]
  for b, n in enumerate(lengths.tolist()):
    want_f = rs.forward(fwd_p, cfg, x[b:b + 1, :n])[0]["h"][0]
    want_b = rs.forward(bwd_p, cfg, x[b:b + 1, :n][:, ::-1])[0]["h"][0][::-1]
    np.testing.assert_allclose(out[b, :n], jnp.concatenate([want_f, want_b], -1),
                               atol=1e-12)


def test_boundary_errors_name_the_argument():
  cfg, params, x = setup("RelRNN")
  with pytest.raises(ValueError, match="x has no time steps"):
    rs.forward(params, cfg, x[:, :0])
  with pytest.raises(ValueError, match="x has dtype float16"):
    rs.forward(params, cfg, x.astype(jnp.float16))
  with pytest.raises(ValueError, match=r"state holds 2 rows but x_t has batch 3"):
    rs.step(params, cfg, rs.init_state(cfg, 2), x[:, 0])
  with pytest.raises(ValueError, match=r"state has dtype float32 but x has bfloat16|"
                     r"x has dtype bfloat16"):
    rs.forward(params, cfg, x.astype(jnp.bfloat16), rs.init_state(cfg, B))
  other = rs.model_config("RelRNN", I, hidden=H + 1, nu=2, rho=3)
  with pytest.raises(ValueError, match=r"params\['U'\] has shape \(4, 5\).*needs \(4, 6\)"):
    rs.forward(params, other, x)
  with pytest.raises(ValueError, match=r"state.s has shape \(3, 5\).*hidden=6"):
    rs.step(rs.RecurrentCore(other).init(jax.random.PRNGKey(0), x)["params"], other,
            rs.init_state(cfg, B), x[:, 0])
  with pytest.raises(ValueError, match="params has no 'Ua'"):
    rs.forward({k: v for k, v in params.items() if k != "Ua"}, cfg, x)


def test_nnx_bridge_route(float64):
  """NNX users wrap the Linen core with flax.nnx.bridge.ToNNX (the README's route):
  same outputs as ``forward`` on the same parameters, and nnx.grad reaches them."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  cfg, params, x = setup("RelRNN")
  core = nnx.bridge.ToNNX(rs.RecurrentCore(cfg), rngs=nnx.Rngs(0))
  nnx.bridge.lazy_init(core, x)
  for key, value in params.items():  # the Linen params become Param attributes
    setattr(core, key, nnx.Param(value))
  np.testing.assert_allclose(core(x)[0]["h"], rs.forward(params, cfg, x)[0]["h"],
                             atol=1e-12)
  grads = nnx.grad(lambda m: jnp.sum(m(x)[0]["h"] ** 2))(core)
  want = jax.grad(lambda p: jnp.sum(rs.forward(p, cfg, x)[0]["h"] ** 2))(params)
  for key, value in want.items():
    np.testing.assert_allclose(grads[key][...], value, rtol=1e-9, atol=1e-12)


def test_lstm_halves_change_nothing_but_where_the_slice_is_taken(float64):
  """``lstm_halves`` slices W once for a loop; the step and its gradient with
  respect to W are the same, in float64 to the last bit."""
  h, i, b = 4, 3, 2
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  params = float64({"W": jax.random.normal(keys[0], (h + i, 4 * h)),
                    "b": jnp.zeros((4 * h,))})
  xp, s, c = (float64(jax.random.normal(k, (b, n))) for k, n in zip(keys[1:], (4 * h, h, h)))

  def loss(p, halves):
    q = rs.lstm_halves(p, h) if halves else p
    out, cell = rs.lstm_step(q, xp, s, c)
    return jnp.sum(out * jnp.arange(h)[None, :]) + jnp.sum(cell ** 2)

  plain, halved = (jax.value_and_grad(loss)(params, flag) for flag in (False, True))
  assert float(plain[0]) == float(halved[0])
  np.testing.assert_array_equal(plain[1]["W"], halved[1]["W"])
  assert np.abs(np.asarray(plain[1]["W"][:h])).sum() > 0  # the state half does get gradient
