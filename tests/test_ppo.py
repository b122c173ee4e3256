"""PPO (GAE, loss), per-environment memory resets, and the RL binary's loop."""

import functools
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import relscreen as rs
from relscreen import models
from relscreen import ppo
from relscreen_experiments import rl_envs
from relscreen_experiments import train_ppo
from relscreen_experiments.configs import ppo as ppo_config


def test_gae_hand_worked():
  # gamma 0.9, lambda 0.8; the episode ends with step 1, so step 0 bootstraps from
  # V_1 but step 1 does not bootstrap at all; step 2 bootstraps from last_value.
  rewards = jnp.array([[1.0], [0.0], [2.0]])
  values = jnp.array([[0.5], [1.0], [0.2]])
  dones = jnp.array([[False], [True], [False]])
  adv, ret = ppo.gae(rewards, values, dones, jnp.array([3.0]), 0.9, 0.8)
  # t=2: 2 + 0.9*3 - 0.2 = 4.5
  # t=1: 0 - 1.0 = -1.0 (no bootstrap, no carry)
  # t=0: delta 1 + 0.9*1.0 - 0.5 = 1.4; A = 1.4 + 0.9*0.8*(-1.0) = 0.68
  np.testing.assert_allclose(adv[:, 0], [0.68, -1.0, 4.5], rtol=1e-6)
  np.testing.assert_allclose(ret[:, 0], [1.18, 0.0, 4.7], rtol=1e-6)


def test_ppo_loss_hand_worked():
  logits = jnp.array([[0.0, 0.0], [math.log(3.0), 0.0]])  # p = (.5, .5), (.75, .25)
  actions = jnp.array([0, 1])
  old_log_probs = jnp.log(jnp.array([0.25, 0.5]))  # ratios 2 and 0.5
  advantages = jnp.array([1.0, -2.0])
  values, old_values = jnp.array([1.0, 0.0]), jnp.array([0.5, 0.1])
  returns = jnp.array([2.0, 0.05])
  terms = ppo.ppo_loss(logits, values, actions, old_log_probs, old_values, advantages,
                       returns, clip_eps=0.2, entropy_coef=0.01, value_coef=0.5)
  # policy: min(2*1, 1.2*1) = 1.2 and min(0.5*-2, 0.8*-2) = -1.6 -> -(1.2 - 1.6)/2
  np.testing.assert_allclose(terms.policy_loss, 0.2, rtol=1e-6)
  # value: step 0 max((1-2)^2, (0.7-2)^2) = 1.69; step 1 both (0.05)^2
  np.testing.assert_allclose(terms.value_loss, (1.69 + 0.0025) / 2, rtol=1e-6)
  entropy = (math.log(2) - 0.75 * math.log(0.75) - 0.25 * math.log(0.25)) / 2
  np.testing.assert_allclose(terms.entropy, entropy, rtol=1e-6)
  np.testing.assert_allclose(terms.loss, 0.2 - 0.01 * entropy + 0.5 * 0.84625, rtol=1e-6)
  np.testing.assert_allclose(terms.clip_fraction, 1.0)


@pytest.mark.parametrize("name", ["LSTM", "RelLSTM", "MemLSTM", "RNN", "RelRNN", "MemRNN"])
def test_reset_row_equals_fresh_state(name, float64):
  """Row 0 restarts at step 5: from then on it matches a fresh run on its inputs
  (and its memory right after the reset is a fresh memory); row 1 never notices."""
  cfg = rs.model_config(name, 3, hidden=6, nu=2, rho=2)
  params = float64(rs.RecurrentCore(cfg).init(jax.random.PRNGKey(0),
                                              jnp.zeros((2, 4, 3)))["params"])
  x = float64(jax.random.normal(jax.random.PRNGKey(1), (2, 12, 3), jnp.float32))
  resets = jnp.zeros((12, 2), bool).at[5, 0].set(True)

  @jax.jit
  def run(state):
    def body(state, inputs):
      x_t, reset = inputs
      cleared = models.reset_rows(cfg, state, reset)
      state, out = models.step(params, cfg, state, x_t, reset=reset)
      return state, (out["h"], cleared)
    return jax.lax.scan(body, state, (jnp.swapaxes(x, 0, 1), resets))[1]

  hs, cleared = run(models.init_state(cfg, 2, capacity=12, dtype=x.dtype))
  hs = jnp.swapaxes(hs, 0, 1)
  fresh = models.init_state(cfg, 1, capacity=12, dtype=x.dtype)
  chex.assert_trees_all_equal(jax.tree_util.tree_map(lambda a: a[5, :1], cleared[1:]),
                              tuple(fresh[1:]))
  whole, _ = models.forward(params, cfg, x, capacity_state(cfg, 2, 12))
  restarted, _ = models.forward(params, cfg, x[:1, 5:], capacity_state(cfg, 1, 12))
  np.testing.assert_allclose(hs[1], whole["h"][1], atol=1e-12)
  np.testing.assert_allclose(hs[0, :5], whole["h"][0, :5], atol=1e-12)
  np.testing.assert_allclose(hs[0, 5:], restarted["h"][0], atol=1e-12)


def test_memax_core_steps_as_memax_runs_and_restarts_on_reset():
  """A memax core stepped once per time step, row 0 reset at step 5: each row's
  outputs equal memax's own call on the whole sequence (row 0: on the sequence
  from step 5), so stepping, the kept carry and the reset are memax's."""
  pytest.importorskip("memax")
  from relscreen_experiments import memax_peers  # pylint: disable=g-import-not-at-top
  config = memax_peers.CoreConfig("memax:GRU", 3, 6)
  core = memax_peers.MemaxCore(config)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 12, 3))
  resets = jnp.zeros((12, 2), bool).at[0].set(True).at[5, 0].set(True)
  state = memax_peers.initial_core_state(config, 2)
  params = jax.jit(functools.partial(core.init, method=memax_peers.MemaxCore.step))(
      jax.random.PRNGKey(0), state, x[:, 0], resets[0])["params"]

  @jax.jit
  def run(state):
    def body(state, inputs):
      state, out = core.apply({"params": params}, state, *inputs,
                              method=memax_peers.MemaxCore.step)
      return state, out["h"]
    return jax.lax.scan(body, state, (jnp.swapaxes(x, 0, 1), resets))[1]

  hs = jnp.swapaxes(run(state), 0, 1)
  trunk = memax_peers.trunk("GRU", 6, 6, 1)
  variables = {"params": params["trunk"]}
  carry = trunk.apply(variables, method="initialize_carry")
  @jax.jit
  def memax_run(seq):
    return trunk.apply(variables, carry, (seq, jnp.zeros(seq.shape[:1], bool)))[1]
  # float32 (memax's layers): one step at a time against one call over the
  # sequence, two programs summing the same terms, ~1e-7 apart per op for these
  # O(1) values; 1e-5 bounds that anywhere, and a wrong carry or a missed reset
  # moves them by more than 1e-3 (the last line).
  np.testing.assert_allclose(hs[1], memax_run(x[1]), atol=1e-5)
  np.testing.assert_allclose(hs[0, :5], memax_run(x[0])[:5], atol=1e-5)
  np.testing.assert_allclose(hs[0, 5:], memax_run(x[0, 5:]), atol=1e-5)
  assert float(jnp.abs(hs[0, 5:] - memax_run(x[0])[5:]).max()) > 1e-3  # the reset matters


def capacity_state(cfg, batch, capacity):
  dtype = jnp.float64 if jax.config.x64_enabled else jnp.float32
  return models.init_state(cfg, batch, capacity=capacity, dtype=dtype)


def test_reset_rejects_bad_mask():
  cfg = rs.model_config("RelLSTM", 3, hidden=4, nu=2, rho=2)
  params = rs.RecurrentCore(cfg).init(jax.random.PRNGKey(0), jnp.zeros((2, 3, 3)))["params"]
  with pytest.raises(ValueError, match="reset must be a bool array of shape"):
    models.step(params, cfg, models.init_state(cfg, 2), jnp.zeros((2, 3)),
                reset=jnp.zeros((3,), bool))


def _tiny(**overrides):
  config = ppo_config.get_config()
  config.update(env="MemoryChain-bsuite", memory_length=3, model="RelLSTM", hidden=8,
                nu=2, rho=2, num_envs=2, frames_per_env=8, recurrence=4, batch_size=8,
                epochs=2, frames=96, checkpoint_every=2, eval_episodes=4)
  config.update(**overrides)
  return config


@pytest.mark.parametrize("model", ["RelLSTM", "MemLSTM", "memax:GRU"])
def test_learning_replays_acting(model):
  """Windows rerun from the stored core states, with the stored episode resets
  (MemoryChain length 3 ends episodes inside windows), reproduce the acting
  policy's log-probabilities and values exactly, shifted windows included."""
  setup = train_ppo.build(_tiny(model=model))
  state = train_ppo.initial_run_state(setup)
  _, cores, steps = train_ppo.rollout(setup, state.params, state.carry, state.key)
  assert int(steps.done.sum()) >= 4 and not bool(steps.done[:4].all())
  t0 = jnp.array([0, 4, 2, 2])
  env = jnp.array([0, 1, 0, 1])
  replay = jax.jit(lambda *args: train_ppo.replay(setup, *args))  # one program, not ~80
  logits, values, seq = replay(state.params, cores, steps, t0, env)
  log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), seq.action[..., None], -1)
  # float32 (the agent's Flax layers keep float32 params): acting and replay run
  # the same steps on the same inputs, compiled into different programs, so they
  # differ only by rounding, ~1e-7 per op here (hidden 8, 8 steps, O(1) values);
  # 1e-5 bounds that on any CPU, while a wrong stored state or reset moves these
  # outputs by O(0.01-1).
  np.testing.assert_allclose(log_probs[..., 0], seq.log_prob, atol=1e-5)
  np.testing.assert_allclose(values, seq.value, atol=1e-5)


def test_window_starts_cover_rollout():
  config = _tiny(num_envs=4, frames_per_env=8, recurrence=4, batch_size=8)
  t0, env = train_ppo._windows(config, False, jax.random.PRNGKey(0))  # pylint: disable=protected-access
  assert t0.shape == (4, 2)  # 8 windows of 4 steps, 2 per minibatch
  assert sorted(zip(np.ravel(t0).tolist(), np.ravel(env).tolist())) == [
      (t, e) for t in (0, 4) for e in range(4)]
  t0, env = train_ppo._windows(config, True, jax.random.PRNGKey(0))  # pylint: disable=protected-access
  assert sorted(np.ravel(t0).tolist()) == [2] * 4  # shifted by half; 6 would cross the end


@pytest.mark.parametrize("flag, value, message", [
    ("recurrence", 3, "--recurrence=3 must be even"),
    ("batch_size", 6, "--batch_size=6 must be a multiple"),
    ("num_envs", 0, "--num_envs must be >= 1"),
    ("env", "CartPole-v1", "--env='CartPole-v1' is not supported"),
    ("env", "MiniGrid-Nope", "--env='MiniGrid-Nope' is not an xminigrid environment"),
    ("model", "RelRNN", "--model='RelRNN'"),
])
def test_bad_flags_are_named(flag, value, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
    train_ppo.build(_tiny(**{flag: value}))


@pytest.mark.parametrize("model", ["LSTM", "WinLSTM"])  # WinLSTM: a [b, 0, h] relevant set
def test_training_smoke_and_resume(tmp_path, model):
  """MemoryChain, 6 tiny updates: files written, metrics sane; a run resumed
  after 4 updates ends exactly where an uninterrupted run ends."""
  record = train_ppo.train_and_evaluate(_tiny(model=model, epochs=1), tmp_path / "whole")
  lines = [json.loads(l) for l in (tmp_path / "whole/metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
  assert all(0.0 <= r["success"] <= 1.0 and r["fps"] > 0 for r in lines)
  assert all(np.isfinite(r["loss"]) and r["entropy"] <= math.log(2) + 1e-6 for r in lines)
  assert record["episodes"] == 4 and (tmp_path / "whole/curves.png").exists()
  train_ppo.train_and_evaluate(_tiny(model=model, epochs=1, frames=64), tmp_path / "split")
  train_ppo.train_and_evaluate(_tiny(model=model, epochs=1), tmp_path / "split")
  split = [json.loads(l) for l in (tmp_path / "split/metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in split] == [1, 2, 3, 4, 5, 6]
  for a, b in zip(lines, split):
    assert {k: v for k, v in a.items() if k != "fps"} == {
        k: v for k, v in b.items() if k != "fps"}


def test_compiled_update_is_shared_only_by_runs_of_the_same_program():
  """Seeds and budgets reach the update as data; every other field may change
  the program, so it keys the per-process cache of compiled updates."""
  key = train_ppo.program_key(_tiny())
  assert train_ppo.program_key(_tiny(seed=7, frames=10**6, log_every=3)) == key
  for change in ({"lr": 1e-2}, {"epochs": 4}, {"model": "LSTM"}, {"memory_length": 9}):
    assert train_ppo.program_key(_tiny(**change)) != key, change


def test_resume_refuses_changed_hyperparameters(tmp_path):
  train_ppo.check_config(_tiny())
  from relscreen_experiments import rundir  # pylint: disable=g-import-not-at-top
  rundir.write_config(tmp_path, _tiny())
  rundir.check_config(tmp_path, _tiny(frames=96), train_ppo.RESUMABLE_FIELDS)
  with pytest.raises(ValueError, match="--epochs: saved 2, now 4"):
    rundir.check_config(tmp_path, _tiny(epochs=4), train_ppo.RESUMABLE_FIELDS)


def test_minigrid_agent_acts():
  """DoorKey-5x5 through xminigrid with the reference conv trunk: the whole
  rollout traces with the right shapes (no compile), and one jitted step of the
  environments auto-resets as the interface promises."""
  setup = train_ppo.build(_tiny(env="MiniGrid-DoorKey-5x5", model="LSTM"))
  assert setup.agent.encoder == "conv" and setup.env.obs_shape == (7, 7, 2)
  state = jax.eval_shape(lambda: train_ppo.initial_run_state(setup))
  _, _, steps = jax.eval_shape(lambda p, c, k: train_ppo.rollout(setup, p, c, k),
                               state.params, state.carry, state.key)
  assert steps.action.shape == (8, 2) and steps.obs.shape == (8, 2, 7, 7, 2)
  env = setup.env
  env_state, obs = jax.jit(env.reset)(jax.random.PRNGKey(0))  # op by op: ~60 programs
  step = jax.jit(env.step)
  for _ in range(3):  # "done" (toggle) never ends DoorKey: three steps stay in the episode
    env_state, obs, reward, done = step(env_state, jnp.int32(5), jax.random.PRNGKey(1))
  assert obs.shape == (7, 7, 2) and not bool(done) and float(reward) == 0.0


def test_memory_chain_env_contract():
  """The bit shows in the first observation; only the final action is rewarded."""
  env = rl_envs.make_env("MemoryChain-bsuite", 3)
  state, obs = env.reset(jax.random.PRNGKey(3))
  bit = int(obs[2] > 0)
  rewards, dones = [], []
  for i in range(4):
    state, obs, reward, done = env.step(state, jnp.int32(bit), jax.random.PRNGKey(i))
    rewards.append(float(reward))
    dones.append(bool(done))
  assert rewards == [0.0, 0.0, 0.0, 1.0] and dones == [False, False, False, True]


def test_ppo_sweep_summarizes_seeds_by_median_and_range(tmp_path):
  """The sweep's summary, table and plots over seeds, from hand-made runs."""
  from relscreen_experiments import ppo_sweep  # pylint: disable=g-import-not-at-top
  success = {"LSTM": {"16": {"1": 1.0, "2": 0.5}, "64": {"1": 0.96, "2": 0.98}},
             "RelLSTM:decay/top": {"16": {"1": 1.0, "2": 1.0}, "64": {"1": 0.5, "2": 0.6}}}
  summary = ppo_sweep.summarize(success, [16, 64], [1, 2], frames=1000, threshold=0.95)
  assert summary["success"] == {"LSTM": {"16": 0.75, "64": 0.97},
                                "RelLSTM:decay/top": {"16": 1.0, "64": 0.55}}
  # LSTM's median at 16 misses the threshold, so nothing counts as solved for it
  # even though its median at 64 reaches it.
  assert summary["longest_solved"] == {"LSTM": None, "RelLSTM:decay/top": 16}
  md = ppo_sweep.table(summary, [16, 64]).splitlines()
  assert md[2] == "| model | L = 16 | L = 64 |"
  assert md[4] == "| LSTM | 75.0% (50.0-100.0) | 97.0% (96.0-98.0) |"
  assert md[5] == "| RelLSTM:decay/top | 100.0% (100.0-100.0) | 55.0% (50.0-60.0) |"
  # A sweep with --nu / --rho says so in the caption.
  assert ppo_sweep.table({**summary, "nu": 16, "rho": 8}, [16, 64]).splitlines()[0].endswith(
      "; Rel cores with nu = 16, rho = 8")
  assert ppo_sweep.run_name("RelLSTM:decay/top", 64, 2) == "RelLSTM_decay-top_L64_s2"
  assert ppo_sweep.parse_model("memax:S6") == ("memax:S6", {})  # not a rule suffix
  assert ppo_sweep.run_name("memax:S6", 64, 2) == "memax_S6_L64_s2"
  for model, by_len in success.items():
    for n in by_len:
      for seed, final in by_len[n].items():
        run = tmp_path / ppo_sweep.run_name(model, int(n), int(seed))
        run.mkdir()
        rows = [{"step": i, "frames": 100 * i, "episodes": int(i != 3),
                 "success": final * i / 9} for i in range(1, 10)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  details = {"RelLSTM": {"256": {
      "1": {"solved_frames": 1.8e6, "first_state_kept": 1.0},
      "2": {"solved_frames": 2.6e6, "first_state_kept": 0.5},
      "3": {"solved_frames": None, "first_state_kept": 0.25}}},
      "LSTM": {"256": {s: {"solved_frames": None, "first_state_kept": None} for s in "123"}}}
  md = ppo_sweep.details_table(details, [256], [1, 2, 3]).splitlines()
  assert md[4] == "| RelLSTM | 2 of 3, at 2.20M; kept 50% |"
  assert md[5] == "| LSTM | 0 of 3 |"
  ppo_sweep.plot(tmp_path, summary, [16, 64], 1000)
  assert (tmp_path / "success.png").stat().st_size > 0
  assert (tmp_path / "curves.png").stat().st_size > 0
  with pytest.raises(ValueError, match="--seeds must be distinct"):
    ppo_sweep._parse_seeds(["1", "1"])


def test_memory_split_is_the_cue_in_the_first_view():
  """MiniGrid-MemoryS8 starts the agent facing east on row 3 with a 3 x 3 view;
  the cue at row 2, column 1 is then in view exactly from column 1 (the view
  covers rows 2-4, the agent's column and the two ahead of it)."""
  env = rl_envs.make_env("MiniGrid-MemoryS8")
  states, obs = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), 200))
  seen = np.asarray(jax.vmap(env.split.test)(states, obs))
  agent = states.state.agent
  assert set(np.asarray(agent.direction).tolist()) == {1}  # east, as the layout above assumes
  np.testing.assert_array_equal(seen, np.asarray(agent.position[:, 1]) == 1)
  assert 0 < seen.sum() < len(seen)
  assert rl_envs.make_env("MiniGrid-DoorKey-5x5").split is None


def test_evaluation_reports_success_on_each_side_of_the_split():
  setup = train_ppo.build(_tiny(env="MiniGrid-MemoryS8", model="LSTM", eval_episodes=24))
  state = train_ppo.initial_run_state(setup)
  record = train_ppo.make_evaluate(setup)(state.params, jax.random.PRNGKey(5))
  parts = record["by_start"]
  assert list(parts) == ["cue in view at the start", "cue out of view at the start"]
  assert sum(p["episodes"] for p in parts.values()) == 24
  assert record["success"] == pytest.approx(sum(
      p["episodes"] * (p["success"] or 0.0) for p in parts.values()) / 24)


def test_seeds_comparison_reads_finished_runs_and_summarizes_the_split(tmp_path):
  """``relscreen-ppo-seeds``' logic on hand-made finished runs: nothing retrains,
  medians over seeds (the split's too) and the table are the hand-computed ones;
  a bad --env is named before the work directory is written."""
  from relscreen_experiments import ppo_lib  # pylint: disable=g-import-not-at-top
  split = ("cue in view at the start", "cue out of view at the start")
  finals = {"LSTM": {1: (0.6, 1.0, 0.5), 2: (1.0, 1.0, 1.0), 3: (0.55, 0.75, 0.5)},
            "RelLSTM:decay/top": {1: (0.5, 0.5, 0.5), 2: (0.6, 1.0, 0.5), 3: (0.6, 1.0, 0.5)}}
  for model, by_seed in finals.items():
    for seed, (total, seen, unseen) in by_seed.items():
      run = tmp_path / ppo_lib.seed_run_name(model, seed)
      run.mkdir()
      (run / "eval.json").write_text(json.dumps({
          "frames": 5000, "episodes": 8, "success": total, "length": 10.0 + seed,
          "by_start": {split[0]: {"episodes": 2, "success": seen},
                       split[1]: {"episodes": 6, "success": unseen}}}))
      # success climbs to ``total`` by the fifth logged update; frames/s 100 x seed
      rows = [{"step": i, "frames": 500 * i, "episodes": 3, "success": min(total, total * i / 5),
               "fps": 100.0 * seed} for i in range(1, 11)]
      rows.insert(3, {"step": 3.5, "frames": 1750, "episodes": 0, "success": 0.0, "fps": 0.0})
      (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert ppo_lib.seed_run_name("RelLSTM:decay/top", 3) == "RelLSTM_decay-top_s3"
  summary = ppo_lib.run_seeds(tmp_path, "MiniGrid-MemoryS8", list(finals), [1, 2, 3],
                              frames=5000, eval_episodes=8)
  # Seed 2 of the LSTM learns: training success 0.2, 0.4, 0.6, 0.8, 1, 1, ... (the update
  # without episodes is left out), so the mean of five updates is 0.6, 0.76, 0.88, then
  # 0.96 >= 0.9 at the eighth update, 4000 frames. The others top out below 0.9.
  # Frames/s: the median over every logged update, the one without episodes too.
  assert summary["per_seed"]["LSTM"]["2"]["solved_frames"] == 4000
  assert summary["per_seed"]["LSTM"]["2"]["fps"] == 200.0
  assert summary["per_seed"]["LSTM"]["1"]["solved_frames"] is None
  assert summary["median"]["LSTM"] == {"success": 0.6, "length": 12.0,
                                       "by_start": {split[0]: 1.0, split[1]: 0.5},
                                       "solved_frames": 4000.0, "solved": 1, "fps": 200.0}
  assert summary["median"]["RelLSTM:decay/top"]["by_start"] == {split[0]: 1.0, split[1]: 0.5}
  assert summary["median"]["RelLSTM:decay/top"]["solved"] == 0
  table = (tmp_path / "table.md").read_text().splitlines()
  assert table[4] == ("| LSTM | 60.0% (s1) / 100.0% (s2) / 55.0% (s3) | 60.0% | 100.0% | "
                      "50.0% | 12.0 | 1 of 3, at 4,000 | 200 |")
  assert table[5].endswith("| 0 of 3 | 200 |")
  assert (tmp_path / "curves.png").stat().st_size > 0
  with pytest.raises(ValueError, match="MiniGrid-Nope"):
    ppo_lib.run_seeds(tmp_path / "new", "MiniGrid-Nope", ["LSTM"], [1], 5000, 8)
  assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("model, nu, kept", [
    ("WinLSTM", 2, 0.0),  # the window holds steps 1 and 2 when step 3 acts
    ("WinLSTM", 3, 1.0),  # ... steps 0, 1 and 2
    ("RelLSTM", 2, 1.0),  # step 0 left S at step 2's store into R, which had room
    ("MemLSTM", 2, 1.0),  # every state of the episode
    ("LSTM", 2, None),  # no attended memory: nothing reported
])
def test_evaluation_reports_whether_the_first_state_is_kept_to_the_query(model, nu, kept):
  """MemoryChain length 3: episodes of 4 steps, the query at the last (step 3),
  whose memory holds the states of steps 0-2 at most."""
  setup = train_ppo.build(_tiny(model=model, nu=nu, rho=2, eval_episodes=6))
  state = train_ppo.initial_run_state(setup)
  record = train_ppo.make_evaluate(setup)(state.params, jax.random.PRNGKey(5))
  if kept is None:
    assert "first_state_kept" not in record
    return
  shares = record["first_state_kept"]
  assert shares["all"] == kept
  assert {shares["success"], shares["failure"]} - {None} == {kept}


def test_finished_runs_are_read_and_others_trained(tmp_path, monkeypatch):
  """Both PPO sweeps skip a run whose eval.json covers the frames and evaluation
  episodes asked for, and train (resume) any other."""
  from relscreen_experiments import ppo_lib  # pylint: disable=g-import-not-at-top
  trained = []
  monkeypatch.setattr(train_ppo, "train_and_evaluate",
                      lambda config, run_dir: trained.append(run_dir.name) or {"new": True})
  config = _tiny(frames=5000, eval_episodes=8)
  for name, frames, episodes in (("done", 5000, 8), ("more", 6000, 8), ("short", 4000, 8),
                                 ("other_eval", 5000, 16)):
    (tmp_path / name).mkdir()
    (tmp_path / name / "eval.json").write_text(
        json.dumps({"frames": frames, "episodes": episodes, "success": 0.5}))
  (tmp_path / "fresh").mkdir()
  records = {name: ppo_lib.finished_or_trained(config, tmp_path / name)
             for name in ("done", "more", "short", "other_eval", "fresh")}
  assert trained == ["short", "other_eval", "fresh"]
  assert records["done"]["success"] == records["more"]["success"] == 0.5
  assert records["short"] == {"new": True}
