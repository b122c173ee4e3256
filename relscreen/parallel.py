"""Data parallelism with ``jax.sharding``: the batch is split over a 1-D device
mesh, parameters and optimiser state are replicated; XLA inserts the gradient
all-reduce. Works the same on CPU devices, GPUs, or several processes (after
``jax.distributed.initialize``, ``jax.devices()`` spans every process).
"""

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


def check_divisible(batch: int, mesh: Mesh, what: str = "batch"):
  n = mesh.devices.size
  if batch % n:
    raise ValueError(f"{what}={batch} must be divisible by the {n} devices of the mesh")
