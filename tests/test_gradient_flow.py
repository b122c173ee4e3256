"""Gradient-flow diagnostics and the paper's theory as exact property tests.

Controlled models: identity phi and a contractive recurrent kernel V = lam * I,
so the recurrent path alone shrinks as lam^t; with v = 0 every attention score is
equal, so attention is uniform over the valid slots. Then every Jacobian
dh_t/dh_s is a non-negative multiple of I, paths add up without cancelling, and
the bounds below hold exactly for the loss L = w . h_T.
"""

from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import relscreen as rs
from relscreen_experiments.configs import copy as copy_config
from relscreen_experiments import train

H, I, B = 4, 3, 2


def controlled(name, lam, length, **options):
  cfg = rs.model_config(name, I, hidden=H, phi="identity", **options)
  x = jax.random.normal(jax.random.PRNGKey(0), (B, length, I))
  params = dict(rs.RecurrentCore(cfg).init(jax.random.PRNGKey(1), x)["params"])
  params["V"] = lam * jnp.eye(H)
  if cfg.attentive:
    params["v"] = jnp.zeros(H)
  return cfg, params, x


def norms(cfg, params, x):
  """||dL/dh_t|| for L = sum of h_T (through rs.gradient_flow)."""
  apply_fn = lambda p, x, pr: rs.forward(p["core"], cfg, x, probes=pr)[0]["h"]
  loss_fn = lambda h, batch: jnp.sum(h[:, -1])
  batch = rs.Batch(x, None, None, None)
  return np.asarray(rs.gradient_flow(apply_fn, {"core": params}, cfg, batch,
                                     loss_fn).hidden_norms, np.float64)


@settings(max_examples=5, deadline=None)
@given(lam=st.sampled_from([0.3, 0.5, 0.9]), length=st.sampled_from([8, 24]))
def test_without_attention_gradients_decay_exponentially(lam, length):
  g = norms(*controlled("RNN", lam, length))
  t = np.arange(length)
  np.testing.assert_allclose(g / g[-1], lam ** (length - 1 - t), rtol=1e-4)


@settings(max_examples=4, deadline=None)
@given(lam=st.sampled_from([0.2, 0.5]), length=st.sampled_from([12, 48]))
def test_uniform_attention_bounds_decay_polynomially(lam, length):
  """Through the final step's uniform attention over T stored states, h_0 keeps at
  least 0.5 * lam / T of the last state's gradient; without attention: lam^T."""
  T = length - 1
  g = norms(*controlled("MemRNN", lam, length))
  assert g[0] / g[-1] >= 0.5 * lam / T * (1 - 1e-5)
  assert g[0] / g[-1] > 100 * lam ** T


@settings(max_examples=4, deadline=None)
@given(lam=st.sampled_from([0.2, 0.5]), length=st.sampled_from([20, 80]),
       nu=st.sampled_from([2, 3]), rho=st.sampled_from([1, 3]))
def test_sparse_attention_bounds_gradient_by_a_constant(lam, length, nu, rho):
  """h_0 enters R (it fills unconditionally) and, with the highest score, is never
  replaced: every later step attends to it with weight >= 1/(nu + rho). So its
  gradient keeps 0.5 * lam / (nu + rho) of the last state's, whatever the distance."""
  cfg, params, x = controlled("RelRNN", lam, length, nu=nu, rho=rho, diagnostics=True)
  out, _ = rs.forward(params, cfg, x)
  assert np.all(np.asarray(out["slot_time"])[:, -1, nu] == 0)  # h_0 still in R at the end
  g = norms(cfg, params, x)
  kappa = nu + rho
  assert g[0] / g[-1] >= 0.5 * lam / kappa * (1 - 1e-5)


def test_training_writes_gradient_diagnostics(tmp_path):
  config = copy_config.get_config()
  config.update(dict(model="RelRNN", T=5, steps=20, batch=4, hidden=8, nu=2, rho=2,
                     log_every=10, checkpoint_every=10, eval_batches=1, eval_batch_size=4,
                     diag_every=10))
  train.train_and_evaluate(config, tmp_path, rs.CopyTask(5))
  recs = train.MetricsLog(tmp_path / "gradients.jsonl", 100).read()
  assert [r["step"] for r in recs] == [0, 10, 20]
  assert all(len(r["hidden_grad_norms"]) == 25 for r in recs)
  # Recall targets start at t = 15; the gradient at the last step is non-zero and
  # nothing after it exists, while the loss reaches back to t = 0 through memory.
  assert all(r["hidden_grad_norms"][-1] > 0 and r["hidden_grad_norms"][0] > 0 for r in recs)
  assert all(r["recurrent_grad_norm"] > 0 for r in recs)


def test_recurrent_norm_matches_direct_gradient():
  cfg = rs.model_config("LSTM", I, hidden=H)
  task = rs.CopyTask(3, c_length=2)
  model = rs.SequenceModel(cfg, task.num_classes)
  batch = task.batch(jax.random.PRNGKey(0), B)
  params = model.init(jax.random.PRNGKey(1), batch.x[..., :I])["params"]
  batch = batch._replace(x=batch.x[..., :I])
  apply_fn = lambda p, x, pr: model.apply({"params": p}, x, probes=pr)[0]
  # Both jitted (op by op they compile some 90 small programs); two programs, so
  # float32 rounding apart: the tolerances below.
  flow = jax.jit(lambda p: rs.gradient_flow(apply_fn, p, cfg, batch))(params)
  direct = jax.jit(jax.grad(
      lambda p: rs.recall_loss(model.apply({"params": p}, batch.x)[0], batch)))(params)
  assert float(flow.recurrent_norm) == pytest.approx(
      float(jnp.linalg.norm(direct["core"]["W"])), rel=1e-5)
  assert float(flow.loss) == pytest.approx(
      float(rs.recall_loss(model.apply({"params": params}, batch.x)[0], batch)), rel=1e-6)


def test_attention_maps_from_a_trained_run(tmp_path):
  from relscreen_experiments import attention_lib as attention_maps
  config = copy_config.get_config()
  config.update(dict(model="RelRNN", T=6, steps=10, batch=4, hidden=8, nu=2, rho=3,
                     log_every=10, checkpoint_every=10, eval_batches=1, eval_batch_size=4))
  train.train_and_evaluate(config, tmp_path / "run", rs.CopyTask(6))
  info = attention_maps.collect(tmp_path / "run", sequences=5, seed=0)
  weights = info["weights"]
  assert weights.shape == (26, 26)
  np.testing.assert_allclose(weights[1:].sum(1), 1.0, atol=1e-5)  # each step's weights
  assert np.all(np.triu(weights) == 0)  # only strictly earlier positions are attended
  np.testing.assert_array_equal(info["symbol_positions"], np.arange(10))
  assert len(info["final_r"]) == 3 and 0.0 <= info["symbols_in_final_r"] <= 1.0
  # R fills unconditionally from the first stored states: after 26 steps it is full.
  assert np.all(info["final_r_all"] >= 0)
  attention_maps.draw(info, tmp_path)
  for name in ("attention.png", "relevance.png", "relevant_set.png"):
    assert (tmp_path / name).stat().st_size > 0


def test_timing_core_measures_memory_and_time():
  from relscreen_experiments import timing
  plain = timing.build("MemRNN@autodiff", 60, 2, 16, 2, 2, remat_chunk=0)
  remat = timing.build("MemRNN@autodiff", 60, 2, 16, 2, 2, remat_chunk=8)
  custom = timing.build("MemRNN", 60, 2, 16, 2, 2, remat_chunk=0)
  # Rematerialising in chunks keeps one carry per chunk instead of one per step;
  # the custom reverse pass keeps no memory bank at all (O(L B H)).
  assert timing.peak_gb(remat["train"][0]) < 0.5 * timing.peak_gb(plain["train"][0])
  assert timing.peak_gb(custom["train"][0]) < 0.5 * timing.peak_gb(remat["train"][0])
  times = timing.time_round_robin({"plain": plain["train"], "custom": custom["train"]}, 1)
  assert all(len(v) == 1 and min(v) > 0 for v in times.values())


def test_streaming_timing_runs_every_memory_kind():
  from relscreen_experiments import timing
  for name in ("RelRNN", "RelRNN@xla", "MemLSTM"):
    r = timing.streaming(name, batch=2, hidden=8, nu=2, rho=2, steps=3, repeats=1)
    assert r["median_step_us"] > 0 and r["stream_steps_per_s"] > 0


def test_gradflow_binary_end_to_end(tmp_path):
  import json
  import subprocess
  import sys
  gf = [sys.executable, "-m", "relscreen_experiments.gradient_flow", "--models=RNN", "--T=3",
        "--steps=2", "--diag_every=1", f"--workdir={tmp_path}/gf"]
  done = subprocess.run(gf, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  rows = json.loads((tmp_path / "gf" / "gradflow.json").read_text())["rows"]
  assert [r["model"] for r in rows] == ["RNN"] and rows[0]["step"] == 2


def test_benchmark_streams_autodiff_variants_as_their_model():
  """A --models list naming ``Model@autodiff`` once crashed the benchmark's
  streaming part (after every timing, before anything was saved); ``@xla``
  streams the step without the CPU kernels."""
  from relscreen_experiments import timing
  assert timing.streamed_models(["RNN", "RelRNN@autodiff", "RNN@autodiff", "RelRNN",
                                 "RelRNN@xla"]) == ["RNN", "RelRNN", "RelRNN@xla"]
  with pytest.raises(ValueError, match="unknown model 'Transformer'"):
    timing.streamed_models(["Transformer"])
