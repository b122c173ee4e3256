"""Relevance rule x eviction rule x cell: does any rule beat the paper's, and where?

For every cell in ``--cells`` (rnn, lstm, gru), relevance rule in
``--relevances`` (sum, mean, max, decay) and eviction rule in ``--evictions``
(top, fifo, reservoir) it trains the relevance-screened model (``Rel`` + cell)
on ``--task`` for ``--steps`` updates and each seed of ``--seeds`` (an eviction
rule that ignores the scores, fifo or reservoir, once per cell: every relevance
rule gives the same model there, labelled ``any``), and each of
``--baselines`` (full memory, plain window, ...) the same way; then it measures,
side by side in one process, the time of one training step and XLA's memory
plan per (cell, rules) at the task's length. Writes to ``--workdir``:
  ablation.json / ablation.csv  one row per configuration and seed: held-out
                                accuracy, loss, gradient ratio
                                ||dL/dh_0|| / ||dL/dh_last||, ms per step, memory
  ablation_summary.csv          per configuration: median and range over seeds, and
                                the accuracy at equal wall time (``summarise``)
  ablation_table.md             the summary as the Markdown table of docs/RESULTS.md
  ablation.png                  held-out accuracy per configuration, one dot per seed
Each (configuration, seed) trains in its own sub-directory, so a rerun resumes
and an interrupted ablation loses at most one run's progress since its last
checkpoint.

Command (see docs/RESULTS.md):
  relscreen-ablation --task=denoise --T=100 --steps=2000 --seeds=100,101 \\
      --workdir=runs/ablation_denoise
"""

import csv
import itertools
import json
import pathlib
import statistics

from absl import flags
from absl import logging
import numpy as np

from relscreen_experiments import ablation_lib
from relscreen_experiments import flags_lib
from relscreen_experiments import memax_peers
from relscreen_experiments import rundir
from relscreen_experiments import timing
from relscreen_experiments import train
from relscreen_experiments.configs import common
from relscreen_experiments.configs import recall
import relscreen as rs

_TASK = flags.DEFINE_enum("task", "denoise", ["copy", "denoise"], "task (binary defaults)")
_CELLS = flags.DEFINE_list("cells", ["rnn", "lstm"], "cells inside the relevance memory "
                           "(rnn, lstm, gru)")
_RELEVANCES = flags.DEFINE_list("relevances", [r.value for r in rs.Relevance],
                                "relevance rules")
_EVICTIONS = flags.DEFINE_list("evictions", [e.value for e in rs.Eviction], "eviction rules")
_BASELINES = flags.DEFINE_list("baselines", ["MemRNN", "WinRNN"], "models to compare with")
_SEEDS = flags.DEFINE_list("seeds", ["100", "101"], "seeds: each configuration trains once "
                           "per seed")
_T = flags.DEFINE_integer("T", 100, "delay T")
_STEPS = flags.DEFINE_integer("steps", 2000, "training updates per configuration and seed")
_NU = flags.DEFINE_integer("nu", None, "short-term buffer size (default: the task's)")
_RHO = flags.DEFINE_integer("rho", None, "relevant-set size (default: the task's)")
_DECAY = flags.DEFINE_float("decay", 0.9, "gamma of the decay rule")
_BLOCK = flags.DEFINE_enum("block", "linear", list(rs.BLOCKS), "what surrounds "
                           "relscreen's cores (the binaries' --block; memax models always "
                           "have the residual block)")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed rounds per configuration")
_WORKDIR = flags_lib.define_workdir()

def configurations() -> list[dict]:
  """The grid of the flags (``ablation_lib.configurations``)."""
  return ablation_lib.configurations(_CELLS.value, _RELEVANCES.value, _EVICTIONS.value,
                                     _BASELINES.value)


def task_config(c: dict, seed: int):
  config = recall.default_config(_TASK.value)
  config.update(dict(model=c["model"], relevance=c["relevance"], eviction=c["eviction"],
                     decay=_DECAY.value, block=_BLOCK.value, T=_T.value,
                     steps=_STEPS.value, seed=seed,
                     # the gradient ratio, at the last update (memax models: none)
                     diag_every=0 if memax_peers.is_memax(c["model"]) else max(_STEPS.value, 1),
                     checkpoint_every=max(_STEPS.value // 4, 1)))
  if _NU.value is not None:
    config.nu = _NU.value
  if _RHO.value is not None:
    config.rho = _RHO.value
  return config


def train_one(c: dict, seed: int, workdir: pathlib.Path) -> dict:
  config = task_config(c, seed)
  run_dir = workdir / c["dir"] / f"seed{seed}"
  result = train.train_and_evaluate(config, run_dir, recall.make_task(_TASK.value, config))
  ratio = None
  if config.diag_every:
    norms = np.array(rundir.read_records(run_dir / "gradients.jsonl")[-1]["hidden_grad_norms"])
    ratio = float(norms[0] / norms[-1])
  curve = [(r["step"], r["accuracy"]) for r in rundir.read_records(run_dir / "metrics.jsonl")
           if r.get("split") == "train"]
  return {**{k: v for k, v in c.items() if k != "dir"}, "seed": seed, "nu": config.nu,
          "rho": config.rho, "accuracy": result["accuracy"], "loss": result["loss"],
          "grad_ratio_t0_over_last": ratio, "curve": curve}


def measure_costs(rows: list[dict]):
  """ms per training step (median of round-robin rounds) and XLA's memory plan, per
  configuration (the same for every seed)."""
  length = _T.value + 20
  built = {}
  for r in rows:
    if r["label"] not in built:
      chunk = 32 if r["model"].startswith("Mem") else 0
      built[r["label"]] = timing.build(r["model"], length, 10, 128, r["nu"], r["rho"], chunk,
                                       relevance=r["relevance"], eviction=r["eviction"],
                                       decay=_DECAY.value, block=_BLOCK.value)
  times = timing.time_round_robin({k: v["train"] for k, v in built.items()}, _REPEATS.value)
  for r in rows:
    r["step_ms"] = 1e3 * statistics.median(times[r["label"]])
    r["peak_gb"] = timing.peak_gb(built[r["label"]]["train"][0])


def summarise(rows: list[dict]) -> list[dict]:
  """Per configuration: held-out accuracy after ``--steps`` updates (median and
  range over seeds), and the training accuracy at equal wall time: within the
  time the cheapest configuration takes for ``--steps`` updates (by the step
  times measured side by side), each configuration's last logged block."""
  budget_ms = min(_STEPS.value * r["step_ms"] for r in rows)
  out = []
  for label in dict.fromkeys(r["label"] for r in rows):
    mine = [r for r in rows if r["label"] == label]
    acc = [r["accuracy"] for r in mine]
    ratio = [r["grad_ratio_t0_over_last"] for r in mine
             if r["grad_ratio_t0_over_last"] is not None]
    timed = [timing.accuracy_at_time(r["curve"], r["step_ms"], budget_ms) for r in mine]
    at_time = [a for _, a in timed if a is not None]
    out.append({"label": label, "seeds": len(mine), "accuracy_median": statistics.median(acc),
                "accuracy_min": min(acc), "accuracy_max": max(acc),
                "grad_ratio_median": statistics.median(ratio) if ratio else None,
                "step_ms": mine[0]["step_ms"], "peak_gb": mine[0]["peak_gb"],
                "equal_time_s": budget_ms / 1e3, "equal_time_updates": timed[0][0],
                "equal_time_accuracy_median": (statistics.median(at_time) if at_time
                                               else None)})
  return out


def write_csv(path: pathlib.Path, rows: list[dict]):
  with path.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def draw(rows: list[dict], summary: list[dict], path: pathlib.Path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  labels = [s["label"] for s in summary]
  fig, ax = plt.subplots(figsize=(7, 0.32 * len(labels) + 1.2))
  for i, label in enumerate(labels):
    acc = [100 * r["accuracy"] for r in rows if r["label"] == label]
    paper = label.endswith("sum/top")
    ax.scatter(acc, [i] * len(acc), color="C3" if paper else "C0", s=18, zorder=3)
    ax.plot([min(acc), max(acc)], [i, i], color="gray", lw=1)
  ax.set_yticks(range(len(labels)), labels, fontsize=7)
  ax.invert_yaxis()
  ax.set(xlabel="held-out accuracy (%), one dot per seed",
         title=f"{_TASK.value}, T={_T.value}, {_STEPS.value} updates"
         f"{', residual block' if _BLOCK.value == 'residual' else ''} (red: the paper's rules)")
  ax.grid(axis="x", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def train_fn(config, workdir):
  del config
  for flag, values, choices in (("cells", _CELLS.value, ablation_lib.CELL_NAMES),
                                ("relevances", _RELEVANCES.value,
                                 [r.value for r in rs.Relevance]),
                                ("evictions", _EVICTIONS.value,
                                 [e.value for e in rs.Eviction]),
                                ("baselines", _BASELINES.value, common.MODEL_NAMES)):
    flags_lib.check_choices(flag, values, choices)
  seeds = flags_lib.integers("seeds", _SEEDS.value, distinct=True)
  if _STEPS.value < 1:
    raise ValueError("--steps must be >= 1")
  workdir = pathlib.Path(workdir)
  grid = configurations()
  rows = []
  for n, (c, seed) in enumerate(itertools.product(grid, seeds)):
    logging.info("ablation run %d/%d: %s, seed %d", n + 1, len(grid) * len(seeds),
                 c["label"], seed)
    rows.append(train_one(c, seed, workdir))
  measure_costs(rows)
  summary = summarise(rows)
  for s in summary:
    logging.info("%-22s acc %.1f%% (%.1f-%.1f) | grad ratio %s | %.1f ms/step | %.3f GB"
                 " | in %.0f s: %d updates, accuracy %s", s["label"],
                 100 * s["accuracy_median"], 100 * s["accuracy_min"],
                 100 * s["accuracy_max"],
                 "-" if s["grad_ratio_median"] is None else f"{s['grad_ratio_median']:.3g}",
                 s["step_ms"], s["peak_gb"],
                 s["equal_time_s"], s["equal_time_updates"],
                 "-" if s["equal_time_accuracy_median"] is None
                 else f"{100 * s['equal_time_accuracy_median']:.1f}%")
  (workdir / "ablation.json").write_text(json.dumps(rows, indent=1) + "\n")
  write_csv(workdir / "ablation.csv", [{k: v for k, v in r.items() if k != "curve"}
                                       for r in rows])
  write_csv(workdir / "ablation_summary.csv", summary)
  (workdir / "ablation_table.md").write_text(ablation_lib.markdown(rows, summary))
  draw(rows, summary, workdir / "ablation.png")


def main(argv):
  flags_lib.run_training(argv, {}, _WORKDIR, train_fn)


def run():
  """Console-script entry point."""
  flags_lib.run_app(main)


if __name__ == "__main__":
  run()
