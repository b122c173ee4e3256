"""Gradient flow across time: ``log ||dL/dh_t||`` against t, per model (the paper's figure).

What it is for: the paper's claim that attention keeps gradients from vanishing.
For each model in ``--models`` this trains on ``--task`` (copy or denoise, the
binaries' defaults) at ``--T`` for ``--steps`` updates with gradient
diagnostics every ``--diag_every`` updates (``--steps=0``: at initialisation
only), in ``<workdir>/<model>/`` (resumable), then draws, from each run's
gradients.jsonl, the norm of the recall loss's gradient with respect to every
``h_t`` at the last diagnostic step, and ``||dL/dV||`` over training. It writes
gradflow.json, gradflow.csv (the norm at t = 0 over the norm at the last step,
per model) and gradflow.png.

Expected: RNN and LSTM gradients to early states are orders of magnitude below
those to late states; RelRNN/RelLSTM/MemRNN keep them within a small factor.

Command (see docs/RESULTS.md):
  relscreen-gradflow --models=RNN,LSTM,RelRNN --task=copy --T=200 --workdir=runs/gradflow_copy
"""

import csv
import json
import pathlib

from absl import app
from absl import flags
from absl import logging
import numpy as np

from relscreen_experiments import flags_lib
from relscreen_experiments import train
from relscreen_experiments.configs import recall
import relscreen as rs

_MODELS = flags.DEFINE_list("models", ["RNN", "LSTM", "MemRNN", "RelRNN", "RelLSTM"],
                            "registered models to compare")
_TASK = flags.DEFINE_enum("task", "copy", ["copy", "denoise"], "task (binary defaults)")
_T = flags.DEFINE_integer("T", 200, "delay T")
_STEPS = flags.DEFINE_integer("steps", 0, "training updates per model (0: initialisation)")
_DIAG_EVERY = flags.DEFINE_integer("diag_every", 100, "updates between diagnostics")
_SEED = flags.DEFINE_integer("seed", 100, "seed of parameters and data")
_WORKDIR = flags_lib.define_workdir()


def run_model(name: str, workdir: pathlib.Path) -> list[dict]:
  """Trains (or resumes) one model with diagnostics on; returns its gradient records."""
  config = recall.default_config(_TASK.value)
  config.update(dict(model=name, T=_T.value, steps=_STEPS.value, seed=_SEED.value,
                     diag_every=_DIAG_EVERY.value, eval_batches=1, eval_batch_size=10,
                     checkpoint_every=max(_DIAG_EVERY.value, 1)))
  train.train_and_evaluate(config, workdir / name, recall.make_task(_TASK.value, config))
  return train.MetricsLog(workdir / name / "gradients.jsonl", 10**12).read()


def summarise(records_by_model: dict) -> list[dict]:
  rows = []
  for name, records in records_by_model.items():
    norms = np.array(records[-1]["hidden_grad_norms"])
    rows.append({"model": name, "step": records[-1]["step"],
                 "norm_t0": float(norms[0]), "norm_last": float(norms[-1]),
                 "ratio_t0_over_last": float(norms[0] / norms[-1]),
                 "min_over_max": float(norms.min() / norms.max()),
                 "recurrent_grad_norm": records[-1]["recurrent_grad_norm"]})
  return rows


def plot(records_by_model: dict, path: pathlib.Path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
  for name, records in records_by_model.items():
    ax1.semilogy(records[-1]["hidden_grad_norms"], label=name)
    ax2.semilogy([r["step"] for r in records], [r["recurrent_grad_norm"] for r in records],
                 "o-", label=name)
  step = max(r[-1]["step"] for r in records_by_model.values())
  ax1.set(xlabel="time step t", ylabel="||dL/dh_t||",
          title=f"{_TASK.value}, T={_T.value}, update {step}")
  ax2.set(xlabel="update", ylabel="||dL/dV|| (LSTM: all gate weights)")
  ax1.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def train_fn(config, workdir):
  del config
  flags_lib.check_choices("models", _MODELS.value, rs.REGISTRY)
  workdir = pathlib.Path(workdir)
  records = {name: run_model(name, workdir) for name in _MODELS.value}
  rows = summarise(records)
  for row in rows:
    logging.info("%-8s ||dL/dh_0|| / ||dL/dh_last|| = %.3g (min/max over t %.3g)",
                 row["model"], row["ratio_t0_over_last"], row["min_over_max"])
  (workdir / "gradflow.json").write_text(json.dumps(
      {"task": _TASK.value, "T": _T.value, "rows": rows,
       "norms": {n: r[-1]["hidden_grad_norms"] for n, r in records.items()}}, indent=1))
  with (workdir / "gradflow.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  plot(records, workdir / "gradflow.png")


def main(argv):
  if _STEPS.value < 0 or _DIAG_EVERY.value < 1 or _T.value < 1:
    raise app.UsageError("--steps must be >= 0, --diag_every and --T >= 1")
  flags_lib.run_training(argv, {}, _WORKDIR, train_fn)

def run():
  """Console-script entry point."""
  flags_lib.run_app(main)


if __name__ == "__main__":
  run()
