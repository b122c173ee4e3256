"""Transfer copy (SPEC 6): a model trained on copy at one T, evaluated at larger T.

What it is for: whether what a model learnt about remembering generalises to
longer delays than it was trained on. Loads the latest checkpoint of a
``relscreen-copy`` work directory and evaluates recall accuracy on ``--batches``
fresh batches of ``--batch_size`` at each T in ``--Ts``; writes transfer.json,
transfer.csv and transfer.png (accuracy against T) to ``--workdir``.

Cost: RelRNN/RelLSTM/RNN/LSTM are linear in T; MemRNN/MemLSTM attend over every
past state and grow quadratically (lower --batches for them at large T).

Command (a RelRNN trained at T = 100, see docs/RESULTS.md):
  relscreen-transfer --checkpoint_dir=runs/copy_relrnn_T100 --Ts=200,500,1000,2000,5000 \
      --workdir=runs/transfer_relrnn_T100
"""

import csv
import json
import pathlib
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax

from experiments import flags_lib
from experiments import train
import relscreen as rs

_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint_dir", None,
                                      "work directory of a relscreen-copy run")
_TS = flags.DEFINE_list("Ts", ["200", "500", "1000", "2000", "5000"], "delays T to test")
_BATCHES = flags.DEFINE_integer("batches", 100, "batches per T")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 100, "sequences per batch")
_SEED = flags.DEFINE_integer("seed", 400, "seed of the test sequences (reference: 400)")
_WORKDIR = flags_lib.define_workdir()
flags.mark_flag_as_required("checkpoint_dir")


def copy_task_of(config) -> rs.CopyTask:
  if "variable" not in config:
    raise ValueError(f"{_CHECKPOINT_DIR.value} is not a copy-task run (its config.json "
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

  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "transfer.json").write_text(json.dumps({**info, "rows": rows}, indent=2) + "\n")
  with (workdir / "transfer.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  fig, ax = plt.subplots(figsize=(5, 3.6))
  ax.semilogx([r["T"] for r in rows], [100 * r["accuracy"] for r in rows], "o-")
  ax.axhline(100 / 8, color="gray", ls="--", lw=1, label="chance")
  ax.set(xlabel="test delay T", ylabel="recall accuracy (%)", ylim=(0, 101),
         title=f"{info['model']} trained at T={info['trained_T']}")
  ax.legend()
  fig.tight_layout()
  fig.savefig(workdir / "transfer.png", dpi=100)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  flags_lib.quiet_other_loggers()
  try:
    Ts = [int(v) for v in _TS.value]
    if not Ts or min(Ts) < 1:
      raise ValueError(f"--Ts must be integers >= 1, got {_TS.value}")
    if _BATCHES.value < 1 or _BATCH_SIZE.value < 1:
      raise ValueError("--batches and --batch_size must be >= 1")
    info, rows = transfer(_CHECKPOINT_DIR.value, Ts, _BATCHES.value, _BATCH_SIZE.value,
                          _SEED.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  write_outputs(pathlib.Path(_WORKDIR.value), info, rows)


def run():
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
