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
