"""Strict JAX settings for the tests: silent rank promotion is an error."""

import jax
import pytest


@pytest.fixture(autouse=True)
def strict_jax():
  with jax.numpy_rank_promotion("raise"):
    yield
