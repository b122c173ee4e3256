"""The full memory of MemRNN / MemLSTM: every stored state is attended (ALGORITHM §2).

A preallocated bank of ``capacity`` slots filled in order; its size is fixed for
a given sequence length, and attention costs O(capacity) per step.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class FullMemory(NamedTuple):
  vals: Array  # [b, m, h] stored states in order of storage
  keys: Array  # [b, m, h] cached keys Ua m_j
  time: Array  # [b, m] int32 time index of each state, -1 when empty
  count: Array  # [b] int32 number of stored states


def init(batch: int, hidden: int, capacity: int, dtype=jnp.float32) -> FullMemory:
  return FullMemory(jnp.zeros((batch, capacity, hidden), dtype),
                    jnp.zeros((batch, capacity, hidden), dtype),
                    jnp.full((batch, capacity), -1, jnp.int32),
                    jnp.zeros((batch,), jnp.int32))


def banks(mem: FullMemory):
  """The attended bank as ``(keys, values, valid)``."""
  return ((mem.keys, mem.vals, mem.time >= 0),)


def slot_time(mem: FullMemory) -> Array:
  return mem.time


def newest(mem: FullMemory) -> Array:
  idx = jnp.maximum(mem.count - 1, 0)
  return jnp.take_along_axis(mem.vals, idx[:, None, None], axis=1)[:, 0]


def store(mem: FullMemory, value: Array, key: Array, t: Array, do: Array) -> FullMemory:
  """Writes ``value`` [b, h] into the next free slot where ``do`` [b] (dropped when
  full): one slot per row, by scatter, which XLA does in place inside a scan or
  with the state donated (a select would rewrite the whole bank every step)."""
  b, capacity = mem.time.shape
  write = do & (mem.count < capacity)
  rows, cols = jnp.arange(b), jnp.where(write, mem.count, capacity)  # capacity: dropped

  def put(bank, new):
    return bank.at[rows, cols].set(new, mode="drop", unique_indices=True)

  return FullMemory(put(mem.vals, value), put(mem.keys, key),
                    put(mem.time, jnp.broadcast_to(jnp.asarray(t, jnp.int32), (b,))),
                    mem.count + write.astype(jnp.int32))
