"""One time step of a single layer, as pure functions (ALGORITHM §1-3, §11).

The step is the same for every cell and memory: attend over the memory with the
query ``s_{t-1} Va``, let the weights update the memory's scores (``read``), mix
the newest stored state with the attended context into ``s_t``, step the cell on
``(x_t, s_t)``, and store its ``h_t`` (``write``). The cell is dispatched on in
``_cell`` and ``project_input``, the memory in ``memories.of``; nothing else
here knows which cell or memory it runs.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from relscreen import attention, cells, full_memory, kernels, memories, rsm
from relscreen.config import CellType, Eviction, MemoryType, ModelConfig

Array = jax.Array


class State(NamedTuple):
  """The recurrent state of one layer between steps; its size never depends on
  elapsed time.

  ``s`` is what the next step feeds to the cell: ``h_{t-1}`` without memory, the
  mixed state ``s_{t-1}`` (whose projection is the next query) with one. ``c`` is
  the cell's own state besides it (an LSTM's cell state, a user cell's extra;
  None for RNN and GRU cells). ``t`` counts the steps taken, shared by the batch.
  """

  t: Array  # [] int32
  s: Array  # [b, h]
  c: Any  # [b, h] LSTM cell state, a user cell's extra, or None
  memory: Any  # the memory's state (rsm.RSMState, full_memory.FullMemory) or None


def init_state(config: ModelConfig, batch: int, h0: Array | None = None,
               c0: Array | None = None, capacity: int | None = None,
               dtype=jnp.float32) -> State:
  """A fresh state of a single-layer config (``capacity``: states a full memory keeps)."""
  def zeros():  # an array of its own each (a state may be donated: one buffer, one leaf)
    return jnp.zeros((batch, config.hidden), dtype)

  s = zeros() if h0 is None else jnp.asarray(h0, dtype)
  if config.cell is CellType.LSTM:
    c = zeros() if c0 is None else jnp.asarray(c0, dtype)
  elif config.cell is CellType.USER:
    c = config.user_cell.init_extra(batch, config.hidden, dtype)
  else:
    c = None
  memory = memories.of(config)
  if memory is not None:
    try:
      memory = memory.init(batch, config.hidden, dtype, capacity)
    except ValueError as e:
      raise ValueError(f"{config.name}: {e}") from None
  return State(jnp.zeros((), jnp.int32), s, c, memory)


def project_input(params: dict, config: ModelConfig, x: Array) -> Array:
  """The cell's input term for any leading shape [..., gates]: ``x U + b`` (RNN,
  GRU) or ``x W_x + b`` (LSTM), computed for a whole sequence outside the scan.
  A user's cell gets ``x`` itself."""
  if config.cell is CellType.USER:
    return x
  if config.cell is CellType.LSTM:
    kernel = params["W_x"] if "W_x" in params else params["W"][config.hidden:]
  else:
    kernel = params["U"]
  return cells.add_bias(x @ kernel, params["b"])


def loop_params(params: dict, config: ModelConfig) -> dict:
  """``params`` prepared for a loop over steps: loop-invariant slices taken once
  (``cells.lstm_halves`` for the LSTM cell; the others have none)."""
  if config.cell is CellType.LSTM:
    return cells.lstm_halves(params, config.hidden)
  return params


def _cell(params, config, xp, s, c):
  """Steps the cell on the projected input and recurrent input ``s``: ``(h, a, c)``,
  with ``a`` the RNN's pre-activation (None for other cells)."""
  if config.cell is CellType.RNN:
    h, a = cells.rnn_step(params, config.phi, xp, s)
    return h, a, None
  if config.cell is CellType.LSTM:
    h, c = cells.lstm_step(params, xp, s, c)
    return h, None, c
  if config.cell is CellType.GRU:
    return cells.gru_step(params, xp, s), None, None
  h, c = config.user_cell.step(params["cell"], s, c, xp)
  return h, None, c


def _store(params, config, memory, h, t):
  """Stores ``h`` when ``t mod k == 0``; returns the memory and screening info."""
  do = jnp.broadcast_to(t % config.k == 0, (h.shape[0],))
  return memories.of(config).write(memory, h, h @ params["Ua"], t, do)


def _diagnostics(values_time, attended, screened):
  out = {"alpha": attended.alpha, "scores": attended.scores, "slot_time": values_time}
  if screened is not None:
    out.update(evicted_time=screened.time, evicted_score=screened.score,
               admitted=screened.admitted)
  return out


def first_mixed(config, a, s_init):
  """s_0 (ALGORITHM §2): the pre-activation for the RNN cell, h_init for others."""
  return a if config.cell is CellType.RNN else s_init


def context_weight(config) -> float:
  """The attended context's weight in the mixed state: ``attn`` for the RNN
  cell, 1 for the others."""
  return config.attn if config.cell is CellType.RNN else 1.0


def mixed(config, newest, context):
  """s_t = 0.5 (newest stored state + attn * attended context), t >= 1."""
  return 0.5 * (newest + context_weight(config) * context)


def first_step(params, config, state, xp, probe):
  """Step 0 (ALGORITHM §2): nothing to attend to. RNN: s_0 = a_0; other cells: h_init.

  ``later_step``'s rule for a first row: over the empty memory a fresh state
  has, the attention gives weight 0 and context 0 (and -inf scores in the
  diagnostics) and changes nothing."""
  return later_step(params, config, state, xp, probe, first=True)


def later_step(params, config, state, xp, probe, first=None):
  """Step t >= 1: attend over the memory with query ``s_{t-1} Va``, mix, step the cell.

  ``first`` ([] or [b] bool, optional): rows that take step 0's rule instead
  (``first_step``), for rows whose memory is empty, as a fresh state's is. Over
  an empty memory the attention gives weight 0 and context 0 and leaves the
  memory as it is, so the two rules differ only in the mixed state, picked per
  row: one program for every step, no branch (a ``lax.cond`` on t made XLA copy
  the memory at every streaming step).
  """
  mem = memories.of(config)
  attended = attention.additive_attention_banks(state.s @ params["Va"],
                                                mem.banks(state.memory), params["v"])
  time = mem.slot_time(state.memory) if config.diagnostics else None
  memory = mem.read(state.memory, attended.alpha)
  s = mixed(config, mem.newest(memory), attended.context)
  if first is not None:
    first = jnp.reshape(first, jnp.shape(first) + (1,))  # [] or [b] against [b, h]
    s = jnp.where(first, state.s, s)
  h, a, c = _cell(params, config, xp, s, state.c)
  h = h + probe
  if first is not None:
    s = jnp.where(first, first_mixed(config, a, state.s), s)
  memory, screened = _store(params, config, memory, h, state.t)
  out = {"h": h}
  if config.diagnostics:
    out.update(_diagnostics(time, attended, screened))
  return State(state.t + 1, s, c, memory), out


def any_step(params, config, state, xp, probe):
  """A step from any state: ``first_step``'s rule at t = 0, ``later_step``'s after."""
  if not config.attentive:
    h, _, c = _cell(params, config, xp, state.s, state.c)
    h = h + probe
    return State(state.t + 1, h, c, None), {"h": h}
  return later_step(params, config, state, xp, probe, first=state.t == 0)


def kernel_fits(config: ModelConfig, params: dict) -> bool:
  """Whether ``kernels.rnn_forward`` can run this layer's steps (on the CPU, with
  ``config.cpu_kernel``): an RNN cell with tanh or an LSTM cell, storing every
  step (k = 1), no diagnostics, in a relevance memory with any relevance and
  eviction rule, or a window."""
  weights = {"U", "V"} if config.cell is CellType.RNN else {"W"}
  return (config.cpu_kernel and config.memory in (MemoryType.RELEVANCE, MemoryType.WINDOW)
          and kernel_cell(config) and config.k == 1 and not config.diagnostics
          and set(params) >= weights | {"b", "Va", "Ua", "v"})


def kernel_cell(config: ModelConfig) -> bool:
  """Whether the scan kernels (``kernels.rnn_forward``, ``rnn_block_reverse``)
  have this layer's cell: an RNN cell with tanh, or an LSTM cell."""
  return ((config.cell is CellType.RNN and config.phi is cells.Phi.TANH)
          or config.cell is CellType.LSTM)


def evicts_by_reservoir(config: ModelConfig) -> bool:
  """Whether R's eviction draws at random (reservoir, with an R to draw for)."""
  return config.eviction is Eviction.RESERVOIR and config.relevant_size > 0


def kernel_rules(config: ModelConfig, seen: Array, steps: int) -> dict:
  """A ``kernel_fits`` config's memory rules as ``kernels.rnn_forward`` takes them
  for ``steps`` steps from a memory that has offered ``seen`` [b] candidates to
  R: reservoir eviction's draws made here, by ``rsm.choose``'s generator."""
  return {"relevance": kernels.RELEVANCE.index(config.relevance.value),
          "decay": config.decay, "fifo": config.eviction is Eviction.FIFO,
          "draws": (rsm.reservoir_draws(memories.rules_of(config), seen, steps)
                    if evicts_by_reservoir(config) else None)}


def kernel_weights(config: ModelConfig, params: dict) -> dict:
  """The weights ``kernels.rnn_forward`` takes, from a ``kernel_fits`` layer's
  parameters: an RNN's U, b, Va, V, Ua, v; an LSTM's input half W_x as U and
  state half W_s as V."""
  if config.cell is CellType.LSTM:
    halves = params if "W_s" in params else cells.lstm_halves(params, config.hidden)
    params = {**params, "U": halves["W_x"], "V": halves["W_s"]}
  return {k: params[k] for k in ("U", "b", "Va", "V", "Ua", "v")}


def kernel_step(params, config, state, x_t, first):
  """``later_step`` of a ``kernel_fits`` config (an RNN cell with tanh or an LSTM
  cell) on the raw input ``x_t`` [b, i] with no probe, as one CPU kernel call
  (``kernels.rnn_forward`` over one step; XLA's ``later_step`` on other devices,
  or where the kernels are off).

  Differentiable: the kernel has no derivative of its own, so ``jax.custom_jvp``
  gives it XLA's (``jax.jvp`` of ``later_step``): ``jax.grad`` or ``jax.jvp``
  through the step runs XLA's step, a plain call the kernel. Their float32
  results differ in the last bits (the kernels' tanh; docs/RESULTS.md)."""
  nu, attn = config.nu, context_weight(config)
  lstm = config.cell is CellType.LSTM

  def xla(params, state, x_t, first):
    xp = project_input(params, config, x_t)
    return later_step(params, config, state, xp, jnp.zeros((), x_t.dtype), first=first)

  def kernel(params, state, x_t, first):
    restart = jnp.broadcast_to(first, x_t.shape[:1])
    # Row 0 of the kernel's sequence holds s (and an LSTM's c) before the step
    # (its h, q and k rows are not read: the newest state comes from the
    # memory); row 1 is the step's.
    mem, seq, _, _ = kernels.rnn_forward(
        tuple(state.memory), (state.s,) * 4 + ((state.c,) if lstm else ()), x_t[None],
        kernel_weights(config, params), nu, attn, stamp=state.t, restart=restart,
        **kernel_rules(config, state.memory.seen, 1))
    c = seq[4][1] if lstm else None
    return State(state.t + 1, seq[1][1], c, rsm.RSMState(*mem)), {"h": seq[0][1]}

  @jax.custom_jvp
  def step(params, state, x_t, first):
    return kernels.dispatch(True, kernel, xla, params, state, x_t, first)

  step.defjvp(lambda primals, tangents: jax.jvp(xla, primals, tangents))
  return step(params, state, x_t, first)


def pick_rows(rows: Array, new, old):
  """``new`` where ``rows`` (bool, a leading part of the arrays' shape: [b], or
  [t, b] for time-major stacks) and ``old`` elsewhere, leaf by leaf of two
  pytrees of the same structure."""
  def pick(n, o):
    return jnp.where(rows.reshape(rows.shape + (1,) * (o.ndim - rows.ndim)), n, o)

  return jax.tree_util.tree_map(pick, new, old)


def reset_rows(config: ModelConfig, state: State, reset: Array) -> State:
  """Rows where ``reset`` [b] get a fresh zero state (empty memory); others are kept.

  ``t`` is shared by the batch and is left as it is.
  """
  full = isinstance(state.memory, full_memory.FullMemory)
  capacity = state.memory.time.shape[1] if full else None
  fresh = init_state(config, state.s.shape[0], capacity=capacity, dtype=state.s.dtype)
  rows = pick_rows(reset, fresh._replace(t=None), state._replace(t=None))
  return rows._replace(t=state.t)


def step_with_reset(params, config, state, xp, probe, reset):
  """``any_step`` where rows flagged in ``reset`` start a new sequence (ALGORITHM §7, RL)."""
  if config.attentive and config.k != 1:
    raise ValueError(f"per-row resets need k=1 ({config.name} has k={config.k}): with "
                     "k > 1 which steps are stored depends on each row's own clock")
  state = reset_rows(config, state, reset)
  if not config.attentive:
    return any_step(params, config, state, xp, probe)
  # A restarted row's memory is empty: it takes step 0's rule (the RNN cell keeps
  # the pre-activation as s_0).
  return later_step(params, config, state, xp, probe, first=reset | (state.t == 0))
