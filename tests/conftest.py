"""Test-session settings: silent rank promotion is an error, and compiled
programs are cached on disk for the session's processes (xdist workers and the
binaries the tests start share it), so identical steps compile once."""

import os
import pathlib

_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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
