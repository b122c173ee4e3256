"""Whole-sequence models and the streaming API, as pure functions (ALGORITHM §1-3, §11).

A model is a ``ModelConfig`` (static, ``relscreen.config``) plus a ``params`` dict:
  RNN cell:   U [i, h], b [h], V [h, h], mod_b [h] (modrelu only)
  LSTM cell:  W [h + i, 4h] (gates f, i, o, g; state rows first), b [4h]
  GRU cell:   U [i, 3h], b [3h], V [h, 3h] (gates r, z, n), bn [h]
  user cell:  cell (whatever its ``init`` returns)
  attentive:  Ua [h, h], Va [h, h], v [h]
With ``layers = N > 1`` the params are ``{"layers_0": ..., "layers_{N-1}": ...}``
and the state a tuple of the layers' states. ``forward`` scans ``core.any_step``
over time; the same step is the streaming API (``step``), so the two give the
same outputs by construction (and the tests check it).

Module layout: ``config`` (configs and names), ``cells`` and ``memories`` (the
parts), ``core`` (one step of one layer), ``reverse`` (the custom reverse pass),
this module (checks, forward, streaming, layers).
"""

import functools
import math

import jax
import jax.numpy as jnp

from relscreen import core, reverse
from relscreen import scan as scan_lib
from relscreen.cells import Phi
# Re-exported: configs were defined here before the layout split.
from relscreen.config import (PAPER_MODELS, REGISTRY, CellType, Eviction,  # noqa: F401
                              MemoryType, ModelConfig, Relevance, model_config)
from relscreen.core import State, project_input, reset_rows  # noqa: F401

Array = jax.Array
_FLOATS = (jnp.float32, jnp.float64)


def init_state(config: ModelConfig, batch: int, h0: Array | None = None,
               c0: Array | None = None, capacity: int | None = None,
               dtype=jnp.float32):
  """A fresh state: a ``State``, or a tuple of them with ``layers > 1``.

  ``capacity`` (states to keep) is required for full memories (MemRNN, ...).
  """
  if config.layers == 1:
    return core.init_state(config, batch, h0, c0, capacity, dtype)
  if h0 is not None or c0 is not None:
    raise ValueError("h0 / c0 are for single-layer models; pass a state instead")
  return tuple(core.init_state(config.layer(i), batch, capacity=capacity, dtype=dtype)
               for i in range(config.layers))


def gradient_path(config: ModelConfig) -> str:
  """How ``jax.grad`` differentiates a fresh forward pass of a single-layer config.

  ``custom``: the hand-built reverse pass (``relscreen.reverse``), O(t b h) memory:
  attentive layers of any cell (RNN, LSTM, GRU, a user's) with ``custom_vjp`` on,
  ``k = 1``, no diagnostics, any memory (full, relevance with any rules, window);
  a user cell whose extra state holds only floating or complex arrays.
  ``autodiff``: JAX's reverse of the scan (memories without attention, ``k > 1``,
  ``custom_vjp`` off, probes), whose memory grows with the memory's size per step
  unless ``remat_chunk`` is set. A forward with probes always takes ``autodiff``;
  one from a given state, or with rows restarting inside it (``reset``), takes
  ``custom`` with a relevance-screened or window memory
  (``reverse.attentive_scan_from``), ``autodiff`` with a full one.
  """
  custom = (config.custom_vjp and config.attentive and config.k == 1
            and not config.diagnostics
            and config.cell in (CellType.RNN, CellType.LSTM, CellType.GRU, CellType.USER)
            and (config.cell is not CellType.USER or _extra_is_inexact(config)))
  return "custom" if custom else "autodiff"


def _extra_is_inexact(config: ModelConfig) -> bool:
  """Whether every array of a user cell's extra state is floating or complex: the
  custom pass differentiates the cell's step with respect to all of it (an
  integer counter in it sends the config to autodiff)."""
  extra = jax.eval_shape(lambda: config.user_cell.init_extra(1, config.hidden, jnp.float32))
  return all(jnp.issubdtype(a.dtype, jnp.inexact) for a in jax.tree_util.tree_leaves(extra))


def _uses_custom_vjp(config: ModelConfig, fresh: bool, probes) -> bool:
  """The custom pass runs from a fresh state, or from a given one for the
  relevance-screened and window memories (a full memory's reverse pass attends
  to the sequence's own h, not to states stored before it)."""
  return (gradient_path(config) == "custom" and probes is None
          and (fresh or config.screened))


def param_shapes(config: ModelConfig) -> dict:
  """The shape of every parameter ``config`` needs (see the module docstring).

  A user cell's own parameters (``"cell"``) are whatever its ``init`` makes and are
  not listed. With ``layers > 1``: one dict per layer, under ``layers_l``.
  """
  if config.layers > 1:
    return {f"layers_{i}": param_shapes(config.layer(i)) for i in range(config.layers)}
  h, i = config.hidden, config.input_size
  if config.cell is CellType.RNN:
    shapes = {"U": (i, h), "b": (h,), "V": (h, h)}
    if config.phi is Phi.MODRELU:
      shapes["mod_b"] = (h,)
  elif config.cell is CellType.LSTM:
    shapes = {"W": (h + i, 4 * h), "b": (4 * h,)}
  elif config.cell is CellType.GRU:
    shapes = {"U": (i, 3 * h), "b": (3 * h,), "V": (h, 3 * h), "bn": (h,)}
  else:
    shapes = {}
  if config.attentive:
    shapes.update(Ua=(h, h), Va=(h, h), v=(h,))
  return shapes


def _check_params(config: ModelConfig, params, where: str = "params"):
  """Names the first missing or misshapen parameter instead of a jax TypeError."""
  if config.layers > 1:
    for i in range(config.layers):
      key = f"layers_{i}"
      if key not in params:
        raise ValueError(f"{where} has no {key!r}: {config.name} has {config.layers} "
                         f"layers, each with its own params under 'layers_<l>'")
      _check_params(config.layer(i), params[key], f"{where}[{key!r}]")
    return
  if config.cell is CellType.USER and "cell" not in params:
    raise ValueError(f"{where} has no 'cell' (the user cell's own parameters)")
  for key, shape in param_shapes(config).items():
    if key not in params:
      raise ValueError(f"{where} has no {key!r}, which {config.name} needs "
                       f"(expected keys: {', '.join(param_shapes(config))})")
    got = tuple(jnp.shape(params[key]))
    if got != shape:
      raise ValueError(f"{where}[{key!r}] has shape {got}, but {config.name} with "
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


def _check_state(config: ModelConfig, state, x: Array, what: str):
  """The state must match the input's batch and dtype and the config's width."""
  if config.layers > 1:
    if not isinstance(state, tuple) or len(state) != config.layers or isinstance(state,
                                                                                 State):
      raise ValueError(f"{config.name} has {config.layers} layers: its state is a tuple "
                       f"of {config.layers} states (init_state makes it)")
    for i, layer in enumerate(state):
      _check_state(config.layer(i), layer, x, what)
    return
  if not isinstance(state, State):
    raise ValueError(f"state must be a relscreen State for {config.name}, got "
                     f"{type(state).__name__}")
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


def step(params: dict, config: ModelConfig, state, x_t: Array,
         probe: Array | None = None, reset: Array | None = None, donate: bool = False):
  """Streaming API: advances ``state`` by one time step on ``x_t`` [b, i].

  ``reset`` [b] bool (optional) restarts the flagged rows from a fresh zero state
  before the step, as at the start of a new episode: the row's output then equals
  that of a fresh state (used by RL, where each environment resets on its own).

  ``donate=True`` hands the old state's buffers to the new state (the old state
  must not be used again; JAX raises if it is): a store then writes its one or
  two memory slots in place instead of the step copying the whole memory, which
  matters at large batches (docs/RESULTS.md). It has no effect inside ``jit``,
  where the enclosing function decides (``donate_argnums``, or a ``lax.scan``
  carry, which XLA updates in place anyway).

  On the CPU, an RNN cell with tanh or an LSTM cell over a relevance memory
  (any rules) or a window (RelRNN, WinRNN, RelLSTM, WinLSTM; k = 1, no probe,
  no diagnostics) takes the whole step in one kernel call
  (``core.kernel_step``; ``config.cpu_kernel``);
  ``jax.grad`` and ``jax.jvp`` through it differentiate XLA's step.

  Returns the new state (same shapes as the old one) and the step's outputs:
  ``{"h": [b, h]}`` (the top layer's) plus the diagnostics when ``config.diagnostics``.
  """
  _check_input(config, x_t, 2, "x_t")
  _check_params(config, params)
  _check_state(config, state, x_t, "x_t")
  if probe is not None and config.layers > 1:
    raise ValueError("probe is for single-layer models")
  if reset is not None:
    reset = jnp.asarray(reset)
    if reset.shape != (x_t.shape[0],) or reset.dtype != jnp.bool_:
      raise ValueError(f"reset must be a bool array of shape ({x_t.shape[0]},), got "
                       f"{reset.dtype}{list(reset.shape)}")
  if donate:
    return _step_jit_donated(params, config, _unshared(state), x_t, probe, reset)
  return _step_jit(params, config, state, x_t, probe, reset)


def _unshared(state):
  """``state`` with every array a buffer of its own (XLA cannot take one buffer
  twice; ``init_state`` makes each leaf anew, but a state a user assembles may
  hold one array in two leaves, say the same zeros as s and c)."""
  seen = set()

  def own(a):
    if not isinstance(a, jax.Array) or id(a) not in seen:
      seen.add(id(a))
      return a
    return jnp.array(a, copy=True)

  return jax.tree_util.tree_map(own, state)


def _layer_step(params, config, state, x_t, probe, reset):
  # None (no probe) is made zero here, in the program: a jnp.zeros per call
  # outside it is a device dispatch, about 20 us of a batch-1 step.
  if probe is None and core.kernel_fits(config, params):
    # The whole step in one CPU kernel call (differentiable: core.kernel_step).
    first = state.t == 0
    if reset is not None:
      state = core.reset_rows(config, state, reset)
      first = reset | first
    return core.kernel_step(params, config, state, x_t, first)
  probe = jnp.zeros((), x_t.dtype) if probe is None else probe
  xp = core.project_input(params, config, x_t)
  if reset is None:
    return core.any_step(params, config, state, xp, probe)
  return core.step_with_reset(params, config, state, xp, probe, reset)


def _step_program(params, config, state, x_t, probe, reset):
  """The checked step as one compiled program (``_step_jit``): a call outside
  ``jit`` compiles once per config and shape instead of once per operation (inside
  ``jit`` it is inlined)."""
  if config.layers == 1:
    return _layer_step(params, config, state, x_t, probe, reset)
  states = []
  for i in range(config.layers):
    layer_state, out = _layer_step(params[f"layers_{i}"], config.layer(i), state[i], x_t,
                                   probe, reset)
    states.append(layer_state)
    x_t = out["h"]
  return tuple(states), out


_step_jit = jax.jit(_step_program, static_argnums=1)
_step_jit_donated = jax.jit(_step_program, static_argnums=1, donate_argnums=2)


def forward(params: dict, config: ModelConfig, x: Array, state=None,
            probes: Array | None = None, h0: Array | None = None,
            c0: Array | None = None, reset: Array | None = None):
  """Runs the model over a sequence ``x`` [b, t, i] with ``lax.scan``.

  Args:
    params: the parameter dict (see the module docstring).
    config: the model config.
    x: inputs, batch-major [b, t, i].
    state: state to continue from. Default: a fresh state (full memories get room
      for every stored state of ``x``), starting from ``h0`` / ``c0`` if given.
      Gradients reach a given state; on the custom reverse pass
      (``gradient_path``) the returned final state carries none.
    probes: optional [b, t, h] added to each ``h_t`` (single layer); pass zeros and
      differentiate with respect to them to get ``dL/dh_t`` (ALGORITHM §7).
    reset: optional [b, t] bool: rows that restart from a fresh zero state
      before step t, as ``step(..., reset=...)`` does (an episode starting
      inside the sequence, as in RL training windows).

  Returns:
    ``(outputs, final_state)``; ``outputs["h"]`` is [b, t, h] (the top layer's)
    and diagnostics, when on, are batch-major [b, t, ...] too.
  """
  _check_input(config, x, 3, "x")
  _check_params(config, params)
  if state is not None:
    _check_state(config, state, x, "x")
  batch, length = x.shape[:2]
  if config.layers > 1 and (probes is not None or h0 is not None or c0 is not None):
    raise ValueError("probes, h0 and c0 are for single-layer models; pass a state to "
                     "start a stacked model elsewhere")
  if probes is not None and probes.shape != (batch, length, config.hidden):
    raise ValueError(f"probes must have shape {(batch, length, config.hidden)}, "
                     f"got {tuple(probes.shape)}")
  if reset is not None:
    reset = jnp.asarray(reset)
    if reset.shape != (batch, length) or reset.dtype != jnp.bool_:
      raise ValueError(f"reset must be a bool array of shape {(batch, length)}, got "
                       f"{reset.dtype}{list(reset.shape)}")
    reset = jnp.swapaxes(reset, 0, 1)  # time-major, as the scan reads it
  return _forward_jit(params, config, x, state, probes, h0, c0, reset)


@functools.partial(jax.jit, static_argnums=1)
def _forward_jit(params, config, x, state, probes, h0, c0, reset=None):
  """``forward`` after its checks, as one compiled program (see ``_step_jit``).
  A stacked model runs its layers one after the other over the whole sequence:
  layer l + 1 at step t needs only layer l's h_t, so this equals stepping them
  together."""
  if config.layers == 1:
    return _layer_forward(params, config, x, state, probes, h0, c0, reset)
  finals = []
  for i in range(config.layers):
    out, final = _layer_forward(params[f"layers_{i}"], config.layer(i), x,
                                None if state is None else state[i], None, None, None, reset)
    finals.append(final)
    x = out["h"]
  return out, tuple(finals)


def _layer_forward(params, config, x, state, probes, h0, c0, reset=None):
  """One layer over the sequence; ``reset`` is time-major [t, b] or None."""
  batch, length = x.shape[:2]

  def fresh_state(capacity):
    return core.init_state(config, batch, h0, c0, capacity=capacity, dtype=x.dtype)

  if reset is not None and state is None:  # restarting rows need a state to restart from
    state = fresh_state(math.ceil(length / config.k))
  fresh = state is None
  if _uses_custom_vjp(config, fresh, probes) and length > 1:
    x_tm = jnp.swapaxes(x, 0, 1)
    if fresh:
      start = fresh_state(1)  # its s and c (a full memory's bank lives in the pass)
      c_init = jnp.zeros_like(start.s) if start.c is None else start.c
      h, final = reverse.attentive_scan(dict(params), config, x_tm, start.s, c_init)
      if config.cell is CellType.RNN:
        final = final._replace(c=None)
    else:
      h, final = reverse.attentive_scan_from(dict(params), config, x_tm, state, reset)
    return {"h": jnp.swapaxes(h, 0, 1)}, jax.lax.stop_gradient(final)
  params = core.loop_params(params, config)
  xp = core.project_input(params, config, jnp.swapaxes(x, 0, 1))  # [t, b, gates]
  pr = (jnp.zeros((length, 1, 1), x.dtype) if probes is None
        else jnp.swapaxes(probes, 0, 1))  # [t, b, h]
  if fresh:
    state = fresh_state(math.ceil(length / config.k))
  if fresh and config.attentive:
    # A fresh state is known to be at t = 0: peel step 0 off instead of a per-step cond.
    state, first = core.first_step(params, config, state, xp[0], pr[0])
    body = lambda carry, inputs: core.later_step(params, config, carry, *inputs)
    state, outs = scan_lib.scan(body, state, (xp[1:], pr[1:]), config.remat_chunk)
    outs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first, outs)
  elif reset is not None:
    body = lambda carry, inputs: core.step_with_reset(params, config, carry, *inputs)
    state, outs = scan_lib.scan(body, state, (xp, pr, reset), config.remat_chunk)
  else:
    body = lambda carry, inputs: core.any_step(params, config, carry, *inputs)
    state, outs = scan_lib.scan(body, state, (xp, pr), config.remat_chunk)
  return jax.tree_util.tree_map(lambda y: jnp.swapaxes(y, 0, 1), outs), state
