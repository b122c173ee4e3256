"""Overlays the curves of several training runs in one plot.

What it is for: comparing runs side by side (models, seeds, settings) from their
work directories' metrics.jsonl, whichever binary wrote them. ``--metric=auto``
picks the first of accuracy, val_accuracy, success, val_bpc, rel_loss, loss
that the runs logged. Every run also writes TensorBoard event files to
``WORKDIR/tb``: ``tensorboard --logdir runs/`` shows the same curves.

``--x=minutes`` plots against training time instead (each logged block's
updates / steps_per_s, summed; a block paused part of the way counts at the
run's median rate), so runs of different step costs compare at equal wall
time. ``--threshold=0.99`` also writes a table (``--out`` with ``.md``): per run,
the first logged block that reached it, at which update and after how many
minutes, the last block and the held-out accuracy.

Command:
  relscreen-compare --workdirs=runs/seeds/s100,runs/seeds/s101 --out=runs/compare.png
  relscreen-compare --workdirs=runs/copy1000/RelRNN_s100,runs/copy1000/LSTM_s100 --x=minutes \
      --threshold=0.99 --out=runs/copy1000/compare.png
"""

from absl import flags

from relscreen_experiments import compare_lib
from relscreen_experiments import flags_lib

_WORKDIRS = flags.DEFINE_list("workdirs", None, "work directories of training runs")
_METRIC = flags.DEFINE_string("metric", "auto", "record field to plot (auto: see above)")
_OUT = flags.DEFINE_string("out", "compare.png", "where the plot goes")
_TITLE = flags.DEFINE_string("title", "", "plot title (default: the metric)")
_X = flags.DEFINE_enum("x", "auto", ["auto", "minutes"], "x axis: the runs' own (frames, "
                       "epoch or update) or training minutes (runs at equal wall time)")
_THRESHOLD = flags.DEFINE_float("threshold", None, "also write a table (the plot's name "
                                "with .md): per run, the first logged block whose metric "
                                "reaches this value, its update and training minutes")
flags.mark_flag_as_required("workdirs")


def main(argv):
  import sys  # pylint: disable=g-import-not-at-top
  del argv
  try:
    runs = compare_lib.load_runs(_WORKDIRS.value)
    metric = compare_lib.pick_metric(runs, _METRIC.value)
    out = compare_lib.pathlib.Path(_OUT.value)
    compare_lib.plot(runs, metric, out, _TITLE.value, _X.value)
    if _THRESHOLD.value is not None:
      table = compare_lib.threshold_table(_WORKDIRS.value, runs, metric, _THRESHOLD.value)
      out.with_suffix(".md").write_text(table)
      print(table, end="")
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"wrote {_OUT.value} ({metric} of {len(runs)} run{'' if len(runs) == 1 else 's'})")


def run():
  """Console-script entry point."""
  flags_lib.run_app(main)


if __name__ == "__main__":
  run()
