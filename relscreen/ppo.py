"""Proximal policy optimisation as pure functions (torch-ac's PPO, ALGORITHM §6).

Arrays are time-major: ``[t, n]`` for ``n`` parallel environments. ``dones[t]``
says the episode ended with step ``t`` (its reward is the last of the episode),
so nothing is bootstrapped across it.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


def gae(rewards: Array, values: Array, dones: Array, last_value: Array, gamma: float,
        lam: float) -> tuple[Array, Array]:
  """Generalised advantage estimation (Schulman et al. 2016).

  ``delta_t = r_t + gamma (1 - d_t) V_{t+1} - V_t`` and
  ``A_t = delta_t + gamma lam (1 - d_t) A_{t+1}``, with ``V_T = last_value`` and
  ``A_T = 0``.

  Args:
    rewards, values, dones: [t, n] (dones as bool or 0/1).
    last_value: [n], the value of the state after the last step.

  Returns:
    ``(advantages, returns)``, both [t, n]; returns = advantages + values.
  """
  mask = 1.0 - dones.astype(values.dtype)
  next_values = jnp.concatenate([values[1:], last_value[None]], axis=0)
  deltas = rewards + gamma * next_values * mask - values

  def back(next_adv, inputs):
    delta, m = inputs
    adv = delta + gamma * lam * m * next_adv
    return adv, adv

  _, adv = jax.lax.scan(back, jnp.zeros_like(last_value), (deltas, mask), reverse=True)
  return adv, adv + values


def log_prob(logits: Array, actions: Array) -> Array:
  """log pi(action) under the categorical policy with these ``logits``."""
  return jnp.take_along_axis(jax.nn.log_softmax(logits), actions[..., None], axis=-1)[..., 0]


class LossTerms(NamedTuple):
  loss: Array
  policy_loss: Array
  value_loss: Array
  entropy: Array
  approx_kl: Array
  clip_fraction: Array


def ppo_loss(logits: Array, values: Array, actions: Array, old_log_probs: Array,
             old_values: Array, advantages: Array, returns: Array, clip_eps: float,
             entropy_coef: float, value_coef: float) -> LossTerms:
  """The clipped PPO objective, averaged over every given step (any leading shape).

  As in torch-ac: the policy ratio is clipped to ``[1 - eps, 1 + eps]``; the value
  is clipped to ``old_value +- eps`` and the larger of the two squared errors is
  taken; advantages are used as they are (not normalised);
  ``loss = policy_loss - entropy_coef * entropy + value_coef * value_loss``.
  """
  log_p = jax.nn.log_softmax(logits)
  new_log_probs = log_prob(logits, actions)
  entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1).mean()
  ratio = jnp.exp(new_log_probs - old_log_probs)
  surrogate = jnp.minimum(ratio * advantages,
                          jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages)
  policy_loss = -surrogate.mean()
  clipped = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
  value_loss = jnp.maximum((values - returns) ** 2, (clipped - returns) ** 2).mean()
  loss = policy_loss - entropy_coef * entropy + value_coef * value_loss
  approx_kl = (old_log_probs - new_log_probs).mean()
  clip_fraction = (jnp.abs(ratio - 1.0) > clip_eps).mean()
  return LossTerms(loss, policy_loss, value_loss, entropy, approx_kl, clip_fraction)
