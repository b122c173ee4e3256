"""Peer baselines (the memory models users compare with): the LRU against its
paper's equations, written out in plain NumPy complex arithmetic."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import relscreen as rs
from relscreen import cells
from relscreen_experiments import rl_agent, train
from tests.test_copy_task import records, tiny_config


def lru_reference(p, x):
  """Orvieto et al. (2023), eq. 1-3 with the exponential parametrisation of
  section 3.3, per step: x_t = lambda x_{t-1} + gamma (B u_t), y_t = Re(C x_t) + D u_t;
  h_t = gelu(y_t) (erf form)."""
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
  gamma = np.exp(p["gamma_log"])
  big_b, big_c = p["B_re"] + 1j * p["B_im"], p["C_re"] + 1j * p["C_im"]
  erf = np.vectorize(math.erf)
  state = np.zeros((x.shape[0], lam.shape[0]), complex)
  out = []
  for t in range(x.shape[1]):
    state = lam * state + gamma * (x[:, t] @ big_b.T)
    y = (state @ big_c.T).real + x[:, t] @ p["D"]
    out.append(0.5 * y * (1.0 + erf(y / math.sqrt(2.0))))
  return np.stack(out, axis=1), state


def test_lru_equals_its_papers_equations(float64):
  to64 = float64
  cfg = rs.model_config("LRU", 3, hidden=5)
  assert cfg.user_cell is cells.LRU and rs.gradient_path(cfg) == "autodiff"
  params = to64({"cell": cells.LRU.init(jax.random.PRNGKey(0), 3, 5, jnp.float32)})
  # Larger input weights than the init's, so that the GELU's curve matters.
  params["cell"]["D"] = 3.0 * params["cell"]["D"]
  x = to64(jax.random.normal(jax.random.PRNGKey(1), (2, 9, 3)))
  out, final = rs.forward(params, cfg, x)
  want_h, want_state = lru_reference(params["cell"], np.asarray(x))
  np.testing.assert_allclose(out["h"], want_h, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(final.c[0] + 1j * final.c[1], want_state, rtol=1e-12,
                             atol=1e-12)
  # The streaming step continues it: two more steps equal the reference's.
  x2 = to64(jax.random.normal(jax.random.PRNGKey(2), (2, 2, 3)))
  state = final
  for t in range(2):
    state, o = rs.step(params, cfg, state, x2[:, t])
  want_h2, _ = lru_reference(params["cell"], np.concatenate([np.asarray(x), x2], axis=1))
  np.testing.assert_allclose(o["h"], want_h2[:, -1], rtol=1e-12, atol=1e-12)


def test_lru_init_follows_the_paper():
  r_min, r_max, max_phase = 0.4, 0.9, math.pi / 3
  p = cells.lru(r_min, r_max, max_phase).init(jax.random.PRNGKey(3), 2, 4000, jnp.float32)
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  radius = np.exp(-np.exp(p["nu_log"]))
  phase = np.exp(p["theta_log"])
  assert radius.min() >= r_min - 1e-5 and radius.max() <= r_max + 1e-5
  assert phase.min() >= 0 and phase.max() <= max_phase * (1 + 1e-6)
  # Uniform in area: |lambda|^2 uniform on [r_min^2, r_max^2]; phases uniform.
  for values, lo, hi in ((radius ** 2, r_min ** 2, r_max ** 2), (phase, 0.0, max_phase)):
    mean, sd = (lo + hi) / 2, (hi - lo) / math.sqrt(12 * len(values))
    assert abs(values.mean() - mean) < 5 * sd
  # gamma normalises: a unit-variance white input keeps the state's variance at 1.
  np.testing.assert_allclose(np.exp(p["gamma_log"]), np.sqrt(1 - radius ** 2), rtol=1e-5)
  np.testing.assert_allclose(np.var(p["B_re"]), 1 / (2 * 2), rtol=0.05)
  np.testing.assert_allclose(np.var(p["C_im"]), 1 / 4000, rtol=0.05)


def test_lru_trains_in_the_supervised_loop_and_as_an_rl_core(tmp_path):
  train.train_and_evaluate(tiny_config(model="LRU", steps=40), tmp_path, rs.CopyTask(5))
  recs = records(tmp_path)
  assert recs[-1]["loss"] < recs[0]["loss"]
  core = rl_agent.core_config("LRU", (5,), "mlp", 8, 2, 2)
  assert core.name == "LRU" and not core.attentive
  with pytest.raises(ValueError, match="LSTM, GRU or LRU"):
    rl_agent.core_config("RNN", (5,), "mlp", 8, 2, 2)


def test_accuracy_at_equal_wall_time():
  from relscreen_experiments import timing  # pylint: disable=g-import-not-at-top
  curve = [(100, 0.1), (200, 0.4), (300, 0.9)]
  # 1 s at 4 ms per update is 250 updates: the block that ends at 200.
  assert timing.accuracy_at_time(curve, 4.0, 1000.0) == (250, 0.4)
  assert timing.accuracy_at_time(curve, 2.0, 1000.0) == (500, 0.9)
  assert timing.accuracy_at_time(curve, 20.0, 1000.0) == (50, None)


@pytest.mark.parametrize("name", ["memax:GRU"])
def test_memax_model_is_memax_row_by_row(name):
  """The wrapper only batches: each row's logits are what memax's own model gives
  for that sequence alone (memax's unbatched call, its initial carry)."""
  pytest.importorskip("memax")
  from relscreen_experiments import memax_peers  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 4))
  model = memax_peers.MemaxSequenceModel(name, 8, 5, layers=2)
  params = train.init_params(model, jax.random.PRNGKey(1), x)
  logits, _, _ = jax.jit(model.apply)({"params": params}, x)
  assert logits.shape == (3, 6, 5)
  trunk = memax_peers.trunk(name.split(":")[1], 8, 5, 2)
  variables = {"params": params["trunk"]}
  carry = trunk.apply(variables, method="initialize_carry")
  one_row = jax.jit(lambda seq: trunk.apply(variables, carry, (seq, jnp.zeros((6,), bool)))[1])
  for row in range(3):
    np.testing.assert_allclose(logits[row], one_row(x[row]), rtol=1e-6, atol=1e-6)
  last, _, _ = jax.jit(memax_peers.MemaxSequenceModel(name, 8, 5, 2, last_only=True).apply)(
      {"params": params}, x)
  np.testing.assert_array_equal(last, logits[:, -1])


def test_memax_model_trains_in_the_supervised_loop(tmp_path):
  pytest.importorskip("memax")
  config = tiny_config(model="memax:GRU", steps=40)
  train.train_and_evaluate(config, tmp_path / "run", rs.CopyTask(5))
  recs = records(tmp_path / "run")
  assert recs[-1]["loss"] < recs[0]["loss"]
  config.diag_every = 10
  with pytest.raises(ValueError, match="--diag_every needs a relscreen model, not memax:GRU"):
    train.train_and_evaluate(config, tmp_path / "diag", rs.CopyTask(5))
