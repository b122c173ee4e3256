"""Multi-process data-parallel training through ``jax.distributed`` (copy task).

Start one process per host (here: two on localhost), each with the same flags
except ``--process_id``. Every process joins the coordinator, the batch is split
over the devices of all processes (``relscreen.parallel``: parameters
replicated, each device's gradients averaged in one all-reduce) and every
process runs the same jitted update. At the end each process recomputes the
same updates alone, on its own first device, and reports the largest difference
between the two sets of parameters: the multi-process run is the single-device
run.

  relscreen-distributed --process_id=0 --num_processes=2 \\
      --coordinator=localhost:12355 --steps=200 &
  relscreen-distributed --process_id=1 --num_processes=2 \\
      --coordinator=localhost:12355 --steps=200

On CPU the processes talk through gloo (shipped with jaxlib); on GPUs through NCCL.
"""

import sys
import time

from absl import app
from absl import flags
from absl import logging

from relscreen_experiments import flags_lib

_COORDINATOR = flags.DEFINE_string("coordinator", "localhost:12355",
                                   "host:port of process 0's coordination service")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "processes taking part")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's rank, 0-based")
_MODEL = flags.DEFINE_string("model", "RelRNN", "registered model; RelRNN@autodiff "
                             "differentiates through the scan instead of the custom pass")
_T = flags.DEFINE_integer("T", 100, "copy-task delay")
_STEPS = flags.DEFINE_integer("steps", 200, "training updates")
_BATCH = flags.DEFINE_integer("batch", 10, "global batch (split over all devices)")
_HIDDEN = flags.DEFINE_integer("hidden", 128, "hidden units")
_SEED = flags.DEFINE_integer("seed", 100, "seed (must agree across processes)")
_LOG_EVERY = flags.DEFINE_integer("log_every", 50, "updates between progress lines")
_CHECK = flags.DEFINE_bool("check", True, "also run the updates on one device and compare")
flags.mark_flag_as_required("process_id")


def train(mesh=None):
  """``steps`` updates of the copy task; returns (params, list of losses)."""
  import jax  # pylint: disable=g-import-not-at-top
  import relscreen as rs  # pylint: disable=g-import-not-at-top
  from relscreen_experiments import timing  # pylint: disable=g-import-not-at-top
  from relscreen_experiments import train as train_lib  # pylint: disable=g-import-not-at-top
  from relscreen import parallel  # pylint: disable=g-import-not-at-top

  task = rs.CopyTask(_T.value)
  name, custom_vjp = timing.parse_model(_MODEL.value)
  model = rs.SequenceModel(rs.model_config(name, task.input_size, hidden=_HIDDEN.value,
                                           custom_vjp=custom_vjp), task.num_classes)
  key = jax.random.PRNGKey(_SEED.value)
  params = train_lib.init_params(model, key, task.batch(key, 1).x)
  optimizer = rs.make_optimizer("rmsprop", 1e-3, clip=1.0)
  state = train_lib.TrainState(params, optimizer.init(params))
  if mesh is not None:
    parallel.check_divisible(_BATCH.value, mesh, "--batch")
    state = parallel.replicate(state, mesh)
  step = train_lib.make_train_step(model, task, optimizer, _BATCH.value, mesh)
  losses = []
  for i in range(1, _STEPS.value + 1):
    state, loss, (acc, _), _ = step(state, jax.random.fold_in(key, i), 1.0)
    losses.append(float(loss))
    if i == 1:
      start = time.perf_counter()  # after compilation
    if mesh is not None and (i % _LOG_EVERY.value == 0 or i == _STEPS.value):
      logging.info("update %d/%d | loss %.4f | accuracy %.1f%% | %.1f ms per update "
                   "since the first", i, _STEPS.value, loss, 100 * float(acc),
                   1e3 * (time.perf_counter() - start) / max(i - 1, 1))
  return jax.device_get(state.params), losses


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value:
    print(f"error: --process_id={_PROCESS_ID.value} must be in [0, --num_processes="
          f"{_NUM_PROCESSES.value})", file=sys.stderr)
    sys.exit(1)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from relscreen import parallel  # pylint: disable=g-import-not-at-top

  jax.distributed.initialize(_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                             process_id=_PROCESS_ID.value)
  mesh = parallel.batch_mesh()
  logging.info("process %d of %d: %d local of %d devices in the mesh",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               mesh.devices.size)
  params, losses = train(mesh)
  if _CHECK.value:
    with jax.default_device(jax.local_devices()[0]):
      alone, alone_losses = train()
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(alone)))
    loss_diff = float(np.max(np.abs(np.array(losses) - np.array(alone_losses))))
    logging.info("process %d: max |params - single-device params| = %.3g, max |loss "
                 "difference| = %.3g over %d updates", jax.process_index(), diff,
                 loss_diff, _STEPS.value)
    print(f"process {jax.process_index()}: final loss {losses[-1]:.6f}, max param "
          f"difference from one device {diff:.3g}", flush=True)
  jax.distributed.shutdown()


def run():
  """Console-script entry point."""
  flags_lib.run_app(main)


if __name__ == "__main__":
  run()
