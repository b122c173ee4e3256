"""Transfer copy (ALGORITHM §6): a model trained on copy at one T, evaluated at larger T.

What it is for: whether what a model learnt about remembering generalises to
longer delays than it was trained on. Loads the latest checkpoint of a
``relscreen-copy`` work directory and evaluates recall accuracy on ``--batches``
fresh batches of ``--batch_size`` at each T in ``--Ts``; writes transfer.json,
transfer.csv and transfer.png (accuracy against T) to ``--workdir``.

Cost: RelRNN/RelLSTM/RNN/LSTM are linear in T; MemRNN/MemLSTM attend over every
past state and grow quadratically (lower --batches for them at large T).

Given the work directory of several copy runs (``relscreen-ablation --task=copy``
writes ``<model>/seed<s>``), it evaluates each, writes each run's files to the
same relative directory under ``--workdir``, and one table for all:
transfer_table.md (held-out accuracy at the trained T and accuracy at each T,
per model and seed) and transfer_all.png (median and range over seeds). A run
already evaluated with the same --Ts, --batches, --batch_size and --seed is read
back, not evaluated again, so a rerun resumes and regenerates the table.

Command (a RelRNN trained at T = 100, see docs/RESULTS.md):
  relscreen-transfer --checkpoint_dir=runs/copy_relrnn_T100 --Ts=200,500,1000,2000,5000 \
      --workdir=runs/transfer_relrnn_T100
  relscreen-transfer --checkpoint_dir=runs/peers_copy100 --exclude=MemRNN \
      --Ts=500,1000,5000 --batches=5 --workdir=runs/peers_transfer
"""

import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

from relscreen_experiments import flags_lib
from relscreen_experiments import rundir
from relscreen_experiments.transfer_lib import transfer, transfer_all, write_outputs, write_table

_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "work directory of a relscreen-copy run, or of an ablation or "
    "sweep of copy runs (every run below it is evaluated, and one table written)")
_TS = flags.DEFINE_list("Ts", ["200", "500", "1000", "2000", "5000"], "delays T to test")
_BATCHES = flags.DEFINE_integer("batches", 100, "batches per T")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 100, "sequences per batch")
_EXCLUDE = flags.DEFINE_list("exclude", [], "with a directory of several runs: models "
                             "(their directory names, e.g. MemRNN) to leave out")
_SEED = flags.DEFINE_integer("seed", 400, "seed of the test sequences (reference: 400)")
_WORKDIR = flags_lib.define_workdir()
flags.mark_flag_as_required("checkpoint_dir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  flags_lib.quiet_other_loggers()
  try:
    workdir = rundir.prepare(_WORKDIR.value)  # before the long evaluation, not after
    Ts = flags_lib.integers("Ts", _TS.value, minimum=1)
    if _BATCHES.value < 1 or _BATCH_SIZE.value < 1:
      raise ValueError("--batches and --batch_size must be >= 1")
    root = pathlib.Path(_CHECKPOINT_DIR.value)
    if not root.is_dir():
      raise ValueError(f"--checkpoint_dir {root} is not a directory")
    if (root / "config.json").exists():
      info, rows = transfer(root, Ts, _BATCHES.value, _BATCH_SIZE.value, _SEED.value)
      write_outputs(workdir, info, rows)
      return
    records = transfer_all(root, workdir, Ts, _BATCHES.value, _BATCH_SIZE.value,
                           _SEED.value, _EXCLUDE.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  write_table(workdir, records, Ts)
  logging.info("wrote %s", workdir / "transfer_table.md")


def run():
  """Console-script entry point."""
  flags_lib.run_app(main)


if __name__ == "__main__":
  run()
