"""Initialisers of ALGORITHM §4, written for the kernels Flax stores (``x @ kernel``).

A torch ``Linear`` weight ``W`` [out, in] computes ``x W^T``; our kernels are
``W^T``. Each function has Flax's initializer signature ``(key, shape, dtype)``.
"""

import enum
import math

import jax
import jax.numpy as jnp
import numpy as np


class RecurrentInit(enum.Enum):
  """Initialisers for the recurrent kernel ``V``."""

  HENAFF = "henaff"
  CAYLEY = "cayley"
  RANDOM = "random"
  XAVIER = "xavier"
  KAIMING = "kaiming"
  IDENTITY = "identity"


class InputInit(enum.Enum):
  """Initialisers for the input kernel ``U``."""

  XAVIER = "xavier"
  KAIMING = "kaiming"


def rotation_blocks(theta: jax.Array, size: int, dtype=jnp.float32) -> jax.Array:
  """Block-diagonal kernel of 2x2 rotations (plus a trailing 1 when size is odd).

  In torch's layout each block is ``[[cos, sin], [-sin, cos]]``; the kernel we
  store is its transpose, ``[[cos, -sin], [sin, cos]]``.
  """
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  blocks = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
  kernel = jax.scipy.linalg.block_diag(*blocks) if theta.shape[0] else jnp.zeros((0, 0))
  if size % 2:
    kernel = jax.scipy.linalg.block_diag(kernel, jnp.ones((1, 1)))
  return kernel.astype(dtype)


def henaff(key, shape, dtype=jnp.float32):
  """Rotation blocks with ``theta ~ U(-pi, 0)`` (Henaff et al. 2016)."""
  theta = jax.random.uniform(key, (shape[0] // 2,), minval=-math.pi, maxval=0.0)
  return rotation_blocks(theta, shape[0], dtype)


def cayley(key, shape, dtype=jnp.float32):
  """Rotation blocks with ``theta = -tan(u / 2)``, ``u ~ U(0, pi/2)``."""
  u = jax.random.uniform(key, (shape[0] // 2,), minval=0.0, maxval=math.pi / 2)
  return rotation_blocks(-jnp.tan(u / 2), shape[0], dtype)


def random_rotation(key, shape, dtype=jnp.float32):
  """A random rotation: QR of a Gaussian, columns signed by Q's diagonal, det > 0.

  The reference redraws until det > 0; flipping the first column instead maps the
  det < 0 half onto SO(n) with the same (Haar) distribution, without a loop.
  """
  q, _ = jnp.linalg.qr(jax.random.normal(key, shape, jnp.float32))
  q = q * jnp.sign(jnp.diag(q))[None, :]
  flip = jnp.where(jnp.linalg.det(q) < 0, -1.0, 1.0)
  q = q.at[:, 0].multiply(flip)
  return q.T.astype(dtype)


def normal(std: float):
  """``N(0, std^2)``."""
  return lambda key, shape, dtype=jnp.float32: std * jax.random.normal(key, shape, dtype)


def uniform(bound: float):
  """``U(-bound, bound)`` (torch's default Linear init uses ``1/sqrt(fan_in)``)."""
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


def identity(key, shape, dtype=jnp.float32):
  del key
  return jnp.eye(shape[0], shape[1], dtype=dtype)


def recurrent(kind: RecurrentInit, hidden: int):
  """The initializer for the recurrent kernel ``V`` [h, h]."""
  return {
      RecurrentInit.HENAFF: henaff,
      RecurrentInit.CAYLEY: cayley,
      RecurrentInit.RANDOM: random_rotation,
      RecurrentInit.XAVIER: normal(math.sqrt(1.0 / hidden)),
      RecurrentInit.KAIMING: normal(math.sqrt(2.0 / hidden)),
      RecurrentInit.IDENTITY: identity,
  }[kind]


def input_kernel(kind: InputInit, fan_in: int, fan_out: int):
  """The initializer for the input kernel ``U`` [i, h]."""
  if kind is InputInit.XAVIER:
    return normal(math.sqrt(2.0 / (fan_in + fan_out)))
  return normal(math.sqrt(2.0 / fan_in))


def xavier(fan_in: int, fan_out: int):
  """Xavier normal ``N(0, 2 / (fan_in + fan_out))``."""
  return normal(math.sqrt(2.0 / (fan_in + fan_out)))


def torch_bias(fan_in: int):
  """torch's default bias init ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
  return uniform(1.0 / math.sqrt(fan_in))


def is_orthogonal(kernel, atol: float = 1e-5) -> bool:
  """True when ``kernel^T kernel`` is the identity (a plain NumPy check)."""
  k = np.asarray(kernel, np.float64)
  return bool(np.allclose(k.T @ k, np.eye(k.shape[1]), atol=atol))
