"""The residual block around relscreen's cores (``ResidualSequenceModel``, the
binaries' ``--block=residual``): the block memax's models use, written out in
NumPy around the cores' own forward pass."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import relscreen as rs
from relscreen_experiments import ablation_lib, train
from relscreen_experiments.configs import copy as copy_config
from tests.test_copy_task import records, tiny_config

B, L, I, H, C = 2, 9, 3, 6, 4


def block_reference(params, cfg, x, last_only=False):
  """x -> Dense(H) -> per layer: core, Dense(H), LayerNorm (eps 1e-6, no scale or
  bias), leaky ReLU (0.01) -> Dense(C), in float64 NumPy; the cores run
  ``rs.forward`` with their own parameters (tested against the paper elsewhere)."""
  dense = lambda p, a: np.asarray(a) @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
  z = dense(params["map_in"], x)
  for i in range(cfg.layers):
    layer = dataclasses.replace(cfg.layer(i), input_size=H)
    out, _ = rs.forward(params[f"core_{i}"], layer, jnp.asarray(z))
    a = dense(params[f"ff_{i}"], out["h"])
    a = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-6)
    z = np.where(a > 0, a, 0.01 * a)
  return dense(params["head"], z[:, -1] if last_only else z)


def test_residual_block_is_memax_block_around_the_core(float64):
  """Two RelRNN layers: the logits equal the NumPy block to float64 rounding, at
  every step and for the last only; the top core's outputs and the per-layer final
  states come back as ``SequenceModel``'s do."""
  cfg = rs.model_config("RelRNN", I, hidden=H, nu=2, rho=3, layers=2)
  model = rs.ResidualSequenceModel(cfg, C)
  x = float64(jax.random.normal(jax.random.PRNGKey(0), (B, L, I)))
  params = float64(train.init_params(model, jax.random.PRNGKey(1), x))
  assert set(params) == {"map_in", "core_0", "core_1", "ff_0", "ff_1", "head"}
  assert params["core_1"]["U"].shape == (H, H)  # each core reads the block's H features
  logits, out, final = jax.jit(model.apply)({"params": params}, x)
  np.testing.assert_allclose(logits, block_reference(params, cfg, x), rtol=1e-12, atol=1e-12)
  last, _, _ = rs.ResidualSequenceModel(cfg, C, last_only=True).apply({"params": params}, x)
  np.testing.assert_allclose(last, block_reference(params, cfg, x, True), rtol=1e-12,
                             atol=1e-12)
  assert out["h"].shape == (B, L, H) and isinstance(final, tuple) and len(final) == 2


def test_residual_block_streams_as_it_scans(float64):
  """The streaming step, from ``rs.init_state``, gives the scan's logits step by step
  and ends in its final state (one layer: the state is one ``State``)."""
  cfg = rs.model_config("RelRNN", I, hidden=H, nu=2, rho=2)
  model = rs.ResidualSequenceModel(cfg, C)
  x = float64(jax.random.normal(jax.random.PRNGKey(2), (B, L, I)))
  params = float64(train.init_params(model, jax.random.PRNGKey(3), x))
  logits, _, final = jax.jit(model.apply)({"params": params}, x)
  step = jax.jit(lambda s, xt: model.apply({"params": params}, s, xt, method="step"))
  state = rs.init_state(cfg, B, dtype=x.dtype)
  for t in range(L):
    out, _, state = step(state, x[:, t])
    np.testing.assert_allclose(out, logits[:, t], rtol=1e-12, atol=1e-12)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12),
                         state, final)


def test_block_flag_builds_and_trains_and_old_configs_keep_the_linear_head(tmp_path):
  config = copy_config.get_config()
  config.block = "residual"
  assert isinstance(train.build_model(config, rs.CopyTask(5)), rs.ResidualSequenceModel)
  old = ml_collections.ConfigDict({k: v for k, v in config.to_dict().items() if k != "block"})
  assert isinstance(train.build_model(old, rs.CopyTask(5)), rs.SequenceModel)
  # The gradient diagnostics probe the core inside the block.
  run = tiny_config(model="RelRNN", steps=40, block="residual", diag_every=40)
  train.train_and_evaluate(run, tmp_path, rs.CopyTask(5))
  recs = records(tmp_path)
  assert recs[-1]["loss"] < recs[0]["loss"]
  assert (tmp_path / "gradients.jsonl").exists()
  assert json.loads((tmp_path / "config.json").read_text())["block"] == "residual"


def test_ablation_trains_score_free_evictions_once():
  """fifo and reservoir ignore the scores, so the grid has one run per cell for
  each (labelled ``any``), in the directory earlier ablations used; top-rho has
  one per relevance rule; baselines' directories have no ':'."""
  rows = ablation_lib.configurations(["rnn", "gru"], ["sum", "decay"],
                                     ["top", "fifo", "reservoir"], ["MemGRU", "memax:S6"])
  assert [(r["label"], r["dir"]) for r in rows] == [
      ("RelRNN sum/top", "RelRNN_sum-top"), ("RelRNN decay/top", "RelRNN_decay-top"),
      ("RelRNN any/fifo", "RelRNN_sum-fifo"), ("RelRNN any/reservoir", "RelRNN_sum-reservoir"),
      ("RelGRU sum/top", "RelGRU_sum-top"), ("RelGRU decay/top", "RelGRU_decay-top"),
      ("RelGRU any/fifo", "RelGRU_sum-fifo"), ("RelGRU any/reservoir", "RelGRU_sum-reservoir"),
      ("MemGRU", "MemGRU"), ("memax:S6", "memax_S6")]
  assert [e.value for e in rs.Eviction if e.reads_scores] == ["top"]


def test_ablation_table_in_markdown():
  """One line per configuration, per-seed values in seed order, '-' where a model
  has no gradient ratio (memax) or no block within the equal-time budget."""
  rows = [{"label": "RelRNN sum/top", "seed": s, "accuracy": a, "grad_ratio_t0_over_last": g}
          for s, a, g in ((100, 0.5, 0.25), (101, 0.75, 2.0))]
  rows += [{"label": "memax:S6", "seed": s, "accuracy": 0.125, "grad_ratio_t0_over_last": None}
           for s in (100, 101)]
  summary = [{"label": "RelRNN sum/top", "accuracy_median": 0.625, "equal_time_s": 49.4,
              "equal_time_updates": 321, "equal_time_accuracy_median": 0.293, "step_ms": 152.7,
              "peak_gb": 0.0104},
             {"label": "memax:S6", "accuracy_median": 0.125, "equal_time_s": 49.4,
              "equal_time_updates": 50, "equal_time_accuracy_median": None, "step_ms": 45.9,
              "peak_gb": 0.013}]
  md = ablation_lib.markdown(rows, summary).splitlines()
  assert md[0].startswith("| model | held out (seeds 100 / 101) | median | grad ratio "
                          "(100 / 101) | at equal time (49 s)")
  assert md[2] == "| RelRNN sum/top | 50.0% / 75.0% | 62.5% | 0.25 / 2 | 321, 29.3% | 152.7 | 10 MB |"
  assert md[3] == "| memax:S6 | 12.5% / 12.5% | 12.5% | - | 50, - | 45.9 | 13 MB |"
