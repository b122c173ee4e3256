"""Turns a config's field table into absl flags, and the flags back into a config.

One table (name, default, help, choices) per binary is the single source of
truth: the flags, their help text, their defaults and ``config.json`` all come
from it.
"""

import logging as py_logging
import math
import pathlib
import sys

from absl import flags
from absl import logging
import ml_collections

import relscreen

_REUSE_MEMORY = flags.DEFINE_bool(
    "reuse_memory", False,
    "keep the memory XLA frees for its next call (relscreen.reuse_freed_memory; "
    "glibc only): training steps with large scratch (autodiff LSTM/RNN/GRU, long "
    "sequences, large batches) run 15-40% faster, but small calls (the streaming "
    "step) slower, and the process holds its peak memory until it exits; "
    "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 in the environment at start gives the "
    "speed without those costs on glibc >= 2.35 (--huge_pages, on by default)")
_HUGE_PAGES = flags.DEFINE_bool(
    "huge_pages", True,
    "on glibc >= 2.35 with transparent huge pages not off: restart the process once "
    "with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (glibc reads it only at start), so "
    "the scratch memory XLA maps afresh at every call is faulted in 2 MB at a time "
    "(one model per process: training steps up to 54% faster, the streaming step and "
    "peak memory unchanged; README, with a caveat for several models in one process; "
    "off by default for PPO, which gained nothing). "
    "Skipped under --reuse_memory and where the environment tunes malloc already")

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


def require_finite(config):
  """Raises a ValueError naming the first float flag that is NaN or infinite."""
  for name, value in config.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f"--{name} must be a finite number, got {value!r}")


def require_positive(config, positive=(), non_negative=()):
  """Raises a ValueError naming the first flag that is not > 0 (or >= 0), or a
  float flag that is not finite."""
  require_finite(config)
  for names, ok, bound in ((positive, lambda v: v > 0, "> 0"),
                           (non_negative, lambda v: v >= 0, ">= 0")):
    for name in names:
      if not ok(config[name]):
        raise ValueError(f"--{name} must be {bound}, got {config[name]!r}")


def integers(flag: str, values, minimum: int | None = None, distinct: bool = False,
             nonempty: bool = True) -> list[int]:
  """A list flag's values as integers; a ValueError names ``--flag`` otherwise."""
  try:
    out = [int(v) for v in values]
  except ValueError:
    raise ValueError(f"--{flag} must be integers, got {','.join(map(str, values))}") from None
  if nonempty and not out:
    raise ValueError(f"--{flag} needs at least one value")
  if minimum is not None and any(v < minimum for v in out):
    raise ValueError(f"--{flag} must be >= {minimum}, got {','.join(map(str, out))}")
  if distinct and len(set(out)) != len(out):
    raise ValueError(f"--{flag} must be distinct, got {','.join(map(str, out))}")
  return out


def check_choices(flag: str, values, choices):
  """Raises a ValueError naming ``--flag`` and the values not among ``choices``."""
  bad = [v for v in values if v not in choices]
  if bad:
    raise ValueError(f"--{flag}: unknown {bad}; choose from {', '.join(choices)}")


def define_workdir() -> flags.FlagHolder:
  holder = flags.DEFINE_string("workdir", None, "directory for metrics, checkpoints, plots")
  flags.mark_flag_as_required("workdir")
  return holder


def run_training(argv, holders, workdir: flags.FlagHolder, train_fn,
                 positive=(), non_negative=()):
  """The body of a training binary: flags -> config -> ``train_fn(config, workdir)``.

  Bad flags, files or a non-finite loss end the run with a one-line error and
  exit status 1; what the work directory already holds is left as it is.
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  from relscreen_experiments import train  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  quiet_other_loggers()
  config = config_from_flags(holders)
  try:
    require_positive(config, positive, non_negative)
    train_fn(config, workdir.value)
  except (ValueError, train.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def run_online_training(argv, holders, workdir: flags.FlagHolder, make_task,
                        positive=None):
  """``run_training`` for the online tasks (copy, denoise, adding)."""
  from relscreen_experiments import train  # pylint: disable=g-import-not-at-top
  from relscreen_experiments.configs import common  # pylint: disable=g-import-not-at-top
  run_training(argv, holders, workdir,
               lambda config, wd: train.train_and_evaluate(config, wd, make_task(config)),
               positive or common.POSITIVE, common.NON_NEGATIVE)


def enable_compilation_cache(environ=None, home: pathlib.Path | None = None) -> str:
  """Turns on JAX's persistent compilation cache for this process; returns its
  directory ('' when off).

  A binary's first update compiles for 2-10 s on a CPU (``relscreen-benchmark``
  reports it per model); a rerun, a resumed run, or another seed of the same
  configuration then reads the compiled program instead. The directory is
  ``$JAX_COMPILATION_CACHE_DIR`` when that is set (set it empty to turn the cache
  off), else ``~/.cache/relscreen/xla``. JAX keys each entry by the program, the
  device and the compiler flags, and keeps programs that took over a second to
  compile.
  """
  import os  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  environ = os.environ if environ is None else environ
  if "JAX_COMPILATION_CACHE_DIR" in environ:
    path = environ["JAX_COMPILATION_CACHE_DIR"]
  else:
    path = str((home or pathlib.Path.home()) / ".cache" / "relscreen" / "xla")
  jax.config.update("jax_compilation_cache_dir", path or None)
  return path


def run_app(main, huge_pages: bool = True):
  """``absl.app.run(main)``, with ``--help`` listing the binary's own flags,
  the process restarted once with glibc's huge pages for malloc under
  ``--huge_pages`` (``relscreen.restart_with_huge_pages``, right after the flags are
  parsed; ``huge_pages`` is the flag's default for this binary: off for PPO,
  which gained nothing from them), the persistent compilation cache on (``enable_compilation_cache``) and, on a
  CPU with AVX-512, XLA emitting 512-bit vectors (``relscreen.prefer_wide_vectors``)
  and, with glibc and ``--reuse_memory``, freed memory kept for reuse
  (``relscreen.reuse_freed_memory``): both must come before JAX's first backend
  starts, so after the flags are parsed and before ``main``.

  absl's ``--help`` lists the flags of the module named by ``sys.argv[0]``. A
  console script's ``argv[0]`` is its launcher, and the flags that
  ``define_flags`` makes are registered under this module, so ``--help`` would
  list none of them (only ``--helpfull`` did). They are registered under
  ``argv[0]`` too, with those of the calling binary module.
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  flags.FLAGS.set_default("huge_pages", huge_pages)
  caller = sys._getframe(1).f_globals["__name__"]  # pylint: disable=protected-access
  if caller != "__main__":  # a console script: --help prints the binary's docstring
    sys.modules["__main__"].__doc__ = sys.modules[caller].__doc__
  by_module = flags.FLAGS.flags_by_module_dict()
  shown = {f.name for f in by_module.get(sys.argv[0], [])}
  for module in (caller, __name__):
    for flag in by_module.get(module, []):
      if flag.name not in shown:
        flags.FLAGS.register_flag_by_module(sys.argv[0], flag)
        shown.add(flag.name)

  def start(argv):
    if _HUGE_PAGES.value and not _REUSE_MEMORY.value:
      # Returns where it does not apply; else the process starts over.
      relscreen.restart_with_huge_pages(note="; --nohuge_pages: no restart")
    relscreen.prefer_wide_vectors()
    if _REUSE_MEMORY.value:
      relscreen.reuse_freed_memory()
    enable_compilation_cache()
    return main(argv)

  app.run(start)
