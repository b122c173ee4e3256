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

MiniGrid-Memory* carry a ``Split`` of their episodes: whether the object to
remember is in the agent's view at the start. xminigrid starts the agent at a
random cell of the corridor row, facing away from the start room, with a 3 x 3
view: only from the first cell does it see the object (20% of MemoryS8's
episodes, 7.7% of MemoryS16's); in the others it must turn back and look
first. An agent that remembers what it saw at the start and guesses otherwise
succeeds in 0.2 + 0.8 / 2 = 60% of MemoryS8's episodes; the evaluation reports
success on each side of the split, so that plateau can be told from memory.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Split(NamedTuple):
  """A yes/no property of an episode's start that changes what the task asks of
  the agent; the evaluation reports success on each side."""

  holds: str  # e.g. "cue in view at the start"
  fails: str  # e.g. "cue out of view at the start"
  test: Callable[[Any, Array], Array]  # (state, first observation) of one env -> bool


class Env(NamedTuple):
  name: str
  num_actions: int
  obs_shape: tuple[int, ...]
  grid: bool  # observations are integer-coded grids [v, v, channels], else float vectors
  max_episode_steps: int
  reset: Callable[[Array], tuple[Any, Array]]  # key -> (state, obs)
  # (state, action, key) -> (state, obs, reward, done)
  step: Callable[[Any, Array, Array], tuple[Any, Array, Array, Array]]
  split: Split | None = None


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

  split = _cue_in_view(params) if name.startswith("MiniGrid-Memory") else None
  return Env(name, env.num_actions(params), tuple(env.observation_shape(params)), True,
             int(params.max_steps), reset, step, split)


CUE = (2, 1)  # row, column of the object to remember in xminigrid's Memory layout


def _cue_in_view(params) -> Split:
  """Memory's split: the object to remember is in the first observation. Tested
  by erasing it (floor in its cell) and recomputing the view: the views differ
  exactly when the cell is in view, whatever the view size or what else shows."""
  from xminigrid.core.constants import TILES_REGISTRY, Colors, Tiles  # pylint: disable=g-import-not-at-top
  from xminigrid.core.observation import transparent_field_of_view  # pylint: disable=g-import-not-at-top
  floor = TILES_REGISTRY[Tiles.FLOOR, Colors.BLACK]

  def test(timestep, obs):
    state = timestep.state
    erased = transparent_field_of_view(state.grid.at[CUE].set(floor), state.agent,
                                       params.view_size, params.view_size)
    return jnp.any(erased != obs)

  return Split("cue in view at the start", "cue out of view at the start", test)


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
