"""The supervised training loop shared by the binaries.

``train_and_evaluate(config, workdir, task)`` trains ``config.model`` on fresh
batches drawn from ``task``, and writes to ``workdir``:
  config.json     the run's configuration (a rerun must agree with it)
  metrics.jsonl   one JSON record per ``log_every`` updates
  checkpoints/    Orbax checkpoints (params, optimiser state); reruns resume
  eval.json       held-out evaluation at the end
  curves.png      loss (relative to the memoryless baseline) and accuracy
Batches are a pure function of (seed, step), so a resumed run is the same run.
"""

import collections
import dataclasses
import functools
import json
import math
import pathlib
import time
from typing import Any, Callable, NamedTuple, Protocol

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from relscreen_experiments import memax_peers
from relscreen_experiments import rundir
from relscreen_experiments.configs import common
import relscreen as rs
from relscreen import parallel as rs_parallel

# The work-directory pieces, under the names the binaries have always used.
MetricsLog = rundir.MetricsLog
WorkdirError = rundir.WorkdirError

# Fields that may change between a run and its resumption; all others must match.
RESUMABLE_FIELDS = ("steps", "epochs", "log_every", "checkpoint_every", "eval_batches",
                    "eval_batch_size", "diag_every", "data_parallel")


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


class Task(Protocol):
  input_size: int
  num_classes: int  # outputs of the head

  def batch(self, key: jax.Array, batch: int) -> rs.Batch: ...
  def metrics(self, logits: jax.Array, batch: rs.Batch) -> tuple[jax.Array, tuple]: ...


class TrainState(NamedTuple):
  params: Any
  opt_state: Any


@dataclasses.dataclass
class Metrics:
  """Loss, loss relative to the memoryless baseline, and accuracy (recall steps)."""

  step: int
  loss: float
  rel_loss: float
  accuracy: float

  def line(self) -> str:
    return (f"loss {self.loss:.4f} ({self.rel_loss:.3f}x memoryless) | "
            f"accuracy {100 * self.accuracy:.1f}%")


def composable_options(config) -> dict:
  """The relevance / eviction / layers / custom_vjp fields of a run's config (their
  paper values where an older config.json lacks them)."""
  return {k: config.get(k, common.LATER_FIELDS[k]) for k in common.MODEL_FIELDS}


def lr_scale(config, update: int, decay_from: int | None = None) -> float:
  """The factor on the learning rate at ``update`` (1-based): 1 up to the decay's
  start, then halving every ``lr_half_life`` updates, smoothly; 1 throughout when
  ``lr_half_life`` is 0 (or absent, in an older config). The decay starts at
  ``decay_from``, ``decay_start``'s answer; by default its answer before any
  record: ``lr_decay_from``, or no decay yet with ``lr_decay_at_accuracy``.

  It multiplies the optimiser's output (RMSprop's and Adam's step are
  proportional to the learning rate), so the optimiser state, and a checkpoint,
  look the same with or without a schedule, and the factor is a function of the
  update and the logged records alone: a resumed run takes the same steps."""
  half_life = config.get("lr_half_life", 0)
  start = decay_start(config, []) if decay_from is None else decay_from
  if not half_life or start is None:
    return 1.0
  return 0.5 ** (max(0, update - start) / half_life)


def decay_start(config, records) -> int | None:
  """With ``lr_decay_at_accuracy`` = a: the update of the first training record at
  or after ``lr_decay_from`` whose accuracy is at least a (None before one);
  without, ``lr_decay_from``. Read from the metrics log, so a resumed run (whose
  log holds the records up to its checkpoint) restarts the decay where it was."""
  threshold = config.get("lr_decay_at_accuracy", 0.0)
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f"--lr_decay_at_accuracy={threshold} must be in [0, 1]")
  if not threshold:
    return config.get("lr_decay_from", 0)
  return next((r["step"] for r in records if r.get("split") == "train"
               and r["step"] >= config.get("lr_decay_from", 0)
               and r["accuracy"] >= threshold), None)


def build_model(config: ml_collections.ConfigDict, task: Task, last_only: bool = False,
                diagnostics: bool = False):
  """The one place where a run's config becomes a model: a relscreen model with
  ``--block``'s readout (``SequenceModel``, or ``ResidualSequenceModel`` for
  ``residual``), or, for the ``memax:*`` names, a memax model (see ``memax_peers``;
  memax's models always have the residual block)."""
  if memax_peers.is_memax(config.model):
    if config.get("diag_every", 0) > 0 or diagnostics:
      raise ValueError(f"--diag_every needs a relscreen model, not {config.model}: the "
                       "gradient diagnostics probe a relscreen core's hidden states")
    memax_peers.check(config.model)
    return memax_peers.MemaxSequenceModel(config.model, config.hidden, task.num_classes,
                                          config.get("layers", 1), last_only)
  if config.get("layers", 1) > 1 and config.get("diag_every", 0) > 0:
    raise ValueError("--diag_every needs --layers=1: the gradient diagnostics probe one "
                     "layer's hidden states")
  model_config = rs.model_config(
      config.model, task.input_size, hidden=config.hidden, phi=config.phi, nu=config.nu,
      rho=config.rho, k=config.k, attn=config.attn if "RNN" in config.model else 1.0,
      r_init=config.r_init, i_init=config.i_init, remat_chunk=config.remat_chunk,
      diagnostics=diagnostics, **composable_options(config))
  return rs.BLOCKS[config.get("block", "linear")](model_config, task.num_classes, last_only)


def make_loss_fn(model, task) -> Callable:
  """``(params, batch) -> (loss, (accuracy, memoryless loss of the batch))``."""
  def loss_fn(params, batch: rs.Batch):
    logits, _, _ = model.apply({"params": params}, batch.x)
    return task.metrics(logits, batch)
  return loss_fn


def make_train_step(model, task, optimizer, batch_size: int, mesh=None):
  """The jitted update ``(state, key, lr_scale) -> (state, loss, aux, applied)``;
  the optimiser's step is multiplied by ``lr_scale`` (a float32 scalar: see
  ``lr_scale``). With a ``mesh``, each batch is split over its devices
  (data parallelism; the state must be replicated on the mesh): every device
  computes the gradients of its part, then they are averaged.

  An update whose gradient is not finite is skipped (``applied`` false: the
  parameters and the optimiser's state stay as they were). Exploding gradients
  at long delays can overflow float32 (seen on copy T = 1000: cotangents grew
  by about 1.3x a step to 1e37 and past float32's 3e38); clipping cannot rescue
  an infinite element, and inf * 0 would make every parameter NaN."""
  loss_fn = make_loss_fn(model, task)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if mesh is not None:
    grad_fn = rs_parallel.data_parallel(grad_fn, mesh)

  @jax.jit
  def train_step(state: TrainState, key, lr_scale):
    batch = task.batch(key, batch_size)
    if mesh is not None:
      batch = rs_parallel.constrain_batch(batch, mesh)
    (loss, aux), grads = grad_fn(state.params, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    updates = jax.tree_util.tree_map(lambda u: u * lr_scale.astype(u.dtype), updates)
    new = TrainState(optax.apply_updates(state.params, updates), opt_state)
    applied = _all_finite(grads)
    new = jax.tree_util.tree_map(lambda n, o: jnp.where(applied, n, o), new, state)
    return new, loss, aux, applied

  return train_step


# Compiled update steps of this process, by what determines the program: a
# sweep that trains one configuration over several seeds, or a rerun in the same
# process, traces, lowers and compiles it once.
_COMPILED_STEPS: collections.OrderedDict = collections.OrderedDict()
_COMPILED_STEPS_KEPT = 8


def compile_cached(program_key, make_step: Callable, *args, what: str = "update step"):
  """``compile_step(make_step(), *args)``, reused within the process when
  ``program_key`` (hashable: everything the program bakes in, seeds and step
  counts excluded since they arrive as arguments) and the shapes and dtypes of
  ``args`` match an earlier call."""
  avals = tuple((a.shape, str(a.dtype)) for a in jax.tree_util.tree_leaves(args))
  key = (program_key, jax.tree_util.tree_structure(args), avals, jax.config.jax_enable_x64)
  if key in _COMPILED_STEPS:
    _COMPILED_STEPS.move_to_end(key)
    logging.info("%s already compiled in this process", what)
    return _COMPILED_STEPS[key]
  compiled = compile_step(make_step(), *args, what=what)
  _COMPILED_STEPS[key] = compiled
  while len(_COMPILED_STEPS) > _COMPILED_STEPS_KEPT:
    _COMPILED_STEPS.popitem(last=False)
  return compiled


def compiled_train_step(config, model, task, optimizer, state, key, mesh=None):
  """``make_train_step`` compiled for ``(state, key, lr_scale)``. The program
  depends on the model and task (hashable, equal by value), the optimiser's
  settings, the batch and the devices."""
  program = (model, task, config.optimizer, config.lr, config.alpha, config.clip,
             config.batch, None if mesh is None else tuple(mesh.devices.flat))
  return compile_cached(
      program, lambda: make_train_step(model, task, optimizer, config.batch, mesh),
      state, key, np.float32(1.0))


def make_diagnose(model, task, config, workdir: pathlib.Path, key, start: int):
  """A function ``(step, params)`` that appends one gradient-flow record to
  gradients.jsonl: ``||dL/dh_t||`` for every t and ``||dL/dV||``, for the task's
  diagnostic loss (the recall loss) on a fresh batch (ALGORITHM §7: an extra reverse pass, diagnostic steps only)."""
  log = MetricsLog(workdir / "gradients.jsonl", start)
  apply_fn = lambda p, x, pr: model.apply({"params": p}, x, probes=pr)[0]
  flow = jax.jit(lambda p, batch: rs.gradient_flow(apply_fn, p, model.config, batch,
                                                   task.diagnostic_loss, model.core_key))

  def diagnose(step: int, params):
    g = jax.device_get(flow(params, task.batch(jax.random.fold_in(key, step), config.batch)))
    log.write({"step": step, "recall_loss": float(g.loss),
               "recurrent_grad_norm": float(g.recurrent_norm),
               "hidden_grad_norms": [float(v) for v in g.hidden_norms]})
  return diagnose


@functools.lru_cache(maxsize=8)
def _jitted_loss(model, task, batch_size: int):
  """``(params, key) -> loss terms`` on the batch ``task.batch(key, batch_size)``,
  one program per (model, task, batch size) in this process (they compare by
  value). The batch is drawn inside: drawn op by op it would compile a dozen
  small programs per task (the batches are the same bits either way)."""
  loss_fn = make_loss_fn(model, task)
  return jax.jit(lambda params, key: loss_fn(params, task.batch(key, batch_size)))


def evaluate(model, task, params, key, batches: int, batch_size: int) -> dict:
  """Loss, loss / memoryless loss and recall accuracy over fresh held-out batches."""
  loss_fn = _jitted_loss(model, task, batch_size)
  results = jax.device_get([loss_fn(params, jax.random.fold_in(key, i))
                            for i in range(batches)])
  losses = np.array([r[0] for r in results])
  accs = np.array([r[1][0] for r in results])
  baselines = np.array([r[1][1] for r in results])
  return {"loss": float(losses.mean()), "rel_loss": float((losses / baselines).mean()),
          "accuracy": float(accs.mean())}


def plot_curves(records: list[dict], path: pathlib.Path, title: str):
  """Loss relative to the memoryless baseline (log scale) and recall accuracy."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  train = [r for r in records if r.get("split") == "train"]
  if not train:
    return
  steps = [r["step"] for r in train]
  marker = "o" if len(steps) < 25 else None  # a lone point shows
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
  ax1.semilogy(steps, [r["rel_loss"] for r in train], marker=marker)
  ax1.axhline(1.0, color="gray", ls="--", lw=1, label="memoryless")
  ax1.set(xlabel="update", ylabel="loss / memoryless loss", title=title)
  ax1.legend()
  ax2.plot(steps, [100 * r["accuracy"] for r in train], marker=marker)
  ax2.set(xlabel="update", ylabel="accuracy (%)", ylim=(0, 101))
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def init_params(module, key, *example_args):
  """``module``'s fresh parameters, without running its forward pass.

  ``example_args`` only give shapes and dtypes. Flax's ``lazy_init`` evaluates
  the forward abstractly, so no forward program is traced into XLA and compiled
  (``module.init`` compiles one, about a second per new configuration); the
  parameter initialisers run as ``init`` runs them, op by op, so the values are
  bit for bit those of ``module.init(key, *example_args)`` (checked by a test).
  """
  shapes = jax.eval_shape(lambda *args: args, *example_args)
  return module.lazy_init(key, *shapes)["params"]


def init_state(config, task, model, example_x=None) -> tuple[TrainState, Any, tuple]:
  """Fresh parameters and optimiser state; returns (state, optimizer, (data, eval) keys)."""
  optimizer = rs.make_optimizer(config.optimizer, config.lr, config.alpha, config.clip)
  init_key, data_key, eval_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  # Only its shape counts (init_params): drawn op by op it would compile a dozen programs.
  x = jax.eval_shape(lambda k: task.batch(k, 1).x, data_key) if example_x is None else example_x
  params = init_params(model, init_key, x)
  return TrainState(params, jax.jit(optimizer.init)(params)), optimizer, (data_key, eval_key)


def load_trained(workdir, task_fn) -> tuple[ml_collections.ConfigDict, Any, Any, int]:
  """Loads a finished or interrupted run: ``(config, model, params, update)``.

  ``task_fn(config)`` builds the task the run trained on (for shapes only).
  """
  workdir = pathlib.Path(workdir).absolute()
  path = workdir / "config.json"
  if not path.is_file():
    raise WorkdirError(f"{path} not found: the directory must be the --workdir of a "
                     "training run")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  if not (workdir / "checkpoints").is_dir():
    raise ValueError(f"{workdir / 'checkpoints'} not found: the run saved no checkpoint")
  task = task_fn(config)
  model = build_model(config, task)
  state, _, _ = init_state(config, task, model)
  # The newest checkpoint that restores (a damaged one is set aside, as on resume).
  state, step, manager = rundir.restore_latest(workdir, state)
  manager.close()
  if not step:
    raise WorkdirError(f"{workdir / 'checkpoints'} holds no checkpoint that restores")
  return config, model, state.params, step


def plot_epochs(records: list[dict], path: pathlib.Path, title: str, series, ylabel: str,
                scale: float = 1.0):
  """One line per ``(record key, label)`` in ``series`` against the epoch."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker  # pylint: disable=unused-import
  epochs = [r["epoch"] for r in records]
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  for key, label in series:
    ax.plot(epochs, [scale * r[key] for r in records], label=label,
            marker="o" if len(epochs) < 25 else None)  # a lone epoch shows
  ax.set(xlabel="epoch", ylabel=ylabel, title=title)
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _fmt_time(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  return f"{m}m{s:02d}s"


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jax.numpy.all(jax.numpy.stack([jax.numpy.all(jax.numpy.isfinite(a))
                                        for a in leaves]))


def params_finite(params) -> bool:
  """Whether every entry of every leaf is finite (one compiled reduction)."""
  return not jax.tree_util.tree_leaves(params) or bool(_all_finite(params))


# Updates with a non-finite gradient are skipped (``make_train_step``); this many in
# a row is not an overflow now and then but a run that cannot go on: it stops.
MAX_SKIPPED_IN_ROW = 50


def stop_non_finite(manager, workdir: pathlib.Path, what: str, bad_from: int,
                    unit: str = "update", hint: str = "try a lower --lr or --clip"):
  """Raises ``NonFiniteLossError`` once pending saves are written and the
  checkpoints from ``bad_from`` on (their parameters gave ``what``) are set aside
  in ``nonfinite_checkpoints/``; names the newest checkpoint left."""
  moved, kept = rundir.set_aside_from(manager, workdir, bad_from)
  where = workdir / "checkpoints"
  note = (f"; moved {', '.join(str(m) for m in moved)} (the parameters that gave it) out "
          "of the way" if moved else "")
  tail = (f"the last good checkpoint ({unit} {kept}) is kept in {where}" if kept else
          f"no checkpoint before that, so {where} holds none")
  raise NonFiniteLossError(f"{what}; stopped{note}: {tail}; {hint}")


class PartialBlocks:
  """The per-update values of a logging block cut by a checkpoint, saved beside
  it (``partial_blocks/<step>.json``), so a resumed run logs the block the
  uninterrupted run would have logged."""

  def __init__(self, workdir: pathlib.Path):
    self.dir = workdir / "partial_blocks"

  def save(self, step: int, block: dict, keep):
    """Saves ``block`` (if it holds any update) for checkpoint ``step``; drops
    the files of checkpoints no longer in ``keep``."""
    if block["loss"]:
      self.dir.mkdir(exist_ok=True)
      rundir.write_atomic(self.dir / f"{step}.json", json.dumps(block))
    for path in self.dir.glob("*.json") if self.dir.is_dir() else ():
      if path.stem.isdigit() and int(path.stem) not in set(keep) | {step}:
        path.unlink()

  def load(self, step: int) -> dict | None:
    path = self.dir / f"{step}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def compile_step(step_fn, *args, what: str = "update step"):
  """Compiles ``step_fn`` for ``args`` with a line before and after, so progress
  rates measure running, not compiling. Returns the compiled function."""
  logging.info("compiling the %s ...", what)
  t0 = time.perf_counter()
  compiled = step_fn.lower(*args).compile()
  logging.info("compiled in %.1fs", time.perf_counter() - t0)
  return compiled


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, task) -> dict:
  """Trains (resuming from ``workdir`` when it holds a checkpoint), evaluates, plots.

  Returns the held-out evaluation record. Raises ``NonFiniteLossError`` when the
  loss or the parameters stop being finite (checkpoints whose parameters gave it
  are set aside in ``nonfinite_checkpoints/``; earlier ones are kept), and
  ``WorkdirError`` for a work directory that cannot be used (in use, another
  configuration, a total below what is saved).
  """
  decay_start(config, [])  # a bad --lr_decay_at_accuracy is named before the workdir is touched
  model = build_model(config, task)
  state, optimizer, (data_key, eval_key) = init_state(config, task, model)
  with rundir.opened(workdir, config, RESUMABLE_FIELDS, state,
                     total=config.steps) as (path, state, start, manager, log):
    return _train_loop(config, path, task, model, optimizer, state, start, manager, log,
                       data_key, eval_key)


def _train_loop(config, workdir, task, model, optimizer, state, start, manager, log,
                data_key, eval_key):
  mesh = None
  if config.get("data_parallel", False):
    mesh = rs_parallel.batch_mesh()
    rs_parallel.check_divisible(config.batch, mesh, "--batch")
    state = rs_parallel.replicate(state, mesh)
    logging.info("data parallel over %d devices", mesh.devices.size)
  diag_every = config.get("diag_every", 0)
  if diag_every:
    diagnose = make_diagnose(model, task, config, workdir, jax.random.fold_in(eval_key, 1),
                             start)
    if start == 0:
      diagnose(0, state.params)
  if start < config.steps:
    train_step = compiled_train_step(config, model, task, optimizer, state,
                                     jax.random.fold_in(data_key, start + 1), mesh)

  decay_from = decay_start(config, log.read())
  blocks = PartialBlocks(workdir)
  block = {"loss": [], "rel": [], "acc": []}
  if start % config.log_every and start < config.steps:
    saved = blocks.load(start)
    if saved is None:
      logging.warning("no partial block saved with checkpoint %d: the record at update %d "
                      "will average updates %d-%d only", start,
                      min(config.steps, start - start % config.log_every + config.log_every),
                      start + 1, start - start % config.log_every + config.log_every)
    else:
      block = saved
  block_start = t0 = time.perf_counter()
  block_new = 0  # updates of this block run in this process (for the rate)
  skipped_in_row = 0
  for step in range(start + 1, config.steps + 1):
    state, loss, (acc, baseline), applied = train_step(
        state, jax.random.fold_in(data_key, step), np.float32(lr_scale(config, step, decay_from)))
    loss = float(loss)
    if not math.isfinite(loss):
      stop_non_finite(manager, workdir, f"loss became {loss} at update {step}, from the "
                      f"parameters after update {step - 1}", step - 1)
    skipped = not bool(applied)
    skipped_in_row = skipped_in_row + 1 if skipped else 0
    if skipped:
      logging.warning("update %d skipped: its gradient is not finite (float32 overflow); "
                      "the parameters stay as after update %d", step, step - 1)
    if skipped_in_row >= MAX_SKIPPED_IN_ROW:
      stop_non_finite(manager, workdir, f"the gradient was not finite for {skipped_in_row} "
                      f"updates in a row (updates {step - skipped_in_row + 1}-{step})",
                      step + 1)
    block["loss"].append(loss)
    block["rel"].append(loss / float(baseline))
    block["acc"].append(float(acc))
    block.setdefault("skipped", []).append(int(skipped))  # blocks saved before it had none
    block_new += 1
    if step % config.log_every == 0 or step == config.steps:
      m = Metrics(step, float(np.mean(block["loss"])), float(np.mean(block["rel"])),
                  float(np.mean(block["acc"])))
      rate = block_new / (time.perf_counter() - block_start)
      record = {"split": "train", **dataclasses.asdict(m), "steps_per_s": rate}
      if sum(block.get("skipped", [])):
        record["skipped"] = sum(block["skipped"])  # updates skipped for a non-finite gradient
      log.write(record)
      logging.info("update %d/%d | %s | %.1f updates/s | ETA %s", step, config.steps,
                   m.line(), rate, _fmt_time((config.steps - step) / rate))
      block = {"loss": [], "rel": [], "acc": []}
      block_new, block_start = 0, time.perf_counter()
      if decay_from is None and decay_start(config, [record]) is not None:
        decay_from = step
        logging.info("training accuracy %.1f%% >= --lr_decay_at_accuracy: the learning "
                     "rate halves every %d updates from update %d", 100 * m.accuracy,
                     config.lr_half_life, step)
    if diag_every and (step % diag_every == 0 or step == config.steps):
      diagnose(step, state.params)
    if step % config.checkpoint_every == 0 or step == config.steps:
      if not params_finite(state.params):
        stop_non_finite(manager, workdir, f"the parameters became non-finite at update "
                        f"{step}", step)
      blocks.save(step, block, manager.all_steps())
      rundir.save(manager, step, state)
  manager.wait_until_finished()

  record = {"split": "eval", "step": config.steps,
            **evaluate(model, task, state.params, eval_key, config.eval_batches,
                       config.eval_batch_size),
            "train_seconds": time.perf_counter() - t0}
  record = rundir.write_eval(workdir, record)
  log.scalars(record)
  logging.info("held-out evaluation at update %d: %s", config.steps,
               Metrics(config.steps, record["loss"], record["rel_loss"],
                       record["accuracy"]).line())
  plot_curves(log.read(), workdir / "curves.png", f"{config.model}, T={config.T}")
  return record
