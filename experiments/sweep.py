"""The recurrence/attention tradeoff: sweep nu and rho, against MemRNN and LSTM.

What it is for: the paper's resource argument. For every (nu, rho) in
``--nus`` x ``--rhos`` it trains ``--model`` (RelRNN by default) on ``--task``
(denoise by default, the paper's rho sweep uses rho in 3, 8, 18, 25), and each
of ``--baselines`` once, for ``--steps`` updates with gradient diagnostics at
the start and the end; then it measures, side by side in one process, the time
of one training step and XLA's memory plan of each configuration (the copy-task
step at the same length, batch and H). Writes to ``--workdir``:
  sweep.json / sweep.csv   accuracy, loss, ms per step, memory, gradient ratio
  sweep_grad.png           log ||dL/dh_t|| against steps back from the end
  sweep_tradeoff.png       accuracy against time per step (marker area: memory)
Each configuration trains in its own sub-directory, so a rerun resumes.

Command (see docs/RESULTS.md):
  relscreen-sweep --task=denoise --T=100 --rhos=3,8,18,25 --steps=1500 \
      --workdir=runs/sweep_denoise
"""

import csv
import itertools
import json
import pathlib
import statistics

from absl import flags
from absl import logging
import numpy as np

from relscreen_experiments import flags_lib
from relscreen_experiments import timing
from relscreen_experiments import train
from relscreen_experiments.configs import recall
import relscreen as rs

_TASK = flags.DEFINE_enum("task", "denoise", ["copy", "denoise"], "task (binary defaults)")
_MODEL = flags.DEFINE_enum("model", "RelRNN", ["RelRNN", "RelLSTM"], "the swept model")
_NUS = flags.DEFINE_list("nus", ["15"], "short-term buffer sizes")
_RHOS = flags.DEFINE_list("rhos", ["3", "8", "18", "25"], "relevant-set sizes")
_BASELINES = flags.DEFINE_list("baselines", ["MemRNN", "LSTM"], "models to compare with")
_T = flags.DEFINE_integer("T", 100, "delay T")
_STEPS = flags.DEFINE_integer("steps", 1500, "training updates per configuration")
_SEED = flags.DEFINE_integer("seed", 100, "seed")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed rounds per configuration")
_WORKDIR = flags_lib.define_workdir()


def configurations() -> list[dict]:
  grid = [{"model": _MODEL.value, "nu": int(nu), "rho": int(rho)}
          for nu, rho in itertools.product(_NUS.value, _RHOS.value)]
  defaults = recall.default_config(_TASK.value)
  base = [{"model": m, "nu": defaults.nu, "rho": defaults.rho} for m in _BASELINES.value]
  for c in grid + base:
    c["label"] = (f"{c['model']} nu={c['nu']} rho={c['rho']}"
                  if c["model"].startswith("Rel") else c["model"])
    c["dir"] = c["label"].replace(" ", "_").replace("=", "")
  return grid + base


def train_one(c: dict, workdir: pathlib.Path) -> dict:
  config = recall.default_config(_TASK.value)
  config.update(dict(model=c["model"], nu=c["nu"], rho=c["rho"], T=_T.value,
                     steps=_STEPS.value, seed=_SEED.value, diag_every=max(_STEPS.value, 1),
                     checkpoint_every=max(_STEPS.value // 4, 1)))
  result = train.train_and_evaluate(config, workdir / c["dir"],
                                    recall.make_task(_TASK.value, config))
  grads = train.MetricsLog(workdir / c["dir"] / "gradients.jsonl", 10**12).read()
  norms = np.array(grads[-1]["hidden_grad_norms"])
  return {**{k: v for k, v in c.items() if k != "dir"}, "accuracy": result["accuracy"],
          "loss": result["loss"], "rel_loss": result["rel_loss"],
          "grad_ratio_t0_over_last": float(norms[0] / norms[-1]),
          "hidden_grad_norms": norms.tolist()}


def measure_costs(rows: list[dict]):
  """Adds ms per training step (median, round-robin) and the memory plan to ``rows``."""
  length = _T.value + 20
  built = {}
  for r in rows:
    chunk = 32 if r["model"].startswith("Mem") else 0
    built[r["label"]] = timing.build(r["model"], length, 10, 128, r["nu"], r["rho"], chunk)
  times = timing.time_round_robin({k: v["train"] for k, v in built.items()},
                                     _REPEATS.value)
  for r in rows:
    r["step_ms"] = 1e3 * statistics.median(times[r["label"]])
    r["peak_gb"] = timing.peak_gb(built[r["label"]]["train"][0])


def draw(rows: list[dict], workdir: pathlib.Path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 3.8))
  for r in rows:
    ax.semilogy(np.asarray(r["hidden_grad_norms"])[::-1], label=r["label"])
  ax.set(xlabel="steps back from the end", ylabel="||dL/dh_t||",
         title=f"{_TASK.value}, T={_T.value}, after {_STEPS.value} updates")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(workdir / "sweep_grad.png", dpi=100)
  plt.close(fig)
  draw_tradeoff(rows, workdir / "sweep_tradeoff.png",
                f"{_TASK.value}, T={_T.value}, {_STEPS.value} updates")


def draw_tradeoff(rows: list[dict], path: pathlib.Path, title: str):
  """Accuracy against step time, marker area proportional to the memory plan (a
  legend gives the scale), labels offset so they do not overlap."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  top = max(r["peak_gb"] for r in rows)
  area = lambda gb: 20 + 600 * gb / top
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  order = sorted(rows, key=lambda r: (r["step_ms"], r["accuracy"]))
  for i, r in enumerate(order):
    ax.scatter(r["step_ms"], 100 * r["accuracy"], s=area(r["peak_gb"]), alpha=0.6,
               edgecolors="k", linewidths=0.5)
    ax.annotate(r["label"], (r["step_ms"], 100 * r["accuracy"]), fontsize=7,
                xytext=(6, 8 if i % 2 else -12), textcoords="offset points")
  for gb in (top / 10, top / 2, top):
    ax.scatter([], [], s=area(gb), color="gray", alpha=0.4, edgecolors="k",
               linewidths=0.5, label=f"{1e3 * gb:.0f} MB")
  ax.legend(title="memory plan", fontsize=7, title_fontsize=7, loc="lower right",
            labelspacing=1.3, borderpad=1)
  xs = [r["step_ms"] for r in rows]
  ax.set(xscale="log", xlim=(min(xs) / 1.4, max(xs) * 1.8),
         xlabel="ms per training step (batch 10, H 128)", ylabel="held-out accuracy (%)",
         title=f"Accuracy, time and memory: {title}")
  ax.margins(y=0.15)
  plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
  ax.xaxis.set_major_formatter(plain)
  ax.xaxis.set_minor_formatter(plain)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def train_fn(config, workdir):
  del config
  flags_lib.integers("nus", _NUS.value, minimum=1)
  flags_lib.integers("rhos", _RHOS.value, minimum=1)
  if _STEPS.value < 1:
    raise ValueError("--steps must be >= 1")
  flags_lib.check_choices("baselines", _BASELINES.value, rs.REGISTRY)
  workdir = pathlib.Path(workdir)
  rows = [train_one(c, workdir) for c in configurations()]
  measure_costs(rows)
  for r in rows:
    logging.info("%-24s acc %.1f%% | %.1f ms/step | plan %.3f GB | grad ratio %.3g",
                 r["label"], 100 * r["accuracy"], r["step_ms"], r["peak_gb"],
                 r["grad_ratio_t0_over_last"])
  (workdir / "sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
  fields = [k for k in rows[0] if k != "hidden_grad_norms"]
  with (workdir / "sweep.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  draw(rows, workdir)


def main(argv):
  flags_lib.run_training(argv, {}, _WORKDIR, train_fn)


def run():
  """Console-script entry point."""
  flags_lib.run_app(main)


if __name__ == "__main__":
  run()
