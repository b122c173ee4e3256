"""``lax.scan`` with optional chunked rematerialisation.

With ``remat_chunk = c > 0`` the sequence is cut into chunks of ``c`` steps and
each chunk's forward pass is recomputed during the backward pass: only one carry
per chunk (plus one chunk's residuals) is kept, instead of every step's.
"""

import jax
import jax.numpy as jnp


def scan(step, carry, xs, remat_chunk: int = 0):
  """``jax.lax.scan(step, carry, xs)``, rematerialised per chunk when asked."""
  length = jax.tree_util.tree_leaves(xs)[0].shape[0]
  if remat_chunk <= 0 or remat_chunk >= length:
    return jax.lax.scan(step, carry, xs)
  n_chunks, rest = divmod(length, remat_chunk)
  head = jax.tree_util.tree_map(
      lambda x: x[:n_chunks * remat_chunk].reshape((n_chunks, remat_chunk) + x.shape[1:]), xs)

  @jax.checkpoint
  def chunk(c, xs_chunk):
    return jax.lax.scan(step, c, xs_chunk)

  carry, ys = jax.lax.scan(chunk, carry, head)
  ys = jax.tree_util.tree_map(lambda y: y.reshape((-1,) + y.shape[2:]), ys)
  if rest:
    tail = jax.tree_util.tree_map(lambda x: x[n_chunks * remat_chunk:], xs)
    carry, ys_tail = chunk(carry, tail)
    ys = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), ys, ys_tail)
  return carry, ys
