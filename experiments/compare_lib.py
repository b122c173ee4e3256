"""Overlays the learning curves of several work directories (no flags; used by
``relscreen-compare``)."""

import json
import pathlib
import statistics

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


def load_runs(workdirs) -> list[tuple[str, list[dict]]]:
  """``load_run`` of each; labels that would repeat (two runs named ``s100``)
  get their parent directory's name in front."""
  runs = [load_run(w) for w in workdirs]
  labels = [label for label, _ in runs]
  return [(f"{pathlib.Path(w).absolute().parent.name}/{label}" if labels.count(label) > 1
           else label, records) for w, (label, records) in zip(workdirs, runs)]


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


# A logged block slower per update than this many times the run's median was
# stopped or suspended part of the way (the loop cannot tell): it counts at the
# median rate in ``training_minutes``.
PAUSE = 5.0


def training_minutes(records) -> list[float]:
  """Training time in minutes up to each record: the sum over the logged blocks
  so far of (updates in the block) / steps_per_s. A block slower per update than
  ``PAUSE`` times the run's median was paused part of the way and counts at the
  median rate. A ValueError when a record has no steps_per_s (not a training
  loop's record)."""
  if any("steps_per_s" not in r for r in records):
    raise ValueError("minutes need steps_per_s in every record (the supervised "
                     "binaries' metrics.jsonl)")
  per_update = [1.0 / r["steps_per_s"] for r in records]
  median = statistics.median(per_update) if per_update else 0.0
  minutes, total, previous = [], 0.0, 0
  for r, seconds in zip(records, per_update):
    total += (r["step"] - previous) * (median if seconds > PAUSE * median else seconds)
    previous = r["step"]
    minutes.append(total / 60.0)
  return minutes


def first_reaching(records, metric: str, threshold: float):
  """``(step, minutes)`` of the first record whose ``metric`` is >= ``threshold``
  (minutes by ``training_minutes``), or ``(None, None)``."""
  recs = [r for r in records if metric in r]
  for r, m in zip(recs, training_minutes(recs)):
    if r[metric] >= threshold:
      return r["step"], m
  return None, None


def held_out(workdir) -> float | None:
  """The accuracy of the run's final held-out evaluation (eval.json), if any."""
  path = pathlib.Path(workdir) / "eval.json"
  return json.loads(path.read_text()).get("accuracy") if path.is_file() else None


def threshold_table(workdirs, runs, metric: str, threshold: float) -> str:
  """Markdown: per run, the first logged block with ``metric`` >= ``threshold``
  (update and training minutes), the last block, and the held-out accuracy."""
  lines = [f"| run | first block >= {threshold:g}: update | minutes | last update | "
           f"minutes | last {metric} | held out |", "|" + " --- |" * 7]
  for workdir, (label, records) in zip(workdirs, runs):
    recs = [r for r in records if metric in r]
    step, minutes = first_reaching(recs, metric, threshold)
    total = training_minutes(recs)
    ho = held_out(workdir)
    lines.append(f"| {label} | {'-' if step is None else step} | "
                 f"{'-' if minutes is None else f'{minutes:.1f}'} | {recs[-1]['step']} | "
                 f"{total[-1]:.1f} | {recs[-1][metric]:.4g} | "
                 f"{'-' if ho is None else f'{ho:.4g}'} |")
  return "\n".join(lines) + "\n"


def plot(runs, metric: str, path: pathlib.Path, title: str = "", x: str = "auto"):
  """One line (with markers when short) per run: ``metric`` against its x key
  (frames, epoch or update), or with ``x="minutes"`` against training minutes
  (``training_minutes``: runs compared at equal wall time)."""
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
    if x == "minutes":
      xs, x_label = training_minutes(recs), "training minutes (sum of logged blocks)"
    scale = 100.0 if "accuracy" in metric or metric == "success" else 1.0
    ax.plot(xs, [scale * r[metric] for r in recs], label=label,
            marker="o" if len(xs) < 25 else None, ms=4)
  ylabel = metric + (" (%)" if "accuracy" in metric or metric == "success" else "")
  ax.set(xlabel=x_label, ylabel=ylabel,
         title=title or f"{metric} of {len(runs)} run{'' if len(runs) == 1 else 's'}")
  if metric in ("rel_loss", "loss", "train_loss"):
    ax.set_yscale("log")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
