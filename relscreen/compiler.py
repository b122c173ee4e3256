"""XLA's CPU code generation: 512-bit vectors where the CPU has them.

XLA compiles for the CPU with 256-bit vectors even where the CPU has AVX-512
(``--xla_cpu_prefer_vector_width`` defaults to 256: on some older Intel parts
512-bit instructions lower the clock). The attention's elementwise work (a tanh
per memory slot, unit and row at every step, forward and reverse) is most of
what a relevance-screened model adds to its cell, and with 512-bit vectors it
ran 30% faster on the AMD EPYC (Zen 5) this project is developed on: one
training step at L = 1020, batch 10, H 128, RelRNN 12% faster, MemRNN 24%,
the plain RNN and LSTM 3-8% (docs/RESULTS.md has the measurements).

The flag must be in ``XLA_FLAGS`` before JAX starts its first backend (the
first computation, ``jax.devices()``, ...): ``prefer_wide_vectors()`` puts it
there, and the project's binaries call it at start. In your own scripts call it
right after ``import relscreen``, or export the flag yourself. Setting
``--xla_cpu_prefer_vector_width`` in ``XLA_FLAGS`` yourself (256 to keep XLA's
default) always wins. GPUs and TPUs ignore the flag.
"""

import os
import pathlib

FLAG = "--xla_cpu_prefer_vector_width"


def with_wide_vectors(xla_flags: str, cpu_flags: set[str]) -> str:
  """``xla_flags`` with ``FLAG=512`` added when the CPU's feature flags (as
  /proc/cpuinfo lists them) include AVX-512 Foundation and ``xla_flags`` does not
  set the width already; otherwise ``xla_flags`` unchanged."""
  if "avx512f" not in cpu_flags or FLAG in xla_flags:
    return xla_flags
  return f"{xla_flags} {FLAG}=512".strip()


def cpu_feature_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> set[str]:
  """The feature flags of the first CPU in ``cpuinfo`` (Linux); empty where that
  file does not exist or lists none (other systems: the width stays XLA's)."""
  try:
    text = pathlib.Path(cpuinfo).read_text()
  except OSError:
    return set()
  for line in text.splitlines():
    key, _, value = line.partition(":")
    if key.strip() == "flags":
      return set(value.split())
  return set()


def prefer_wide_vectors(environ=None, cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
  """Adds ``FLAG=512`` to ``XLA_FLAGS`` (``environ``, default ``os.environ``) on a
  CPU with AVX-512, unless ``XLA_FLAGS`` sets the width already. Returns whether
  ``XLA_FLAGS`` asks for 512-bit vectors now. When a JAX backend has already
  started, ``XLA_FLAGS`` is no longer read: then nothing is changed and the
  answer is False unless the flag was there from the start."""
  environ = os.environ if environ is None else environ
  current = environ.get("XLA_FLAGS", "")
  if f"{FLAG}=512" in current.split():
    return True
  wanted = with_wide_vectors(current, cpu_feature_flags(cpuinfo))
  if wanted == current or _backends_started():
    return False
  environ["XLA_FLAGS"] = wanted
  return True


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):  # a JAX without it: assume not started
    return False
