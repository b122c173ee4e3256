"""Transfer copy (ALGORITHM §6) without flags: evaluate a copy run at larger T, and
write the table and plot. The ``relscreen-transfer`` binary calls these."""

import csv
import json
import pathlib
import time

from absl import logging
import jax

from relscreen_experiments import rundir
from relscreen_experiments import train
import relscreen as rs


def copy_task_of(config) -> rs.CopyTask:
  if "variable" not in config:
    raise ValueError("the checkpoint directory is not a copy-task run (its config.json "
                     "has no 'variable' field)")
  return rs.CopyTask(config.T, config.n_symbols, config.c_length)


def transfer(checkpoint_dir, Ts, batches, batch_size, seed) -> tuple[dict, list[dict]]:
  """Evaluates the run in ``checkpoint_dir`` at each T; returns (run info, rows)."""
  config, model, params, step = train.load_trained(checkpoint_dir, copy_task_of)
  rows = []
  for T in Ts:
    t0 = time.perf_counter()
    task = rs.CopyTask(T, config.n_symbols, config.c_length)
    result = train.evaluate(model, task, params, jax.random.PRNGKey(seed), batches,
                            batch_size)
    rows.append({"T": T, **result, "seconds": time.perf_counter() - t0})
    logging.info("T=%d: recall accuracy %.2f%%, loss %.4f (%.3fx memoryless), %.1fs", T,
                 100 * result["accuracy"], result["loss"], result["rel_loss"],
                 rows[-1]["seconds"])
  info = {"model": config.model, "trained_T": config.T, "trained_updates": step,
          "checkpoint_dir": str(checkpoint_dir), "batches": batches,
          "batch_size": batch_size, "seed": seed}
  return info, rows


def write_outputs(workdir: pathlib.Path, info: dict, rows: list[dict]):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker  # pylint: disable=unused-import

  workdir = rundir.prepare(workdir)
  (workdir / "transfer.json").write_text(json.dumps({**info, "rows": rows}, indent=2) + "\n")
  with (workdir / "transfer.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  fig, ax = plt.subplots(figsize=(5, 3.6))
  ax.semilogx([r["T"] for r in rows], [100 * r["accuracy"] for r in rows], "o-")
  ax.axhline(100 / 8, color="gray", ls="--", lw=1, label="chance (12.5%)")
  ax.set(xlabel="test delay T", ylabel="recall accuracy (%)", ylim=(0, 101),
         title=f"{info['model']} trained at T={info['trained_T']}")
  ts = [r["T"] for r in rows]  # one plain label per measured T, none in between
  ax.set_xticks(ts, [str(t) for t in ts])
  ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
  ax.legend(loc="center right")
  fig.tight_layout()
  fig.savefig(workdir / "transfer.png", dpi=100)
  plt.close(fig)


def find_runs(root: pathlib.Path) -> list[pathlib.Path]:
  """The training runs at or below ``root``: directories holding a config.json
  (an ablation's or sweep's ``<model>/seed<s>``), sorted; a ValueError naming
  ``root`` when there is none."""
  root = pathlib.Path(root)
  if (root / "config.json").exists():
    return [root]
  runs = sorted(p.parent for p in root.glob("**/config.json"))
  if not runs:
    raise ValueError(f"no training run (a directory with config.json) at or below {root}")
  return runs


def _done(out: pathlib.Path, Ts, batches, batch_size, seed) -> dict | None:
  """The transfer.json in ``out`` when it holds exactly this evaluation, else None."""
  try:
    saved = json.loads((out / "transfer.json").read_text())
  except (OSError, json.JSONDecodeError):
    return None
  same = ([r["T"] for r in saved.get("rows", [])] == list(Ts)
          and (saved.get("batches"), saved.get("batch_size"), saved.get("seed"))
          == (batches, batch_size, seed))
  return saved if same else None


def transfer_all(root, workdir, Ts, batches, batch_size, seed, exclude=()) -> list[dict]:
  """``transfer`` for every run below ``root``, each written to the same relative
  directory under ``workdir`` (``transfer.json`` / ``.csv`` / ``.png``); a run
  whose transfer.json already holds this evaluation is read, not evaluated again,
  so a rerun resumes and regenerates the table. Returns one record per run: its
  label (the run's directory under ``root`` without the ``seed<s>`` part), seed,
  held-out accuracy at the trained T (the run's eval.json) and accuracy per T.
  Runs whose label is in ``exclude`` are left out (a ValueError names a label in
  ``exclude`` that matches no run)."""
  root, workdir = pathlib.Path(root), pathlib.Path(workdir)
  records = []
  runs = []
  for run in find_runs(root):
    rel = run.relative_to(root)
    label = str(rel.parent if rel.name.startswith("seed") else rel)
    runs.append((run, rel, label))
  unknown = sorted(set(exclude) - {label for _, _, label in runs})
  if unknown:
    raise ValueError(f"--exclude: no run labelled {unknown} below {root}; the labels are "
                     f"{', '.join(dict.fromkeys(label for _, _, label in runs))}")
  runs = [r for r in runs if r[2] not in exclude]
  for n, (run, rel, label) in enumerate(runs):
    out = workdir / rel
    saved = _done(out, Ts, batches, batch_size, seed)
    if saved is None:
      logging.info("transfer %d/%d: %s", n + 1, len(runs), run)
      info, rows = transfer(run, Ts, batches, batch_size, seed)
      write_outputs(out, info, rows)
      saved = {**info, "rows": rows}
    config = json.loads((run / "config.json").read_text())
    held = json.loads((run / "eval.json").read_text()) if (run / "eval.json").exists() else {}
    records.append({"label": label if label != "." else saved["model"],
                    "model": saved["model"], "seed": config.get("seed"),
                    "trained_T": saved["trained_T"], "held_out": held.get("accuracy"),
                    "accuracy": {r["T"]: r["accuracy"] for r in saved["rows"]},
                    "seconds": {r["T"]: r["seconds"] for r in saved["rows"]}})
  return records


def write_table(workdir: pathlib.Path, records: list[dict], Ts):
  """``transfer_table.md`` (per label: accuracy per seed at the trained T and at
  each T, seeds in order) and ``transfer_all.png`` (accuracy against T, median
  over seeds with the range as a band)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  labels = list(dict.fromkeys(r["label"] for r in records))
  pct = lambda a: "-" if a is None else f"{100 * a:.1f}%"
  trained = sorted({r["trained_T"] for r in records})
  head = ["model (seeds)", f"held out at T = {'/'.join(map(str, trained))}"]
  lines = ["| " + " | ".join(head + [f"T = {t}" for t in Ts]) + " |",
           "|" + " --- |" * (len(head) + len(Ts))]
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, label in enumerate(labels):
    mine = sorted((r for r in records if r["label"] == label), key=lambda r: r["seed"] or 0)
    cells = [f"{label} ({', '.join(str(r['seed']) for r in mine)})",
             " / ".join(pct(r["held_out"]) for r in mine)]
    cells += [" / ".join(pct(r["accuracy"][t]) for r in mine) for t in Ts]
    lines.append("| " + " | ".join(cells) + " |")
    acc = 100 * np.array([[r["accuracy"][t] for t in Ts] for r in mine])
    ax.semilogx(Ts, np.median(acc, axis=0), "o-", color=f"C{i % 10}", label=label)
    ax.fill_between(Ts, acc.min(axis=0), acc.max(axis=0), color=f"C{i % 10}", alpha=0.15)
  ax.axhline(100 / 8, color="gray", ls="--", lw=1)
  ax.set(xlabel="test delay T", ylabel="recall accuracy (%), median and range over seeds",
         ylim=(0, 101), title=f"copy, trained at T = {'/'.join(map(str, trained))}")
  ax.set_xticks(Ts, [str(t) for t in Ts])
  ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  ax.legend(fontsize=7, loc="center right")
  fig.tight_layout()
  fig.savefig(workdir / "transfer_all.png", dpi=100)
  plt.close(fig)
  (workdir / "transfer_table.md").write_text("\n".join(lines) + "\n")
