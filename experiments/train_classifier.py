"""The epoch-based training loop for sequence classification (s/pMNIST, digits).

The classifier reads the last hidden state. Each epoch shuffles the training
set with a permutation that depends only on (seed, epoch), so a resumed run is
the same run; after each epoch the validation accuracy decides the best
parameters, and the test set is evaluated once, on the best, at the end.
Writes config.json, metrics.jsonl (one record per epoch), checkpoints/,
eval.json and curves.png to the work directory.
"""

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


class Shapes(NamedTuple):
  input_size: int
  num_classes: int


class Progress(NamedTuple):
  """What a checkpoint holds besides the training state."""

  state: train.TrainState
  best_params: Any
  best_val_accuracy: jax.Array


def _loss(model, params, x, y):
  logits, _, _ = model.apply({"params": params}, x)
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
  return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def make_steps(model, optimizer):
  @jax.jit
  def train_step(state: train.TrainState, x, y):
    (loss, acc), grads = jax.value_and_grad(
        lambda p: _loss(model, p, x, y), has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return train.TrainState(optax.apply_updates(state.params, updates), opt_state), loss, acc

  @jax.jit
  def eval_step(params, x, y):
    return _loss(model, params, x, y)

  return train_step, eval_step


def evaluate(eval_step, params, x, y, batch_size: int) -> dict:
  """Mean loss and accuracy over a whole split, weighting each chunk by its size."""
  losses, accs, sizes = [], [], []
  for i in range(0, len(x), batch_size):
    loss, acc = eval_step(params, x[i:i + batch_size], y[i:i + batch_size])
    losses.append(float(loss))
    accs.append(float(acc))
    sizes.append(len(x[i:i + batch_size]))
  return {"loss": float(np.average(losses, weights=sizes)),
          "accuracy": float(np.average(accs, weights=sizes))}


def train_and_evaluate(config, workdir, splits) -> dict:
  """Trains for ``config.epochs`` epochs (resuming when possible); returns eval.json."""
  model = train.build_model(config, Shapes(splits.train_x.shape[-1], 10), last_only=True)
  state, optimizer, _ = train.init_state(config, None, model, splits.train_x[:1])
  with rundir.opened(workdir, config, train.RESUMABLE_FIELDS + ("max_batches",),
                     Progress(state, state.params, jnp.array(-1.0)), "epoch", config.epochs,
                     "epochs") as (path, progress, start, manager, log):
    return _train(config, path, splits, model, optimizer, progress, start, manager, log)


def _train(config, workdir, splits, model, optimizer, progress, start, manager, log):
  train_step, eval_step = make_steps(model, optimizer)
  n, bs = len(splits.train_x), config.batch
  batches = n // bs if not config.max_batches else min(n // bs, config.max_batches)
  if start < config.epochs:
    train_step = train.compile_step(train_step, progress.state, splits.train_x[:bs],
                                    splits.train_y[:bs])
  t0 = time.perf_counter()
  for epoch in range(start + 1, config.epochs + 1):
    order = np.random.RandomState([config.seed, epoch]).permutation(n)
    state, losses, accs, e0 = progress.state, [], [], time.perf_counter()
    for i in range(batches):
      idx = order[i * bs:(i + 1) * bs]
      state, loss, acc = train_step(state, splits.train_x[idx], splits.train_y[idx])
      losses.append(float(loss))
      accs.append(float(acc))
      if not math.isfinite(losses[-1]):
        train.stop_non_finite(manager, workdir, f"loss became {losses[-1]} in epoch {epoch}, "
                              f"batch {i + 1}", epoch, "epoch")
      if (i + 1) % config.log_every == 0 and i + 1 < batches:
        rate = (i + 1) / (time.perf_counter() - e0)
        logging.info("epoch %d batch %d/%d | train loss %.4f acc %.2f%% | %.2f batches/s | "
                     "epoch ETA %s", epoch, i + 1, batches,
                     np.mean(losses[-config.log_every:]),
                     100 * np.mean(accs[-config.log_every:]), rate,
                     train._fmt_time((batches - i - 1) / rate))  # pylint: disable=protected-access
    val = evaluate(eval_step, state.params, splits.val_x, splits.val_y,
                   config.eval_batch_size)
    better = val["accuracy"] > float(progress.best_val_accuracy)
    progress = Progress(state, state.params if better else progress.best_params,
                        jnp.array(max(val["accuracy"], float(progress.best_val_accuracy))))
    seconds = time.perf_counter() - e0
    log.write({"epoch": epoch, "step": epoch, "train_loss": float(np.mean(losses)),
               "train_accuracy": float(np.mean(accs)), "val_loss": val["loss"],
               "val_accuracy": val["accuracy"],
               "best_val_accuracy": float(progress.best_val_accuracy), "seconds": seconds})
    logging.info("epoch %d/%d | train loss %.4f acc %.2f%% | val acc %.2f%% (best %.2f%%) "
                 "| %.1fs/epoch | ETA %s", epoch, config.epochs, np.mean(losses),
                 100 * np.mean(accs), 100 * val["accuracy"],
                 100 * float(progress.best_val_accuracy), seconds,
                 train._fmt_time((config.epochs - epoch) * seconds))
    rundir.save(manager, epoch, progress)
  manager.wait_until_finished()
  test = evaluate(eval_step, progress.best_params, splits.test_x, splits.test_y,
                  config.eval_batch_size)
  records = log.read()
  best = max(records, key=lambda r: r["val_accuracy"]) if records else {}
  result = {"best_epoch": best.get("epoch"), "best_val_accuracy":
            float(progress.best_val_accuracy), "test_accuracy": test["accuracy"],
            "test_loss": test["loss"], "train_seconds": time.perf_counter() - t0}
  result = rundir.write_eval(workdir, result)
  logging.info("best validation accuracy %.2f%% (epoch %s); test accuracy %.2f%%",
               100 * result["best_val_accuracy"], result["best_epoch"],
               100 * result["test_accuracy"])
  if records:
    train.plot_epochs(records, workdir / "curves.png", f"{config.model}, {'permuted' if config.permute else 'sequential'} "
                      f"{'MNIST' if config.dataset == 'mnist' else '8x8 digits'}",
                      (("train_accuracy", "train"), ("val_accuracy", "validation")),
                      "accuracy (%)", scale=100.0)
  return result
