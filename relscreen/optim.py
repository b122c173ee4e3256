"""torch-equivalent optimisers built from optax transforms (ALGORITHM §5)."""

import enum

import optax


class Optimizer(enum.Enum):
  RMSPROP = "rmsprop"
  ADAM = "adam"


def torch_rmsprop(learning_rate: float, alpha: float = 0.99,
                  eps: float = 1e-8) -> optax.GradientTransformation:
  """torch's RMSprop: ``v = a v + (1-a) g^2``, ``theta -= lr g / (sqrt(v) + eps)``.

  eps sits *outside* the square root (optax's default puts it inside), v starts
  at 0, no momentum, not centred.
  """
  return optax.chain(
      optax.scale_by_rms(decay=alpha, eps=eps, initial_scale=0.0, eps_in_sqrt=False),
      optax.scale_by_learning_rate(learning_rate))


def make_optimizer(name: str | Optimizer, learning_rate: float, alpha: float = 0.99,
                   clip: float | None = 1.0) -> optax.GradientTransformation:
  """RMSprop (torch) or Adam (torch defaults), after clipping by global norm."""
  try:
    kind = Optimizer(name)
  except ValueError:
    raise ValueError(f"optimizer={name!r} is not one of: rmsprop, adam") from None
  if isinstance(learning_rate, (int, float)) and learning_rate <= 0:
    raise ValueError(f"learning rate must be > 0, got {learning_rate!r}")
  opt = (torch_rmsprop(learning_rate, alpha) if kind is Optimizer.RMSPROP
         else optax.adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8))
  if clip is None or clip <= 0:
    return opt
  return optax.chain(optax.clip_by_global_norm(clip), opt)
