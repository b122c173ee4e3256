"""Test-session settings: silent rank promotion is an error, compiled programs
are cached on disk for the session's processes (xdist workers and the binaries
the tests start share it), so identical steps compile once, and XLA skips its
expensive CPU optimisation passes (see below)."""

import os
import pathlib

_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The suite's time is mostly XLA compiling small programs, each run for a few
# steps. Skipping the CPU backend's expensive optimisation passes and emitting
# fusions the older (non-MLIR) way compiles them 2.5-3x faster (measured on a
# RelRNN gradient program: 2.7 s with XLA's defaults, 1.6 s with the first two
# flags, 0.6 s with all three) and changes no result a test asserts. Set
# XLA_FLAGS yourself (even empty) to test the fully optimised programs; the
# binaries the tests start inherit the choice.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true "
                      "--xla_cpu_use_fusion_emitters=false")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(autouse=True)
def strict_jax():
  with jax.numpy_rank_promotion("raise"):
    yield


def _to_float64(tree):
  """Casts every floating-point leaf of ``tree`` to float64 (others unchanged)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_map(
      lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(jnp.asarray(a).dtype,
                                                                jnp.floating) else a,
      tree)


@pytest.fixture
def float64():
  """64-bit floats for the test; yields a caster for params and inputs.

  Tests that compare two float computations of the same quantity (custom reverse
  pass vs autodiff, scan vs streaming, library vs NumPy reference, sharded vs one
  device) run in float64: float32 results differ from one CPU to the next (XLA
  picks different kernels and fusion orders), so a float32 tolerance tuned on one
  machine fails on another. In float64 the paths agree to ~1e-12 on any machine,
  and the tolerances below can be tight enough to catch a real error.
  """
  with jax.enable_x64(True):
    yield _to_float64
