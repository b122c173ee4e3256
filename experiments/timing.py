"""Compiling and timing training steps side by side (used by the benchmark and the
sweep binaries; no flags here)."""

import time

import jax

from experiments import train
import relscreen as rs


def build(name: str, length: int, batch: int, hidden: int, nu: int, rho: int,
          remat_chunk: int) -> dict:
  """Compiled (train step, forward) for one model and length, with their inputs."""
  task = rs.CopyTask(length - 20)
  cfg = rs.model_config(name, task.input_size, hidden=hidden, nu=nu, rho=rho,
                        remat_chunk=remat_chunk)
  model = rs.SequenceModel(cfg, task.num_classes)
  x = task.batch(jax.random.PRNGKey(0), batch).x
  params = model.init(jax.random.PRNGKey(1), x)["params"]
  opt = rs.make_optimizer("rmsprop", 1e-3)
  state = train.TrainState(params, opt.init(params))
  step = train.make_train_step(model, task, opt, batch)
  step_c = step.lower(state, jax.random.PRNGKey(0)).compile()
  fwd = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
  fwd_c = fwd.lower(params, x).compile()
  return {"train": (step_c, (state, jax.random.PRNGKey(0))), "forward": (fwd_c, (params, x)),
          "remat_chunk": remat_chunk}


def time_round_robin(compiled: dict, repeats: int) -> dict:
  """Medians of ``repeats`` timed calls per entry, interleaved, after a warm-up each."""
  times = {n: [] for n in compiled}
  for n, (fn, args) in compiled.items():
    time_once(fn, args)
  for _ in range(repeats):
    for n, (fn, args) in compiled.items():
      times[n].append(time_once(fn, args))
  return times


def peak_gb(compiled) -> float:
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes) / 2**30


def time_once(fn, args) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0
