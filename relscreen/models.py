"""Whole-sequence models and the streaming API, as pure functions (ALGORITHM §1-3).

A model is a ``ModelConfig`` (static) plus a flat ``params`` dict:
  RNN family:  U [i, h], b [h], V [h, h], mod_b [h] (modrelu only)
  LSTM family: W [h + i, 4h] (gates f, i, o, g; state rows first), b [4h]
  attentive:   Ua [h, h], Va [h, h], v [h]
``forward`` scans ``step`` over time; ``step`` is also the streaming API, so the
two give the same outputs by construction (and the tests check it).
"""

import copy
import dataclasses
import enum
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from relscreen import attention, cells, full_memory, rsm
from relscreen import scan as scan_lib
from relscreen.cells import Phi
from relscreen.initializers import InputInit, RecurrentInit

Array = jax.Array


class CellType(enum.Enum):
  RNN = "rnn"
  LSTM = "lstm"


class MemoryType(enum.Enum):
  NONE = "none"  # plain recurrence
  FULL = "full"  # MemRNN / MemLSTM: attend to every stored state
  RELEVANCE = "relevance"  # RelRNN / RelLSTM: short-term buffer + relevant set


REGISTRY: dict[str, tuple[CellType, MemoryType]] = {
    "RNN": (CellType.RNN, MemoryType.NONE),
    "LSTM": (CellType.LSTM, MemoryType.NONE),
    "MemRNN": (CellType.RNN, MemoryType.FULL),
    "MemLSTM": (CellType.LSTM, MemoryType.FULL),
    "RelRNN": (CellType.RNN, MemoryType.RELEVANCE),
    "RelLSTM": (CellType.LSTM, MemoryType.RELEVANCE),
}


def _as_enum(kind, value, field: str):
  if isinstance(value, kind):
    return value
  try:
    return kind(value)
  except ValueError:
    choices = ", ".join(m.value for m in kind)
    raise ValueError(f"{field}={value!r} is not one of: {choices}") from None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static description of a model. Build one with ``model_config(name, ...)``.

  Attributes:
    name: the registry name (RNN, LSTM, MemRNN, MemLSTM, RelRNN, RelLSTM).
    cell: RNN or LSTM cell.
    memory: NONE, FULL or RELEVANCE.
    input_size: features per time step.
    hidden: hidden units H.
    phi: RNN nonlinearity (RNN family only).
    nu: short-term buffer size (RelRNN / RelLSTM).
    rho: relevant-set size (RelRNN / RelLSTM).
    k: store every k-th state (attentive models).
    attn: weight of the attended context in the mixed state (RNN family).
    r_init: initialiser of the recurrent kernel V (RNN family).
    i_init: initialiser of the input kernel U (RNN family).
    remat_chunk: rematerialise the scan in chunks of this many steps (0: off).
    custom_vjp: differentiate attentive models (k = 1, fresh state, no probes or
      diagnostics) with the hand-built reverse pass of ``_attentive_scan`` instead
      of autodiff through the memory; same gradients, O(t b h) memory.
    diagnostics: also return per-step attention weights, scores, slot times and
      screening decisions (off: nothing extra is computed).
  """

  name: str
  cell: CellType
  memory: MemoryType
  input_size: int
  hidden: int = 128
  phi: Phi = Phi.TANH
  nu: int = 10
  rho: int = 15
  k: int = 1
  attn: float = 1.0
  r_init: RecurrentInit = RecurrentInit.HENAFF
  i_init: InputInit = InputInit.XAVIER
  remat_chunk: int = 0
  diagnostics: bool = False
  custom_vjp: bool = True

  def __post_init__(self):
    for field, kind in (("cell", CellType), ("memory", MemoryType), ("phi", Phi),
                        ("r_init", RecurrentInit), ("i_init", InputInit)):
      object.__setattr__(self, field, _as_enum(kind, getattr(self, field), field))
    for field in ("input_size", "hidden", "nu", "rho", "k"):
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
    if self.remat_chunk < 0:
      raise ValueError(f"remat_chunk must be >= 0, got {self.remat_chunk!r}")
    if self.cell is CellType.LSTM and self.attn != 1.0:
      raise ValueError(f"attn={self.attn!r} is for the RNN family; LSTM models use 1.0")

  @property
  def attentive(self) -> bool:
    return self.memory is not MemoryType.NONE

  @property
  def gates(self) -> int:
    """Width of the projected input: H for RNN cells, 4H for LSTM cells."""
    return self.hidden * (4 if self.cell is CellType.LSTM else 1)


def model_config(name: str, input_size: int, **options: Any) -> ModelConfig:
  """Looks ``name`` up in ``REGISTRY`` and returns its config with ``options``."""
  if name not in REGISTRY:
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(REGISTRY)}")
  cell, memory = REGISTRY[name]
  return ModelConfig(name=name, cell=cell, memory=memory, input_size=input_size, **options)


class State(NamedTuple):
  """The recurrent state between steps; its size never depends on elapsed time.

  ``s`` is what the next step feeds to the cell: ``h_{t-1}`` for RNN/LSTM, the
  mixed state ``s_{t-1}`` (whose projection is the next query) for attentive
  models. ``t`` counts the steps taken, shared by the batch.
  """

  t: Array  # [] int32
  s: Array  # [b, h]
  c: Array | None  # [b, h] LSTM cell
  memory: rsm.RSMState | full_memory.FullMemory | None


def init_state(config: ModelConfig, batch: int, h0: Array | None = None,
               c0: Array | None = None, capacity: int | None = None,
               dtype=jnp.float32) -> State:
  """A fresh state. ``capacity`` (states to keep) is required for MemRNN/MemLSTM."""
  zeros = jnp.zeros((batch, config.hidden), dtype)
  s = zeros if h0 is None else jnp.asarray(h0, dtype)
  c = (zeros if c0 is None else jnp.asarray(c0, dtype)) if config.cell is CellType.LSTM else None
  if config.memory is MemoryType.RELEVANCE:
    memory = rsm.init(batch, config.hidden, config.nu, config.rho, dtype)
  elif config.memory is MemoryType.FULL:
    if capacity is None or capacity < 1:
      raise ValueError(f"{config.name} needs capacity >= 1 (states to keep), got {capacity!r}")
    memory = full_memory.init(batch, config.hidden, capacity, dtype)
  else:
    memory = None
  return State(jnp.zeros((), jnp.int32), s, c, memory)


def _mem_ops(config: ModelConfig):
  return rsm if config.memory is MemoryType.RELEVANCE else full_memory


def project_input(params: dict, config: ModelConfig, x: Array) -> Array:
  """``x U + b`` (RNN) or ``x W_x + b`` (LSTM) for any leading shape: [..., gates]."""
  kernel = params["U"] if config.cell is CellType.RNN else params["W"][config.hidden:]
  return cells.add_bias(x @ kernel, params["b"])


def _cell(params, config, xp, s, c):
  """Returns ``(h, pre-activation or None, c)``."""
  if config.cell is CellType.RNN:
    h, a = cells.rnn_step(params, config.phi, xp, s)
    return h, a, None
  h, c = cells.lstm_step(params, xp, s, c)
  return h, None, c


def _store(params, config, memory, h, t):
  """Stores ``h`` when ``t mod k == 0``; returns the memory and screening info."""
  do = jnp.broadcast_to(t % config.k == 0, (h.shape[0],))
  key = h @ params["Ua"]
  if config.memory is MemoryType.RELEVANCE:
    return rsm.store(memory, h, key, t, do)
  return full_memory.store(memory, h, key, t, do), None


def _diagnostics(config, values_time, attended, screened):
  out = {"alpha": attended.alpha, "scores": attended.scores, "slot_time": values_time}
  if screened is not None:
    out.update(evicted_time=screened.time, evicted_score=screened.score,
               admitted=screened.admitted)
  return out


def _first_mixed(config, a, s_init):
  """s_0 (ALGORITHM §2): the pre-activation for RNN cells, h_init for LSTM cells."""
  return a if config.cell is CellType.RNN else s_init


def _mixed(config, newest, context):
  """s_t = 0.5 (newest stored state + attn * attended context), t >= 1."""
  attn = config.attn if config.cell is CellType.RNN else 1.0
  return 0.5 * (newest + attn * context)


def _first_step(params, config, state, xp, probe):
  """Step 0 (ALGORITHM §2): no attention. RNN: s_0 = a_0; LSTM: s_0 = h_init."""
  h, a, c = _cell(params, config, xp, state.s, state.c)
  h = h + probe
  s = _first_mixed(config, a, state.s)
  time = _mem_ops(config).slot_time(state.memory)
  memory, screened = _store(params, config, state.memory, h, state.t)
  out = {"h": h}
  if config.diagnostics:
    nothing = attention.Attended(None, jnp.zeros(time.shape, h.dtype),
                                 jnp.full(time.shape, -jnp.inf, h.dtype))
    out.update(_diagnostics(config, time, nothing, screened))
  return State(state.t + 1, s, c, memory), out


def _later_step(params, config, state, xp, probe):
  """Step t >= 1: attend over the memory with query ``s_{t-1} Va``, mix, step the cell."""
  ops = _mem_ops(config)
  attended = attention.additive_attention_banks(state.s @ params["Va"],
                                                ops.banks(state.memory), params["v"])
  time = ops.slot_time(state.memory) if config.diagnostics else None
  memory = rsm.accumulate(state.memory, attended.alpha) if ops is rsm else state.memory
  s = _mixed(config, ops.newest(memory), attended.context)
  h, _, c = _cell(params, config, xp, s, state.c)
  h = h + probe
  memory, screened = _store(params, config, memory, h, state.t)
  out = {"h": h}
  if config.diagnostics:
    out.update(_diagnostics(config, time, attended, screened))
  return State(state.t + 1, s, c, memory), out


def _step(params, config, state, xp, probe):
  if not config.attentive:
    h, _, c = _cell(params, config, xp, state.s, state.c)
    h = h + probe
    return State(state.t + 1, h, c, None), {"h": h}
  return jax.lax.cond(state.t == 0,
                      lambda *a: _first_step(params, config, *a),
                      lambda *a: _later_step(params, config, *a), state, xp, probe)


_FLOATS = (jnp.float32, jnp.float64)


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
  """The shape of every parameter ``config`` needs (see the module docstring)."""
  h, i = config.hidden, config.input_size
  if config.cell is CellType.RNN:
    shapes = {"U": (i, h), "b": (h,), "V": (h, h)}
    if config.phi is Phi.MODRELU:
      shapes["mod_b"] = (h,)
  else:
    shapes = {"W": (h + i, 4 * h), "b": (4 * h,)}
  if config.attentive:
    shapes.update(Ua=(h, h), Va=(h, h), v=(h,))
  return shapes


def _check_params(config: ModelConfig, params):
  """Names the first missing or misshapen parameter instead of a jax TypeError."""
  for key, shape in param_shapes(config).items():
    if key not in params:
      raise ValueError(f"params has no {key!r}, which {config.name} needs "
                       f"(expected keys: {', '.join(param_shapes(config))})")
    got = tuple(jnp.shape(params[key]))
    if got != shape:
      raise ValueError(f"params[{key!r}] has shape {got}, but {config.name} with "
                       f"hidden={config.hidden}, input_size={config.input_size} needs "
                       f"{shape}")


def _check_input(config: ModelConfig, x: Array, ndim: int, what: str):
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{what} must be floating point (one-hot or features), got "
                     f"{x.dtype}; embed integer tokens first")
  if x.dtype not in _FLOATS:
    raise ValueError(f"{what} has dtype {x.dtype}; relscreen computes in float32 or "
                     f"float64 (the screening scores need their precision): cast {what} "
                     "first")
  if x.ndim != ndim or x.shape[-1] != config.input_size:
    want = "[batch, time, input]" if ndim == 3 else "[batch, input]"
    raise ValueError(f"{what} must have shape {want} with input={config.input_size} "
                     f"for {config.name}; got shape {tuple(x.shape)}")
  if ndim == 3 and x.shape[1] == 0:
    raise ValueError(f"{what} has no time steps (shape {tuple(x.shape)}); pass at least one")


def _check_state(config: ModelConfig, state: State, x: Array, what: str):
  """The state must match the input's batch and dtype and the config's width."""
  s = state.s
  if s.ndim != 2 or s.shape[1] != config.hidden:
    raise ValueError(f"state.s has shape {tuple(s.shape)}, but {config.name} has "
                     f"hidden={config.hidden}: the state was made for another model")
  if s.shape[0] != x.shape[0]:
    raise ValueError(f"state holds {s.shape[0]} rows but {what} has batch {x.shape[0]}; "
                     f"make the state with init_state(config, batch={x.shape[0]})")
  if s.dtype != x.dtype:
    raise ValueError(f"state has dtype {s.dtype} but {what} has {x.dtype}; make the "
                     f"state with init_state(..., dtype={x.dtype}) or cast {what}")


def reset_rows(config: ModelConfig, state: State, reset: Array) -> State:
  """Rows where ``reset`` [b] get a fresh zero state (empty memory); others are kept.

  ``t`` is shared by the batch and is left as it is.
  """
  capacity = (state.memory.time.shape[1] if config.memory is MemoryType.FULL else None)
  fresh = init_state(config, state.s.shape[0], capacity=capacity, dtype=state.s.dtype)

  def pick(new, old):
    return jnp.where(reset.reshape(reset.shape + (1,) * (old.ndim - 1)), new, old)

  rows = jax.tree_util.tree_map(pick, fresh._replace(t=None), state._replace(t=None))
  return rows._replace(t=state.t)


def _step_with_reset(params, config, state, xp, probe, reset):
  """``_step`` where rows flagged in ``reset`` start a new sequence (ALGORITHM §7, RL)."""
  if config.attentive and config.k != 1:
    raise ValueError(f"per-row resets need k=1 ({config.name} has k={config.k}): with "
                     "k > 1 which steps are stored depends on each row's own clock")
  state = reset_rows(config, state, reset)
  if not config.attentive or config.cell is CellType.LSTM:
    # From a zero state, step 0 equals a later step over an empty memory: the
    # mixed state is 0.5 (0 + 0) = 0 = h_init and nothing is attended.
    return _step(params, config, state, xp, probe)
  # RNN family: step 0 keeps the pre-activation as s_0; pick it per restarted row.
  first_state, first_out = _first_step(params, config, state, xp, probe)
  later_state, later_out = _step(params, config, state, xp, probe)

  def pick(a, b):
    if a.ndim == 0:
      return b
    return jnp.where(reset.reshape(reset.shape + (1,) * (a.ndim - 1)), a, b)

  return (jax.tree_util.tree_map(pick, first_state, later_state),
          jax.tree_util.tree_map(pick, first_out, later_out))


def step(params: dict, config: ModelConfig, state: State, x_t: Array,
         probe: Array | None = None, reset: Array | None = None) -> tuple[State, dict]:
  """Streaming API: advances ``state`` by one time step on ``x_t`` [b, i].

  ``reset`` [b] bool (optional) restarts the flagged rows from a fresh zero state
  before the step, as at the start of a new episode: the row's output then equals
  that of a fresh state (used by RL, where each environment resets on its own).

  Returns the new state (same shapes as the old one) and the step's outputs:
  ``{"h": [b, h]}`` plus the diagnostics when ``config.diagnostics``.
  """
  _check_input(config, x_t, 2, "x_t")
  _check_params(config, params)
  _check_state(config, state, x_t, "x_t")
  probe = jnp.zeros((), x_t.dtype) if probe is None else probe
  if reset is not None:
    reset = jnp.asarray(reset)
    if reset.shape != (x_t.shape[0],) or reset.dtype != jnp.bool_:
      raise ValueError(f"reset must be a bool array of shape ({x_t.shape[0]},), got "
                       f"{reset.dtype}{list(reset.shape)}")
  return _step_jit(params, config, state, x_t, probe, reset)


@functools.partial(jax.jit, static_argnums=1)
def _step_jit(params, config, state, x_t, probe, reset):
  """The checked step as one compiled program: a call outside ``jit`` compiles
  once per config and shape instead of once per operation (inside ``jit`` it is
  inlined)."""
  xp = project_input(params, config, x_t)
  if reset is None:
    return _step(params, config, state, xp, probe)
  return _step_with_reset(params, config, state, xp, probe, reset)


# -- A custom reverse pass for attentive models ------------------------------------
#
# Autodiff through ``lax.scan`` saves what every step needs for its transpose and
# transposes each shift, screening write and select of the memory. But the memory
# only ever holds earlier hidden states, and which state sits in which slot is
# known from a few integers per step. So the forward pass keeps h_t, s_t, c_t and
# (RSM) which relevant-set slot each step's screening wrote and the time it
# evicted; the reverse pass re-runs one step at a time with ``jax.vjp`` on the
# step's own inputs (previous mixed state, cell, attended banks).
#
# RSM: the reverse pass carries the memory backwards from its final state, undoing
# each store (S gets back the state that left it; a relevant-set write is undone
# by putting back the state it evicted) together with the slots' cotangents. A
# state's cotangent moves with it from R back to S, and is complete when the
# reverse pass reaches the step that stored it: S's slot for h_t then holds
# dL/dh_t. No buffer indexed by time; the states put back are gathered once per
# block of steps (``_RelevanceReverse``). Full memory: the attended bank is h
# itself; slot cotangents go to a dH buffer (``_FullReverse``). Memory O(t b h).


def _local_mix(config, v, q, kv, valid, newest):
  """The mixed state s_t (t >= 1) from the query ``q`` = s_{t-1} Va, the attended
  banks ``kv`` (``(keys, values)`` pairs, masks ``valid``) and the newest state."""
  banks = [(k, vals, ok) for (k, vals), ok in zip(kv, valid)]
  return _mixed(config, newest, attention.additive_attention_banks(q, banks, v).context)


def _activation(config, p, pre, c_prev):
  """The cell from its pre-activation ``xp + s rec``: (h, c); c is zeros for RNN cells."""
  if config.cell is CellType.RNN:
    return cells.apply_phi(config.phi, pre, p.get("mod_b")), jnp.zeros_like(pre)
  return cells.lstm_gating(pre, c_prev)


def _local_first(config, p, s_init, c_init, x_0):
  h, a, c = _cell(p, config, project_input(p, config, x_0), s_init, c_init)
  s = _first_mixed(config, a, s_init)
  return h, s, (jnp.zeros_like(h) if c is None else c)


def _admission(before: rsm.RSMState, after: rsm.RSMState):
  """Which relevant-set slot a store wrote, [b] (-1: none), and the time it evicted."""
  changed = before.r_time != after.r_time
  slot = jnp.where(jnp.any(changed, axis=1), jnp.argmax(changed, axis=1), -1)
  evicted = jnp.take_along_axis(before.r_time, jnp.maximum(slot, 0)[:, None], axis=1)[:, 0]
  return slot.astype(jnp.int32), evicted


def _attentive_forward(params, config, x, s_init, c_init):
  """The plain forward scan over time-major inputs ``x`` [t, b, i]; also returns
  what the custom reverse pass needs: h, s and (LSTM) c of every step
  [t, b, h], written in place into buffers, and (RSM) each step's admission
  (``_admission``, [t - 1, b] twice). The input projection happens inside the
  step, so neither it nor its cotangent is ever stored for the whole sequence."""
  state = init_state(config, x.shape[1], s_init, c_init, capacity=x.shape[0],
                     dtype=s_init.dtype)
  zero = jnp.zeros((), s_init.dtype)
  state, first = _first_step(params, config, state, project_input(params, config, x[0]),
                             zero)
  lstm = config.cell is CellType.LSTM
  shape = x.shape[:2] + (config.hidden,)
  buffers = [jnp.zeros(shape, s_init.dtype).at[0].set(v)
             for v in ((first["h"], state.s, state.c) if lstm else (first["h"], state.s))]

  def body(carry, inputs):
    state, buffers = carry
    t, x_t = inputs
    new, out = _later_step(params, config, state, project_input(params, config, x_t), zero)
    rows = (out["h"], new.s, new.c) if lstm else (out["h"], new.s)
    buffers = [b.at[t].set(v) for b, v in zip(buffers, rows)]
    admitted = (_admission(state.memory, new.memory)
                if config.memory is MemoryType.RELEVANCE else None)
    return (new, buffers), admitted

  (final, buffers), admitted = jax.lax.scan(body, (state, buffers),
                                            (jnp.arange(1, x.shape[0]), x[1:]))
  h, s, c = buffers if lstm else (*buffers, None)
  return final, h, s, c, admitted


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _attentive_scan(params, config, x, s_init, c_init):
  final, h, _, _, _ = _attentive_forward(params, config, x, s_init, c_init)
  return h, final


def _attentive_scan_fwd(params, config, x, s_init, c_init):
  final, h, s, c, admitted = _attentive_forward(params, config, x, s_init, c_init)
  memory = final.memory if config.memory is MemoryType.RELEVANCE else None
  return (h, final), (params, x, s_init, c_init, h, s, c, admitted, memory)


class _RelevanceReverse:
  """RSM bookkeeping of the reverse pass: the memory and its slots' cotangents are
  carried backwards from the final memory, undoing one store per step.

  Attention does not depend on the order of the slots, so the reverse pass keeps
  S and R as one bank (S in slots [0, nu), R after it), attended in one piece,
  and S as a ring (h_t in slot t mod nu): undoing a store rewrites one S slot
  and, where screening wrote one, one R slot; nothing shifts or concatenates.
  The newest state enters the step on its own (``newest``), so its cotangent
  needs no slot either."""

  segments = 1

  def __init__(self, config, h, ua, memory):
    self.nu, self.h, self.ua = config.nu, h, ua
    ring = functools.partial(jnp.roll, shift=h.shape[0] % config.nu, axis=1)
    bank = [jnp.concatenate([ring(a), b], axis=1) for a, b in (
        (memory.s_vals, memory.r_vals), (memory.s_keys, memory.r_keys),
        (memory.s_time, memory.r_time))]
    self.initial = (*bank, jnp.zeros_like(bank[0]), jnp.zeros_like(bank[1]))

  def prefix(self, size: int) -> "_RelevanceReverse":
    del size  # the memory has nu + rho slots whatever the step
    return self

  def block_inputs(self, t, admitted):
    """For a block of steps ``t`` [n]: the states (values and keys, [n, b, h] each)
    that undoing their stores puts back, the one that had left S and the one R
    had evicted; gathered and multiplied by Ua once per block, not per step."""
    _, evicted = admitted
    back = self.h[jnp.maximum(t - self.nu, 0)]  # left S: the same time in every row (k = 1)
    put_back = self.h[jnp.maximum(evicted, 0), jnp.arange(evicted.shape[1])[None, :]]
    back_key, put_back_key = jnp.split(jnp.concatenate([back, put_back]) @ self.ua, 2)
    return back, back_key, put_back, put_back_key

  def pop(self, carry, t):
    """The cotangents of h_t as a value and as a key, summed over its uses as a
    slot: after step t's store, h_t is in S's slot t mod nu."""
    _, _, _, d_vals, d_keys = carry
    j = t % self.nu
    return d_vals[:, j], d_keys[:, j]

  def attended(self, carry, t, admitted, rows):
    """Undoes step t's store: S's slot t mod nu gets back the state that left S,
    and the R slot that screening wrote gets back the state it had evicted. The
    written slot's cotangent belongs to the state that left S and moves with it;
    the evicted state's so far is zero. Returns the bank step t attended to (as
    ``_local_mix`` takes it), its mask and the carry."""
    vals, keys, time, d_vals, d_keys = carry
    back, back_key, put_back, put_back_key = rows
    slot, evicted = admitted
    j = t % self.nu
    slots = jnp.arange(time.shape[1])[None, :]
    write = slots == jnp.where(slot >= 0, self.nu + slot, -1)[:, None]  # [b, nu + rho]
    ring = slots == j
    rows_mask = write[..., None]

    def undo(a, in_r, in_s):
      # Selects only (no in-place slot update): XLA fuses them into one loop.
      if a.ndim == 2:
        return jnp.where(ring, in_s[:, None], jnp.where(write, in_r, a))
      return jnp.where(ring[..., None], in_s[:, None], jnp.where(rows_mask, in_r, a))

    moved = [jnp.sum(jnp.where(rows_mask, d, 0.0), axis=1) for d in (d_vals, d_keys)]
    vals = undo(vals, put_back[:, None], back)
    keys = undo(keys, put_back_key[:, None], back_key)
    time = undo(time, evicted[:, None], jnp.full(time.shape[:1], t - self.nu, time.dtype))
    d_vals, d_keys = undo(d_vals, 0.0, moved[0]), undo(d_keys, 0.0, moved[1])
    return ((keys, vals),), (time >= 0,), (vals, keys, time, d_vals, d_keys)

  def add(self, carry, d_kv):
    vals, keys, time, d_vals, d_keys = carry
    ((dk, dv),) = d_kv
    return vals, keys, time, d_vals + dv, d_keys + dk


class _FullReverse:
  """Full-memory bookkeeping of the reverse pass (k = 1: slot j holds h_j): the
  bank is h itself, batch-major, and the slots' cotangents sum into dH, dK.

  Steps before t = n attend to fewer than n slots: ``prefix(n)`` restricts the
  bank to them, so a stretch of early steps costs what its slots cost."""

  segments = 4  # stretches of the reverse pass with their own bank size

  def __init__(self, config, h, ua, memory):
    del config, memory
    self.hist = jnp.swapaxes(h, 0, 1)  # [b, t, h]
    self.keys = self.hist @ ua  # every key once, as the forward pass cached them
    self.initial = (jnp.zeros_like(self.hist), jnp.zeros_like(self.hist))
    self.size = self.hist.shape[1]

  def prefix(self, size: int) -> "_FullReverse":
    """The same bookkeeping over the first ``size`` slots only."""
    view = copy.copy(self)
    view.size = size
    return view

  def block_inputs(self, t, admitted):
    del t, admitted

  def pop(self, carry, t):
    d_hist, d_keys = carry
    return d_hist[:, t], d_keys[:, t]

  def attended(self, carry, t, admitted, rows):
    del admitted, rows
    n = self.size
    valid = jnp.broadcast_to(jnp.arange(n)[None, :] < t, (self.hist.shape[0], n))
    return ((self.keys[:, :n], self.hist[:, :n]),), (valid,), carry

  def add(self, carry, d_kv):
    d_hist, d_keys = carry
    ((dk, dv),) = d_kv
    n = self.size
    return d_hist.at[:, :n].add(dv), d_keys.at[:, :n].add(dk)


def _reverse_chunk_size(steps: int) -> int:
  """Steps per block of the reverse pass whose weight gradients are formed at once."""
  return max(1, min(64, steps))


def _attentive_scan_bwd(config, residuals, cotangents):
  """Reverse pass. Per step it runs the cell's and the attention's own reverse
  (``jax.vjp`` of ``_activation`` and ``_local_mix``) and the matrix products in
  between by hand, against transposed copies of the matrices made once (XLA's CPU
  dot is several times slower on a transposed operand). The gradients of the
  matrices (Va, Ua, U/W, b) are formed from the step cotangents once per block
  of steps, as matrix products over the block, not as an outer product per step."""
  params, x, s_init, c_init, h, s, c, admitted, memory = residuals
  g_h, _ = cotangents  # the final state's cotangent is zero: ``forward`` stops it
  params = dict(params)
  lstm = config.cell is CellType.LSTM
  ua, va = params["Ua"], params["Va"]
  recurrent = params["W"][:config.hidden] if lstm else params["V"]
  input_kernel = params["W"][config.hidden:] if lstm else params["U"]
  ua_t, both_t = ua.T, jnp.concatenate([recurrent, va], axis=1).T
  act = {k: params[k] for k in ("mod_b",) if k in params}  # gradients summed per step
  book = (_RelevanceReverse if config.memory is MemoryType.RELEVANCE else _FullReverse)(
      config, h, ua, memory)

  def step(book, carry, inputs):
    mem, d_newest, dq_next, dc_next, d_small = carry
    t, pre_t, q_t, g_t, h_prev, c_prev, adm, rows = inputs
    dv, dk = book.pop(mem, t)
    dh = g_t + d_newest + dv + dk @ ua_t  # d_newest: h_t as step t + 1's newest state
    c_prev = jnp.zeros_like(h_prev) if c_prev is None else c_prev
    _, pullback = jax.vjp(lambda p, pre, cp: _activation(config, p, pre, cp), act, pre_t,
                          c_prev)
    d_act, dpre, dc_prev = pullback((dh, dc_next))
    # s_t fed the cell (pre = xp + s_t rec) and step t + 1's query (s_t Va): one product.
    ds = jnp.concatenate([dpre, dq_next], axis=-1) @ both_t
    kv, valid, mem = book.attended(mem, t, adm, rows)
    _, pullback = jax.vjp(lambda v, q, kv, n: _local_mix(config, v, q, kv, valid, n),
                          params["v"], q_t, kv, h_prev)
    d_v, dq, d_kv, d_newest = pullback(ds)
    mem = book.add(mem, d_kv)
    d_small = jax.tree_util.tree_map(jnp.add, d_small, {"v": d_v, **d_act})
    return (mem, d_newest, dq, dc_prev, d_small), (dq, dpre, dk)

  def block(book, carry, inputs):
    carry, sums = carry
    t, x_b, g_b, h_b, h_prev, s_prev, s_b, c_prev, adm = inputs
    # What the steps recompute without needing a cotangent, for the block at once.
    pre = project_input(params, config, x_b) + s_b @ recurrent
    carry, (dq, dxp, dk) = jax.lax.scan(
        functools.partial(step, book), carry,
        (t, pre, s_prev @ va, g_b, h_prev, c_prev, adm, book.block_inputs(t, adm)),
        reverse=True)
    outer = lambda a, b: jnp.einsum("tbh,tbk->hk", a, b)
    sums = {"Va": sums["Va"] + outer(s_prev, dq), "Ua": sums["Ua"] + outer(h_b, dk),
            "rec": sums["rec"] + outer(s_b, dxp), "in": sums["in"] + outer(x_b, dxp),
            "b": sums["b"] + jnp.sum(dxp, axis=(0, 1))}
    return (carry, sums), dxp @ input_kernel.T

  length = h.shape[0]
  xs = (jnp.arange(1, length), x[1:], g_h[1:], h[1:], h[:-1], s[:-1], s[1:],
        None if c is None else c[:-1], admitted)
  zeros = jnp.zeros_like(h[0])
  sums = {"Va": jnp.zeros_like(va), "Ua": jnp.zeros_like(ua),
          "rec": jnp.zeros_like(recurrent), "in": jnp.zeros_like(input_kernel),
          "b": jnp.zeros_like(params["b"])}
  small = {"v": jnp.zeros_like(params["v"]), **jax.tree_util.tree_map(jnp.zeros_like, act)}
  carry = ((book.initial, zeros, zeros, zeros, small), sums)
  # Whole blocks cover the last steps, in stretches that attend to at most as many
  # slots as their last step does; the first ``rest`` steps form a short block.
  chunk = _reverse_chunk_size(length - 1)
  rest = (length - 1) % chunk
  blocks = (length - 1) // chunk
  tail = jax.tree_util.tree_map(lambda a: a[rest:].reshape((-1, chunk) + a.shape[1:]), xs)
  ends = sorted({round(blocks * (k + 1) / book.segments) for k in range(book.segments)} - {0})
  dx = []
  for start, end in reversed(list(zip([0] + ends[:-1], ends))):
    stretch = jax.tree_util.tree_map(lambda a, i=start, j=end: a[i:j], tail)
    carry, dx_part = jax.lax.scan(functools.partial(block, book.prefix(rest + end * chunk)),
                                  carry, stretch, reverse=True)
    dx.insert(0, dx_part.reshape((-1,) + dx_part.shape[2:]))
  if rest:
    head = jax.tree_util.tree_map(lambda a: a[:rest], xs)
    carry, dx_head = block(book.prefix(rest), carry, head)
    dx.insert(0, dx_head)
  dx_tail = jnp.concatenate(dx)
  (mem, d_newest, dq_next, dc_next, d_small), sums = carry
  ds_next = dq_next @ va.T
  dv, dk = book.pop(mem, 0)
  _, pullback = jax.vjp(lambda p, si, ci, xt: _local_first(config, p, si, ci, xt),
                        params, s_init, c_init, x[0])
  dp, ds_init, dc_init, dx0 = pullback((g_h[0] + d_newest + dv + dk @ ua.T, ds_next,
                                        dc_next))
  dp.update({k: dp[k] + d_small[k] for k in d_small})
  dp["Va"] = dp["Va"] + sums["Va"]
  dp["Ua"] = dp["Ua"] + sums["Ua"] + h[0].T @ dk
  dp["b"] = dp["b"] + sums["b"]
  if lstm:
    dp["W"] = dp["W"] + jnp.concatenate([sums["rec"], sums["in"]])
  else:
    dp["V"], dp["U"] = dp["V"] + sums["rec"], dp["U"] + sums["in"]
  return dp, jnp.concatenate([dx0[None], dx_tail]), ds_init, dc_init


_attentive_scan.defvjp(_attentive_scan_fwd, _attentive_scan_bwd)


def _uses_custom_vjp(config: ModelConfig, fresh: bool, probes) -> bool:
  return (config.custom_vjp and config.attentive and config.k == 1 and fresh
          and probes is None and not config.diagnostics)


def forward(params: dict, config: ModelConfig, x: Array, state: State | None = None,
            probes: Array | None = None, h0: Array | None = None,
            c0: Array | None = None) -> tuple[dict, State]:
  """Runs the model over a sequence ``x`` [b, t, i] with ``lax.scan``.

  Args:
    params: the flat parameter dict (see the module docstring).
    config: the model config.
    x: inputs, batch-major [b, t, i].
    state: state to continue from. Default: a fresh state (MemRNN/MemLSTM get room
      for every stored state of ``x``), starting from ``h0`` / ``c0`` if given.
    probes: optional [b, t, h] added to each ``h_t``; pass zeros and
      differentiate with respect to them to get ``dL/dh_t`` (ALGORITHM §7).

  Returns:
    ``(outputs, final_state)``; ``outputs["h"]`` is [b, t, h] and diagnostics,
    when on, are batch-major [b, t, ...] too.
  """
  _check_input(config, x, 3, "x")
  _check_params(config, params)
  if state is not None:
    _check_state(config, state, x, "x")
  batch, length = x.shape[:2]
  if probes is not None and probes.shape != (batch, length, config.hidden):
    raise ValueError(f"probes must have shape {(batch, length, config.hidden)}, "
                     f"got {tuple(probes.shape)}")
  return _forward_jit(params, config, x, state, probes, h0, c0)


@functools.partial(jax.jit, static_argnums=1)
def _forward_jit(params, config, x, state, probes, h0, c0):
  """``forward`` after its checks, as one compiled program (see ``_step_jit``)."""
  batch, length = x.shape[:2]
  fresh = state is None
  if _uses_custom_vjp(config, fresh, probes) and length > 1:
    zeros = jnp.zeros((batch, config.hidden), x.dtype)
    s_init = zeros if h0 is None else jnp.asarray(h0, x.dtype)
    c_init = zeros if (c0 is None or config.cell is CellType.RNN) else jnp.asarray(c0, x.dtype)
    h, final = _attentive_scan(dict(params), config, jnp.swapaxes(x, 0, 1), s_init, c_init)
    if config.cell is CellType.RNN:
      final = final._replace(c=None)
    return {"h": jnp.swapaxes(h, 0, 1)}, jax.lax.stop_gradient(final)
  xp = project_input(params, config, jnp.swapaxes(x, 0, 1))  # [t, b, gates]
  pr = (jnp.zeros((length, 1, 1), x.dtype) if probes is None
        else jnp.swapaxes(probes, 0, 1))  # [t, b, h]
  if fresh:
    state = init_state(config, batch, h0, c0, capacity=math.ceil(length / config.k),
                       dtype=x.dtype)
  if fresh and config.attentive:
    # A fresh state is known to be at t = 0: peel step 0 off instead of a per-step cond.
    state, first = _first_step(params, config, state, xp[0], pr[0])
    body = lambda carry, inputs: _later_step(params, config, carry, *inputs)
    state, outs = scan_lib.scan(body, state, (xp[1:], pr[1:]), config.remat_chunk)
    outs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first, outs)
  else:
    body = lambda carry, inputs: _step(params, config, carry, *inputs)
    state, outs = scan_lib.scan(body, state, (xp, pr), config.remat_chunk)
  return jax.tree_util.tree_map(lambda y: jnp.swapaxes(y, 0, 1), outs), state
