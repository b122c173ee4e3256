"""How long a memory can PPO learn? MemoryChain success against memory length.

What it is for: the paper's claim that relevancy screening gives a recurrent
agent a longer usable memory. For every model in ``--models`` and every delay in
``--memory_lengths`` it trains ``relscreen-ppo`` on MemoryChain-bsuite with the
same frame budget (``--frames``) and the reference's PPO defaults, then scores
the final policy on fresh episodes. Writes to ``--workdir``:
  summary.json        final success (evaluation) per model and length, and the
                      longest length at which each model reaches --threshold
  success.png         evaluation success against memory length, one line a model
  curves.png          training success against frames for every run
Each run trains in its own sub-directory (``<model>_L<length>``), so a rerun
resumes and skips finished runs.

Command (see docs/RESULTS.md):
  relscreen-ppo-sweep --models=LSTM,RelLSTM --memory_lengths=4,8,16,32,64,128 \\
      --frames=1000000 --workdir=runs/ppo_chain_sweep
"""

import json
import pathlib

from absl import flags
from absl import logging
import numpy as np

from relscreen_experiments import rundir
from relscreen_experiments import flags_lib
from relscreen_experiments.configs import ppo as ppo_config
from relscreen.config import Eviction, Relevance

_MODELS = flags.DEFINE_list("models", ["LSTM", "RelLSTM"], "agent cores to compare; "
                            "MODEL:RELEVANCE/EVICTION sets a Rel core's rules, e.g. "
                            "RelLSTM:decay/top")
_LENGTHS = flags.DEFINE_list("memory_lengths", ["4", "8", "16", "32", "64", "128"],
                             "MemoryChain delays")
_FRAMES = flags.DEFINE_integer("frames", 1_000_000, "frame budget of every run")
_SEED = flags.DEFINE_integer("seed", 1, "seed of every run")
_THRESHOLD = flags.DEFINE_float("threshold", 0.95, "success rate that counts as solved")
_WORKDIR = flags_lib.define_workdir()


def _parse_lengths(values) -> list[int]:
  try:
    lengths = [int(v) for v in values]
  except ValueError:
    raise ValueError(f"--memory_lengths must be integers, got {','.join(values)}") from None
  if any(v < 1 for v in lengths):
    raise ValueError(f"--memory_lengths must be >= 1, got {lengths}")
  return lengths


def longest_solved(lengths, success, threshold) -> int | None:
  """The largest length such that it and every shorter one reach ``threshold``."""
  best = None
  for length, s in sorted(zip(lengths, success)):
    if s < threshold:
      break
    best = length
  return best


def parse_model(spec: str) -> tuple[str, dict]:
  """``RelLSTM`` or ``RelLSTM:decay/fifo`` (relevance/eviction rules) -> (name, rules)."""
  name, _, rules = spec.partition(":")
  if not rules:
    return name, {}
  relevance, _, eviction = rules.partition("/")
  if (relevance not in {r.value for r in Relevance}
      or eviction not in {"", *(e.value for e in Eviction)}):
    raise ValueError(f"--models: {spec!r} is not MODEL or MODEL:RELEVANCE/EVICTION "
                     "(e.g. RelLSTM:decay/top)")
  return name, {"relevance": relevance, "eviction": eviction or "top"}


def run_name(spec: str) -> str:
  return spec.replace(":", "_").replace("/", "-")


def plot(workdir: pathlib.Path, summary: dict, lengths, frames: int):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  for model, runs in summary["success"].items():
    ax.plot(lengths, [runs[str(n)] for n in lengths], marker="o", label=model)
  ax.axhline(summary["threshold"], color="gray", ls="--", lw=1,
             label=f"solved (>= {100 * summary['threshold']:.0f}%)")
  ax.axhline(0.5, color="gray", ls=":", lw=1, label="chance")
  ax.set(xscale="log", xlabel="memory length", ylabel="success (fresh episodes)",
         ylim=(-0.02, 1.02), title=f"MemoryChain, {frames:,} frames per run")
  ax.set_xticks(lengths, [str(n) for n in lengths])
  ax.minorticks_off()  # only the swept lengths are labelled
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(workdir / "success.png", dpi=100)
  plt.close(fig)

  fig, axes = plt.subplots(1, len(summary["success"]), figsize=(5 * len(summary["success"]), 3.4),
                           squeeze=False)
  for ax, model in zip(axes[0], summary["success"]):
    for n in lengths:
      path = workdir / f"{run_name(model)}_L{n}" / "metrics.jsonl"
      records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
      # An update in which no episode ended has no success rate (it logs 0): skip it.
      records = [r for r in records if r.get("episodes", 1) > 0]
      if not records:
        continue
      y = np.array([r["success"] for r in records])
      w = max(1, len(y) // 20)
      x = np.array([r["frames"] for r in records])[w - 1:]
      ax.plot(x, np.convolve(y, np.ones(w) / w, mode="valid"), label=f"L={n}",
              marker="o" if len(x) < 25 else None, ms=3)
    ax.axhline(0.5, color="gray", ls=":", lw=1, label="chance")
    ax.set(xlabel="frames", ylabel="training success (smoothed)", title=model,
           ylim=(-0.02, 1.02))
    ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(workdir / "curves.png", dpi=100)
  plt.close(fig)


def sweep(workdir: pathlib.Path):
  from relscreen_experiments import train_ppo  # pylint: disable=g-import-not-at-top
  lengths = _parse_lengths(_LENGTHS.value)
  for model in _MODELS.value:
    parse_model(model)  # every spec checked before the first run
  workdir = rundir.prepare(workdir)
  success = {}
  for model in _MODELS.value:
    success[model] = {}
    name, rules = parse_model(model)
    for n in lengths:
      config = ppo_config.get_config()
      config.update(env="MemoryChain-bsuite", memory_length=n, model=name,
                    frames=_FRAMES.value, seed=_SEED.value, log_every=10, **rules)
      run_dir = workdir / f"{run_name(model)}_L{n}"
      done = run_dir / "eval.json"
      if done.exists() and json.loads(done.read_text())["frames"] >= _FRAMES.value:
        record = json.loads(done.read_text())
      else:
        record = train_ppo.train_and_evaluate(config, run_dir)
      success[model][str(n)] = record["success"]
      logging.info("%s, memory length %d: success %.3f", model, n, record["success"])
  summary = {
      "frames": _FRAMES.value, "threshold": _THRESHOLD.value, "success": success,
      "longest_solved": {m: longest_solved(lengths, [s[str(n)] for n in lengths],
                                           _THRESHOLD.value) for m, s in success.items()}}
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  plot(workdir, summary, lengths, _FRAMES.value)
  logging.info("longest memory length solved (>= %.2f): %s", _THRESHOLD.value,
               summary["longest_solved"])


def main(argv):
  flags_lib.run_training(argv, {}, _WORKDIR,
                         lambda config, workdir: sweep(pathlib.Path(workdir).absolute()))


def run():
  """Console-script entry point."""
  flags_lib.run_app(main)


if __name__ == "__main__":
  run()
