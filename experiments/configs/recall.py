"""The recall tasks by name, for binaries that run either (gradient flow, sweeps)."""

from relscreen_experiments.configs import copy as copy_config
from relscreen_experiments.configs import denoise as denoise_config
import relscreen as rs

TASKS = {"copy": (copy_config, rs.CopyTask), "denoise": (denoise_config, rs.DenoiseTask)}


def default_config(name: str):
  """The named task binary's default config."""
  return TASKS[name][0].get_config()


def make_task(name: str, config) -> rs.RecallTask:
  return TASKS[name][1](config.T, config.n_symbols, config.c_length)
