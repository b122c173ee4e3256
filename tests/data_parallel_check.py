"""Run in a fresh process with 8 emulated CPU devices (see test_data_parallel.py):
the data-parallel loss, gradients and training updates (each device's part of
the batch through the custom reverse pass) equal the single-device ones.

In float64: the sharded run sums the batch in another order, so in float32 the
two differ by rounding that depends on the CPU's kernels; in float64 they agree
to ~1e-13 on any machine and the tolerances can be tight."""

import os
import re
import sys

# Added to the test session's flags (tests/conftest.py: fast compilation).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

import relscreen as rs
from relscreen import parallel
from relscreen_experiments import train


def main():
  jax.config.update("jax_enable_x64", True)
  assert len(jax.devices()) == 8, jax.devices()
  mesh = parallel.batch_mesh()
  task = rs.CopyTask(6)
  cfg = rs.model_config("RelRNN", task.input_size, hidden=16, nu=3, rho=2)
  model = rs.SequenceModel(cfg, task.num_classes)
  batch = task.batch(jax.random.PRNGKey(0), 16)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                  model.init(jax.random.PRNGKey(1), batch.x)["params"])
  assert batch.x.dtype == jnp.float64
  grad_fn = jax.value_and_grad(train.make_loss_fn(model, task), has_aux=True)
  (loss1, _), grads1 = jax.jit(grad_fn)(params, batch)
  sharded = parallel.shard_batch(batch, mesh)
  assert len(sharded.x.sharding.device_set) == 8
  # Each device's part through the custom reverse pass, averaged once.
  split = jax.jit(parallel.data_parallel(grad_fn, mesh))
  (loss8, _), grads8 = split(parallel.replicate(params, mesh), sharded)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-12)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10,
                                                                 atol=1e-13),
                         grads8, grads1)
  # Three training updates with the batch made inside jit and split there.
  opt = rs.make_optimizer("rmsprop", 1e-3)
  state = train.TrainState(params, opt.init(params))
  one = train.make_train_step(model, task, opt, 16)
  s1, s8 = state, parallel.replicate(state, mesh)
  eight = train.make_train_step(model, task, opt, 16, mesh).lower(
      s8, jax.random.PRNGKey(0), np.float32(1.0)).compile()
  # The devices exchange only the averaged outputs: one all-reduce, nothing else.
  collectives = re.findall(
      r" (all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)[-a-z]*\(",
      eight.as_text())
  # (XLA combines the all-reduces of one dtype; the float32 task masks make the
  # memoryless baseline float32 beside the float64 rest, hence at most two.)
  assert set(collectives) == {"all-reduce"} and len(collectives) <= 2, collectives
  for i in range(3):
    s1, l1, _, _ = one(s1, jax.random.PRNGKey(i), np.float32(1.0))
    s8, l8, _, _ = eight(s8, jax.random.PRNGKey(i), np.float32(1.0))
    np.testing.assert_allclose(l8, l1, rtol=1e-10)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9,
                                                                 atol=1e-12),
                         s8.params, s1.params)
  print("data parallel ok")


if __name__ == "__main__":
  sys.exit(main())
