"""Whole-sequence models and the streaming API, as pure functions (SPEC 1-3).

A model is a ``ModelConfig`` (static) plus a flat ``params`` dict:
  RNN family:  U [i, h], b [h], V [h, h], mod_b [h] (modrelu only)
  LSTM family: W [h + i, 4h] (gates f, i, o, g; state rows first), b [4h]
  attentive:   Ua [h, h], Va [h, h], v [h]
``forward`` scans ``step`` over time; ``step`` is also the streaming API, so the
two give the same outputs by construction (and the tests check it).
"""

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
  """s_0 (SPEC 2): the pre-activation for RNN cells, h_init for LSTM cells."""
  return a if config.cell is CellType.RNN else s_init


def _mixed(config, newest, context):
  """s_t = 0.5 (newest stored state + attn * attended context), t >= 1."""
  attn = config.attn if config.cell is CellType.RNN else 1.0
  return 0.5 * (newest + attn * context)


def _first_step(params, config, state, xp, probe):
  """Step 0 (SPEC 2): no attention. RNN: s_0 = a_0; LSTM: s_0 = h_init."""
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


def _check_input(config: ModelConfig, x: Array, ndim: int, what: str):
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{what} must be floating point (one-hot or features), got "
                     f"{x.dtype}; embed integer tokens first")
  if x.ndim != ndim or x.shape[-1] != config.input_size:
    want = "[batch, time, input]" if ndim == 3 else "[batch, input]"
    raise ValueError(f"{what} must have shape {want} with input={config.input_size} "
                     f"for {config.name}; got shape {tuple(x.shape)}")


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
  """``_step`` where rows flagged in ``reset`` start a new sequence (SPEC 7, RL)."""
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
  probe = jnp.zeros((), x_t.dtype) if probe is None else probe
  xp = project_input(params, config, x_t)
  if reset is None:
    return _step(params, config, state, xp, probe)
  reset = jnp.asarray(reset)
  if reset.shape != (x_t.shape[0],) or reset.dtype != jnp.bool_:
    raise ValueError(f"reset must be a bool array of shape ({x_t.shape[0]},), got "
                     f"{reset.dtype}{list(reset.shape)}")
  return _step_with_reset(params, config, state, xp, probe, reset)


# -- A custom reverse pass for attentive models ------------------------------------
#
# Autodiff through ``lax.scan`` carries the cotangent of the whole memory (every
# slot's value and key) from step to step and transposes each shift, screening
# write and select. But the memory only ever holds earlier hidden states, so its
# gradient can be routed to where those states live: a buffer dH [t, b, h],
# indexed by the time of each slot. The forward pass keeps h_t, s_t, c_t and (RSM)
# the time held by each attended slot; the reverse pass re-runs one step at a
# time with ``jax.vjp`` on the step's own inputs (previous mixed state, cell,
# attended states gathered from h by time) and scatters the attended states'
# cotangents into dH. Memory O(t b h), no carried bank cotangents.


def _attended(config, hist, times, t):
  """The slots step ``t`` attends to, [b, m, ...], from the history ``hist``
  [t, b, ...], and their validity [b, m]."""
  if config.memory is MemoryType.FULL:
    slots = jnp.swapaxes(hist, 0, 1)  # slot j holds h_j (k = 1)
    return slots, jnp.broadcast_to(jnp.arange(slots.shape[1])[None, :] < t, slots.shape[:2])
  rows = jnp.arange(times.shape[0])[:, None]
  return hist[jnp.maximum(times, 0), rows], times >= 0


def _scatter(config, buffer, d_slots, times):
  """Adds the slots' cotangents [b, m, ...] to the history rows they came from.

  Empty slots get exactly zero cotangent (zero weight, masked scores), so their
  placeholder row 0 receives nothing."""
  if config.memory is MemoryType.FULL:
    return buffer + jnp.swapaxes(d_slots, 0, 1)
  rows = jnp.arange(times.shape[0])[:, None]
  return buffer.at[jnp.maximum(times, 0), rows].add(d_slots)


def _local_later(config, p, s_prev, c_prev, x_t, states, keys, valid, newest):
  """Step t >= 1 as a function of its own inputs only: (h_t, s_t, c_t)."""
  xp_t = project_input(p, config, x_t)
  attended = attention.additive_attention_banks(s_prev @ p["Va"], ((keys, states, valid),),
                                                p["v"])
  s = _mixed(config, newest, attended.context)
  h, _, c = _cell(p, config, xp_t, s, c_prev)
  return h, s, (jnp.zeros_like(h) if c is None else c)


def _local_first(config, p, s_init, c_init, x_0):
  h, a, c = _cell(p, config, project_input(p, config, x_0), s_init, c_init)
  s = _first_mixed(config, a, s_init)
  return h, s, (jnp.zeros_like(h) if c is None else c)


def _attentive_forward(params, config, x, s_init, c_init):
  """The plain forward scan over time-major inputs ``x`` [t, b, i]; also returns
  what the custom reverse pass needs: h, s and (LSTM) c of every step
  [t, b, h], written in place into buffers, and (RSM) the time each attended
  slot held [t - 1, b, m]. The input projection happens inside the step, so
  neither it nor its cotangent is ever stored for the whole sequence."""
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
    times = rsm.slot_time(state.memory) if config.memory is MemoryType.RELEVANCE else None
    new, out = _later_step(params, config, state, project_input(params, config, x_t), zero)
    rows = (out["h"], new.s, new.c) if lstm else (out["h"], new.s)
    buffers = [b.at[t].set(v) for b, v in zip(buffers, rows)]
    return (new, buffers), times

  (final, buffers), times = jax.lax.scan(body, (state, buffers),
                                         (jnp.arange(1, x.shape[0]), x[1:]))
  h, s, c = buffers if lstm else (*buffers, None)
  return final, h, s, c, times


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _attentive_scan(params, config, x, s_init, c_init):
  final, h, _, _, _ = _attentive_forward(params, config, x, s_init, c_init)
  return h, final


def _attentive_scan_fwd(params, config, x, s_init, c_init):
  final, h, s, c, times = _attentive_forward(params, config, x, s_init, c_init)
  return (h, final), (params, x, s_init, c_init, h, s, c, times)


def _attentive_scan_bwd(config, residuals, cotangents):
  params, x, s_init, c_init, h, s, c, times = residuals
  g_h, _ = cotangents  # the final state's cotangent is zero: ``forward`` stops it
  length = h.shape[0]
  ua = params["Ua"]
  local = {k: v for k, v in params.items() if k != "Ua"}
  keys_hist = h @ ua  # every key once, as the forward pass cached them

  def body(carry, inputs):
    d_hist, d_khist, ds_next, dc_next, dp = carry
    t, x_t, g_t, s_prev, c_prev, newest, times_t = inputs
    c_prev = jnp.zeros_like(s_prev) if c_prev is None else c_prev
    states, valid = _attended(config, h, times_t, t)
    keys, _ = _attended(config, keys_hist, times_t, t)
    _, pullback = jax.vjp(
        lambda p, sp, cp, xt, m, k, n: _local_later(config, p, sp, cp, xt, m, k, valid, n),
        local, s_prev, c_prev, x_t, states, keys, newest)
    dh = g_t + d_hist[t] + d_khist[t] @ ua.T
    dp_t, ds_prev, dc_prev, dx_t, d_states, d_keys, d_newest = pullback(
        (dh, ds_next, dc_next))
    d_hist = _scatter(config, d_hist, d_states, times_t).at[t - 1].add(d_newest)
    d_khist = _scatter(config, d_khist, d_keys, times_t)
    dp = jax.tree_util.tree_map(jnp.add, dp, dp_t)
    return (d_hist, d_khist, ds_prev, dc_prev, dp), dx_t

  steps = jnp.arange(1, length)
  times_in = times if times is not None else jnp.zeros((length - 1, 0), jnp.int32)
  zeros = jnp.zeros_like(h[0])
  carry = (jnp.zeros_like(h), jnp.zeros_like(h), zeros, zeros,
           jax.tree_util.tree_map(jnp.zeros_like, local))
  (d_hist, d_keys, ds_next, dc_next, dp), dx_later = jax.lax.scan(
      body, carry,
      (steps, x[1:], g_h[1:], s[:-1], None if c is None else c[:-1], h[:-1], times_in),
      reverse=True)
  _, pullback = jax.vjp(lambda p, si, ci, xt: _local_first(config, p, si, ci, xt),
                        local, s_init, c_init, x[0])
  dp0, ds_init, dc_init, dx0 = pullback((g_h[0] + d_hist[0] + d_keys[0] @ ua.T, ds_next,
                                         dc_next))
  dp = jax.tree_util.tree_map(jnp.add, dp, dp0)
  dp["Ua"] = jnp.einsum("tbh,tbk->hk", h, d_keys)  # d(h_t Ua) summed over every stored t
  return dp, jnp.concatenate([dx0[None], dx_later]), ds_init, dc_init


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
      differentiate with respect to them to get ``dL/dh_t`` (SPEC 7).

  Returns:
    ``(outputs, final_state)``; ``outputs["h"]`` is [b, t, h] and diagnostics,
    when on, are batch-major [b, t, ...] too.
  """
  _check_input(config, x, 3, "x")
  batch, length = x.shape[:2]
  if probes is not None and probes.shape != (batch, length, config.hidden):
    raise ValueError(f"probes must have shape {(batch, length, config.hidden)}, "
                     f"got {tuple(probes.shape)}")
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
