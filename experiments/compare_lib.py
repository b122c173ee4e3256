"""Overlays the learning curves of several work directories (no flags; used by
``relscreen-compare``)."""

import json
import pathlib

from relscreen_experiments import rundir

# The x axis and the metrics each kind of run logs, in order of preference.
_X_KEYS = ("frames", "step")
_METRICS = ("accuracy", "val_accuracy", "success", "val_bpc", "rel_loss", "loss",
            "train_loss")


def load_run(workdir) -> tuple[str, list[dict]]:
  """``(label, records)`` of one work directory's metrics.jsonl (train records
  only when the run logs splits). The label names the directory and the model."""
  path = pathlib.Path(workdir)
  metrics = path / "metrics.jsonl"
  if not metrics.is_file():
    raise rundir.WorkdirError(f"{metrics} not found: each --workdirs entry must be the "
                              "--workdir of a training run")
  records = rundir.read_records(metrics)
  records = [r for r in records if r.get("split", "train") == "train"]
  label = path.name
  config = path / "config.json"
  if config.is_file():
    model = json.loads(config.read_text()).get("model")
    if model and model not in label:
      label = f"{label} ({model})"
  return label, records


def pick_metric(runs, metric: str) -> str:
  keys = set().union(*(r.keys() for _, recs in runs for r in recs)) if runs else set()
  if metric != "auto":
    if metric not in keys:
      raise ValueError(f"--metric={metric!r} is in none of the runs' records (they hold: "
                       f"{', '.join(sorted(k for k in keys if k not in ('split',)))})")
    return metric
  for name in _METRICS:
    if name in keys:
      return name
  raise ValueError("the runs' records hold none of " + ", ".join(_METRICS))


def plot(runs, metric: str, path: pathlib.Path, title: str = ""):
  """One line (with markers when short) per run: ``metric`` against its x key."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  x_key, x_label = "step", "update"
  for label, records in runs:
    recs = [r for r in records if metric in r]
    x_key = next((k for k in _X_KEYS if recs and k in recs[0]), "step")
    x_label = ("frames" if x_key == "frames" else
               "epoch" if recs and "epoch" in recs[0] else "update")
    xs = [r[x_key] for r in recs]
    scale = 100.0 if "accuracy" in metric or metric == "success" else 1.0
    ax.plot(xs, [scale * r[metric] for r in recs], label=label,
            marker="o" if len(xs) < 25 else None, ms=4)
  ylabel = metric + (" (%)" if "accuracy" in metric or metric == "success" else "")
  ax.set(xlabel=x_label, ylabel=ylabel,
         title=title or f"{metric} of {len(runs)} runs")
  if metric in ("rel_loss", "loss", "train_loss"):
    ax.set_yscale("log")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
