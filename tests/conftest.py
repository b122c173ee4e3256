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
