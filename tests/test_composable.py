"""Cells and memories as parts: every combination keeps the library's invariants.

For each combination (cell x memory x relevance rule x eviction rule, stacked
layers, a user's cell) one float64 run checks: scan == streaming (outputs and
final state), causality, a state whose size does not depend on the sequence
length, and, where the custom reverse pass applies, its gradients == autodiff.
The rules themselves are checked against the NumPy reference in
test_screening.py.
"""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import relscreen as rs
from relscreen import cells, models

B, L, I, H = 2, 12, 3, 4


def tanh_cell() -> rs.Cell:
  """A user's cell written inside the test: h = tanh(x W + s R + b) with a gate."""

  def init(key, input_size, hidden, dtype):
    k1, k2 = jax.random.split(key)
    return {"W": jax.random.normal(k1, (input_size, 2 * hidden), dtype) / input_size**0.5,
            "R": jax.random.normal(k2, (hidden, 2 * hidden), dtype) / hidden**0.5,
            "b": jnp.zeros((2 * hidden,), dtype)}

  def step(params, s, extra, x):
    z = x @ params["W"] + s @ params["R"] + params["b"][None]
    cand, gate = jnp.split(z, 2, axis=-1)
    g = jax.nn.sigmoid(gate)
    return g * jnp.tanh(cand) + (1.0 - g) * s, extra

  return rs.Cell("Tanh", init, step)


def build(name=None, **options):
  """A float64 config, params and two inputs that differ after step 6."""
  options = {"hidden": H, "nu": 2, "rho": 2, **options}
  cfg = rs.model_config(name, I, **options)
  x = jax.random.normal(jax.random.PRNGKey(0), (B, L, I), jnp.float32)
  params = jax.jit(rs.RecurrentCore(cfg).init)(jax.random.PRNGKey(1), x)["params"]
  if cfg.attentive or cfg.layer_memory:
    # Peaked attention, so scores differ and the rules' choices matter.
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: 6.0 * a if path[-1].key == "v" else a, params)
  x2 = x.at[:, 6:].set(jax.random.normal(jax.random.PRNGKey(2), (B, L - 6, I), jnp.float32))
  to64 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)
  return cfg, to64(params), to64(x), to64(x2)


def check_invariants(cfg, params, x, x2):
  out, final = rs.forward(params, cfg, x)
  # Causality: changing inputs from step 6 on leaves steps 0..5 as they were.
  out2, _ = rs.forward(params, cfg, x2)
  np.testing.assert_array_equal(out["h"][:, :6], out2["h"][:, :6])
  assert not np.allclose(out["h"][:, 6:], out2["h"][:, 6:])
  # Streaming equals the scan, step by step, and ends in the same state.
  state = rs.init_state(cfg, B, capacity=L, dtype=x.dtype)
  shapes = [(a.shape, a.dtype) for a in jax.tree_util.tree_leaves(state)]
  step = jax.jit(lambda s, xt: rs.step(params, cfg, s, xt))
  for t in range(L):
    state, o = step(state, x[:, t])
    np.testing.assert_allclose(o["h"], out["h"][:, t], rtol=1e-12, atol=1e-12)
  chex.assert_trees_all_close(state, final, rtol=1e-12, atol=1e-12)
  # The state keeps its size (a full memory's is set by its capacity, not by t).
  assert [(a.shape, a.dtype) for a in jax.tree_util.tree_leaves(state)] == shapes
  if not any(cfg.layer(i).memory is rs.MemoryType.FULL for i in range(cfg.layers)):
    longer = rs.init_state(cfg, B, capacity=10 * L, dtype=x.dtype)
    assert [(a.shape, a.dtype) for a in jax.tree_util.tree_leaves(longer)] == shapes
  return out


RULES = [(r, e) for r in rs.Relevance for e in rs.Eviction]


@pytest.mark.parametrize("relevance,eviction", RULES,
                         ids=[f"{r.value}-{e.value}" for r, e in RULES])
def test_every_rule_keeps_the_invariants(relevance, eviction, float64):
  del float64
  cell = "lstm" if eviction is rs.Eviction.FIFO else "rnn"
  check_invariants(*build(cell=cell, memory="relevance", relevance=relevance,
                          eviction=eviction, decay=0.8, reservoir_seed=5))


def test_only_top_rho_reads_the_scores(float64):
  """``Eviction.reads_scores``: under fifo and reservoir every relevance rule gives
  the same hidden states (so the ablation trains them once); under top-rho the
  rule changes them (L = 12 steps through nu = rho = 2 slots)."""
  del float64
  for eviction in rs.Eviction:
    outs = []
    for relevance in (rs.Relevance.SUM, rs.Relevance.DECAY):
      cfg, params, x, _ = build(cell="rnn", memory="relevance", relevance=relevance,
                                eviction=eviction, decay=0.5, reservoir_seed=5)
      outs.append(rs.forward(params, cfg, x)[0]["h"])
    assert eviction.reads_scores == (not np.array_equal(*outs)), eviction


CELLS_AND_MEMORIES = {
    "GRU": dict(name="GRU"),
    "MemGRU": dict(name="MemGRU"),
    "RelGRU-decay": dict(name="RelGRU", relevance="decay"),
    "WinGRU": dict(name="WinGRU"),
    "WinRNN": dict(name="WinRNN", phi="relu"),
    "RelTanh-user": dict(cell=tanh_cell(), memory="relevance"),
    "Tanh-user": dict(cell=tanh_cell(), memory="none"),
    "RelLSTM-flax": dict(cell=rs.from_flax(nn.LSTMCell(H)), memory="relevance"),
    "stack-LSTM-RelLSTM": dict(cell="lstm", memory=("none", "relevance")),
    "stack-RelGRU-x3": dict(name="RelGRU", layers=3, eviction="fifo"),
}


@pytest.mark.parametrize("case", list(CELLS_AND_MEMORIES))
def test_every_cell_and_memory_keeps_the_invariants(case, float64):
  del float64
  check_invariants(*build(**CELLS_AND_MEMORIES[case]))


GRADIENT_CASES = {
    "RelRNN-decay-fifo": dict(name="RelRNN", relevance="decay", eviction="fifo"),
    "RelLSTM-max-reservoir": dict(name="RelLSTM", relevance="max", eviction="reservoir"),
    "WinRNN": dict(name="WinRNN", nu=3),
    "stack-WinRNN-RelRNN": dict(cell="rnn", memory=("window", "relevance"),
                                 reverse_block=3),
    # User cells: their parameters' gradients are summed per step, their extra
    # state (none, a Flax LSTM's tuple, the LRU's complex modes) is kept per step.
    "RelTanh-user": dict(cell=tanh_cell(), memory="relevance", reverse_block=5),
    "MemTanh-user": dict(cell=tanh_cell(), memory="full"),
    "WinTanh-user": dict(cell=tanh_cell(), memory="window"),
    "RelLSTM-flax": dict(cell=rs.from_flax(nn.LSTMCell(H)), memory="relevance"),
    "RelLRU": dict(cell=cells.LRU, memory="relevance", reverse_block=4),
    "stack-RelTanh-MemTanh": dict(cell=tanh_cell(), memory=("relevance", "full")),
}


@pytest.mark.parametrize("case", list(GRADIENT_CASES))
def test_custom_pass_equals_autodiff_for_other_memories(case, float64):
  del float64
  cfg, params, x, _ = build(**GRADIENT_CASES[case])
  assert all(rs.gradient_path(cfg.layer(i)) == "custom" for i in range(cfg.layers))
  plain = dataclasses.replace(cfg, custom_vjp=False)
  weights = jnp.sin(jnp.arange(B * L * H, dtype=x.dtype)).reshape(B, L, H)
  loss = lambda p, c: jnp.sum(jnp.tanh(rs.forward(p, c, x)[0]["h"]) * weights)
  grad = jax.jit(jax.grad(loss), static_argnums=1)
  chex.assert_trees_all_close(grad(params, cfg), grad(params, plain), rtol=1e-9,
                              atol=1e-12)


@pytest.mark.parametrize("case", ["RelTanh-user", "RelLSTM-flax", "stack-WinRNN-RelRNN"])
def test_custom_pass_from_a_given_state_equals_autodiff(case, float64):
  """Continuing from the state the first 6 steps left, with and without a row
  restarting: user cells (their extra state included) and stacks (a state per
  layer) take the custom pass from it, with autodiff's gradients for the
  parameters and the given state."""
  del float64
  cfg, params, x, _ = build(**GRADIENT_CASES[case])
  _, state = rs.forward(params, cfg, x[:, :6])
  plain = dataclasses.replace(cfg, custom_vjp=False)
  weights = jnp.sin(jnp.arange(B * (L - 6) * H, dtype=x.dtype)).reshape(B, L - 6, H)

  # Row 0 also restarts at step 2 of the continuation (a user cell's extra state
  # restarts from its init_extra).
  reset = jnp.zeros((B, L - 6), bool).at[0, 2].set(True)

  def loss(p, st, c, reset):
    out, _ = rs.forward(p, c, x[:, 6:], state=st, reset=reset)
    return jnp.sum(jnp.tanh(out["h"]) * weights)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1), allow_int=True), static_argnums=2)
  inexact = lambda t: [a for a in jax.tree_util.tree_leaves(t) if a.dtype != jax.dtypes.float0]
  for r in (None, reset):
    got, want = grad(params, state, cfg, r), grad(params, state, plain, r)
    chex.assert_trees_all_close(inexact(got), inexact(want), rtol=1e-9, atol=1e-12)


def test_gru_equals_flax_gru_cell(float64):
  """Same weights, same equations: ``gru_step`` is ``flax.linen.GRUCell``."""
  del float64
  cell = nn.GRUCell(H, param_dtype=jnp.float64)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(B, L, I)))
  variables = cell.init(jax.random.PRNGKey(0), jnp.zeros((B, H)), x[:, 0])
  p = jax.device_get(variables["params"])  # rearranged on the host (no small programs)
  ours = {"U": np.concatenate([p[g]["kernel"] for g in ("ir", "iz", "in")], axis=1),
          "b": np.concatenate([p[g]["bias"] for g in ("ir", "iz", "in")]),
          "V": np.concatenate([p[g]["kernel"] for g in ("hr", "hz", "hn")], axis=1),
          "bn": p["hn"]["bias"]}
  ours = {k: v + 0.1 * np.arange(v.size).reshape(v.shape) / v.size for k, v in ours.items()}
  theirs = {"ir": {"kernel": ours["U"][:, :H], "bias": ours["b"][:H]},
            "iz": {"kernel": ours["U"][:, H:2 * H], "bias": ours["b"][H:2 * H]},
            "in": {"kernel": ours["U"][:, 2 * H:], "bias": ours["b"][2 * H:]},
            "hr": {"kernel": ours["V"][:, :H]}, "hz": {"kernel": ours["V"][:, H:2 * H]},
            "hn": {"kernel": ours["V"][:, 2 * H:], "bias": ours["bn"]}}
  cfg = rs.model_config("GRU", I, hidden=H)
  out, _ = rs.forward(ours, cfg, x)
  _, want = jax.jit(lambda v, x: nn.RNN(cell).apply(v, x, return_carry=True))(
      {"params": {"cell": theirs}}, x)
  np.testing.assert_allclose(out["h"], want, rtol=1e-12, atol=1e-12)


def test_user_cell_wrapped_by_rsm_trains():
  """The README's route: a cell defined here, RSM around it, optax on top. The task
  (recall the first step's symbol after 10 distractors) needs memory: the loss
  falls from chance, ln 4 = 1.39, to below 0.7 in 150 Adam steps."""
  cfg = rs.model_config(cell=tanh_cell(), memory="relevance", input_size=5, hidden=16,
                        nu=3, rho=2)
  model = rs.SequenceModel(cfg, 4, last_only=True)

  def batch(key):
    symbols = jax.random.randint(key, (32,), 0, 4)
    x = jnp.zeros((32, 12, 5)).at[:, 0, :4].set(jax.nn.one_hot(symbols, 4))
    return x.at[:, -1, 4].set(1.0), symbols

  params = model.init(jax.random.PRNGKey(0), batch(jax.random.PRNGKey(0))[0])["params"]
  opt = optax.adam(3e-2)

  @jax.jit
  def update(params, opt_state, key):
    x, y = batch(key)
    loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p}, x)[0], y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, losses = opt.init(params), []
  for key in jax.random.split(jax.random.PRNGKey(1), 150):
    params, opt_state, loss = update(params, opt_state, key)
    losses.append(float(loss))
  assert losses[0] > 1.2 and np.mean(losses[-10:]) < 0.7, losses[::15]


def test_names_compose_and_contradictions_are_named():
  a = rs.model_config("RelGRU", I, relevance="decay")
  b = rs.model_config(cell="gru", memory="relevance", input_size=I, relevance="decay")
  assert a == b and a.name == "RelGRU"
  assert rs.model_config(cell=tanh_cell(), memory="window", input_size=I).name == "WinTanh"
  stacked = rs.model_config(cell="rnn", memory=("none", "relevance"), input_size=I)
  assert stacked.layers == 2 and stacked.layer(1).memory is rs.MemoryType.RELEVANCE
  assert stacked.layer(1).input_size == stacked.hidden
  with pytest.raises(ValueError, match="memory='full' contradicts the name 'RelGRU'"):
    rs.model_config("RelGRU", I, memory="full")
  with pytest.raises(ValueError, match="relevance='median' is not one of"):
    rs.model_config("RelRNN", I, relevance="median")
  with pytest.raises(ValueError, match="layer_memory has 3 entries for layers=2"):
    rs.model_config("RelRNN", I, layers=2, layer_memory=("none",) * 3)
  paths = {n: rs.gradient_path(rs.model_config(n, I)) for n in
           ("RelRNN", "MemLSTM", "WinLSTM", "RelGRU", "LSTM")}
  assert paths == {"RelRNN": "custom", "MemLSTM": "custom", "WinLSTM": "custom",
                   "RelGRU": "custom", "LSTM": "autodiff"}


def test_stacked_params_and_state_are_checked_by_name(float64):
  del float64
  cfg, params, x, _ = build(name="RelRNN", layers=2)
  with pytest.raises(ValueError, match="params has no 'layers_1'"):
    rs.forward({"layers_0": params["layers_0"]}, cfg, x)
  with pytest.raises(ValueError, match=r"params\['layers_1'\] has no 'Ua'"):
    rs.forward({**params, "layers_1": {k: v for k, v in params["layers_1"].items()
                                       if k != "Ua"}}, cfg, x)
  with pytest.raises(ValueError, match="its state is a tuple of 2 states"):
    rs.forward(params, cfg, x, rs.init_state(cfg.layer(0), B, dtype=x.dtype))
  assert models.param_shapes(cfg)["layers_1"]["U"] == (H, H)


def test_readme_user_cell_snippet_runs():
  """The README's ten lines, executed as written: RSM around a user's cell."""
  import pathlib  # pylint: disable=g-import-not-at-top
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  block = readme.split("RSM around your own cell")[1].split("```python\n")[1].split("```")[0]
  scope = {"jax": jax, "rs": rs, "x": jnp.zeros((2, 7, 10))}
  exec(block, scope)  # pylint: disable=exec-used
  logits, outputs, _ = scope["model"].apply({"params": scope["params"]}, scope["x"])
  assert logits.shape == (2, 7, 9) and outputs["h"].shape == (2, 7, 64)
  assert scope["cfg"].name == "RelMine"


def test_binaries_take_the_rules_and_old_configs_keep_the_papers():
  """--relevance/--eviction/--layers/--custom_vjp reach the model; a config.json
  written before those flags existed builds the paper's model; the ablation and
  PPO sweep binaries name a bad rule."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from relscreen_experiments import ppo_sweep, train  # pylint: disable=g-import-not-at-top
  from relscreen_experiments.configs import copy as copy_config  # pylint: disable=g-import-not-at-top
  config = copy_config.get_config()
  config.update(relevance="decay", eviction="reservoir", layers=2, custom_vjp=False)
  cfg = train.build_model(config, rs.CopyTask(5)).config
  assert (cfg.relevance, cfg.eviction, cfg.layers, cfg.custom_vjp) == (
      rs.Relevance.DECAY, rs.Eviction.RESERVOIR, 2, False)
  old = {k: v for k, v in config.to_dict().items()
         if k not in ("relevance", "eviction", "decay", "layers", "custom_vjp")}
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = train.build_model(ml_collections.ConfigDict(old), rs.CopyTask(5)).config
  assert (cfg.relevance, cfg.eviction, cfg.layers, cfg.custom_vjp) == (
      rs.Relevance.SUM, rs.Eviction.TOP, 1, True)
  assert ppo_sweep.parse_model("RelLSTM:decay/fifo") == (
      "RelLSTM", {"relevance": "decay", "eviction": "fifo"})
  with pytest.raises(ValueError, match="not MODEL or MODEL:RELEVANCE/EVICTION"):
    ppo_sweep.parse_model("RelLSTM:median")
  done = subprocess.run([sys.executable, "-m", "relscreen_experiments.ablation",
                         "--relevances=sum,median", "--workdir=unused"], capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 1 and "--relevances: unknown ['median']" in done.stderr, (
      done.stderr[-2000:])


def test_user_cell_with_an_integer_extra_takes_autodiff(float64):
  """The custom pass differentiates a user cell's step with respect to all of
  its extra state; a cell that keeps an integer counter there is trained by
  autodiff instead (``gradient_path``), and its gradients are computed."""
  del float64

  def init(key, input_size, hidden, dtype):
    return {"W": jax.random.normal(key, (input_size + hidden, hidden), dtype) * 0.3}

  def step(params, s, count, x):
    h = jnp.tanh(jnp.concatenate([x, s], -1) @ params["W"])
    return h, count + 1

  cell = rs.Cell("Count", init, step, lambda b, h, dtype: jnp.zeros((b,), jnp.int32))
  cfg, params, x, _ = build(cell=cell, memory="relevance")
  assert rs.gradient_path(cfg) == "autodiff"
  assert rs.gradient_path(rs.model_config(None, I, hidden=H, cell=tanh_cell(),
                                          memory="relevance")) == "custom"
  grads = jax.grad(lambda p: jnp.sum(rs.forward(p, cfg, x)[0]["h"] ** 2))(params)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert max(float(jnp.abs(g).max()) for g in leaves) > 0
