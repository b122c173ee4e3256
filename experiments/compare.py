"""Overlays the curves of several training runs in one plot.

What it is for: comparing runs side by side (models, seeds, settings) from their
work directories' metrics.jsonl, whichever binary wrote them. ``--metric=auto``
picks the first of accuracy, val_accuracy, success, val_bpc, rel_loss, loss
that the runs logged. Every run also writes TensorBoard event files to
``WORKDIR/tb``: ``tensorboard --logdir runs/`` shows the same curves.

Command:
  relscreen-compare --workdirs=runs/seeds/s100,runs/seeds/s101 --out=runs/compare.png
"""

from absl import flags

from relscreen_experiments import compare_lib
from relscreen_experiments import flags_lib

_WORKDIRS = flags.DEFINE_list("workdirs", None, "work directories of training runs")
_METRIC = flags.DEFINE_string("metric", "auto", "record field to plot (auto: see above)")
_OUT = flags.DEFINE_string("out", "compare.png", "where the plot goes")
_TITLE = flags.DEFINE_string("title", "", "plot title (default: the metric)")
flags.mark_flag_as_required("workdirs")


def main(argv):
  import sys  # pylint: disable=g-import-not-at-top
  del argv
  try:
    runs = [compare_lib.load_run(w) for w in _WORKDIRS.value]
    metric = compare_lib.pick_metric(runs, _METRIC.value)
    compare_lib.plot(runs, metric, compare_lib.pathlib.Path(_OUT.value), _TITLE.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"wrote {_OUT.value} ({metric} of {len(runs)} runs)")


def run():
  """Console-script entry point."""
  flags_lib.run_app(main)


if __name__ == "__main__":
  run()
