"""The hand-built reverse pass of attentive layers (RNN, LSTM, GRU and user cells).

Autodiff through ``lax.scan`` saves what every step needs for its transpose and
transposes each shift, screening write and select of the memory. But the memory
only ever holds earlier hidden states, and which state sits in which slot is
known from a few integers per step. So the forward pass keeps h_t, s_t, c_t,
(RSM) which relevant-set slot each step's screening wrote and the time it
evicted, and (up to ``ModelConfig.keep_projections_mib``) each step's query and
key; the reverse pass re-runs one step at a time on the step's own inputs
(previous mixed state, cell, attended bank): ``jax.vjp`` of the cell, the
attention's reverse by hand (``attention.additive_attention_vjp``).

RSM: the reverse pass carries the memory backwards from its final state, undoing
each store (S gets back the state that left it; a relevant-set write is undone
by putting back the state it evicted) together with the slots' cotangents. A
state's cotangent moves with it from R back to S, and is complete when the
reverse pass reaches the step that stored it: S's slot for h_t then holds
dL/dh_t. No buffer indexed by time; the states put back are gathered once per
block of steps (``_RelevanceReverse``). Full memory: the attended bank is h
itself; slot cotangents go to a dH buffer (``_FullReverse``). Memory O(t b h).

Which models take it: ``models.gradient_path``. The bookkeeping of each memory
kind is one class with a declared interface (``initial``, ``segments``,
``prefix``, ``block_inputs``, ``pop``, ``attended``, ``reverse_attention``,
``end_block``, ``pop_first``); the block size is ``ModelConfig.reverse_block``. The relevance
and eviction rules never enter it: scores carry no gradient, and undoing a
store needs only which R slot it wrote and which state that slot held
(``rsm.Screened``'s ``slot`` and ``replaced``), whatever rule chose them.
"""

import copy
import functools
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from relscreen import attention, cells, core, full_memory, kernels, memories, rsm
from relscreen.config import CellType


def full_segments(length: int) -> int:
  """How many stretches a full memory's passes over ``length`` steps are cut into:
  one per 128 steps, at least 4 and at most 8. With S stretches a step attends to
  about (1 + 1 / S) L / 2 slots on average instead of t; each stretch is one more
  loop to compile (measured at L = 1020: 8 stretches instead of 4 cut MemRNN's
  step by 9% and added 1.2 s to its first compile, docs/RESULTS.md)."""
  return min(8, max(4, -(-length // 128)))


def full_stretches(length: int, segments: int | None = None) -> list[tuple[int, int]]:
  """Steps 1 .. length - 1 of a full memory's forward pass cut into ``segments``
  (default ``full_segments(length)``) stretches ``[start, end)``; the forward
  pass gives a stretch a bank of ``end`` slots (its last step writes slot
  ``end - 1``, which no step of it reads), so early steps do not pay for slots
  they cannot see yet (as the reverse pass's stretches, ``_FullReverse``)."""
  segments = full_segments(length) if segments is None else segments
  ends = sorted({1 + round((length - 1) * (k + 1) / segments) for k in range(segments)})
  return [(a, b) for a, b in zip([1] + ends[:-1], ends) if b > a]


def keeps_projections(config, length: int, batch: int, dtype) -> bool:
  """Whether the forward pass keeps every step's query and key for the reverse
  pass (``ModelConfig.keep_projections_mib``): a relevance or window memory,
  and each [length, batch, hidden] array within the configured MiB."""
  size = length * batch * config.hidden * jnp.dtype(dtype).itemsize
  return config.screened and size <= config.keep_projections_mib * 2**20


def _activation(config, p, pre, c_prev):
  """The cell from its pre-activation ``xp + s rec``: (h, c); c is zeros for RNN cells."""
  if config.cell is CellType.RNN:
    return cells.apply_phi(config.phi, pre, p.get("mod_b")), jnp.zeros_like(pre)
  return cells.lstm_gating(pre, c_prev)


def _gru_activation(p, xp, srec, s):
  """The GRU cell from its input term, its recurrent term ``srec = s V`` and ``s``
  (``cells.gru_gating``), with ``bn`` from the summed-per-step parameters: h."""
  return cells.gru_gating(xp, srec, s, p["bn"])


def _local_first(config, p, s_init, c_init, x_0):
  h, a, c = core._cell(p, config, core.project_input(p, config, x_0), s_init, c_init)  # pylint: disable=protected-access
  s = core.first_mixed(config, a, s_init)
  return h, s, (jnp.zeros_like(h) if c is None else c)


def attentive_forward(params, config, x, s_init, c_init, start=None, resets=None,
                      records=True):
  """The plain forward scan over time-major inputs ``x`` [t, b, i]; also returns
  what the custom reverse pass needs: h, s and (LSTM) c of every step
  [t, b, h], written in place into buffers, and (RSM) the R slot each step's
  screening wrote and the time of the state it replaced there ([t - 1, b] each;
  from a fresh state h_t sits in S's slot t mod nu, ``rsm``'s ring starting
  from an empty memory) and, last, the weights each step gave the bank's slots
  ([t - 1, b, nu + rho]: the reverse pass then recomputes only the tanh, not
  the scores and their softmax). The input projection happens inside the step, so
  neither it nor its cotangent is ever stored for the whole sequence.

  Returns ``(final state, h, s, c, records, projections)``: ``projections`` is
  (queries, keys) [t, b, h] each, step t's query ``s_{t-1} Va`` in row t (row
  0 zeros) and h_t's key ``h_t Ua``, where ``keeps_projections`` says so, else
  None (the reverse pass recomputes them).

  ``start``: a given state to continue from (RSM memories only; ``s_init`` and
  ``c_init`` are then unused). Its step 0 is ``core.any_step``'s, and the
  records also hold, per step, the S slot the store wrote and the time of the
  state that left it (S's order is then its slots' times, not t mod nu).
  ``resets`` [t, b] (with ``start`` only): rows that restart from a fresh state
  before the step (``core.step_with_reset``); the records then also hold the
  memory's slot times just before each step's reset ([t - 1, b, slots]).

  On the CPU, an RNN cell with tanh or an LSTM cell, from a fresh or a given
  state (with resets too, but for reservoir eviction), over a relevance
  memory with any rules (or a window), keeping the queries and keys
  (``core.kernel_fits``), runs steps 1 .. t - 1 as one kernel call
  (``kernels.rnn_forward``) instead of the scan, with the same records.

  ``records=False`` (a forward with no reverse pass to follow): only the final
  state and h are wanted, and the rest comes back as None; the kernel then
  keeps only h for every step (XLA's scan drops the rest by itself), and
  runs whether or not the queries and keys would be kept."""
  length = x.shape[0]
  params = core.loop_params(params, config)
  zero = jnp.zeros((), x.dtype)
  if start is None:
    # A full memory's bank lives in ``hist``/``keys`` below; its state only holds h_0.
    state = core.init_state(config, x.shape[1], s_init, c_init, capacity=1,
                            dtype=s_init.dtype)
    state, first = core.first_step(params, config, state,
                                   core.project_input(params, config, x[0]), zero)
  elif resets is None:
    state, first = core.any_step(params, config, start,
                                 core.project_input(params, config, x[0]), zero)
  else:
    state, first = core.step_with_reset(params, config, start,
                                        core.project_input(params, config, x[0]), zero,
                                        resets[0])
  # The cell's own state (an LSTM's c, a user cell's extra: any pytree) is kept too.
  keep_c = config.cell in (CellType.LSTM, CellType.USER)
  store = keeps_projections(config, x.shape[0], x.shape[1], x.dtype)
  kept = (first["h"], state.s, state.c) if keep_c else (first["h"], state.s)
  if store:
    kept += (jnp.zeros_like(first["h"]), first["h"] @ params["Ua"])
  buffers = jax.tree_util.tree_map(
      lambda v: jnp.zeros((x.shape[0],) + v.shape, v.dtype).at[0].set(v), kept)

  def record(buffers, t, h, s, c, proj=()):
    # An in-bounds update (``.at[t].set`` adds a bounds select to every write).
    return jax.tree_util.tree_map(lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v, t, 0),
                                  buffers, ((h, s, c) if keep_c else (h, s)) + proj)

  if not config.screened:  # the full memory: h_j in slot j, attended in stretches
    batch = x.shape[1]
    hist = jnp.zeros((batch, 1, config.hidden), s_init.dtype).at[:, 0].set(first["h"])
    keys = jnp.zeros_like(hist).at[:, 0].set(state.memory.keys[:, 0])

    def body(carry, inputs):
      # The stretch's bank has a slot for each of its steps; step t attends to
      # h_0 .. h_{t-1} (slot t and later are empty).
      s, c, newest, hist, keys, buffers = carry
      t, x_t = inputs
      n = hist.shape[1]
      valid = jnp.broadcast_to(jnp.arange(n)[None, :] < t, (batch, n))
      attended = attention.additive_attention_banks(
          s @ params["Va"], ((keys, hist, valid),), params["v"])
      s = core.mixed(config, newest, attended.context)
      h, _, c = core._cell(params, config, core.project_input(params, config, x_t), s, c)  # pylint: disable=protected-access
      hist = jax.lax.dynamic_update_index_in_dim(hist, h, t, axis=1)
      keys = jax.lax.dynamic_update_index_in_dim(keys, h @ params["Ua"], t, axis=1)
      return (s, c, h, hist, keys, record(buffers, t, h, s, c)), None

    carry = (state.s, state.c, first["h"], hist, keys, buffers)
    for start, end in full_stretches(length):
      # Grow the bank to this stretch's end once, not a slice of a full-length bank
      # per step (XLA copies such a slice at every step).
      s, c, newest, hist, keys, buffers = carry
      grow = ((0, 0), (0, end - hist.shape[1]), (0, 0))
      carry = (s, c, newest, jnp.pad(hist, grow), jnp.pad(keys, grow), buffers)
      carry, _ = jax.lax.scan(body, carry, (jnp.arange(start, end), x[start:end]))
    s, c, _, hist, keys, buffers = carry
    time = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    final = core.State(jnp.asarray(length, jnp.int32), s, c, full_memory.FullMemory(
        hist, keys, time, jnp.full((batch,), length, jnp.int32)))
    admitted = None
  else:
    nu, rules = config.nu, memories.rules_of(config)
    t0 = jnp.zeros((), jnp.int32) if start is None else start.t  # h_0's time
    fresh = core.init_state(config, x.shape[1], dtype=x.dtype)  # what a restarted row gets

    def body(carry, inputs):
      mem, s, c, newest, buffers = carry
      t, x_t, reset = inputs
      if reset is not None:  # rows that start afresh: zero s and c, an empty memory
        before = mem.time
        s, c = core.pick_rows(reset, (fresh.s, fresh.c), (s, c))
        # The memory by row scatters, which XLA does in place (a select copies it).
        mem = rsm.RSMState(*(_put_rows(a, reset, f) for a, f in zip(mem, fresh.memory)))
      query = s @ params["Va"]
      context, alpha = _attend(config, query, mem, params["v"])
      mem = rsm.accumulate(mem, alpha, nu, rules)
      s_mixed = core.mixed(config, newest, context)
      # A restarted row takes step 0's rule: the cell runs on its zero s, and s
      # becomes the RNN cell's pre-activation (zero for other cells).
      s = s_mixed if reset is None else core.pick_rows(reset, s, s_mixed)
      h, a, c = core._cell(params, config, core.project_input(params, config, x_t), s, c)  # pylint: disable=protected-access
      if reset is not None:
        s = core.pick_rows(reset, core.first_mixed(config, a, s), s_mixed)
      key = h @ params["Ua"]
      mem, screened = rsm.store(mem, h, key, t0 + t, jnp.ones(h.shape[:1], bool), nu, rules)
      kept = (screened.slot, screened.replaced)
      if start is not None:  # S's order is its slots' times: which slot, and who left it
        kept += (screened.stored, screened.time)
      if reset is not None:
        kept += (before,)
      kept += (jax.lax.stop_gradient(alpha),)  # the reverse pass's weights
      return (mem, s, c, h, record(buffers, t, h, s, c, (query, key) if store else ())), kept

    def scanned(mem):
      carry = (mem, state.s, state.c, first["h"], buffers)
      (mem, s, c, _, filled), admitted = jax.lax.scan(
          body, carry, (jnp.arange(1, length), x[1:], None if resets is None else resets[1:]))
      return mem, s, c, filled, admitted

    lean = not records
    if ((resets is None or not core.evicts_by_reservoir(config)) and (store or lean)
        and length > 1 and core.kernel_fits(config, params)):
      # The whole scan in one CPU kernel call (``kernels.rnn_forward``); s_t
      # (and an LSTM's c_t) is in its buffer.
      lstm = config.cell is CellType.LSTM
      row0 = (first["h"], state.s, jnp.zeros_like(first["h"]), first["h"] @ params["Ua"],
              *((state.c,) if lstm else ()))

      def kernel(mem, row0, xs, weights, restarts):
        mem_out, filled, screened, alpha = kernels.rnn_forward(
            mem, row0, xs, weights, nu, core.context_weight(config), stamp=t0 + 1,
            lean=lean, resets=restarts, **core.kernel_rules(config, mem[4], length - 1))
        # From a given state S's order is its slots' times: also which slot each
        # store wrote and the time of the state that left it (as ``body`` keeps),
        # and with restarting rows the slots' times before each step's restarts.
        screened = screened if start is not None else screened[:2]
        h, s, q, k, *c = filled
        last = (length - 1) % 2 if lean else -1  # a lean forward's s and c: rings of 2
        out = (rsm.RSMState(*mem_out), s[last], c[0][last] if lstm else state.c)
        if lean:
          return out + ((h,),)
        return out + ((h, s, *c) + ((q, k) if store else ()), (*screened, alpha))

      def fallback(mem, *_):
        mem, s, c, filled, admitted = scanned(mem)
        return (mem, s, c, filled[:1]) if lean else (mem, s, c, filled, admitted)
      found = kernels.dispatch(True, kernel, fallback, state.memory, row0, x[1:],
                               core.kernel_weights(config, params),
                               None if resets is None else resets[1:])
      mem, s, c, buffers, admitted = found if not lean else (*found, None)
    else:
      mem, s, c, buffers, admitted = scanned(state.memory)
    final = core.State(t0 + length, s, c, mem)
    if lean:
      return final, buffers[0], None, None, None, None
  proj = buffers[-2:] if store else None
  buffers = buffers[:-2] if store else buffers
  h, s, c = buffers if keep_c else (*buffers, None)
  return final, h, s, c, admitted, proj


def _attend(config, query, mem, v):
  """A step's attention over a relevance or window memory's slots, (context, alpha):
  the CPU kernel of ``relscreen.kernels`` where it is built
  (``ModelConfig.cpu_kernel``) and the bank holds ``kernels.ATTEND_FROM``
  elements or more, XLA's ``additive_attention`` elsewhere. Not differentiable
  through the kernel: the custom pass's forward only."""
  def xla(query, keys, vals, time, v):
    attended = attention.additive_attention(query, keys, vals, time >= 0, v)
    return attended.context, attended.alpha
  wanted = config.cpu_kernel and mem.keys.size >= kernels.ATTEND_FROM
  return kernels.dispatch(wanted, kernels.slots_attend, xla, query, mem.keys, mem.vals,
                          mem.time, v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def attentive_scan(params, config, x, s_init, c_init):
  """Hidden states h [t, b, h] of a fresh attentive layer over time-major
  ``x`` [t, b, i], and its final state; differentiated by the pass below."""
  final, h, *_ = attentive_forward(params, config, x, s_init, c_init, records=False)
  return h, final


def _attentive_scan_fwd(params, config, x, s_init, c_init):
  final, h, s, c, admitted, proj = attentive_forward(params, config, x, s_init, c_init)
  memory = final.memory if config.screened else None
  return (h, final), (params, x, (s_init, c_init), h, s, c, (admitted, proj), memory)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def attentive_scan_from(params, config, x, start, resets=None):
  """``attentive_scan`` from a given state ``start`` (a relevance-screened or
  window memory, one layer): hidden states h [t, b, h] and the final state.
  Its gradient reaches the parameters, ``x`` and ``start`` (s, c and the stored
  states and keys; the scores, times and counters get none, as under autodiff,
  where they only steer which state is kept). ``resets`` [t, b] (optional):
  rows that restart from a fresh state before a step, as ``core.step_with_reset``."""
  final, h, *_ = attentive_forward(params, config, x, None, None, start, resets,
                                   records=False)
  return h, final


def _attentive_scan_from_fwd(params, config, x, start, resets=None):
  final, h, s, c, admitted, proj = attentive_forward(params, config, x, None, None, start,
                                                     resets)
  return (h, final), (params, x, (start, resets), h, s, c, (admitted, proj), final.memory)


class Bookkeeping(Protocol):
  """What the reverse pass needs from a memory kind: its slots, carried backwards.

  ``initial`` is the carry at the last step (the final memory and zero slot
  cotangents); ``segments`` the number of stretches of the reverse pass with their
  own bank size; ``prefix(n, carry)`` the bookkeeping for a stretch whose last
  step is ``n`` (it attends to at most ``n`` slots), with the carry fitted to it;
  made once ``carry`` (the previous stretch's) exists.
  Per block of steps ``t`` [n], ``block_inputs`` gathers what the steps' undos need
  at once (``rows``, one per step). Per step, ``pop`` gives h_t's cotangent as a
  value and as a key, ``attended`` undoes step t's store and returns the bank
  step t attended to (a tuple of one ``(keys, values)`` pair; the RSM's
  bookkeeping returns instead what the undo takes, and undoes it in
  ``reverse_attention``, where one CPU kernel does both), its mask or, where the
  forward pass kept them, the weights step t gave its slots (likewise), and the
  carry, and ``reverse_attention`` runs the attention's
  reverse over that bank for the context's cotangent and adds the bank's
  cotangents to the carry (the keys' [b, m, h]; the values' are
  ``alpha[..., None] * d_context[:, None]``), returning the query's and v's
  cotangents; it may return a record per step, which ``end_block`` gets for
  the whole block (stacked) once its steps ran. After the last block,
  ``pop_first`` gives h_0's cotangents (from a fresh state).
  """

  initial: Any
  segments: int

  def prefix(self, last: int, carry) -> tuple["Bookkeeping", Any]: ...
  def block_inputs(self, t, admitted) -> Any: ...
  def pop(self, carry, t, rows) -> tuple[Any, Any]: ...
  def pop_first(self, carry) -> tuple[Any, Any]: ...
  def attended(self, carry, t, admitted, rows) -> tuple[Any, Any, Any]: ...
  def reverse_attention(self, carry, query, banks, weights, v, d_context,
                        rows) -> tuple[Any, Any, Any, Any]: ...
  def end_block(self, carry, records) -> Any: ...


class _RelevanceReverse:
  """RSM bookkeeping of the reverse pass: the memory and its slots' cotangents are
  carried backwards from the final memory, undoing one store per step.

  Attention does not depend on the order of the slots, so the reverse pass keeps
  S and R as one bank (S in slots [0, nu), R after it), attended in one piece,
  and S as a ring (h_t in slot t mod nu): undoing a store rewrites one S slot
  and, where screening wrote one, one R slot; nothing shifts or concatenates.
  The newest state enters the step on its own (``newest``), so its cotangent
  needs no slot either.

  From a given state (``start``: its memory and its t, which is h_0's time
  t0), S's slots are not in ring order and the records say which S slot each
  store wrote and the time of the state that left it; a state that undoing
  puts back is h_{time - t0} or, for a time before t0, the state the given
  memory holds with that time (its stored key too). Such a state's cotangent
  stays in the carry, which ends as the slot cotangents of the memory after
  step 0 (the caller runs step 0's reverse)."""

  segments = 1

  def __init__(self, config, h, ua, memory, start=None, keys=None):
    self.nu, self.h, self.ua, self.start = config.nu, h, ua, start
    self.kernel = config.cpu_kernel
    # Every h_t's key [t, b, h]: the forward pass's where it kept them (``keys``);
    # else, from a given state, where states are looked up by time, made once here,
    # and from a fresh state per block (``block_inputs``).
    self.h_keys = keys if keys is not None or start is None else h @ ua
    # The slots' times are not carried: the weights the forward kept mask the bank.
    self.initial = (memory.vals, memory.keys, jnp.zeros_like(memory.vals),
                    jnp.zeros_like(memory.keys))

  def prefix(self, last: int, carry) -> tuple["_RelevanceReverse", Any]:
    del last  # the memory has nu + rho slots whatever the step
    return self, carry

  def block_inputs(self, t, admitted):
    """For a block of steps ``t`` [n]: the states (values and keys, [n, b, h] each)
    that undoing their stores puts back, the one that had left S and the one R
    had evicted, gathered and multiplied by Ua once per block, not per step;
    then the S slot each store wrote ([n] from a fresh state, the same in every
    row; [n, b] from a given one)."""
    if self.start is None:
      evicted = admitted[1]
      left, j = t - self.nu, t % self.nu
      back_at = jnp.maximum(left, 0)  # left S: the same time in every row (k = 1)
      put_back_at = (jnp.maximum(evicted, 0), jnp.arange(evicted.shape[1])[None, :])
      back, put_back = self.h[back_at], self.h[put_back_at]
      if self.h_keys is not None:
        return back, self.h_keys[back_at], put_back, self.h_keys[put_back_at], j
      back_key, put_back_key = jnp.split(jnp.concatenate([back, put_back]) @ self.ua, 2)
      return back, back_key, put_back, put_back_key, j
    _, evicted, j, left = admitted[:4]
    (back, put_back), (back_key, put_back_key) = self._states_at(jnp.stack([left, evicted]))
    return back, back_key, put_back, put_back_key, j

  def _states_at(self, times):
    """The states with these times [..., b] (values and keys, [..., b, h]):
    h_{time - t0}, or the start memory's state of that time before t0."""
    start, t0 = self.start
    rel = times - t0
    rows = jnp.arange(times.shape[-1])
    index = (jnp.clip(rel, 0, self.h.shape[0] - 1), rows)
    vals, keys = self.h[index], self.h_keys[index]
    # Before t0: the start memory's slot holding that time (one per row at most).
    held = start.time.reshape((1,) * (times.ndim - 1) + start.time.shape)  # [..., b, m]
    match = (held == times[..., None]) & (times >= 0)[..., None]
    slot = (rows, jnp.argmax(match, axis=-1))
    earlier = ((rel < 0) & jnp.any(match, axis=-1))[..., None]
    return (jnp.where(earlier, start.vals[slot], vals),
            jnp.where(earlier, start.keys[slot], keys))

  def pop(self, carry, t, rows):
    """The cotangents of h_t as a value and as a key, summed over its uses as a
    slot: after step t's store, h_t is in the S slot that store wrote (t mod nu
    from a fresh state)."""
    del t
    _, _, d_vals, d_keys = carry
    j = jnp.broadcast_to(rows[4], d_vals.shape[:1])
    return rsm.rows_at(d_vals, j), rsm.rows_at(d_keys, j)

  def pop_first(self, carry):
    """``pop`` for h_0 of a fresh state, in S's slot 0."""
    return self.pop(carry, 0, (None,) * 4 + (0,))

  def restore(self, carry, reset, before):
    """Rows that restarted at this step get back the memory they had just
    before (its slots' times ``before`` [b, slots]), with zero cotangents:
    nothing after the restart read it."""
    old_vals, old_keys = (jnp.swapaxes(a, 0, 1) for a in self._states_at(before.T))
    return tuple(_put_rows(a, reset, new) for a, new in
                 zip(carry, (old_vals, old_keys, 0.0, 0.0)))

  def attended(self, carry, t, admitted, rows):
    """What undoing step t's store takes (done in ``reverse_attention``, with the
    attention's reverse: on the CPU one kernel does both): the S slot it wrote
    (one for every row from a fresh state, else per row), the R slot screening
    wrote (-1: none), the state that left S and the one R
    had evicted, with their keys. Returns that, the weights step t gave its
    slots (kept by the forward pass; 0 on empty slots) and the carry."""
    del t
    back, back_key, put_back, put_back_key, j = rows
    slot = admitted[0]
    r_col = jnp.where(slot >= 0, self.nu + slot, -1)  # the R slot written, -1: none
    return (j, r_col, back, back_key, put_back, put_back_key), (admitted[-1],), carry

  def reverse_attention(self, carry, query, banks, weights, v, d_context, rows):
    """Undoes the store ``banks`` describes (``attended``) and adds the attention's
    cotangents: the kernel of ``relscreen.kernels`` on the CPU where it is built
    (``ModelConfig.cpu_kernel``), XLA's version (``_undo_and_attend``) elsewhere."""
    del rows
    (alpha,) = weights
    dq, d_v, carry = kernels.dispatch(self.kernel, kernels.slots_reverse, self._undo_and_attend,
                                      carry, banks, query, alpha, v, d_context)
    return dq, d_v, carry, None

  @staticmethod
  def _undo_and_attend(carry, undo, query, alpha, v, d_context):
    """``reverse_attention`` in XLA. The undo: the S slot gets back the state that
    left S, and the R slot that screening wrote the state it had evicted. The
    written R slot's cotangent belongs to the state that left S and moves with
    it; the evicted state's so far is zero."""
    vals, keys, d_vals, d_keys = carry
    j, r_col, back, back_key, put_back, put_back_key = undo
    # The written R slot's cotangent, one row per batch row.
    moved = [jnp.where(r_col[:, None] >= 0, rsm.rows_at(d, jnp.maximum(r_col, 0)), 0.0)
             for d in (d_vals, d_keys)]
    vals = rsm.select_slots(vals, j, r_col, back, put_back)
    # The keys by scatter (``rsm.write_slots``): with a select XLA fuses the undo
    # into the attention's tanh as well as into the carried bank, and copies the
    # bank every step to keep both.
    keys = rsm.write_slots(keys, j, r_col, back_key, put_back_key)
    d_vals = rsm.select_slots(d_vals, j, r_col, moved[0], 0.0)
    d_keys = rsm.select_slots(d_keys, j, r_col, moved[1], 0.0)
    dq, dk, d_values, d_v, _ = attention.additive_attention_vjp_weighted(
        query, keys, vals, alpha, v, d_context)
    return dq, d_v, (vals, keys, d_vals + d_values, d_keys + dk)

  def end_block(self, carry, records):
    del records
    return carry

  def rnn_block(self, carry, first, adm, g, q, v, ua_t, both_t, attn, reset, lstm=None):
    """A whole block of an RNN cell's (tanh) or an LSTM cell's reverse steps
    in one kernel call (``kernels.rnn_block_reverse``; the CPU only): what the
    scan of ``_attentive_scan_bwd``'s ``step`` gives, for ``carry`` = (memory
    carry, d_newest, dq_next, dc_next, d_small), the block's first step
    ``first`` and records ``adm``, the whole sequence's output cotangents ``g``
    [b, t, h] (batch-major) and queries ``q`` [t, b, h] (the states and their
    keys are the book's); ``lstm`` = (the block's gate pre-activations [n, b,
    4h], the sequence's cell states [t, b, h]) for an LSTM. From a given state
    the block's S slots and the states its undoing puts back come from the
    records (``block_inputs``, gathered by time here); rows restarting in the
    block (``reset`` [n, b], or None) get back the memory the records say they
    had before (``restore``'s, in the kernel). Returns the carry and
    (dq, dpre, dk) [n, b, h] each (dpre [n, b, 4h] for an LSTM)."""
    mem, d_newest, dq_next, dc_next, d_small = carry
    given = None
    if self.start is not None:
      n = adm[-1].shape[0]
      back, back_key, put_back, put_back_key, j = self.block_inputs(first + jnp.arange(n), adm)
      given = (j, (back, back_key, put_back, put_back_key))
    restarts = None
    if reset is not None:
      memory, t0 = self.start
      restarts = (reset, adm[4], memory.vals, memory.keys, memory.time, t0)
    out, grads, d_v = kernels.rnn_block_reverse(
        (*mem, d_newest, dq_next), first, adm[0], adm[1], adm[-1], self.h, self.h_keys, g, q,
        v, ua_t, both_t, self.nu, attn, None if lstm is None else (dc_next, *lstm), given,
        restarts)
    d_small = {**d_small, "v": d_small["v"] + d_v}
    dc_next = dc_next if lstm is None else out[6]
    return (tuple(out[:4]), out[4], out[5], dc_next, d_small), grads


class _FullReverse:
  """Full-memory bookkeeping of the reverse pass (k = 1: slot j holds h_j): the
  bank is h itself, batch-major, and the slots' cotangents sum into dH, dK.

  Steps up to t = n attend to fewer than n slots: ``prefix(n)`` restricts the
  bank and dH, dK to slots 0 .. n, so a stretch of early steps costs what its
  slots cost.

  The values' cotangents are rank one per step (``alpha_t`` times ``d_context_t``),
  so dH gets a block's at once, as one batched matrix product at the block's end,
  not a pass over the bank per step. The block's own slots are popped during
  the block, so their share from the block's later steps is kept apart, in
  ``own`` [b, block, h] (slot ``t0 + i`` in row i, ``t0`` the block's first step).

  The keys' cotangents of a block's steps sum into ``recent`` (emptied into dK
  at the block's end), from whose sums over the slots each step reads its
  query's cotangent (``attention.additive_attention_vjp_into``); a slot's key
  cotangent is dK's entry plus recent's."""

  def __init__(self, config, h, ua, memory):
    del memory
    self.segments = full_segments(h.shape[0])  # stretches with their own bank size
    self.hist = jnp.swapaxes(h, 0, 1)  # [b, t, h]
    self.keys = self.hist @ ua  # every key once, as the forward pass cached them
    own = jnp.zeros((h.shape[1], max(1, config.reverse_block), h.shape[2]), h.dtype)
    zeros = jnp.zeros_like(self.hist)
    self.initial = (zeros, zeros, zeros, jnp.zeros_like(h[0]), own)
    self.bank = (self.keys, self.hist)  # the slots attended to; ``prefix`` narrows it

  def prefix(self, last: int, carry) -> tuple["_FullReverse", Any]:
    """The same bookkeeping over slots 0 .. ``last`` only, for a stretch whose
    last step is ``last``: its steps attend to slots before ``last`` and pop
    slot ``last`` at most. The bank is sliced here, once (XLA copies a slice
    taken inside the loop at every step), and so is the carry: slots after
    ``last`` were popped by later steps and are not read again, and a carry as
    large as the bank takes the steps' cotangents as a plain sum, not an update
    of a slice (measured, docs/RESULTS.md).

    The slices are made to depend on the previous stretch's ``carry`` (plus 0
    times one of its entries), or XLA's CPU scheduler takes every stretch's
    slices at the start and keeps them all alive (an ``optimization_barrier``
    does not survive its pipeline): MemRNN's memory plan at L = 1020 was 106 MB
    with 8 stretches, 78 MB with this (73 MB with dH and dK narrowed as well).
    (Were that entry not finite, the gradient would not be either, with or
    without this.)"""
    dh, dk, recent, recent_sum, own = carry
    size = last + 1
    zero = 0.0 * dk[0, 0, 0]
    view = copy.copy(self)
    view.bank = (self.keys[:, :size] + zero, self.hist[:, :size] + zero)
    return view, (dh[:, :size], dk[:, :size], recent[:, :size], recent_sum, own)

  def block_inputs(self, t, admitted):
    del admitted
    return jnp.full_like(t, t[0])  # the block's first step, for each of its steps

  def pop(self, carry, t, t0):
    d_hist, d_keys, recent, _, own = carry
    batch = d_hist.shape[0]
    slot = jnp.full((batch,), t)
    dv, dk, dk_recent = (rsm.rows_at(a, slot) for a in (d_hist, d_keys, recent))
    dv_own = rsm.rows_at(own, jnp.full((batch,), t - t0))
    return dv + dv_own, dk + dk_recent

  def pop_first(self, carry):
    """``pop`` for h_0 (no block's own slot: 0 - 0)."""
    return self.pop(carry, 0, jnp.zeros((), jnp.int32))

  def attended(self, carry, t, admitted, rows):
    del admitted, rows
    batch, n = self.bank[1].shape[:2]
    valid = jnp.broadcast_to(jnp.arange(n)[None, :] < t, (batch, n))
    return (self.bank,), (valid,), carry

  def reverse_attention(self, carry, query, banks, weights, v, d_context, rows):
    dh, dk, recent, recent_sum, own = carry  # as many slots as the bank (``prefix``)
    ((keys, values),), (ok,) = banks, weights  # the bank's mask
    dq, recent, recent_sum, d_v, alpha = attention.additive_attention_vjp_into(
        query, keys, values, ok, v, d_context, recent, recent_sum)
    # The block's own slots t0 .. t0 + block - 1 (past the bank: weight 0).
    cols = rows + jnp.arange(own.shape[1])
    alpha_own = jnp.take(alpha, cols, axis=1, mode="fill", fill_value=0)
    own = own + alpha_own[..., None] * d_context[:, None, :]
    return dq, d_v, (dh, dk, recent, recent_sum, own), (alpha, d_context)

  def end_block(self, carry, records):
    """dH for the block's steps at once (its own slots' entries are not read
    again); the block's key cotangents moved into dK."""
    dh, dk, recent, recent_sum, own = carry
    alpha, d_context = records  # [steps, b, n], [steps, b, h]; n: dH's slots
    dh = dh + jnp.einsum("tbm,tbh->bmh", alpha, d_context)
    return (dh, dk + recent, jnp.zeros_like(recent), jnp.zeros_like(recent_sum),
            jnp.zeros_like(own))


def _attentive_scan_bwd(config, residuals, cotangents):
  """Reverse pass. Per step it runs the cell's reverse (``jax.vjp`` of
  ``_activation``; of ``_gru_activation``, whose ``z s_t`` term gives s_t a
  cotangent besides the one through ``s_t V``; of a user cell's own step), the
  attention's (``attention.additive_attention_vjp``, by hand: one tanh over the
  slots serves the weights and every derivative) and the matrix products in
  between by hand, against transposed copies of the matrices made once (XLA's
  CPU dot is several times slower on a transposed operand). The gradients of
  the matrices (Va, Ua, U/V/W, b) are formed from the step cotangents once per
  block of steps, as matrix products over the block, not as an outer product
  per step; a user cell's own parameters, which the pass cannot see into, get
  theirs summed step by step."""
  params, x, origin, h, s, c, (admitted, proj), memory = residuals
  queries, keys = (None, None) if proj is None else proj
  given = isinstance(origin[0], core.State)  # else (s_init, c_init) of a fresh state
  from_state, resets = origin if given else (None, None)
  g_h, _ = cotangents  # the final state's cotangent is zero: ``forward`` stops it
  params = dict(params)
  lstm, gru = config.cell is CellType.LSTM, config.cell is CellType.GRU
  user = config.cell is CellType.USER
  ua, va = params["Ua"], params["Va"]
  ua_t = ua.T
  if user:  # no kernels of ours: the cell's own parameters are summed per step
    both_t = va.T
  else:
    recurrent = params["W"][:config.hidden] if lstm else params["V"]
    input_kernel = params["W"][config.hidden:] if lstm else params["U"]
    both_t = jnp.concatenate([recurrent, va], axis=1).T
  act = {k: params[k] for k in ("mod_b", "bn", "cell") if k in params}  # summed per step
  if config.screened:  # from a given state, always (``attentive_scan_from``)
    start = (from_state.memory, from_state.t) if given else None
    book: Bookkeeping = _RelevanceReverse(config, h, ua, memory, start, keys)
  else:
    book = _FullReverse(config, h, ua, memory)
  # An RNN cell with tanh or an LSTM cell over a relevance or window memory
  # from a fresh state or a given one (rows may restart), the queries and
  # keys kept: each block of steps can run as one kernel call on the CPU
  # (``_RelevanceReverse.rnn_block``).
  fused = (config.cpu_kernel and config.screened and not act
           and queries is not None and core.kernel_cell(config))
  # The kernel reads the outputs' cotangents batch-major, as they arrive: g_h
  # is the transpose of a [b, t, h] array, and XLA cancels the two transposes
  # (time-major, XLA transposed it once for the loop over blocks and once for
  # the first short block, and copied one to the loop's layout: three passes).
  g_batch = jnp.swapaxes(g_h, 0, 1) if fused else None

  def step(book, carry, inputs):
    mem, d_newest, dq_next, dc_next, d_small = carry
    t, pre_t, q_t, g_t, h_prev, c_prev, adm, rows, reset = inputs
    dv, dk = book.pop(mem, t, rows)
    dh = g_t + d_newest + dv + dk @ ua_t  # d_newest: h_t as step t + 1's newest state
    if user:  # the user's step on (s_t, its extra, x_t): pre_t is (x_t, s_t)
      x_t, s_t = pre_t
      _, pullback = jax.vjp(lambda a, s_, e, x_: config.user_cell.step(a["cell"], s_, e, x_),
                            act, s_t, c_prev, x_t)
      d_act, ds_direct, dc_prev, dxp = pullback((dh, dc_next))
      dpre = dq_next[:, :0]  # no recurrent kernel of ours
    elif gru:  # h_t from its input term, its recurrent term s_t V and s_t itself
      _, pullback = jax.vjp(_gru_activation, act, *pre_t)
      d_act, dxp, dpre, ds_direct = pullback(dh)
      dc_prev = dc_next  # zeros: a GRU has no cell state
    else:
      c_prev = jnp.zeros_like(h_prev) if c_prev is None else c_prev
      _, pullback = jax.vjp(lambda p, pre, cp: _activation(config, p, pre, cp), act, pre_t,
                            c_prev)
      d_act, dpre, dc_prev = pullback((dh, dc_next))
      dxp, ds_direct = dpre, 0.0  # pre = xp + s_t rec: one cotangent for both terms
    # s_t fed the cell (through s_t rec) and step t + 1's query (s_t Va): one product.
    ds = jnp.concatenate([dpre, dq_next], axis=-1) @ both_t + ds_direct
    if reset is not None:
      # A restarted row: the cell ran on a zero s and a fresh c, and s_t is not
      # mixed but the RNN cell's pre-activation (zero for other cells), read
      # only by step t + 1's query, which attends to h_t alone: its cotangent
      # is exactly zero there (one slot, weight 1 whatever the query).
      ds, dc_prev = core.pick_rows(reset, jax.tree_util.tree_map(jnp.zeros_like, (ds, dc_prev)),
                                   (ds, dc_prev))
    banks, weights, mem = book.attended(mem, t, adm, rows)
    _, pullback = jax.vjp(lambda n, ctx: core.mixed(config, n, ctx), h_prev, h_prev)
    d_newest, d_context = pullback(ds)  # s_t is linear in the newest state and the context
    dq, d_v, mem, record = book.reverse_attention(mem, q_t, banks, weights, params["v"],
                                                  d_context, rows)
    if reset is not None:  # before the restart: the memory the row had
      mem = book.restore(mem, reset, adm[4])
    d_small = jax.tree_util.tree_map(jnp.add, d_small, {"v": d_v, **d_act})
    return (mem, d_newest, dq, dc_prev, d_small), (dq, (dxp, dpre) if gru or user else dpre,
                                                   dk, record)

  def block(book, carry, inputs):
    carry, sums = carry
    t, x_b, g_b, h_b, h_prev, s_prev, s_b, c_prev, adm, reset, q_b = inputs
    if reset is not None:  # restarted rows: the cell ran on a zero s and a fresh c
      # (Their query was a zero s too, but over the empty memory a restarted row
      # attends to, the weights are 0 whatever the query, and so is its cotangent.)
      s_b, c_prev = core.pick_rows(reset, fresh, (s_b, c_prev))
    q_b = s_prev @ va if q_b is None else q_b  # the queries, where the forward kept none

    def scanned(carry):
      # What the steps recompute without needing a cotangent, for the block at once.
      if user:
        pre = (x_b, s_b)
      else:
        xp, srec = core.project_input(params, config, x_b), s_b @ recurrent
        pre = (xp, srec, s_b) if gru else xp + srec
      carry, (dq, dpre, dk, records) = jax.lax.scan(
          functools.partial(step, book), carry,
          (t, pre, q_b, g_b, h_prev, c_prev, adm, book.block_inputs(t, adm), reset),
          reverse=True)
      return (book.end_block(carry[0], records),) + carry[1:], (dq, dpre, dk)

    if fused:  # the whole block in one CPU kernel call
      # An LSTM's gates for the block at once (one product), and its cell states.
      gates = ((core.project_input(params, config, x_b) + s_b @ recurrent, c),) if lstm else ()
      carry, (dq, dpre, dk) = kernels.dispatch(
          True, lambda c, *g: book.rnn_block(c, t[0], adm, g_batch, queries, params["v"], ua_t,
                                             both_t, core.context_weight(config), reset, *g),
          lambda c, *_: scanned(c), carry, *gates)
    else:
      carry, (dq, dpre, dk) = scanned(carry)
    dxp, drec = dpre if gru or user else (dpre, dpre)  # input and recurrent terms'
    outer = lambda a, b: _rows(a).T @ _rows(b)
    sums = {**sums, "Va": sums["Va"] + outer(s_prev, dq), "Ua": sums["Ua"] + outer(h_b, dk)}
    if user:  # dxp is the input's own cotangent
      return (carry, sums), dxp
    sums["rec"] = sums["rec"] + outer(s_b, drec)
    sums["in"] = sums["in"] + outer(x_b, dxp)
    sums["b"] = sums["b"] + jnp.sum(dxp, axis=(0, 1))
    return (carry, sums), dxp @ input_kernel.T

  length = h.shape[0]

  def inputs_at(first, n):
    """Steps ``first`` .. ``first + n - 1``'s inputs to ``block``, sliced from the
    whole-sequence arrays inside the loop over blocks: slices taken before it
    (h[1:], s[:-1], ...) are copies of [L, B, H] arrays, about a tenth of
    RelRNN's step at batch 10 (docs/RESULTS.md)."""
    def seq(a, offset):  # a[first + offset : first + offset + n], for a pytree
      return jax.tree_util.tree_map(
          lambda v: jax.lax.dynamic_slice_in_dim(v, first + offset, n), a)
    # ``admitted`` starts at step 1, the others at step 0.
    return (first + jnp.arange(n), seq(x, 0), seq(g_h, 0), seq(h, 0), seq(h, -1),
            seq(s, -1), seq(s, 0), seq(c, -1), seq(admitted, -1), seq(resets, 0),
            seq(queries, 0))

  # What a restarted row's step ran on: zero s (query and cell), its cell's fresh c.
  if resets is not None:
    fresh_state = core.init_state(config, h.shape[1], dtype=h.dtype)
    fresh = (jnp.zeros_like(h[0]), fresh_state.c)
  zeros = jnp.zeros_like(h[0])
  sums = {"Va": jnp.zeros_like(va), "Ua": jnp.zeros_like(ua)}
  if not user:
    sums["rec"], sums["in"] = jnp.zeros_like(recurrent), jnp.zeros_like(input_kernel)
    sums["b"] = jnp.zeros_like(params["b"])
  small = {"v": jnp.zeros_like(params["v"]), **jax.tree_util.tree_map(jnp.zeros_like, act)}
  dc = zeros if c is None else jax.tree_util.tree_map(lambda a: jnp.zeros_like(a[0]), c)
  carry = ((book.initial, zeros, zeros, dc, small), sums)
  # Whole blocks cover the last steps, in stretches that attend to at most as many
  # slots as their last step does; the first ``rest`` steps form a short block.
  chunk = max(1, min(config.reverse_block, length - 1))
  rest = (length - 1) % chunk
  blocks = (length - 1) // chunk
  ends = sorted({round(blocks * (k + 1) / book.segments) for k in range(book.segments)} - {0})

  def enter(last, carry):
    """The bookkeeping for a stretch whose last step is ``last``, and the carry
    with its memory part fitted to it (``Bookkeeping.prefix``)."""
    view, mem = book.prefix(last, carry[0][0])
    return view, ((mem,) + carry[0][1:], carry[1])

  dx = []
  for start, end in reversed(list(zip([0] + ends[:-1], ends))):
    view, carry = enter(rest + end * chunk, carry)
    carry, dx_part = jax.lax.scan(
        lambda carry, first, view=view: block(view, carry, inputs_at(first, chunk)), carry,
        1 + rest + chunk * jnp.arange(start, end), reverse=True)
    dx.insert(0, dx_part.reshape((-1,) + dx_part.shape[2:]))
  if rest:
    view, carry = enter(rest, carry)
    carry, dx_head = block(view, carry, inputs_at(1, rest))
    dx.insert(0, dx_head)
  dx_tail = jnp.concatenate(dx)
  (mem, d_newest, dq_next, dc_next, d_small), sums = carry
  ds_next = dq_next @ va.T
  if given:
    # Step 0 by autodiff, from the given state to the memory the reverse pass
    # has undone its way back to (the carry holds that memory's slot cotangents).
    dp, dx0, d_start = _first_step_vjp(config, params, from_state, resets, x[0], mem[2:],
                                       (ds_next, dc_next, g_h[0] + d_newest))
  else:
    dv, dk = book.pop_first(mem)
    s_init, c_init = origin
    _, pullback = jax.vjp(lambda p, si, ci, xt: _local_first(config, p, si, ci, xt),
                          params, s_init, c_init, x[0])
    dp, ds_init, dc_init, dx0 = pullback((g_h[0] + d_newest + dv + dk @ ua.T, ds_next,
                                          dc_next))
    d_start = (ds_init, dc_init)
    sums["Ua"] = sums["Ua"] + h[0].T @ dk
  dp.update({k: jax.tree_util.tree_map(jnp.add, dp[k], d_small[k]) for k in d_small})
  dp["Va"] = dp["Va"] + sums["Va"]
  dp["Ua"] = dp["Ua"] + sums["Ua"]
  if not user:  # a user cell's parameters came with ``d_small``
    dp["b"] = dp["b"] + sums["b"]
    if lstm:
      dp["W"] = dp["W"] + jnp.concatenate([sums["rec"], sums["in"]])
    else:
      dp["V"], dp["U"] = dp["V"] + sums["rec"], dp["U"] + sums["in"]
  return dp, jnp.concatenate([dx0[None], dx_tail]), *d_start


def _rows(a):
  """[t, b, h] -> [t b, h]. The parameters' block sums are products over these
  rows: given "tbh,tbk->hk" instead, XLA contracts b before t and transposes
  both operands in 3-D: a copy of each per product (docs/RESULTS.md)."""
  return a.reshape(-1, a.shape[-1])


def _put_rows(a, rows, new):
  """``a`` [b, ...] with the rows where ``rows`` [b] replaced by ``new`` (the
  same shape, or a scalar), as a scatter that XLA does in place (a select over
  the whole array next to the step's other writes made it copy the bank)."""
  b = a.shape[0]
  index = jnp.where(rows, jnp.arange(b), b)  # b: out of range, dropped
  new = jnp.broadcast_to(jnp.asarray(new, a.dtype), a.shape)
  return a.at[index].set(new, mode="drop", unique_indices=True)


def _first_step_vjp(config, params, start, resets, x_0, d_slots, d_out):
  """Step 0 from a given state by ``jax.vjp`` of ``core.any_step`` (or
  ``core.step_with_reset`` with ``resets``): the cotangents of the parameters,
  x_0 and the state (float0 for its integers), and float0 for ``resets``, from
  those of the step's s_0, c_0, memory values and keys (``d_slots``) and h_0
  (``d_out``: (s_0, c_0, h_0))."""
  zero = jnp.zeros((), x_0.dtype)

  def first(p, s, c, vals, keys, x_t):
    state = start._replace(s=s, c=c, memory=start.memory._replace(vals=vals, keys=keys))
    p = core.loop_params(p, config)
    xp = core.project_input(p, config, x_t)
    if resets is None:
      state, out = core.any_step(p, config, state, xp, zero)
    else:
      state, out = core.step_with_reset(p, config, state, xp, zero, resets[0])
    return state.s, state.c, state.memory.vals, state.memory.keys, out["h"]

  mem = start.memory
  _, pullback = jax.vjp(first, params, start.s, start.c, mem.vals, mem.keys, x_0)
  ds, dc, dh = d_out
  dp, ds0, dc0, d_vals, d_keys, dx0 = pullback(
      (ds, None if start.c is None else dc, *d_slots, dh))

  def none(a):  # no gradient: zeros, float0 for integer arrays (JAX's convention)
    if jnp.issubdtype(a.dtype, jnp.inexact):
      return jnp.zeros_like(a)
    return np.zeros(a.shape, jax.dtypes.float0)

  d_mem = jax.tree_util.tree_map(none, mem)._replace(vals=d_vals, keys=d_keys)
  d_resets = None if resets is None else none(resets)
  return dp, dx0, (core.State(none(start.t), ds0, dc0, d_mem), d_resets)


attentive_scan.defvjp(_attentive_scan_fwd, _attentive_scan_bwd)
attentive_scan_from.defvjp(_attentive_scan_from_fwd, _attentive_scan_bwd)
