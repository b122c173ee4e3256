"""The copy task's data and the training binary (tiny configurations)."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import relscreen as rs
from relscreen_experiments import train
from relscreen_experiments.configs import copy as copy_config


def test_copy_layout():
  task = rs.CopyTask(T=7, n_symbols=8, c_length=10)
  x, y, loss_mask, recall_mask = task.batch(jax.random.PRNGKey(0), 4)
  assert x.shape == (4, 27, 10) and y.shape == (4, 27)
  tokens = np.argmax(np.asarray(x), -1)
  assert np.all((tokens[:, :10] >= 1) & (tokens[:, :10] <= 8))
  assert np.all(tokens[:, 16] == 9)  # marker at t = T + 9
  assert np.all(tokens[:, 10:16] == 0) and np.all(tokens[:, 17:] == 0)
  np.testing.assert_array_equal(y[:, 17:], tokens[:, :10])
  assert np.all(y[:, :17] == 0)
  assert task.num_classes == 9
  assert np.all(loss_mask == 1) and np.all(recall_mask[:, 17:] == 1)
  assert np.all(recall_mask[:, :17] == 0)
  batch = task.batch(jax.random.PRNGKey(0), 4)
  assert task.baseline_loss() == pytest.approx(10 * math.log(8) / 27)
  assert float(rs.memoryless_loss(batch, 8)) == pytest.approx(task.baseline_loss())


def test_variable_copy_uses_each_batch_delay():
  task = rs.VariableCopyTask(30)
  seen = set()
  for i in range(6):
    x, y, loss_mask, recall_mask = task.batch(jax.random.PRNGKey(i), 3)
    tokens = np.argmax(np.asarray(x), -1)
    marker = int(np.nonzero(tokens[0] == 9)[0][0])
    T = marker - 9
    seen.add(T)
    assert 1 <= T <= 29 and x.shape == (3, 50, 10)
    np.testing.assert_array_equal(y[:, T + 10:T + 20], tokens[:, :10])
    np.testing.assert_array_equal(recall_mask[0], (np.arange(50) >= T + 10)
                                  & (np.arange(50) < T + 20))
    np.testing.assert_array_equal(loss_mask[0], np.arange(50) < T + 20)
    assert np.all(tokens[:, T + 20:] == 0) and np.all(y[:, :T + 10] == 0)
  assert len(seen) > 1


def test_denoise_layout():
  task = rs.DenoiseTask(T=12)
  x, y, loss_mask, recall_mask = task.batch(jax.random.PRNGKey(3), 5)
  assert x.shape == (5, 32, 11) and task.num_classes == 10
  tokens = np.argmax(np.asarray(x), -1)
  assert np.all(tokens[:, 21] == 10)  # marker at T + c - 1
  for row, target in zip(tokens, np.asarray(y)):
    pos = np.nonzero(row[:21])[0]
    assert len(pos) == 10  # 10 distinct positions among the first T + c - 1 steps
    np.testing.assert_array_equal(target[-10:], row[pos])  # recalled in order
    assert np.all(row[22:] == 0) and np.all(target[:-10] == 0)
  starts = {tuple(np.nonzero(r[:21])[0]) for r in tokens}
  assert len(starts) > 1  # positions differ between rows


def test_memoryless_optimum_equals_baseline():
  """Predicting blank before the marker and uniform symbols after it scores the baseline."""
  task = rs.CopyTask(T=5)
  y = task.batch(jax.random.PRNGKey(1), 3).y
  logits = jnp.where(jnp.arange(task.length)[None, :, None] < task.length - 10,
                     jnp.where(jnp.arange(9) == 0, 30.0, -30.0),
                     jnp.where(jnp.arange(9) == 0, -30.0, 0.0))
  logits = jnp.broadcast_to(logits, (3, task.length, 9))
  assert float(rs.sequence_loss(logits, y)) == pytest.approx(task.baseline_loss(), rel=1e-4)


def tiny_config(**overrides):
  config = copy_config.get_config()
  config.update(dict(model="RelRNN", T=5, steps=60, batch=8, hidden=16, nu=3, rho=3,
                     lr=3e-3, log_every=20, checkpoint_every=20, eval_batches=2,
                     eval_batch_size=16), **overrides)
  return config


def records(workdir):
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_loss_and_writes_files(tmp_path):
  result = train.train_and_evaluate(tiny_config(), tmp_path, rs.CopyTask(5))
  recs = records(tmp_path)
  assert [r["step"] for r in recs] == [20, 40, 60]
  assert recs[-1]["loss"] < 0.8 * recs[0]["loss"]
  for name in ("config.json", "eval.json", "curves.png"):
    assert (tmp_path / name).stat().st_size > 0
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                if p.name.isdigit()) == ["40", "60"]
  saved = json.loads((tmp_path / "eval.json").read_text())
  assert saved["accuracy"] == result["accuracy"]
  assert saved["device"].startswith(jax.devices()[0].platform) and saved["device_count"] >= 1


def test_resumed_run_continues_and_equals_uninterrupted(tmp_path):
  task = rs.CopyTask(5)
  whole = train.train_and_evaluate(tiny_config(), tmp_path / "a", task)
  train.train_and_evaluate(tiny_config(steps=40), tmp_path / "b", task)
  assert [r["step"] for r in records(tmp_path / "b")] == [20, 40]
  resumed = train.train_and_evaluate(tiny_config(), tmp_path / "b", task)
  assert [r["step"] for r in records(tmp_path / "b")] == [20, 40, 60]
  assert resumed["loss"] == pytest.approx(whole["loss"], rel=1e-5)
  assert records(tmp_path / "b")[-1]["loss"] == pytest.approx(
      records(tmp_path / "a")[-1]["loss"], rel=1e-5)


def test_same_seed_same_result_other_seed_differs(tmp_path):
  task = rs.CopyTask(5)
  a = train.train_and_evaluate(tiny_config(steps=20), tmp_path / "a", task)
  b = train.train_and_evaluate(tiny_config(steps=20), tmp_path / "b", task)
  c = train.train_and_evaluate(tiny_config(steps=20, seed=1), tmp_path / "c", task)
  assert a["loss"] == b["loss"] and a["loss"] != c["loss"]
  # The process reuses the compiled update for another seed (same program), and
  # compiles anew when a setting the program bakes in changes: here the learning
  # rate, which an update must then apply.
  compiled = dict(train._COMPILED_STEPS)  # pylint: disable=protected-access
  d = train.train_and_evaluate(tiny_config(steps=20, lr=1e-2), tmp_path / "d", task)
  assert len(set(train._COMPILED_STEPS) - set(compiled)) == 1  # pylint: disable=protected-access
  assert d["loss"] != a["loss"]
  first = lambda w: json.loads((tmp_path / w / "metrics.jsonl").read_text().splitlines()[0])
  assert first("d")["loss"] != first("a")["loss"]


class PoisonedCopy(rs.CopyTask):
  """A copy task whose inputs are NaN: the loss is never finite."""

  def batch(self, key, batch):
    b = super().batch(key, batch)
    return b._replace(x=b.x * jnp.nan)


def test_changed_config_is_refused_by_name(tmp_path):
  train.train_and_evaluate(tiny_config(steps=20), tmp_path, rs.CopyTask(5))
  with pytest.raises(ValueError, match="--nu: saved 3, now 4"):
    train.train_and_evaluate(tiny_config(steps=20, nu=4), tmp_path, rs.CopyTask(5))


def test_binary_runs_and_reports_bad_flags(tmp_path):
  cmd = [sys.executable, "-m", "relscreen_experiments.copy_task", f"--workdir={tmp_path}",
         "--T=4", "--steps=4", "--hidden=8", "--log_every=2", "--checkpoint_every=2",
         "--eval_batches=1", "--eval_batch_size=4", "--model=RNN"]
  # Without JAX_COMPILATION_CACHE_DIR a binary caches compiled programs under ~.
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["HOME"] = str(tmp_path / "home")
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
  assert done.returncode == 0, done.stderr
  assert "update 4/4" in done.stderr and "held-out evaluation" in done.stderr
  assert any((tmp_path / "home" / ".cache" / "relscreen" / "xla").iterdir())


def test_a_bad_flag_ends_the_binary_with_one_line_and_writes_nothing(tmp_path, capsys):
  """The binaries' body (``flags_lib.run_online_training``) with flag values as
  absl would hand them over; the binary test above covers the absl wiring."""
  import types  # pylint: disable=g-import-not-at-top
  from relscreen_experiments import flags_lib  # pylint: disable=g-import-not-at-top
  holders = {name: types.SimpleNamespace(value=value)
             for name, value in copy_config.get_config().items()}
  holders["nu"].value = 0
  workdir = types.SimpleNamespace(value=str(tmp_path / "run"))
  with pytest.raises(SystemExit) as stop:
    flags_lib.run_online_training(["relscreen-copy"], holders, workdir,
                                  lambda config: rs.CopyTask(config.T))
  assert stop.value.code == 1
  assert capsys.readouterr().err == "error: --nu must be > 0, got 0\n"
  assert not (tmp_path / "run").exists()


def test_denoise_and_variable_copy_train(tmp_path):
  for name, task in (("denoise", rs.DenoiseTask(5)), ("vari", rs.VariableCopyTask(8))):
    config = tiny_config(steps=40, variable=name == "vari")
    train.train_and_evaluate(config, tmp_path / name, task)
    recs = records(tmp_path / name)
    assert recs[-1]["loss"] < recs[0]["loss"], name


def test_transfer_evaluates_a_trained_copy_run(tmp_path):
  from relscreen_experiments import transfer_lib as transfer_copy
  train.train_and_evaluate(tiny_config(steps=20), tmp_path / "run", rs.CopyTask(5))
  info, rows = transfer_copy.transfer(tmp_path / "run", [5, 40], batches=2, batch_size=8,
                                      seed=0)
  assert info["trained_updates"] == 20 and [r["T"] for r in rows] == [5, 40]
  assert all(0 <= r["accuracy"] <= 1 for r in rows)
  # The same checkpoint and sequences at the trained T reproduce train.evaluate.
  _, model, params, _ = train.load_trained(tmp_path / "run", transfer_copy.copy_task_of)
  again = train.evaluate(model, rs.CopyTask(5), params, jax.random.PRNGKey(0), 2, 8)
  assert again["accuracy"] == rows[0]["accuracy"]
  transfer_copy.write_outputs(tmp_path / "out", info, rows)
  assert (tmp_path / "out" / "transfer.png").stat().st_size > 0
  assert (tmp_path / "out" / "transfer.csv").read_text().startswith("T,loss,rel_loss")
  with pytest.raises(ValueError, match="config.json not found"):
    train.load_trained(tmp_path / "nothing", transfer_copy.copy_task_of)
  # A directory of runs (an ablation's <model>/seed<s>): each evaluated once, one table.
  import shutil  # pylint: disable=g-import-not-at-top
  for model, seed in (("A", 100), ("A", 101), ("B", 100)):
    copy = tmp_path / "runs" / model / f"seed{seed}"
    shutil.copytree(tmp_path / "run", copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "seed": seed}))
  records = transfer_copy.transfer_all(tmp_path / "runs", tmp_path / "all", [5, 40], 2, 8, 0,
                                       exclude=["B"])
  assert [(r["label"], r["accuracy"]) for r in records] == [
      ("A", {5: rows[0]["accuracy"], 40: rows[1]["accuracy"]})] * 2
  assert (tmp_path / "all" / "A" / "seed101" / "transfer.json").exists()
  with pytest.raises(ValueError, match=r"--exclude: no run labelled \['C'\]"):
    transfer_copy.transfer_all(tmp_path / "runs", tmp_path / "all", [5, 40], 2, 8, 0, ["C"])
  # Evaluated runs are read back, not evaluated again; another --Ts evaluates.
  real = transfer_copy.transfer
  transfer_copy.transfer = None  # any evaluation now fails
  try:
    again = transfer_copy.transfer_all(tmp_path / "runs", tmp_path / "all", [5, 40], 2, 8, 0,
                                       exclude=["B"])
    with pytest.raises(TypeError):
      transfer_copy.transfer_all(tmp_path / "runs", tmp_path / "all", [5], 2, 8, 0)
  finally:
    transfer_copy.transfer = real
  assert again == records
  transfer_copy.write_table(tmp_path / "all", records, [5, 40])
  acc = " / ".join(f"{100 * rows[1]['accuracy']:.1f}%" for _ in range(2))
  table = (tmp_path / "all" / "transfer_table.md").read_text().splitlines()
  assert table[0] == "| model (seeds) | held out at T = 5 | T = 5 | T = 40 |"
  assert table[2].startswith("| A (100, 101) |") and table[2].endswith(f"| {acc} |")
  assert (tmp_path / "all" / "transfer_all.png").stat().st_size > 0


def test_adding_layout_and_metrics(tmp_path):
  task = rs.AddingTask(T=10)
  batch = task.batch(jax.random.PRNGKey(2), 6)
  x = np.asarray(batch.x[..., 0])
  assert x.shape == (6, 20)
  for row, target in zip(x, np.asarray(batch.y)):
    marks = np.nonzero(row[10:])[0]
    assert len(marks) == 2 and marks[0] < 5 <= marks[1] < 10
    assert np.all(row[10:][marks] == 1.0)
    assert target == pytest.approx(row[marks].sum(), rel=1e-6)
  perfect = jnp.broadcast_to(batch.y[:, None, None], (6, 20, 1))
  loss, (acc, baseline) = task.metrics(perfect, batch)
  assert float(loss) == 0.0 and float(acc) == 1.0 and float(baseline) == pytest.approx(1 / 6)
  mean_guess = jnp.ones((6, 20, 1))
  loss, (acc, _) = task.metrics(mean_guess, batch)
  assert float(loss) == pytest.approx(float(jnp.mean((batch.y - 1.0) ** 2)))
  from relscreen_experiments.configs import adding
  config = adding.get_config()
  config.update(dict(T=5, steps=40, batch=16, hidden=16, nu=2, rho=2, lr=3e-3,
                     log_every=20, checkpoint_every=20, eval_batches=2,
                     eval_batch_size=16))
  train.train_and_evaluate(config, tmp_path, rs.AddingTask(5))
  recs = records(tmp_path)
  assert recs[-1]["loss"] < recs[0]["loss"]


def test_decay_starts_at_the_first_block_reaching_the_accuracy(tmp_path):
  """--lr_decay_at_accuracy: the factor by hand from the records; a run decays
  from the first logged block at or after --lr_decay_from that reached it, and a
  run resumed after that block takes the same steps."""
  config = tiny_config(steps=8, log_every=2, checkpoint_every=5, lr_half_life=2,
                       lr_decay_from=3, lr_decay_at_accuracy=0.3)
  recs = [{"split": "train", "step": s, "accuracy": a}
          for s, a in ((2, 0.5), (4, 0.2), (6, 0.31), (8, 0.9))]
  assert train.decay_start(config, recs) == 6  # step 2 is before --lr_decay_from
  assert train.decay_start(config, recs[:2]) is None
  assert train.lr_scale(config, 10, None) == 1.0
  assert train.lr_scale(config, 10, 6) == pytest.approx(0.25)
  with pytest.raises(ValueError, match="--lr_decay_at_accuracy=1.5"):
    train.decay_start(tiny_config(lr_decay_at_accuracy=1.5), [])
  # The same run at a constant rate gives the blocks' accuracies (the decayed run
  # equals it up to the decay's start); the threshold is the first one at or after
  # --lr_decay_from that is above 0, so this holds on any machine's float32.
  task = rs.CopyTask(5)
  base = {**config.to_dict(), "steps": 12}
  train.train_and_evaluate(tiny_config(**{**base, "lr_half_life": 0}), tmp_path / "constant",
                           task)
  constant = records(tmp_path / "constant")
  k, threshold = next((r["step"], r["accuracy"]) for r in constant
                      if r["split"] == "train" and r["step"] >= 3 and r["accuracy"] > 0)
  decayed = tiny_config(**{**base, "lr_decay_at_accuracy": threshold})
  train.train_and_evaluate(decayed, tmp_path / "whole", task)
  whole = records(tmp_path / "whole")
  assert train.decay_start(decayed, whole) == k
  diff = [r["step"] for r, c in zip(whole, constant) if r["loss"] != c["loss"]]
  assert diff[:1] == ([k + 2] if k < 12 else [])  # updates 1..k at the full rate, then decayed
  # Stopped at update k + 2, after the decay began (or at 12), then resumed to 12.
  train.train_and_evaluate(tiny_config(**{**decayed.to_dict(), "steps": min(k + 2, 12)}),
                           tmp_path / "split", task)
  train.train_and_evaluate(decayed, tmp_path / "split", task)
  untimed = lambda recs: [{f: v for f, v in r.items() if f != "steps_per_s"} for r in recs]
  assert untimed(records(tmp_path / "split")) == untimed(whole)


def test_learning_rate_half_life_scales_each_update(tmp_path):
  """--lr_half_life/--lr_decay_from: the factor by hand, and a run's updates
  equal a plain RMSprop whose learning rate follows it."""
  config = tiny_config(steps=6, log_every=1, checkpoint_every=3, lr_decay_from=2,
                       lr_half_life=2)
  assert [train.lr_scale(config, t) for t in (1, 2, 3, 4, 6)] == pytest.approx(
      [1, 1, 2 ** -0.5, 0.5, 0.25])
  assert train.lr_scale(tiny_config(), 10**6) == 1.0  # constant by default
  task = rs.CopyTask(5)
  train.train_and_evaluate(config, tmp_path / "a", task)
  _, _, params, _ = train.load_trained(tmp_path / "a", lambda c: task)
  # The same updates by hand: torch RMSprop with lr_t = 3e-3 * factor(t), after
  # clipping by global norm 1, on the batches the loop draws.
  model = train.build_model(config, task)
  state, _, (data_key, _) = train.init_state(config, task, model)
  loss_fn = train.make_loss_fn(model, task)
  @jax.jit  # one program for the hand-written update (op by op: some 60 small ones)
  def hand_update(p, v, key, lr):
    g = jax.grad(lambda q: loss_fn(q, task.batch(key, config.batch))[0])(p)
    norm = jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(g)))
    g = jax.tree_util.tree_map(lambda x: x * jnp.minimum(1.0, 1.0 / norm), g)
    v = jax.tree_util.tree_map(lambda a, x: 0.99 * a + 0.01 * x ** 2, v, g)
    return jax.tree_util.tree_map(lambda q, x, a: q - lr * x / (jnp.sqrt(a) + 1e-8),
                                  p, g, v), v

  p, v = state.params, jax.tree_util.tree_map(jnp.zeros_like, state.params)
  for t in range(1, 7):
    p, v = hand_update(p, v, jax.random.fold_in(data_key, t),
                       np.float32(3e-3 * train.lr_scale(config, t)))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4,
                                                                 atol=1e-6), params, p)
  # A resumed run takes the same scaled steps.
  train.train_and_evaluate(tiny_config(**{**config.to_dict(), "steps": 3}), tmp_path / "b",
                           task)
  train.train_and_evaluate(config, tmp_path / "b", task)
  assert records(tmp_path / "b") == [
      {**r, "steps_per_s": records(tmp_path / "b")[i]["steps_per_s"]}
      for i, r in enumerate(records(tmp_path / "a"))]


def test_an_update_with_a_non_finite_gradient_is_skipped(monkeypatch):
  """``|w|`` written as sqrt(w . w) has a finite value and a NaN gradient at
  w = 0 (0 / 0): that update leaves parameters and optimiser state exactly as
  they were; at w = 1 the same step applies RMSprop's update."""
  def make_loss_fn(model, task):
    del model, task
    return lambda params, batch: (jnp.sqrt(jnp.sum(params["w"] ** 2)),
                                  (jnp.float32(0.5), jnp.float32(1.0)))

  monkeypatch.setattr(train, "make_loss_fn", make_loss_fn)
  opt = rs.make_optimizer("rmsprop", 1e-3)
  step = train.make_train_step(None, rs.CopyTask(3), opt, 2)
  for w, applied in ((0.0, False), (1.0, True)):
    params = {"w": jnp.full((3,), w, jnp.float32)}
    state = train.TrainState(params, opt.init(params))
    new, loss, _, ok = step(state, jax.random.PRNGKey(0), np.float32(1.0))
    assert bool(ok) is applied and float(loss) == pytest.approx(3 ** 0.5 * w)
    same = jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: bool(jnp.array_equal(a, b)), new, state))
    assert same is not applied


def test_a_run_whose_gradient_stays_non_finite_stops_and_keeps_its_checkpoints(
    tmp_path, monkeypatch):
  """Skipping is for an overflow now and then: MAX_SKIPPED_IN_ROW skipped
  updates in a row end the run with an error naming them; the checkpoints saved
  before (finite parameters) stay where they are."""
  real = train.make_loss_fn

  def make_loss_fn(model, task):
    loss_fn = real(model, task)

    def nan_gradient(params, batch):
      loss, aux = loss_fn(params, batch)
      # + sqrt(|x|^2) at x = 0 adds 0 to the loss and NaN to the gradient
      zero = jnp.sqrt(jnp.sum(0.0 * params["head"]["bias"] ** 2))
      return loss + zero, aux

    return nan_gradient

  monkeypatch.setattr(train, "make_loss_fn", make_loss_fn)
  monkeypatch.setattr(train, "MAX_SKIPPED_IN_ROW", 4)
  config = copy_config.get_config()
  config.update(model="RNN", T=3, hidden=8, batch=2, steps=10, log_every=2,
                checkpoint_every=2, eval_batches=1, eval_batch_size=2)
  with pytest.raises(train.NonFiniteLossError, match=r"not finite for 4 updates in a row "
                     r"\(updates 1-4\); stopped: the last good checkpoint \(update 2\)"):
    train.train_and_evaluate(config, tmp_path, rs.CopyTask(3))
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                if p.name.isdigit()) == ["2"]  # it stops before update 4 is saved
  records = train.MetricsLog(tmp_path / "metrics.jsonl", 100).read()
  assert [(r["step"], r["skipped"]) for r in records] == [(2, 2)]
