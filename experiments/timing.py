"""Compiling and timing training steps side by side (used by the benchmark and the
sweep binaries; no flags here)."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from relscreen_experiments import memax_peers
from relscreen_experiments import train
import relscreen as rs


FLOOR = "attention-floor"  # not a model: the slot work RSM adds, alone (``attention_floor``)


def parse_model(spec: str) -> tuple[str, bool]:
  """``"RelRNN"``, ``"RelRNN@autodiff"`` (autodiff through the scan instead of the
  custom reverse pass) or ``"RelRNN@xla"`` (the custom pass without the CPU
  kernels of ``relscreen.kernels``) -> (registry name, custom_vjp); a memax model's name
  (``"memax:S6"``) -> (name, False); ``FLOOR`` -> (FLOOR, True)."""
  if spec == FLOOR:
    return spec, True
  if memax_peers.is_memax(spec):
    memax_peers.check(spec)
    return spec, False
  name, _, variant = spec.partition("@")
  if name not in rs.REGISTRY or variant not in ("", "autodiff", "xla"):
    raise ValueError(f"unknown model {spec!r}: a registered model ({', '.join(rs.REGISTRY)}), "
                     "optionally with @autodiff or @xla")
  return name, variant != "autodiff"


def streamed_models(specs) -> list[str]:
  """The model specs to stream: the streaming step has no reverse pass, so
  ``Model@autodiff`` streams as ``Model`` (once); ``Model@xla`` streams without
  the CPU kernels."""
  names = []
  for spec in specs:
    name = parse_model(spec)[0]
    if not memax_peers.is_memax(name) and name != FLOOR:
      names.append(spec if spec.endswith("@xla") else name)
  return list(dict.fromkeys(names))


def huge_page_mix_warning(specs, batch: int, environ) -> str | None:
  """Why this benchmark's ratios may mislead, or None: several models timed in
  one process at batch 64 or more with glibc's huge pages on (``GLIBC_TUNABLES``
  with ``glibc.malloc.hugetlb``, which the binaries set by default). There one
  model's step came out slower than it runs alone (the LSTM's 587-949 ms
  against 311-359 at batch 64, in a run with four other models; RESULTS)."""
  if batch < 64 or len(set(specs)) < 2 or not rs.allocator.huge_pages_on(environ):
    return None
  return (f"{len(set(specs))} models in one process at batch {batch} with glibc's huge "
          "pages: one model's step can come out slower than it runs alone (docs/RESULTS.md, "
          "\"glibc's huge pages by default\"); for ratios pass --reuse_memory or time one "
          "model per run")


def attention_floor(length: int, batch: int, hidden: int, slots: int, dtype=jnp.float32,
                    rows: int = 32):
  """The attention work a relevance-screened layer adds to its cell, and nothing
  else: ``length`` steps of additive attention over a fixed bank of ``slots``
  states, each step's query the previous step's context (so the steps run in
  sequence, as in the model), and the reverse pass the custom path runs for it
  (``attention.additive_attention_vjp_weighted`` per step, given the weights the
  forward kept, tanh recomputed; the slots' cotangents summed). No cell, no
  query or key products, no screening, no slot bookkeeping: the model's step
  can cost no less than its cell's plus this.

  The rows run in chunks of at most ``rows``, one after the other, each over
  the whole sequence: the reverse pass adds each step's cotangents into two
  bank-sized sums, read and written every step (3.2 MB each at batch 256), and
  chunks of 32 rows, whose sums stay in the core's cache, take 55% off the
  floor's step at batch 256 and 12% at 64 (docs/RESULTS.md); so the floor is a
  lower bound at large batches too. Rows are independent: the same results.

  Returns ``(forward, train, args)``: ``forward(*args)`` the last context and the
  queries and weights of every step ([length, b, h], [length, b, slots]);
  ``train(*args)`` the gradients of the last context's sum with respect to the
  first query, the keys and the values."""
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  q0 = jax.random.normal(k[0], (batch, hidden), dtype)
  keys, values = (jax.random.normal(kk, (batch, slots, hidden), dtype) for kk in k[1:3])
  v = jax.random.normal(k[3], (hidden,), dtype) / np.sqrt(hidden)

  def forward_rows(q0, keys, values):
    valid = jnp.ones(keys.shape[:2], bool)

    def body(q, _):
      attended = rs.additive_attention(q, keys, values, valid, v)
      return attended.context, (q, attended.alpha)
    return jax.lax.scan(body, q0, None, length=length)

  def train_rows(q0, keys, values):
    last, kept = forward_rows(q0, keys, values)

    def body(carry, kept_t):
      d_context, d_keys, d_values = carry
      q, alpha = kept_t
      dq, dk, dv, _, _ = rs.attention.additive_attention_vjp_weighted(q, keys, values, alpha,
                                                                      v, d_context)
      return (dq, d_keys + dk, d_values + dv), None

    zeros = jnp.zeros_like(keys)
    (dq0, d_keys, d_values), _ = jax.lax.scan(body, (jnp.ones_like(last), zeros, zeros),
                                              kept, reverse=True)
    return dq0, d_keys, d_values

  def by_rows(fn, axes):
    """``fn`` on each chunk of rows; its outputs joined on their batch ``axes``."""
    def run(*args):
      outs = [fn(*(a[i:i + rows] for a in args)) for i in range(0, batch, rows)]
      return jax.tree_util.tree_map(lambda axis, *o: jnp.concatenate(o, axis), axes, *outs)
    return run

  forward = by_rows(forward_rows, (0, (1, 1)))
  train = by_rows(train_rows, (0, 0, 0))
  return forward, train, (q0, keys, values)


def build(spec: str, length: int, batch: int, hidden: int, nu: int, rho: int,
          remat_chunk: int, block: str = "linear", **options) -> dict:
  """Compiled (train step, forward) for one model and length, with their inputs;
  ``options`` go to ``model_config`` (relevance and eviction rules, layers);
  ``block`` as the binaries' ``--block`` (ignored by memax models)."""
  name, custom_vjp = parse_model(spec)
  if spec.endswith("@xla"):
    options = {**options, "cpu_kernel": False}
  if name == FLOOR:
    forward, train_fn, args = attention_floor(length, batch, hidden, nu + rho)
    step_c, step_s = compile_timed(jax.jit(train_fn), *args)
    fwd_c, fwd_s = compile_timed(jax.jit(forward), *args)
    return {"train": (step_c, args), "forward": (fwd_c, args), "remat_chunk": 0,
            "compile_s": {"train": step_s, "forward": fwd_s}}
  task = rs.CopyTask(length - 20)
  if memax_peers.is_memax(name):
    model = memax_peers.MemaxSequenceModel(name, hidden, task.num_classes,
                                           options.get("layers", 1))
  else:
    cfg = rs.model_config(name, task.input_size, hidden=hidden, nu=nu, rho=rho,
                          remat_chunk=remat_chunk, custom_vjp=custom_vjp, **options)
    model = rs.BLOCKS[block](cfg, task.num_classes)
  x = task.batch(jax.random.PRNGKey(0), batch).x
  params = train.init_params(model, jax.random.PRNGKey(1), x)
  opt = rs.make_optimizer("rmsprop", 1e-3)
  state = train.TrainState(params, opt.init(params))
  step = train.make_train_step(model, task, opt, batch)
  one = np.float32(1.0)  # the learning-rate factor
  step_c, step_s = compile_timed(step, state, jax.random.PRNGKey(0), one)
  fwd = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
  fwd_c, fwd_s = compile_timed(fwd, params, x)
  return {"train": (step_c, (state, jax.random.PRNGKey(0), one)), "forward": (fwd_c, (params, x)),
          "remat_chunk": remat_chunk, "compile_s": {"train": step_s, "forward": fwd_s}}


def compile_timed(jitted, *args):
  """``jitted`` compiled for ``args``, and the seconds spent tracing and lowering
  it to XLA (``trace_s``) and in XLA's compiler (``compile_s``): what a run's first
  call pays before it computes anything. A persistent compilation cache
  (``JAX_COMPILATION_CACHE_DIR``) makes ``compile_s`` a cache read."""
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  return compiled, {"trace_s": t1 - t0, "compile_s": time.perf_counter() - t1}


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


def streaming(name: str, batch: int, hidden: int, nu: int, rho: int, steps: int = 200,
              repeats: int = 5, donate: bool = False) -> dict:
  """Latency of one jitted streaming ``step`` (median over ``steps`` calls, each
  waited for, in ``repeats`` rounds) and the resulting steps/s over all streams;
  ``donate``: the state donated to each call (``rs.step(..., donate=True)``);
  ``name`` a registry name, or one with ``@xla`` (without the CPU kernels)."""
  task = rs.CopyTask(10)
  cfg = rs.model_config(name.removesuffix("@xla"), task.input_size, hidden=hidden, nu=nu,
                        rho=rho, cpu_kernel=not name.endswith("@xla"))
  core = rs.RecurrentCore(cfg)
  x = task.batch(jax.random.PRNGKey(0), batch).x[:, 0]
  params = train.init_params(core, jax.random.PRNGKey(1), x[:, None])
  capacity = steps * (repeats + 1) + 1 if cfg.memory is rs.MemoryType.FULL else None
  state = rs.init_state(cfg, batch, capacity=capacity)
  step = jax.jit(lambda s, xt: rs.step(params, cfg, s, xt), donate_argnums=0 if donate else ())
  state, _ = jax.block_until_ready(step(state, x))
  latencies = []
  for _ in range(repeats):
    for _ in range(steps):
      t0 = time.perf_counter()
      state, out = jax.block_until_ready(step(state, x))
      latencies.append(time.perf_counter() - t0)
  median = sorted(latencies)[len(latencies) // 2]
  return {"model": name, "batch": batch, "donated": donate, "median_step_us": 1e6 * median,
          "stream_steps_per_s": batch / median}


def accuracy_at_time(curve, step_ms: float, budget_ms: float):
  """``(updates, accuracy)`` a run reaches within ``budget_ms`` of training at
  ``step_ms`` per update: the last logged block of ``curve`` (``(update,
  accuracy)`` pairs, each the block's mean over fresh batches) that ends within
  the budget; ``(updates, None)`` when none does."""
  updates = int(budget_ms // step_ms)
  reached = [acc for step, acc in curve if step <= updates]
  return updates, (reached[-1] if reached else None)
