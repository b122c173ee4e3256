"""The epoch loop for character-level language modelling (char-PTB).

The corpus is cut into ``batch`` contiguous columns and read in non-overlapping
BPTT windows. The recurrent state is carried (without gradient) from window to
window; the attention memory of MemRNN/RelRNN is cleared at each window start
(the reference) unless ``carry_memory`` keeps it, which only a fixed-size
memory (RelRNN/RelLSTM) allows. After each epoch the validation bits per
character decide the best parameters; when they do not improve, the learning
rate is halved. The test set is evaluated once, on the best parameters.
"""

import json
import math
import time
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from relscreen_experiments import rundir
from relscreen_experiments import train
import relscreen as rs
from relscreen import datasets


class Progress(NamedTuple):
  state: train.TrainState
  best_params: Any
  best_val_bpc: jax.Array
  learning_rate: jax.Array


def build(config, vocab_size: int):
  model_config = rs.model_config(
      config.model, config.emsize, hidden=config.hidden, phi=config.phi, nu=config.nu,
      rho=config.rho, k=config.k, attn=config.attn if "RNN" in config.model else 1.0,
      r_init=config.r_init, i_init=config.i_init, remat_chunk=config.remat_chunk,
      **train.composable_options(config))
  if config.carry_memory and model_config.memory is rs.MemoryType.FULL:
    raise ValueError(f"--carry_memory needs a fixed-size memory (RelRNN/RelLSTM); "
                     f"{config.model} keeps every state")
  return rs.LanguageModel(model_config, vocab_size)


def make_optimizer(config):
  """The configured optimiser with an injectable learning rate (halved on plateaus)."""
  def opt(learning_rate):
    return rs.make_optimizer(config.optimizer, learning_rate, config.alpha, config.clip)
  return optax.inject_hyperparams(opt)(learning_rate=config.lr)


class Carry(NamedTuple):
  """What one window hands to the next: the whole state (``carry_memory``), or
  only ``h`` and the LSTM cell, from which the next window starts afresh."""

  state: Any
  h: jax.Array
  c: Any


def make_steps(model, optimizer, carry_memory: bool):
  def run(params, carry: Carry, x, y):
    if carry_memory:
      logits, outputs, final = model.apply({"params": params}, x, carry.state)
    else:
      logits, outputs, final = model.apply({"params": params}, x, h0=carry.h, c0=carry.c)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return loss, Carry(final if carry_memory else None, outputs["h"][:, -1], final.c)

  @jax.jit
  def train_step(train_state, carry, x, y):
    (loss, carry), grads = jax.value_and_grad(run, has_aux=True)(
        train_state.params, carry, x, y)
    updates, opt_state = optimizer.update(grads, train_state.opt_state, train_state.params)
    return (train.TrainState(optax.apply_updates(train_state.params, updates), opt_state),
            carry, loss)

  return train_step, jax.jit(run)


def initial_carry(model, batch: int, carry_memory: bool) -> Carry:
  """Zero state at the start of a split."""
  cfg = model.config
  zeros = jnp.zeros((batch, cfg.hidden))
  c = zeros if cfg.cell is rs.CellType.LSTM else None
  return Carry(rs.init_state(cfg, batch) if carry_memory else None, zeros, c)


def windows(data: np.ndarray, bptt: int, limit: int = 0):
  """(inputs, targets) windows of ``bptt`` columns; the last may be shorter."""
  starts = list(range(0, data.shape[1] - 1, bptt))
  for i in starts[:limit] if limit else starts:
    n = min(bptt, data.shape[1] - 1 - i)
    yield data[:, i:i + n], data[:, i + 1:i + 1 + n]


def evaluate(model, eval_step, params, data, config) -> float:
  """Bits per character over a whole split (state carried across windows)."""
  carry = initial_carry(model, data.shape[0], config.carry_memory)
  total, count = 0.0, 0
  for x, y in windows(data, config.bptt):
    loss, carry = eval_step(params, carry, x, y)
    total += float(loss) * x.size
    count += x.size
  return total / count / math.log(2)


def train_and_evaluate(config, workdir, splits: dict, vocab: list[str]) -> dict:
  """Trains for ``config.epochs`` epochs (resuming when possible); returns eval.json."""
  model = build(config, len(vocab))
  optimizer = make_optimizer(config)
  train_data = datasets.batchify(splits["train"], config.batch)
  val_data = datasets.batchify(splits["valid"], config.eval_batch_size)
  test_data = datasets.batchify(splits["test"], config.eval_batch_size)
  key = jax.random.PRNGKey(config.seed)
  params = train.init_params(model, key, train_data[:1, :2])
  state = train.TrainState(params, optimizer.init(params))
  progress = Progress(state, params, jnp.array(jnp.inf), jnp.array(config.lr, jnp.float32))
  with rundir.opened(workdir, config, train.RESUMABLE_FIELDS + ("max_windows",), progress,
                     "epoch", config.epochs, "epochs") as (path, progress, start, manager,
                                                           log):
    (path / "vocab.json").write_text(json.dumps(vocab) + "\n")
    return _train(config, path, model, optimizer, progress, start, manager, log,
                  train_data, val_data, test_data)


def _train(config, workdir, model, optimizer, progress, start, manager, log, train_data,
           val_data, test_data):
  train_step, eval_step = make_steps(model, optimizer, config.carry_memory)
  n_windows = math.ceil((train_data.shape[1] - 1) / config.bptt)
  if config.max_windows:
    n_windows = min(n_windows, config.max_windows)
  t0 = time.perf_counter()
  for epoch in range(start + 1, config.epochs + 1):
    opt_state = progress.state.opt_state
    train_state = progress.state._replace(opt_state=opt_state._replace(
        hyperparams={**opt_state.hyperparams, "learning_rate": progress.learning_rate}))
    carry = initial_carry(model, config.batch, config.carry_memory)
    losses, sizes, e0, done0 = [], [], time.perf_counter(), 0
    if epoch == start + 1:
      logging.info("compiling the training step (on the first window) ...")
    for i, (x, y) in enumerate(windows(train_data, config.bptt, config.max_windows)):
      if x.shape[1] < config.bptt:
        break  # a short last window would recompile for one step of data
      train_state, carry, loss = train_step(train_state, carry, x, y)
      losses.append(float(loss))
      sizes.append(x.size)
      if i == 0 and epoch == start + 1:
        # The first window compiled the step: rates count from the second on.
        logging.info("compiled; first window done in %.1fs", time.perf_counter() - e0)
        e0, done0 = time.perf_counter(), 1
      if not math.isfinite(losses[-1]):
        train.stop_non_finite(manager, workdir, f"loss became {losses[-1]} in epoch {epoch}, "
                              f"window {i + 1}", epoch, "epoch")
      if (i + 1) % config.log_every == 0:
        rate = (i + 1 - done0) / (time.perf_counter() - e0)
        logging.info("epoch %d window %d/%d | train bpc %.3f | %.2f windows/s | epoch ETA %s",
                     epoch, i + 1, n_windows, np.mean(losses[-config.log_every:]) / math.log(2),
                     rate, train._fmt_time((n_windows - i - 1) / rate))
    val_bpc = evaluate(model, eval_step, train_state.params, val_data, config)
    improved = val_bpc < float(progress.best_val_bpc)
    lr = float(progress.learning_rate) * (1.0 if improved else 0.5)
    progress = Progress(train_state, train_state.params if improved else progress.best_params,
                        jnp.array(min(val_bpc, float(progress.best_val_bpc))),
                        jnp.array(lr, jnp.float32))
    train_bpc = float(np.average(losses, weights=sizes)) / math.log(2)
    log.write({"epoch": epoch, "step": epoch, "train_bpc": train_bpc, "val_bpc": val_bpc,
               "best_val_bpc": float(progress.best_val_bpc), "next_lr": lr,
               "seconds": time.perf_counter() - e0})
    logging.info("epoch %d/%d | train bpc %.3f | val bpc %.3f (best %.3f) | next lr %.2g",
                 epoch, config.epochs, train_bpc, val_bpc, float(progress.best_val_bpc), lr)
    rundir.save(manager, epoch, progress)
  manager.wait_until_finished()
  result = {"best_val_bpc": float(progress.best_val_bpc),
            "test_bpc": evaluate(model, eval_step, progress.best_params, test_data, config),
            "train_seconds": time.perf_counter() - t0}
  result = rundir.write_eval(workdir, result)
  logging.info("best validation bpc %.3f; test bpc %.3f", result["best_val_bpc"],
               result["test_bpc"])
  records = log.read()
  if records:
    train.plot_epochs(records, workdir / "curves.png", f"{config.model}, char-PTB",
                      (("train_bpc", "train"), ("val_bpc", "validation")),
                      "bits per character")
  return result

