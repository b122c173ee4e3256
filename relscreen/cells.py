"""Recurrent cell steps without attention (ALGORITHM §1).

Dimension legend used in every module of the library:
  b batch, t time, i input features, h hidden units, m memory slots.

A cell step takes the *projected input* ``xp = x @ U + b`` (computed once for a
whole sequence outside the scan) and the recurrent input, so the scan body holds
only the work that truly depends on the previous step.
"""

import enum
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Phi(enum.Enum):
  """The RNN nonlinearity. ``RELU`` is a real ReLU (ALGORITHM §7)."""

  TANH = "tanh"
  RELU = "relu"
  MODRELU = "modrelu"
  SIGMOID = "sigmoid"
  IDENTITY = "identity"


def add_bias(z: Array, bias: Array) -> Array:
  """``z + bias`` with the bias [h] broadcast explicitly over z's leading axes."""
  return z + bias.reshape((1,) * (z.ndim - bias.ndim) + bias.shape)


def modrelu(z: Array, bias: Array) -> Array:
  """``sign(z) * max(|z| + bias, 0)`` with ``sign(0) = 0`` (Arjovsky et al. 2016)."""
  return jnp.sign(z) * jax.nn.relu(add_bias(jnp.abs(z), bias))


def apply_phi(phi: Phi, z: Array, modrelu_bias: Array | None = None) -> Array:
  """Applies the nonlinearity ``phi``; ``modrelu_bias`` is needed for MODRELU only."""
  if phi is Phi.TANH:
    return jnp.tanh(z)
  if phi is Phi.RELU:
    return jax.nn.relu(z)
  if phi is Phi.MODRELU:
    return modrelu(z, modrelu_bias)
  if phi is Phi.SIGMOID:
    return jax.nn.sigmoid(z)
  if phi is Phi.IDENTITY:
    return z
  raise ValueError(f"unknown phi {phi!r}")


def rnn_step(params: dict, phi: Phi, xp: Array, s: Array) -> tuple[Array, Array]:
  """One RNN step ``h = phi(xp + s V)``.

  Args:
    params: holds ``V`` [h, h] and, for modrelu, ``mod_b`` [h].
    phi: the nonlinearity.
    xp: projected input ``x U + b``, [b, h].
    s: the recurrent input (``h_{t-1}``, or the mixed state ``s_t``), [b, h].

  Returns:
    ``(h, a)``: the new hidden state and its pre-activation, both [b, h].
  """
  a = xp + s @ params["V"]
  return apply_phi(phi, a, params.get("mod_b")), a


def lstm_step(params: dict, xp: Array, s: Array, c: Array) -> tuple[Array, Array]:
  """One LSTM step on ``z = [s ; x]`` (state first), gates f, i, o, g.

  ``params["W"]`` is the [h + i, 4h] kernel of the four gate maps stacked in the
  order f, i, o, g; the input half ``W[h:]`` and the bias are already folded into
  ``xp`` [b, 4h], so only the state half is applied here. No forget-bias trick.
  Inside a loop, pass ``params`` through ``lstm_halves`` first.

  Returns:
    ``(h, c)``, both [b, h].
  """
  hidden = s.shape[-1]
  kernel = params["W_s"] if "W_s" in params else params["W"][:hidden]
  return lstm_gating(xp + s @ kernel, c)  # gates [b, 4h]


def lstm_halves(params: dict, hidden: int) -> dict:
  """``params`` with the LSTM kernel's state half ``W_s = W[:h]`` and input half
  ``W_x = W[h:]`` sliced out once, for a loop over steps: XLA does not hoist the
  slice out of a scan and copies it at every step (25 us at H = 128, about a
  tenth of a RelLSTM step). Gradients reach ``W`` through the slices."""
  return {**params, "W_s": params["W"][:hidden], "W_x": params["W"][hidden:]}


def lstm_gating(gates: Array, c: Array) -> tuple[Array, Array]:
  """The LSTM update from its gate pre-activations [b, 4h] (f, i, o, g): ``(h, c)``."""
  f, i, o, g = jnp.split(gates, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  return jax.nn.sigmoid(o) * jnp.tanh(c), c


def gru_step(params: dict, xp: Array, s: Array) -> Array:
  """One GRU step, the equations of ``flax.linen.GRUCell`` (gates r, z, n).

  ``params["V"]`` [h, 3h] holds the recurrent kernels of r, z and n side by side
  and ``params["bn"]`` [h] the recurrent bias of n; the input kernels and biases
  are folded into ``xp`` [b, 3h] (``x U + b``). With ``s`` the recurrent input::

    r = sigmoid(xp_r + s V_r),  z = sigmoid(xp_z + s V_z)
    n = tanh(xp_n + r * (s V_n + bn)),  h = (1 - z) * n + z * s
  """
  return gru_gating(xp, s @ params["V"], s, params["bn"])


def gru_gating(xp: Array, srec: Array, s: Array, bn: Array) -> Array:
  """The GRU update from its input term ``xp`` and recurrent term ``srec = s V``
  (both [b, 3h], gates r, z, n) and ``s`` itself, which the update gate mixes in."""
  xr, xz, xn = jnp.split(xp, 3, axis=-1)
  hr, hz, hn = jnp.split(srec, 3, axis=-1)
  r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
  n = jnp.tanh(xn + r * add_bias(hn, bn))
  return (1.0 - z) * n + z * s


def _no_extra(batch, hidden, dtype):
  del batch, hidden, dtype
  return ()


class Cell(NamedTuple):
  """A user's recurrent cell as pure functions, for any memory (ALGORITHM §11).

  In the style of optax's ``GradientTransformation``: a name and the functions,
  nothing else. The memory decides what the cell sees as its recurrent input:
  ``h_{t-1}`` without memory, the mixed state ``s_t`` with one.

  Attributes:
    name: used to name composed models (``Rel`` + name).
    init: ``(key, input_size, hidden, dtype) -> params`` (any pytree).
    step: ``(params, s [b, h], extra, x [b, i]) -> (h [b, h], extra)``: ``s`` is the
      recurrent input, ``extra`` the cell's own state besides it (an LSTM's cell
      state; ``()`` when it has none).
    init_extra: ``(batch, hidden, dtype) -> extra`` at the start of a sequence.
  """

  name: str
  init: Callable[[Array, int, int, Any], Any]
  step: Callable[[Any, Array, Any, Array], tuple[Array, Any]]
  init_extra: Callable[[int, int, Any], Any] = _no_extra


def from_flax(module, name: str | None = None) -> Cell:
  """A ``Cell`` from a Flax Linen recurrent cell (``nn.RNNCellBase``).

  The cell's carry is either its hidden state (``GRUCell``, ``SimpleCell``,
  ``MGUCell``) or a tuple whose last entry is it (``LSTMCell``'s ``(c, h)``); the
  memory replaces that hidden state with the mixed state, the rest of the carry
  is the cell's ``extra``.
  """

  def carry_struct(batch, input_size):
    return jax.eval_shape(lambda: module.initialize_carry(jax.random.PRNGKey(0),
                                                          (batch, input_size)))

  def init(key, input_size, hidden, dtype):
    del hidden
    x = jnp.zeros((1, input_size), dtype)
    carry = module.initialize_carry(key, x.shape)
    return module.init(key, carry, x)["params"]

  def step(params, s, extra, x):
    carry = (*extra, s) if isinstance(extra, tuple) and extra else s
    carry, _ = module.apply({"params": params}, carry, x)
    if isinstance(carry, tuple):
      return carry[-1], tuple(carry[:-1])
    return carry, ()

  def init_extra(batch, hidden, dtype):
    struct = carry_struct(batch, 1)
    if isinstance(struct, tuple):
      return tuple(jnp.zeros((batch, hidden), dtype) for _ in struct[:-1])
    return ()

  return Cell(name or type(module).__name__.removesuffix("Cell"), init, step, init_extra)


def lru(r_min: float = 0.9, r_max: float = 0.999, max_phase: float = 2 * math.pi,
        name: str = "LRU") -> Cell:
  """The Linear Recurrent Unit (Orvieto et al., ICML 2023) as a ``Cell``: a peer
  baseline, a diagonal complex linear recurrence with a nonlinear readout.

  With N = hidden complex modes, input u_t [b, i] and state x_t [b, N] (complex):

    lambda = exp(-exp(nu_log) + i exp(theta_log))
    x_t = lambda * x_{t-1} + exp(gamma_log) * (u_t B^T)
    h_t = gelu(Re(x_t C^T) + u_t D)

  B [N, i] and C [H, N] are complex (stored as real and imaginary parts), D [i, H]
  is real (the paper's skip connection, dense here because i != H). Initialised as
  in the paper: lambda uniform on the ring r_min <= |lambda| <= r_max (uniform in
  area), phases uniform in [0, max_phase], gamma = sqrt(1 - |lambda|^2) (the
  normalisation that keeps E|x_t|^2 at the input's scale), the real and imaginary
  parts of B normal with variance 1/(2 i), of C with variance 1/N; D normal with
  variance 1/i (the paper's diagonal D is N(0, 1)). The paper puts a GELU/GLU
  block after each LRU; here one GELU is the readout.

  Its recurrence does not read the recurrent input ``s``: a memory around it (whose
  mixed state is what ``s`` carries) is never consulted, so it is registered as
  ``LRU`` alone, a memory-free peer of GRU and LSTM. ``extra`` is the complex state
  as ``(real, imaginary)`` [b, N] each.
  """

  def init(key, input_size, hidden, dtype):
    k = jax.random.split(key, 7)
    u1 = jax.random.uniform(k[0], (hidden,), dtype)
    u2 = jax.random.uniform(k[1], (hidden,), dtype)
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2))
    theta_log = jnp.log(max_phase * u2)
    gamma_log = jnp.log(jnp.sqrt(1.0 - jnp.exp(-2.0 * jnp.exp(nu_log))))
    normal = lambda key, shape, var: jnp.sqrt(var) * jax.random.normal(key, shape, dtype)
    return {"nu_log": nu_log, "theta_log": theta_log, "gamma_log": gamma_log,
            "B_re": normal(k[2], (hidden, input_size), 1.0 / (2 * input_size)),
            "B_im": normal(k[3], (hidden, input_size), 1.0 / (2 * input_size)),
            "C_re": normal(k[4], (hidden, hidden), 1.0 / hidden),
            "C_im": normal(k[5], (hidden, hidden), 1.0 / hidden),
            "D": normal(k[6], (input_size, hidden), 1.0 / input_size)}

  def step(params, s, extra, x):
    del s  # a linear recurrence on its own state only
    re, im = extra
    modulus = jnp.exp(-jnp.exp(params["nu_log"]))[None, :]
    phase = jnp.exp(params["theta_log"])[None, :]
    lam_re, lam_im = modulus * jnp.cos(phase), modulus * jnp.sin(phase)
    gamma = jnp.exp(params["gamma_log"])[None, :]
    bu_re, bu_im = gamma * (x @ params["B_re"].T), gamma * (x @ params["B_im"].T)
    re, im = lam_re * re - lam_im * im + bu_re, lam_re * im + lam_im * re + bu_im
    y = re @ params["C_re"].T - im @ params["C_im"].T + x @ params["D"]
    return jax.nn.gelu(y, approximate=False), (re, im)

  def init_extra(batch, hidden, dtype):
    return (jnp.zeros((batch, hidden), dtype), jnp.zeros((batch, hidden), dtype))

  return Cell(name, init, step, init_extra)


LRU = lru()  # the registered ``LRU``: one object, so configs naming it hash alike
