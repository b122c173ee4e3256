"""Hand-written CPU kernels for a relevance-screened memory's attention step.

XLA's CPU backend runs the attention over the memory's slots at every step as
several separate loops over the [b, nu + rho, h] banks: the forward pass's
tanh(q + k_j), scores, softmax and context; the reverse pass's undo of the
step's store, then tanh(q + k_j) again, the weights' cotangents and the sums
into the banks' cotangents (about a dozen), copying banks it cannot update in
place. ``csrc/slots.cc`` does the forward step in one pass over the keys and
one over the values per batch row (``slots_attend``; used for large banks
only, ``ATTEND_FROM``), and the reverse step in two passes per row, updating
the four banks in place (``slots_reverse``). For an RNN cell with tanh
(RelRNN, WinRNN) and an LSTM cell (RelLSTM, WinLSTM) they go further. The
forward scan, from a fresh or a given state (rows may restart inside it, as
in PPO's training windows), over a relevance memory (any relevance and
eviction rule; reservoir not with restarts) or a window, is one call
(``rnn_forward``: per step the query, the attention, the scores, the mixing,
the cell, the key and the store with its screening). Each block of the
reverse pass's steps is one call (``rnn_block_reverse``: the pop of h_t's
cotangent, the cell's reverse, the products with Ua^T and [V | Va]^T, the
mixing's reverse and ``slots_reverse``'s step). Both run the batch's rows in
fixed groups on XLA's threads for the whole scan or block, instead of about
thirty XLA operations per step. The streaming step of such an RNN or LSTM
(``rs.step``) is ``rnn_forward`` over one step (``core.kernel_step``; its
derivatives are XLA's step's). docs/RESULTS.md ("The attention step as CPU
kernels", "An RNN cell's scans as kernels", "The streaming step as one kernel
call", "An LSTM cell's scans as kernels", "An LSTM's streaming step and
PPO's training windows as kernels") has what they save.

The kernels are compiled the first time a custom pass is traced, with the C++
compiler ``$CXX`` (else ``c++``, ``g++`` or ``clang++`` on the ``PATH``) and
the XLA FFI headers jaxlib ships, for this machine's CPU (``-march=native``),
into ``$RELSCREEN_KERNEL_CACHE`` (default ``$XDG_CACHE_HOME/relscreen/kernels``,
else ``~/.cache/relscreen/kernels``). The file's name holds a hash of the
source, the compiler, jaxlib's version and the CPU's feature flags, so later
processes load it at once and a different machine builds its own.

They are used only where they can be: in the custom pass (``reverse``) of a
relevance or window memory and in an RNN or LSTM cell's streaming step, on the CPU
(``jax.lax.platform_dependent``: on a GPU or TPU the same program runs XLA's
version), in float32 and float64. Where no compiler is found or the build
fails, one warning says so and XLA's version runs. ``RELSCREEN_KERNELS=0``
in the environment turns them off everywhere, ``ModelConfig(cpu_kernel=False)``
for one model (the benchmark's ``RelRNN@xla``). Both are read when a model is
traced: a program JAX has already traced and cached for a config keeps what
it was traced with. The float32 kernels' tanh is a rational approximation
(within 5 ulp, as XLA's own; the LSTM's sigmoid is 0.5 + 0.5 tanh(x / 2)),
so their results differ from XLA's in the last bits; in float64 they call
``std::tanh`` and ``std::exp`` (the tests compare both paths there).
"""

import ctypes
import hashlib
import os
import pathlib
import shutil
import subprocess
import threading
import warnings

import jax
import jax.numpy as jnp
import jaxlib

from relscreen import compiler

Array = jax.Array

SOURCE = pathlib.Path(__file__).with_name("csrc") / "slots.cc"
# XLA's name for each kernel -> its handler's symbol in the library
TARGETS = {"relscreen_slots_attend": "RelscreenSlotsAttend",
           "relscreen_slots_reverse": "RelscreenSlotsReverse",
           "relscreen_rnn_block_reverse": "RelscreenRnnBlockReverse",
           "relscreen_rnn_forward": "RelscreenRnnForward"}
ENV = "RELSCREEN_KERNELS"  # "0": never build or use the kernels
RELEVANCE = ("sum", "mean", "max", "decay")  # rnn_forward's relevance codes, in order
# The forward kernel runs on banks of at least this many elements (b m h: batch
# 41 at 25 slots and H 128), where it is faster than XLA's attention (batch 64:
# the forward pass 0.84-0.90 of XLA's); below, XLA's ran faster (batch 10: the
# kernel's forward pass 1.15-1.2x). docs/RESULTS.md has the runs.
ATTEND_FROM = 1 << 17
CACHE_ENV = "RELSCREEN_KERNEL_CACHE"
FLAGS = ("-std=c++17", "-O3", "-fopenmp-simd", "-fno-math-errno", "-shared", "-fPIC")
ARCH = ("-march=native",)  # dropped if the compiler refuses it

_lock = threading.Lock()
_loaded: dict = {}  # "ok": bool once tried; "why": the reason it is off


class BuildError(RuntimeError):
  """The kernels could not be built; the message says why (the compiler's output)."""


def cache_dir(environ=None) -> pathlib.Path:
  """Where built kernels are kept (see the module's docstring)."""
  environ = os.environ if environ is None else environ
  if environ.get(CACHE_ENV):
    return pathlib.Path(environ[CACHE_ENV])
  base = environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "relscreen" / "kernels"


def find_compiler(environ=None) -> str | None:
  """``$CXX``, else the first of ``c++``, ``g++``, ``clang++`` on the PATH."""
  environ = os.environ if environ is None else environ
  if environ.get("CXX"):
    return environ["CXX"]
  for name in ("c++", "g++", "clang++"):
    if found := shutil.which(name):
      return found
  return None


def build(cxx: str | None = None, out_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The kernels' shared library for this machine, built now unless ``out_dir``
  (default ``cache_dir()``) has it already. Raises ``BuildError``."""
  cxx = cxx or find_compiler()
  if cxx is None:
    raise BuildError("no C++ compiler: set CXX or put c++, g++ or clang++ on the PATH")
  out_dir = pathlib.Path(out_dir) if out_dir is not None else cache_dir()
  try:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    raise BuildError(f"the C++ compiler {cxx!r} does not run: {e}") from e
  source = SOURCE.read_bytes()
  key = hashlib.sha256(b"\0".join([
      source, version.encode(), " ".join(FLAGS + ARCH).encode(), jaxlib.__version__.encode(),
      " ".join(sorted(compiler.cpu_feature_flags())).encode()])).hexdigest()[:16]
  path = out_dir / f"slots-{key}.so"
  if path.exists():
    return path
  out_dir.mkdir(parents=True, exist_ok=True)
  tmp = out_dir / f".{path.name}.{os.getpid()}.tmp"  # renamed into place: processes may race
  base = [cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(tmp)]
  errors = []
  for arch in (ARCH, ()):
    result = subprocess.run(base[:1] + list(arch) + base[1:], capture_output=True, text=True)
    if result.returncode == 0:
      os.replace(tmp, path)
      return path
    lines = result.stderr.splitlines()
    errors.append("\n".join([l for l in lines if "error" in l][:10] or lines[-10:]))
  raise BuildError(f"{cxx} could not build {SOURCE.name}:\n" + "\n".join(errors))


def available() -> bool:
  """Whether the kernels are on and registered with XLA (built and loaded on the
  first call; a failure warns once and leaves XLA's version in use)."""
  if os.environ.get(ENV) == "0":
    return False
  with _lock:
    if "ok" not in _loaded:
      try:
        library = ctypes.CDLL(str(build()))
        for target, symbol in TARGETS.items():
          jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                      platform="cpu")
        _loaded.update(ok=True, library=library)
      except (BuildError, OSError) as e:
        _loaded.update(ok=False, why=str(e))
        warnings.warn(f"relscreen: the attention's CPU kernels are off, XLA's version runs "
                      f"instead ({e}); {ENV}=0 silences this", stacklevel=2)
  return _loaded["ok"]


def why_not() -> str | None:
  """Why the kernels do not run here, or None where they do: off by ``ENV``,
  JAX's default backend not the CPU (a GPU machine neither builds nor warns),
  or the build failed (``available()``, tried on the first call)."""
  if os.environ.get(ENV) == "0":
    return f"{ENV}=0"
  if jax.default_backend() != "cpu":
    return f"not on {jax.default_backend()}"
  return None if available() else _loaded["why"]


def dispatch(wanted: bool, kernel, fallback, *args):
  """``kernel(*args)`` on the CPU, ``fallback(*args)`` (XLA's version) on other
  devices, from one program (``jax.lax.platform_dependent``); ``fallback`` alone
  where the kernels are not ``wanted`` (the model's ``cpu_kernel``), do not run
  here (``why_not``), or the float arguments are not all float32 or all float64
  (a kernel takes one float type; XLA's version promotes a mix, as Flax's
  ``init`` makes with float32 parameters and float64 inputs)."""
  floats = {a.dtype for a in jax.tree_util.tree_leaves(args)
            if jnp.issubdtype(a.dtype, jnp.floating)}
  if (wanted and len(floats) == 1 and floats <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)}
      and why_not() is None):
    return jax.lax.platform_dependent(*args, cpu=kernel, default=fallback)
  return fallback(*args)


def _shape(a) -> jax.ShapeDtypeStruct:
  """An output of ``a``'s shape and dtype."""
  return jax.ShapeDtypeStruct(a.shape, a.dtype)


def _or_empty(a, dtype):
  """``a`` as ``dtype``, or an empty array of it where ``a`` is None: an FFI
  argument a call may lack (the kernels take an empty one as absent)."""
  return jnp.zeros((0,), dtype) if a is None else jnp.asarray(a, dtype)


def _require():
  if not available():
    raise RuntimeError(f"relscreen's CPU kernels are off: {why_not()}")


def slots_reverse(banks, undo, query: Array, alpha: Array, v: Array, d_context: Array):
  """The reverse step's kernel (see ``csrc/slots.cc``): undo the step's store on
  ``banks`` = (vals, keys, d_vals, d_keys) [b, m, h] and add the attention's
  cotangents. ``undo`` = (s_col [b] or one slot for every row, r_col [b] (-1:
  none), back, back_key, put_back, put_back_key [b, h]). Returns
  ``(d_query [b, h], d_v [h], banks)``. Call it only on the CPU."""
  _require()
  s_col, r_col, *rows = undo
  s_col = jnp.broadcast_to(s_col, r_col.shape)
  out = jax.ffi.ffi_call("relscreen_slots_reverse", tuple(_shape(a) for a in (*banks, query, v)),
                         input_output_aliases={0: 0, 1: 1, 2: 2, 3: 3},
                         vmap_method="sequential")(  # under vmap: one call per member
      *banks, s_col.astype(jnp.int32), r_col.astype(jnp.int32), *rows, query, alpha, v,
      d_context)
  return out[4], out[5], tuple(out[:4])


def slots_attend(query: Array, keys: Array, vals: Array, time: Array, v: Array):
  """The forward step's kernel: additive attention of ``query`` [b, h] over the
  slots ``keys``, ``vals`` [b, m, h] that hold a state (``time`` [b, m] >= 0),
  as ``attention.additive_attention``. Returns ``(context [b, h], alpha [b, m])``.
  Not differentiable (the custom pass's forward only); call it only on the CPU."""
  _require()
  return jax.ffi.ffi_call("relscreen_slots_attend", (_shape(query), _shape(time).update(
      dtype=query.dtype)), vmap_method="sequential")(query, keys, vals,
                                                     time.astype(jnp.int32), v)


def rnn_block_reverse(carry, first: Array, slot: Array, evicted: Array, alpha: Array,
                      h: Array, h_keys: Array, g: Array, q: Array, v: Array, ua_t: Array,
                      both_t: Array, nu: int, attn: float, lstm=None, given=None,
                      restarts=None):
  """A block of the reverse pass's steps for an RNN cell with tanh, or an LSTM
  cell, from a fresh or a given state, in one call (see ``csrc/slots.cc``): per step, from
  the last, the pop of h_t's slot, the cell's reverse, the products with Ua^T
  and [V | Va]^T ([W_s | Va]^T), the mixing's and the ``slots_reverse`` step's.
  ``lstm`` = (dc_next [b, h], pre [n, b, 4h], c [L, b, h]) for an LSTM: the
  carry's cell-state cotangent, the block's gate pre-activations and the
  whole sequence's cell states; it then returns dpre [n, b, 4h] and the new
  dc_next last. ``carry`` = (vals, keys,
  d_vals, d_keys [b, m, h], d_newest, dq_next [b, h]); the block is steps
  ``first`` .. ``first + n - 1`` (``first`` an int32 scalar); ``slot``,
  ``evicted`` [n, b] and ``alpha`` [n, b, m] their records (``rsm.Screened``'s
  ``slot`` and ``replaced``, the weights); ``h``, ``h_keys`` and ``q`` (the
  queries) the whole sequence's [L, b, h], and ``g`` (h's cotangents from the
  outputs) its [b, L, h], batch-major as the outputs (the model's transpose to
  time-major and its cotangent's back cancel: no copy), read where the steps
  need them. From a given state (``given`` = (stored [n, b], (back, back_key,
  put_back, put_back_key) [n, b, h] each)): h_t is in the S slot ``stored``
  names, not t mod nu, and undoing each store puts back the states given
  (gathered by time, ``_RelevanceReverse.block_inputs``). With rows
  restarting (from a given state: ``restarts`` = (resets [n, b] bool, before
  [n, b, m] int32 the slots' times before each restart, the given memory's
  vals, keys [b, m, h] and times [b, m], h_0's time t0)), a restarting row's
  step runs on a zero s and c, its s_t and c_{t-1} get no cotangent, and the
  row's memory is put back as it was before the restart (states looked up by
  time) with zero cotangents. Returns ``(carry
  (+ dc_next), (dq, dpre, dk) [n, b, h] each, d_v [h])``. Call it only on the
  CPU."""
  _require()
  steps = jax.ShapeDtypeStruct(alpha.shape[:2] + h.shape[2:], h.dtype)
  gates = steps if lstm is None else _shape(lstm[1])
  stored, undo = (None, None) if given is None else (given[0], jnp.stack(given[1]))
  resets, before, vals0, keys0, time0, t0 = (None,) * 6 if restarts is None else restarts
  ints, floats = jnp.int32, h.dtype
  # The arguments a block may lack (empty): a given state's, then restarting rows'.
  optional = tuple(_or_empty(a, dtype) for a, dtype in (
      (stored, ints), (undo, floats), (resets, ints), (before, ints), (vals0, floats),
      (keys0, floats), (time0, ints), (t0, ints)))
  args = (*carry, jnp.asarray(first, jnp.int32), slot.astype(jnp.int32),
          evicted.astype(jnp.int32), alpha, h, h_keys, g, q, v, ua_t, both_t, *optional)
  results = tuple(_shape(a) for a in carry) + (steps, gates, steps, _shape(v))
  aliases = {i: i for i in range(len(carry))}
  if lstm is not None:  # dc_next in (after the fixed arguments) and out (last)
    aliases[len(args)] = len(results)
    args, results = args + tuple(lstm), results + (_shape(lstm[0]),)
  out = jax.ffi.ffi_call("relscreen_rnn_block_reverse", results, input_output_aliases=aliases,
                         vmap_method="sequential")(*args, nu=int(nu), attn=float(attn))
  return tuple(out[:6]) + tuple(out[10:]), tuple(out[6:9]), out[9]


def rnn_forward(mem, first, x: Array, params: dict, nu: int, attn: float, stamp=1,
                restart: Array | None = None, lean: bool = False, relevance: int = 0,
                decay: float = 0.9, fifo: bool = False, draws: Array | None = None,
                resets: Array | None = None):
  """The forward scan of an RNN cell with tanh, or an LSTM cell, over a
  relevance memory (or a window, ``rho = 0``), steps
  1 .. L - 1 in one call (see ``csrc/slots.cc``): ``mem`` (vals, keys [b, m, h],
  score [b, m], time [b, m], seen [b]) as after step 0 and ``first`` step 0's
  (h, s, q, k) [b, h], and c for an LSTM (only s and c are read; each step's
  newest state comes from the memory, S's latest); ``x`` [L - 1, b, i] the
  inputs of steps 1 ..; ``params`` with U, b, Va, V, Ua, v (an LSTM: U its
  input half W_x [i, 4h], V its state half W_s [h, 4h], b [4h]). Step t's state is stored with time index ``stamp + t - 1`` (an int32
  scalar; 1 from a fresh state). ``restart`` [b] bool (optional): rows that
  take step 0's rule at step 1, the streaming step's rows at t = 0 or reset
  (the cell runs on ``first``'s s, which then becomes the RNN's pre-activation).
  Returns ``(mem, (h, s, q, k[, c]) [L, b, h], (slot, replaced, stored,
  time) [L - 1, b] int32, alpha [L - 1, b, m])``: the memory after the last
  step, every step's state, mixed state, query, key (and cell state; row 0
  ``first``), and what each step's store and screening did (``rsm.Screened``'s
  ``slot``, ``replaced``, ``stored`` and ``time``) with its weights. ``lean``
  (no reverse pass to follow): s, q, k and c come back as
  [2, b, h], step t in row t mod 2, and alpha as [1, b, m] (the last step's);
  h has every step. ``relevance`` 0 (sum, the paper's), 1 (mean), 2 (max) or
  3 (decay, with ``decay`` its gamma) and ``fifo`` (else top) are the memory's
  rules (``RELEVANCE``); ``draws`` [L - 1, b] int32 (``rsm.reservoir_draws``
  from the memory's ``seen``) makes the eviction reservoir. ``resets`` [L - 1, b]
  bool (optional; not with reservoir draws): rows that restart from a fresh
  state before each of steps 1 .. (an emptied memory, zero s and c, step 0's
  rule, as ``core.step_with_reset``); the records then end with ``before``
  [L - 1, b, m] int32, the slots' times before each step's restarts (not when
  ``lean``). Call it only on the CPU."""
  _require()
  steps, batch = x.shape[:2]
  m = mem[0].shape[1]
  restart = jnp.zeros((batch,), jnp.int32) if restart is None else restart.astype(jnp.int32)
  rows = jax.ShapeDtypeStruct((steps, batch), jnp.int32)
  seq = jax.ShapeDtypeStruct((steps + 1,) + first[0].shape, x.dtype)
  kept = jax.ShapeDtypeStruct((2 if lean else steps + 1,) + first[0].shape, x.dtype)
  lstm = len(first) == 5  # c_0 in, every step's c out
  before = (steps, batch, m) if resets is not None and not lean else (0,)
  out = jax.ffi.ffi_call(
      "relscreen_rnn_forward",
      tuple(_shape(a) for a in mem) + (seq,) + (kept,) * 3 + (rows,) * 4
      + (jax.ShapeDtypeStruct((1 if lean else steps, batch, m), x.dtype),
         jax.ShapeDtypeStruct(before, jnp.int32)) + (kept,) * lstm,
      input_output_aliases={i: i for i in range(5)}, vmap_method="sequential")(
      *mem[:3], mem[3].astype(jnp.int32), mem[4].astype(jnp.int32), *first[:4], x,
      *(params[k] for k in ("U", "b", "Va", "V", "Ua", "v")), jnp.asarray(stamp, jnp.int32),
      restart, _or_empty(draws, jnp.int32), _or_empty(resets, jnp.int32), *first[4:],
      nu=int(nu), attn=float(attn), lean=int(lean),
      relevance=int(relevance), decay=float(decay), fifo=int(fifo))
  records = tuple(out[9:13]) + ((out[14],) if len(before) == 3 else ())
  return tuple(out[:5]), tuple(out[5:9]) + tuple(out[15:]), records, out[13]
