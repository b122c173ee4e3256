"""The RL environments behind one functional interface (jit- and vmap-friendly).

``make_env(name, memory_length)`` returns an ``Env`` whose ``reset(key)`` and
``step(state, action, key)`` act on a single environment; vmap them for many.
Both auto-reset: the observation after a finished episode is the first one of
the next, while reward and ``done`` still describe the finished step.

  MemoryChain-bsuite         gymnax (bsuite): a bit shown at the start must be
                             given as the action ``memory_length`` steps later.
                             gymnax 1.0 returns the observation of the state
                             before each step, so the bit shows in the first two
                             observations and the query in the last one; the
                             episode has ``memory_length + 1`` steps and only
                             the last action is rewarded (+1 or -1).
  MiniGrid-*                 xminigrid (DoorKey-5x5, MemoryS8, MemoryS16, ...).

Success means the episode ended with a positive reward (the right bit; the goal
or the matching object reached).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Env(NamedTuple):
  name: str
  num_actions: int
  obs_shape: tuple[int, ...]
  grid: bool  # observations are integer-coded grids [v, v, channels], else float vectors
  max_episode_steps: int
  reset: Callable[[Array], tuple[Any, Array]]  # key -> (state, obs)
  # (state, action, key) -> (state, obs, reward, done)
  step: Callable[[Any, Array, Array], tuple[Any, Array, Array, Array]]


def _memory_chain(memory_length: int) -> Env:
  import gymnax  # pylint: disable=g-import-not-at-top
  env, params = gymnax.make("MemoryChain-bsuite")
  params = params.replace(memory_length=memory_length)

  def reset(key):
    obs, state = env.reset(key, params)
    return state, obs

  def step(state, action, key):
    obs, state, reward, terminated, truncated, _ = env.step(key, state, action, params)
    return (state, obs, jnp.asarray(reward, jnp.float32),
            jnp.asarray(terminated | truncated, bool))

  return Env("MemoryChain-bsuite", env.num_actions, tuple(env.observation_space(params).shape),
             False, memory_length + 1, reset, step)


def _minigrid(name: str) -> Env:
  import xminigrid  # pylint: disable=g-import-not-at-top
  from xminigrid.wrappers import GymAutoResetWrapper  # pylint: disable=g-import-not-at-top
  if name not in xminigrid.registered_environments():
    raise ValueError(f"--env={name!r} is not an xminigrid environment; MiniGrid ones: "
                     + ", ".join(e for e in xminigrid.registered_environments()
                                 if e.startswith("MiniGrid")))
  env, params = xminigrid.make(name)
  env = GymAutoResetWrapper(env)

  def reset(key):
    timestep = env.reset(params, key)
    return timestep, timestep.observation

  def step(timestep, action, key):
    del key  # the environment carries its own key
    timestep = env.step(params, timestep, action)
    return (timestep, timestep.observation, jnp.asarray(timestep.reward, jnp.float32),
            timestep.last())

  return Env(name, env.num_actions(params), tuple(env.observation_shape(params)), True,
             int(params.max_steps), reset, step)


ENVS = ("MemoryChain-bsuite", "MiniGrid-DoorKey-5x5", "MiniGrid-MemoryS8",
        "MiniGrid-MemoryS16")


def make_env(name: str, memory_length: int = 5) -> Env:
  """The environment ``name`` (``memory_length`` is MemoryChain's delay)."""
  if name == "MemoryChain-bsuite":
    if memory_length < 1:
      raise ValueError(f"--memory_length must be >= 1, got {memory_length}")
    return _memory_chain(memory_length)
  if name.startswith("MiniGrid-"):
    return _minigrid(name)
  raise ValueError(f"--env={name!r} is not supported; choose MemoryChain-bsuite or an "
                   f"xminigrid MiniGrid-* environment (e.g. {', '.join(ENVS[1:])})")
