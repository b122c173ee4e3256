"""Turns a config's field table into absl flags, and the flags back into a config.

One table (name, default, help, choices) per binary is the single source of
truth: the flags, their help text, their defaults and ``config.json`` all come
from it.
"""

import logging as py_logging
import pathlib

from absl import flags
from absl import logging
import ml_collections

_OUR_DIRS = tuple(str(pathlib.Path(__file__).resolve().parents[1] / d)
                  for d in ("experiments", "relscreen"))


class _OwnInfoOnly(py_logging.Filter):
  """Keeps INFO lines from this project only; other libraries' warnings still pass."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or record.pathname.startswith(_OUR_DIRS)


def quiet_other_loggers():
  """Hides other libraries' INFO chatter (Orbax logs every save) from the console."""
  logging.get_absl_handler().addFilter(_OwnInfoOnly())


def define_flags(fields) -> dict[str, flags.FlagHolder]:
  """Defines one absl flag per field; returns the FlagHolders by name."""
  holders = {}
  for name, default, help_text, choices in fields:
    if choices is not None:
      holders[name] = flags.DEFINE_enum(name, default, list(choices), help_text)
    elif isinstance(default, bool):
      holders[name] = flags.DEFINE_bool(name, default, help_text)
    elif isinstance(default, int):
      holders[name] = flags.DEFINE_integer(name, default, help_text)
    elif isinstance(default, float):
      holders[name] = flags.DEFINE_float(name, default, help_text)
    else:
      holders[name] = flags.DEFINE_string(name, default, help_text)
  return holders


def config_from_flags(holders: dict[str, flags.FlagHolder]) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({name: h.value for name, h in holders.items()})


def require_positive(config, *names: str, allow_zero: tuple[str, ...] = ()):
  """Raises a ValueError naming the first flag that is not > 0 (>= 0 if allowed)."""
  for name in names + allow_zero:
    value = config[name]
    low_ok = value >= 0 if name in allow_zero else value > 0
    if not low_ok:
      bound = ">= 0" if name in allow_zero else "> 0"
      raise ValueError(f"--{name} must be {bound}, got {value!r}")
