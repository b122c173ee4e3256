"""PPO with a recurrent actor-critic, rollouts and updates jitted together.

One update = one rollout of ``frames_per_env`` steps in each of ``num_envs``
environments (vmapped), GAE, then ``epochs`` passes of minibatched PPO over
windows of ``recurrence`` steps (torch-ac's scheme: windows start every
``recurrence`` steps, shifted by half a window on every other epoch; each starts
from the core state the rollout had there, and restarts the core of an
environment at every episode start inside the window, as acting did).

Writes to ``workdir``: config.json, metrics.jsonl (one record per update:
frames, return, success rate, episode length, losses, entropy, KL, frames/s),
checkpoints/ (parameters, optimiser, environments, key: a rerun resumes the same
run), eval.json (success over ``eval_episodes`` fresh episodes with the final policy) and
curves.png.
"""

import dataclasses
import functools
import pathlib
import time
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from relscreen_experiments import flags_lib
from relscreen_experiments import rl_agent
from relscreen_experiments import rl_envs
from relscreen_experiments import rundir
from relscreen_experiments import train as train_lib
from relscreen import memories
from relscreen import models
from relscreen import ppo


# Fields that may change between a run and its resumption; all others must match.
RESUMABLE_FIELDS = ("frames", "log_every", "checkpoint_every", "eval_episodes")


class Carry(NamedTuple):
  """What acting carries from one step (and one update) to the next."""

  env: Any  # batched environment states
  obs: jax.Array  # [n, ...] the observation to act on
  core: models.State  # the agent's recurrent state
  reset: jax.Array  # [n] bool: obs is the first of an episode
  ep_return: jax.Array  # [n] return so far in the running episode
  ep_length: jax.Array  # [n] int32


class Step(NamedTuple):
  """One rollout step of every environment (time-major when stacked)."""

  obs: jax.Array
  reset: jax.Array
  action: jax.Array
  log_prob: jax.Array
  value: jax.Array
  reward: jax.Array
  done: jax.Array  # the episode ended with this step
  success: jax.Array  # ... with a positive reward
  finished_return: jax.Array  # the episode's return where done, else 0
  finished_length: jax.Array


class RunState(NamedTuple):
  params: Any
  opt_state: Any
  carry: Carry
  key: jax.Array


@dataclasses.dataclass(frozen=True)
class Setup:
  env: rl_envs.Env
  agent: rl_agent.ActorCritic
  optimizer: optax.GradientTransformation
  capacity: int
  config: Any


def check_config(config):
  """Raises a ValueError naming the first inconsistent flag."""
  flags_lib.require_finite(config)
  for name in ("num_envs", "frames_per_env", "epochs", "batch_size", "recurrence",
               "hidden", "nu", "rho", "frames", "log_every", "checkpoint_every", "eval_episodes"):
    if config[name] < 1:
      raise ValueError(f"--{name} must be >= 1, got {config[name]}")
  r = config.recurrence
  if r % 2 or config.frames_per_env % r:
    raise ValueError(f"--recurrence={r} must be even and divide --frames_per_env="
                     f"{config.frames_per_env}")
  if config.batch_size % r:
    raise ValueError(f"--batch_size={config.batch_size} must be a multiple of "
                     f"--recurrence={r} (windows per minibatch)")
  windows = config.num_envs * (config.frames_per_env // r - 1)
  if windows < config.batch_size // r:
    raise ValueError(f"--batch_size={config.batch_size} needs {config.batch_size // r} "
                     f"windows per minibatch; a rollout has only {windows} shifted windows "
                     "(raise --num_envs or --frames_per_env)")


def build(config) -> Setup:
  check_config(config)
  env = rl_envs.make_env(config.env, config.memory_length)
  encoder = config.encoder
  if encoder == "auto":
    encoder = "conv" if env.grid and rl_agent.conv_fits(env.obs_shape) else "mlp"
  elif encoder == "conv" and not (env.grid and rl_agent.conv_fits(env.obs_shape)):
    raise ValueError(f"--encoder=conv needs grid views of at least 7x7; {env.name} "
                     f"observes {env.obs_shape}; use --encoder=mlp")
  core = rl_agent.core_config(config.model, env.obs_shape, encoder, config.hidden,
                              config.nu, config.rho, **train_lib.composable_options(config))
  agent = rl_agent.ActorCritic(core, env.num_actions, encoder, env.grid)
  optimizer = optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                          optax.adam(config.lr, eps=config.adam_eps))
  capacity = rl_agent.check_capacity(config.mem_capacity, env.max_episode_steps,
                                     config.model)
  return Setup(env, agent, optimizer, capacity, config)


def initial_carry(setup: Setup, key, num_envs: int) -> Carry:
  """Fresh environments, each at the first step of an episode, and a fresh core."""
  env_state, obs = jax.vmap(setup.env.reset)(jax.random.split(key, num_envs))
  core = rl_agent.initial_state(setup.agent.core, num_envs, setup.capacity)
  zeros = jnp.zeros((num_envs,), jnp.float32)
  return Carry(env_state, obs, core, jnp.ones((num_envs,), bool), zeros,
               jnp.zeros((num_envs,), jnp.int32))


def initial_run_state(setup: Setup) -> RunState:
  cfg = setup.config
  init_key, env_key, run_key = jax.random.split(jax.random.PRNGKey(cfg.seed), 3)
  # One program (the same bits as op by op, which compiles dozens of small ones).
  carry = jax.jit(lambda key: initial_carry(setup, key, cfg.num_envs))(env_key)
  params = train_lib.init_params(setup.agent, init_key, carry.core, carry.obs, carry.reset)
  return RunState(params, jax.jit(setup.optimizer.init)(params), carry, run_key)


def _act(setup: Setup, params, carry: Carry, key) -> tuple[Carry, Step]:
  """One step of every environment with actions sampled from the policy."""
  n = carry.reset.shape[0]
  act_key, env_key = jax.random.split(key)
  core, logits, value = setup.agent.apply({"params": params}, carry.core, carry.obs,
                                          carry.reset)
  action = jax.random.categorical(act_key, logits)
  env_state, obs, reward, done = jax.vmap(setup.env.step)(
      carry.env, action, jax.random.split(env_key, n))
  ep_return, ep_length = carry.ep_return + reward, carry.ep_length + 1
  step = Step(carry.obs, carry.reset, action, ppo.log_prob(logits, action), value,
              reward, done, done & (reward > 0), jnp.where(done, ep_return, 0.0),
              jnp.where(done, ep_length, 0))
  carry = Carry(env_state, obs, core, done, jnp.where(done, 0.0, ep_return),
                jnp.where(done, 0, ep_length))
  return carry, step


def rollout(setup: Setup, params, carry: Carry, key, steps: int | None = None,
            keep_cores: bool = True, watch=None):
  """``steps`` (default ``frames_per_env``) steps of every environment.

  Returns ``(carry, cores, steps)``: ``cores`` is the core state at the start of
  every half window (what training windows start from; None unless
  ``keep_cores``), ``steps`` is time-major; with ``watch`` (core state -> [n]),
  ``steps`` is ``(steps, watched)``: ``watch`` of the core each step acts from.
  """
  half = setup.config.recurrence // 2
  blocks = -(-(steps or setup.config.frames_per_env) // half)

  def block(carry, block_key):
    def one(carry, k):
      if watch is None:
        return _act(setup, params, carry, k)
      watched = watch(carry.core)
      carry, step = _act(setup, params, carry, k)
      return carry, (step, watched)
    start_core = carry.core if keep_cores else None
    carry, out = jax.lax.scan(one, carry, jax.random.split(block_key, half))
    return carry, (start_core, out)

  carry, (cores, out) = jax.lax.scan(block, carry, jax.random.split(key, blocks))
  out = jax.tree_util.tree_map(lambda a: a.reshape((blocks * half,) + a.shape[2:]), out)
  return carry, cores, out


def _windows(config, shifted: bool, key):
  """Window starts (time) and environments, shuffled, cut into minibatches."""
  r, f, n = config.recurrence, config.frames_per_env, config.num_envs
  starts = np.arange(r // 2 if shifted else 0, f - r + 1, r)
  t0 = np.repeat(starts, n)
  env = np.tile(np.arange(n), len(starts))
  per_batch = config.batch_size // r
  count = (len(t0) // per_batch) * per_batch
  order = jax.random.permutation(key, len(t0))[:count]
  shape = (count // per_batch, per_batch)
  return jnp.asarray(t0)[order].reshape(shape), jnp.asarray(env)[order].reshape(shape)


def _take(a, t0, env, r):
  """Windows ``a[t0 + i, env]`` for i < r of a time-major array: [r, m, ...]."""
  return jnp.swapaxes(a[t0[:, None] + jnp.arange(r)[None, :], env[:, None]], 0, 1)


def replay(setup: Setup, params, cores, steps: Step, t0, env):
  """Reruns the agent over windows of ``recurrence`` steps starting at times ``t0``
  [m] in environments ``env`` [m], from the core states the rollout stored there
  and with its episode resets. Returns ``(logits, values, windows)``, all [r, m, ...]."""
  r, half = setup.config.recurrence, setup.config.recurrence // 2
  seq = jax.tree_util.tree_map(lambda a: _take(a, t0, env, r), steps)
  core = rl_agent.stored_core(cores, t0 // half, env)

  if isinstance(setup.agent.core, models.ModelConfig):  # the whole window at once
    logits, values = setup.agent.apply({"params": params}, core, seq.obs, seq.reset,
                                       method="window")
    return logits, values, seq

  def body(core, inputs):  # a memax core: step by step
    obs, reset = inputs
    core, logits, value = setup.agent.apply({"params": params}, core, obs, reset)
    return core, (logits, value)

  _, (logits, values) = jax.lax.scan(body, core, (seq.obs, seq.reset))
  return logits, values, seq


def _window_loss(setup: Setup, params, cores, steps: Step, adv, returns, t0, env):
  """The PPO loss over a minibatch of windows starting at times ``t0`` in ``env``."""
  cfg = setup.config
  logits, values, seq = replay(setup, params, cores, steps, t0, env)
  r = cfg.recurrence
  return ppo.ppo_loss(logits, values, seq.action, seq.log_prob, seq.value,
                      _take(adv, t0, env, r), _take(returns, t0, env, r), cfg.clip_eps,
                      cfg.entropy_coef, cfg.value_coef)


def _norm(tree):
  return jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(tree)))


def make_update(setup: Setup):
  """The jitted update: rollout, GAE, PPO epochs. Returns new state and metrics."""
  cfg = setup.config

  def loss_fn(params, *args):
    terms = _window_loss(setup, params, *args)
    return terms.loss, terms

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  @jax.jit
  def update(state: RunState):
    key, roll_key, *epoch_keys = jax.random.split(state.key, 2 + cfg.epochs)
    carry, cores, steps = rollout(setup, state.params, state.carry, roll_key)
    _, _, last_value = setup.agent.apply({"params": state.params}, carry.core, carry.obs,
                                         carry.reset)
    adv, returns = ppo.gae(steps.reward, steps.value, steps.done, last_value, cfg.gamma,
                           cfg.gae_lambda)

    def minibatch(train, batch):
      params, opt_state = train
      (_, terms), grads = grad_fn(params, cores, steps, adv, returns, *batch)
      updates, opt_state = setup.optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), (
          terms, _norm(grads))

    train = (state.params, state.opt_state)
    logs = []
    for epoch, epoch_key in enumerate(epoch_keys):
      train, log = jax.lax.scan(minibatch, train, _windows(cfg, epoch % 2 == 1, epoch_key))
      logs.append(log)
    terms, grad_norm = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a).mean(), *logs)
    episodes = steps.done.sum()
    per_episode = lambda a: a.sum() / jnp.maximum(episodes, 1)
    metrics = {
        "episodes": episodes, "return": per_episode(steps.finished_return),
        "success": per_episode(steps.success), "length": per_episode(steps.finished_length),
        "value": steps.value.mean(), "grad_norm": grad_norm,
        **{k: v for k, v in terms._asdict().items()}}
    return RunState(*train, carry, key), metrics

  return update


def first_episodes(steps: Step) -> dict:
  """Success, return and length of each environment's first episode [n] (time-major input)."""
  first = jnp.argmax(steps.done, axis=0)  # index of the first finished step
  cols = jnp.arange(first.shape[0])
  finished = steps.done[first, cols]
  return {"finished": finished, "success": steps.success[first, cols] & finished,
          "return": steps.finished_return[first, cols], "length": steps.finished_length[first, cols]}


def holds_first_state(core: Any, state) -> jax.Array | None:
  """[n]: whether the memory of the core state ``state`` still holds the state
  stored at time 0 (for each environment's first episode of a fresh carry: the
  state that saw the episode's first observation); None for a core without a
  time-indexed memory (LSTM, GRU, LRU, memax's)."""
  if not isinstance(core, models.ModelConfig) or not isinstance(state, models.State):
    return None
  memory = memories.of(core)
  if memory is None:
    return None
  return jnp.any(memory.slot_time(state.memory) == 0, axis=1)


def make_evaluate(setup: Setup):
  """Scores the policy on ``eval_episodes`` fresh episodes, one per environment,
  each run to its end (the episode limit bounds the rollout), actions sampled.
  For a core with an attended memory it also tells whether the episode's first
  state was still in the memory at the last action (MemoryChain's query)."""
  n = setup.config.eval_episodes

  split = setup.env.split
  core = setup.agent.core
  watch = None
  if holds_first_state(core, rl_agent.initial_state(core, 1, setup.capacity)) is not None:
    watch = functools.partial(holds_first_state, core)

  @jax.jit
  def evaluate(params, key):
    env_key, roll_key = jax.random.split(key)
    carry = initial_carry(setup, env_key, n)
    _, _, steps = rollout(setup, params, carry, roll_key, setup.env.max_episode_steps,
                          keep_cores=False, watch=watch)
    steps, watched = steps if watch is not None else (steps, None)
    out = first_episodes(steps)
    if watched is not None:  # at each environment's last step of its first episode
      out["first_kept"] = watched[jnp.argmax(steps.done, axis=0), jnp.arange(n)]
    if split is not None:
      out["split"] = jax.vmap(split.test)(carry.env, carry.obs)
    return out

  def run(params, key) -> dict:
    out = jax.device_get(evaluate(params, key))
    if not out["finished"].all():
      raise RuntimeError("an evaluation episode outlived the environment's step limit")
    record = {"episodes": n, "success": float(out["success"].mean()),
              "return": float(out["return"].mean()), "length": float(out["length"].mean())}
    if split is not None:
      record["by_start"] = {
          name: {"episodes": int(part.sum()),
                 "success": float(out["success"][part].mean()) if part.any() else None}
          for name, part in ((split.holds, out["split"]), (split.fails, ~out["split"]))}
    if "first_kept" in out:
      kept, won = out["first_kept"], out["success"]
      record["first_state_kept"] = {
          name: float(kept[part].mean()) if part.any() else None
          for name, part in (("all", np.ones_like(won)), ("success", won),
                             ("failure", ~won))}
    return record

  return run


def with_episodes(records: list[dict]) -> list[dict]:
  """The training records of updates in which an episode ended: the others have
  no success rate (they log 0)."""
  return [r for r in records if r.get("episodes", 1) > 0]


def plot(records: list[dict], path: pathlib.Path, title: str, chance: float | None = None):
  """Success rate, return and entropy against frames: each update's value (light)
  and a moving average over a twentieth of the run (dark); ``chance`` draws the
  success a memoryless policy gets."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  records = with_episodes(records)
  if not records:
    return
  frames = np.array([r["frames"] for r in records])
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
  for ax, key, label in zip(axes, ("success", "return", "entropy"),
                            ("success rate", "episode return", "policy entropy")):
    y = np.array([r[key] for r in records], float)
    ax.plot(frames, y, alpha=0.3, color="C0", label="each logged update",
            marker="o" if len(y) < 25 else None)
    w = max(1, len(y) // 20)
    if len(y) >= w:
      ax.plot(frames[w - 1:], np.convolve(y, np.ones(w) / w, mode="valid"), color="C0",
              label=f"mean of {w} logged updates")
    ax.set(xlabel="frames", ylabel=label)
  if chance is not None:
    axes[0].axhline(chance, color="gray", ls=":", lw=1, label="chance")
  axes[0].set(ylim=(-0.02, 1.02), title=title)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# Fields that reach a run as data (keys, loop bounds), not as part of the compiled update.
_NOT_IN_PROGRAM = ("seed", "frames", "log_every", "checkpoint_every", "eval_episodes")


def program_key(config) -> tuple:
  """What the compiled PPO update depends on: every field but ``_NOT_IN_PROGRAM``."""
  return tuple(sorted((k, v) for k, v in config.to_dict().items()
                      if k not in _NOT_IN_PROGRAM))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Trains (resuming from ``workdir``), evaluates the final policy, plots."""
  setup = build(config)
  frames_per_update = config.num_envs * config.frames_per_env
  updates = -(-config.frames // frames_per_update)
  with rundir.opened(workdir, config, RESUMABLE_FIELDS, initial_run_state(setup),
                     total=updates) as (path, state, start, manager, log):
    return _train(config, path, setup, state, start, manager, log, frames_per_update,
                  updates)


def _train(config, workdir, setup, state, start, manager, log, frames_per_update, updates):
  update = None
  if start < updates:
    update = train_lib.compile_cached(program_key(config), lambda: make_update(setup), state,
                                      what="PPO update")
  logging.info("%s on %s: %d updates of %d frames (%s)", config.model, setup.env.name,
               updates, frames_per_update,
               f"memory_length {config.memory_length}" if setup.env.name.startswith(
                   "MemoryChain") else f"episodes <= {setup.env.max_episode_steps} steps")
  t0 = block_start = time.perf_counter()
  block_frames = 0
  for u in range(start + 1, updates + 1):
    state, metrics = update(state)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not np.isfinite(metrics["loss"]):
      train_lib.stop_non_finite(manager, workdir, f"loss became {metrics['loss']} at update "
                                f"{u}, from the parameters after update {u - 1}", u - 1)
    block_frames += frames_per_update
    if u % config.log_every == 0 or u == updates:
      fps = block_frames / (time.perf_counter() - block_start)
      record = {"step": u, "frames": u * frames_per_update, "fps": fps, **metrics}
      log.write(record)
      logging.info("update %d/%d | frames %d | success %.3f | return %.3f | episodes %d | "
                   "entropy %.3f | %.0f frames/s | ETA %s", u, updates, record["frames"],
                   metrics["success"], metrics["return"], metrics["episodes"],
                   metrics["entropy"], fps,
                   train_lib._fmt_time((updates - u) * frames_per_update / fps))  # pylint: disable=protected-access
      block_frames, block_start = 0, time.perf_counter()
    if u % config.checkpoint_every == 0 or u == updates:
      if not train_lib.params_finite(state.params):
        train_lib.stop_non_finite(manager, workdir, f"the parameters became non-finite at "
                                  f"update {u}", u)
      rundir.save(manager, u, state)
  manager.wait_until_finished()
  evaluate = make_evaluate(setup)
  record = {"split": "eval", "step": updates, "frames": updates * frames_per_update,
            **evaluate(state.params, jax.random.PRNGKey(config.seed + 1)),
            "train_seconds": time.perf_counter() - t0}
  record = rundir.write_eval(workdir, record)
  logging.info("evaluation after %d frames: success %.3f over %d episodes, return %.3f",
               record["frames"], record["success"], record["episodes"], record["return"])
  for name, part in record.get("by_start", {}).items():
    logging.info("  %s: %d episodes, success %s", name, part["episodes"],
                 "-" if part["success"] is None else f"{part['success']:.3f}")
  if "first_state_kept" in record:
    kept = record["first_state_kept"]
    logging.info("  the episode's first state still in memory at its last step: %s",
                 ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in kept.items()))
  title = f"{config.model}, {setup.env.name}" + (
      f" (length {config.memory_length})" if setup.env.name.startswith("MemoryChain") else "")
  memory_task = setup.env.name.startswith(("MemoryChain", "MiniGrid-Memory"))
  plot(log.read(), workdir / "curves.png", title, 0.5 if memory_task else None)
  return record
