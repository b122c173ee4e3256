"""Data parallelism with ``jax.sharding``: the batch is split over a 1-D device
mesh, parameters and optimiser state are replicated. ``data_parallel`` runs the
gradient computation on each device's part of the batch (``jax.shard_map``) and
averages once, so nothing crosses devices inside the time loop. Works the same on
CPU devices, GPUs, or several processes (after ``jax.distributed.initialize``,
``jax.devices()`` spans every process).
"""

from collections.abc import Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXIS = "batch"


def batch_mesh(devices=None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all of them) along the batch axis."""
  devices = jax.devices() if devices is None else devices
  return Mesh(devices, (BATCH_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh, the rest whole."""
  return NamedSharding(mesh, P(BATCH_AXIS))


def replicate(tree, mesh: Mesh):
  """Places a pytree (parameters, optimiser state) whole on every device."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(tree, mesh: Mesh):
  """Places every leaf of a batch split along its leading axis."""
  return jax.device_put(tree, batch_sharded(mesh))


def constrain_batch(tree, mesh: Mesh):
  """Inside ``jit``: asks for a batch made there to be split along its leading axis."""
  return jax.lax.with_sharding_constraint(tree, batch_sharded(mesh))


def data_parallel(fn: Callable, mesh: Mesh) -> Callable:
  """``fn(params, batch)`` computed on each device's equal part of the batch, its
  outputs averaged over the devices.

  For functions whose outputs are means over the batch rows (a loss, metrics, and
  their gradients): the average of the parts' means is the whole batch's mean.
  Each device runs ``fn`` as written, custom reverse passes included, and the
  only exchange is one all-reduce of the outputs.
  """
  # check_vma=False: the scans' fresh carries (zeros) are the same on every
  # device, their updates are not; the library's functions need not say so.
  return jax.shard_map(lambda params, batch: jax.lax.pmean(fn(params, batch), BATCH_AXIS),
                       mesh=mesh, in_specs=(P(), P(BATCH_AXIS)), out_specs=P(),
                       check_vma=False)


def check_divisible(batch: int, mesh: Mesh, what: str = "batch"):
  n = mesh.devices.size
  if batch % n:
    raise ValueError(f"{what}={batch} must be divisible by the {n} devices of the mesh")
