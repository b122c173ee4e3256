"""Initialisers (ALGORITHM §4) and the torch-equivalent optimisers (ALGORITHM §5)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import relscreen as rs
from relscreen import initializers as inits


@pytest.mark.parametrize("fn", [inits.henaff, inits.cayley, inits.random_rotation])
@pytest.mark.parametrize("size", [6, 7, 64])
def test_rotations_are_orthogonal(fn, size):
  kernel = np.asarray(fn(jax.random.PRNGKey(size), (size, size)), np.float64)
  np.testing.assert_allclose(kernel.T @ kernel, np.eye(size), atol=1e-5)
  assert np.linalg.det(kernel) == pytest.approx(1.0, abs=1e-4)
  assert inits.is_orthogonal(kernel)
  assert not inits.is_orthogonal(kernel + 0.01)


def test_henaff_is_block_rotation_in_kernel_layout():
  """Torch's weight blocks are [[cos, sin], [-sin, cos]]; the kernel holds the transpose."""
  kernel = np.asarray(inits.henaff(jax.random.PRNGKey(0), (5, 5)))
  for k in range(2):
    block = kernel[2 * k:2 * k + 2, 2 * k:2 * k + 2]
    theta = math.atan2(-block[0, 1], block[0, 0])  # kernel[0,1] = -sin(theta)
    assert -math.pi <= theta <= 0.0
    np.testing.assert_allclose(block.T, [[math.cos(theta), math.sin(theta)],
                                         [-math.sin(theta), math.cos(theta)]], atol=1e-6)
  assert kernel[4, 4] == 1.0
  off = kernel.copy()
  for k in range(2):
    off[2 * k:2 * k + 2, 2 * k:2 * k + 2] = 0
  off[4, 4] = 0
  assert np.all(off == 0)


def test_cayley_angles_lie_in_minus_one_zero():
  kernel = np.asarray(inits.cayley(jax.random.PRNGKey(1), (64, 64)))
  theta = np.arctan2(-kernel[0::2, 1::2].diagonal(), kernel[0::2, 0::2].diagonal())
  assert np.all((theta > -1.0) & (theta <= 0.0))


def test_model_uses_the_requested_inits():
  cfg = rs.model_config("RelRNN", 3, hidden=64, r_init="cayley", i_init="kaiming")
  p = rs.RecurrentCore(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 3)))["params"]
  assert inits.is_orthogonal(p["V"])
  assert np.std(p["U"]) == pytest.approx(math.sqrt(2 / 3), rel=0.15)
  assert np.max(np.abs(p["b"])) <= 1 / math.sqrt(3)
  assert np.max(np.abs(p["Ua"])) <= 1 / 8 and np.max(np.abs(p["Va"])) <= 1 / 8
  assert np.std(p["v"]) == pytest.approx(math.sqrt(2 / 65), rel=0.3)


def test_torch_rmsprop_matches_hand_computation():
  """Three steps of v = a v + (1-a) g^2; theta -= lr g / (sqrt(v) + eps), eps outside."""
  lr, alpha, eps = 0.1, 0.9, 1e-8
  opt = rs.torch_rmsprop(lr, alpha, eps)
  theta = jnp.array([1.0, -2.0])
  state = opt.init(theta)
  grads = [np.array([0.5, -1e-9]), np.array([-0.25, 2e-9]), np.array([1.0, 0.0])]
  want, v = np.array([1.0, -2.0]), np.zeros(2)
  for g in grads:
    updates, state = opt.update(jnp.asarray(g, jnp.float32), state, theta)
    theta = optax.apply_updates(theta, updates)
    v = alpha * v + (1 - alpha) * g**2
    want = want - lr * g / (np.sqrt(v) + eps)
    np.testing.assert_allclose(theta, want, rtol=1e-5)
  # With eps inside the sqrt the tiny-gradient coordinate would barely move.
  assert abs(float(theta[1]) - (-2.0)) > 1e-3


def test_clipping_and_optimizer_errors():
  opt = rs.make_optimizer("rmsprop", 1.0, clip=1.0)
  updates, _ = opt.update(jnp.array([30.0, 40.0]), opt.init(jnp.zeros(2)))
  # Clipped to norm 1 -> g = (0.6, 0.8); first RMSprop step: g / sqrt(0.01 g^2) = 10.
  np.testing.assert_allclose(updates, [-10.0, -10.0], rtol=1e-4)
  with pytest.raises(ValueError, match="optimizer='sgd'"):
    rs.make_optimizer("sgd", 1e-3)


def test_parameters_made_without_a_forward_pass_equal_flax_init():
  """The training binaries make fresh parameters with ``train.init_params``
  (Flax's lazy_init: no forward program compiled); a run's trajectory depends on
  every bit of them, so they must equal ``Module.init``'s exactly."""
  from relscreen_experiments import train  # pylint: disable=g-import-not-at-top
  task = rs.CopyTask(4)
  model = rs.SequenceModel(rs.model_config("RelGRU", task.input_size, hidden=6, nu=2, rho=2,
                                           layers=2), task.num_classes)
  key = jax.random.PRNGKey(5)
  x = task.batch(key, 2).x
  made = train.init_params(model, key, x)
  expected = model.init(key, x)["params"]
  assert jax.tree_util.tree_structure(made) == jax.tree_util.tree_structure(expected)
  for a, b in zip(jax.tree_util.tree_leaves(made), jax.tree_util.tree_leaves(expected)):
    assert a.dtype == b.dtype and np.array_equal(a, b)
