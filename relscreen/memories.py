"""Memories as a declared interface: the one place that dispatches on the kind.

A ``Memory`` is a NamedTuple of pure functions over a fixed-size state, in the
style of optax's ``GradientTransformation``:

* ``init(batch, hidden, dtype, capacity)`` -> an empty memory state;
* ``banks(state)`` -> the attended banks, each ``(keys, values, valid)``;
* ``newest(state)`` -> the most recently stored state [b, h];
* ``slot_time(state)`` -> the time index held by each attended slot [b, m];
* ``read(state, alpha)`` -> the state after the step's attention weights
  ``alpha`` [b, m] (how stored states earn their relevance);
* ``write(state, h, key, t, do)`` -> ``(state, screened or None)``: stores ``h``
  [b, h] with its key in rows where ``do`` [b], screening what leaves.

Attention itself (``relscreen.attention``) is shared: a memory only says what is
attended and what the weights do to it. Built in: ``full`` (every stored state,
MemRNN), ``relevance`` (RSM, any ``rsm.Rules``) and ``window`` (the last nu
states: RSM's short-term buffer without a relevant set).
"""

from typing import Any, Callable, NamedTuple

from relscreen import full_memory, rsm
from relscreen.config import MemoryType, ModelConfig


class Memory(NamedTuple):
  init: Callable[..., Any]
  banks: Callable[[Any], Any]
  newest: Callable[[Any], Any]
  slot_time: Callable[[Any], Any]
  read: Callable[[Any, Any], Any]
  write: Callable[..., Any]


def full() -> Memory:
  """Every stored state is attended (``capacity`` slots, filled in order)."""

  def init(batch, hidden, dtype, capacity):
    if capacity is None or capacity < 1:
      raise ValueError(f"a full memory needs capacity >= 1 (states to keep), got "
                       f"{capacity!r}")
    return full_memory.init(batch, hidden, capacity, dtype)

  return Memory(init, full_memory.banks, full_memory.newest, full_memory.slot_time,
                lambda mem, alpha: mem,
                lambda mem, h, key, t, do: (full_memory.store(mem, h, key, t, do), None))


def relevance(nu: int, rho: int, rules: rsm.Rules = rsm.PAPER) -> Memory:
  """The relevancy screening memory: S of ``nu`` states, R of ``rho`` (0: a window)."""

  def init(batch, hidden, dtype, capacity=None):
    del capacity
    return rsm.init(batch, hidden, nu, rho, dtype)

  return Memory(init, rsm.banks, lambda mem: rsm.newest(mem, nu), rsm.slot_time,
                lambda mem, alpha: rsm.accumulate(mem, alpha, nu, rules),
                lambda mem, h, key, t, do: rsm.store(mem, h, key, t, do, nu, rules))


def rules_of(config: ModelConfig) -> rsm.Rules:
  return rsm.Rules(config.relevance, config.eviction, config.decay, config.reservoir_seed)


def of(config: ModelConfig) -> Memory | None:
  """The memory of a single-layer ``config`` (None without one)."""
  if config.memory is MemoryType.NONE:
    return None
  if config.memory is MemoryType.FULL:
    return full()
  return relevance(config.nu, config.relevant_size, rules_of(config))
