"""How long a memory can PPO learn? MemoryChain success against memory length.

What it is for: the paper's claim that relevancy screening gives a recurrent
agent a longer usable memory. For every model in ``--models`` and every delay in
``--memory_lengths`` it trains ``relscreen-ppo`` on MemoryChain-bsuite with the
same frame budget (``--frames``) and the reference's PPO defaults, then scores
the final policy on fresh episodes, for every seed in ``--seeds``. Writes to
``--workdir``:
  summary.json        final success (evaluation) per model, length and seed, the
                      median over seeds, and the longest length at which each
                      model's median reaches --threshold
  table.md            the same as a Markdown table (median, and min-max over seeds),
                      then per model and length how many seeds learned and when
                      (``ppo_lib.solved_at``) and, for cores with an attended
                      memory, how often the bit's state was still in memory at the
                      query (the evaluation's ``first_state_kept``)
  success.png         evaluation success against memory length, one line a model
                      (the median), shaded from the worst seed to the best
  curves.png          training success against frames, one panel a model, one
                      line a length (median over seeds, shaded min-max)
Each run trains in its own sub-directory (``<model>_L<length>_s<seed>``), so a
rerun resumes and skips finished runs.

Command (see docs/RESULTS.md):
  relscreen-ppo-sweep --models=LSTM,RelLSTM --memory_lengths=4,8,16,32,64,128 \\
      --frames=1000000 --seeds=1,2 --workdir=runs/ppo_chain_sweep
"""

import json
import pathlib

from absl import flags
from absl import logging
import numpy as np

from relscreen_experiments import rundir
from relscreen_experiments import flags_lib
from relscreen_experiments import ppo_lib
from relscreen_experiments.ppo_lib import parse_model
from relscreen_experiments.configs import ppo as ppo_config

_MODELS = flags.DEFINE_list("models", ["LSTM", "RelLSTM"], "agent cores to compare; "
                            "MODEL:RELEVANCE/EVICTION sets a Rel core's rules, e.g. "
                            "RelLSTM:decay/top")
_LENGTHS = flags.DEFINE_list("memory_lengths", ["4", "8", "16", "32", "64", "128"],
                             "MemoryChain delays")
_FRAMES = flags.DEFINE_integer("frames", 1_000_000, "frame budget of every run")
_SEEDS = flags.DEFINE_list("seeds", ["1"], "seeds: every model and length trains once per "
                           "seed")
_THRESHOLD = flags.DEFINE_float("threshold", 0.95, "success rate that counts as solved")
_NU = flags.DEFINE_integer("nu", None, "short-term buffer size of the Rel cores in every run "
                           "(default: relscreen-ppo's)", lower_bound=1)
_RHO = flags.DEFINE_integer("rho", None, "relevant-set size of the Rel cores in every run "
                            "(default: relscreen-ppo's)", lower_bound=1)
_WORKDIR = flags_lib.define_workdir()


def _parse_lengths(values) -> list[int]:
  return flags_lib.integers("memory_lengths", values, minimum=1)


def _parse_seeds(values) -> list[int]:
  return flags_lib.integers("seeds", values, distinct=True)


def longest_solved(lengths, success, threshold) -> int | None:
  """The largest length such that it and every shorter one reach ``threshold``."""
  best = None
  for length, s in sorted(zip(lengths, success)):
    if s < threshold:
      break
    best = length
  return best


def run_name(spec: str, length: int, seed: int) -> str:
  """The sub-directory of one run: ``RelLSTM_decay-top_L256_s2``."""
  return f"{spec.replace(':', '_').replace('/', '-')}_L{length}_s{seed}"


def summarize(success: dict, lengths, seeds, frames: int, threshold: float) -> dict:
  """``success[model][length][seed]`` -> the summary.json record: per-seed values,
  medians, and the longest length whose median (and every shorter one's) is solved."""
  median = {m: {str(n): float(np.median([by_len[str(n)][str(s)] for s in seeds]))
                for n in lengths} for m, by_len in success.items()}
  return {"frames": frames, "threshold": threshold, "seeds": list(seeds),
          "success": median, "per_seed": success,
          "longest_solved": {m: longest_solved(lengths, [v[str(n)] for n in lengths], threshold)
                             for m, v in median.items()}}


def table(summary: dict, lengths) -> str:
  """summary.json as Markdown: one row a model, one column a length, each cell
  the median success over seeds and, with several seeds, their range."""
  def cell(median, values):
    if len(values) == 1:
      return f"{100 * median:.1f}%"
    return f"{100 * median:.1f}% ({100 * min(values):.1f}-{100 * max(values):.1f})"
  seeds = summary["seeds"]
  head = ["model"] + [f"L = {n}" for n in lengths]
  rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for model, by_len in summary["per_seed"].items():
    rows.append("| " + " | ".join([model] + [
        cell(summary["success"][model][str(n)], [by_len[str(n)][str(s)] for s in seeds])
        for n in lengths]) + " |")
  memory = ", ".join(f"{k} = {summary[k]}" for k in ("nu", "rho") if summary.get(k))
  caption = (f"MemoryChain success on fresh episodes after {summary['frames']:,} frames, "
             f"median over seeds {', '.join(map(str, seeds))}"
             + (" (min-max in brackets)" if len(seeds) > 1 else "")
             + (f"; Rel cores with {memory}" if memory else ""))
  return caption + "\n\n" + "\n".join(rows) + "\n"


def details_table(details: dict, lengths, seeds) -> str:
  """``details[model][length][seed]`` (``solved_frames``, ``first_state_kept``) as
  Markdown: per cell the seeds that learned, their median frames to learn, and the
  median share of evaluation episodes whose first state was in memory at the query."""
  def cell(runs):
    text = ppo_lib.learned_cell([r["solved_frames"] for r in runs], len(runs))
    kept = [r["first_state_kept"] for r in runs if r.get("first_state_kept") is not None]
    return text + (f"; kept {100 * np.median(kept):.0f}%" if kept else "")
  head = ["model"] + [f"L = {n}" for n in lengths]
  rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for model, by_len in details.items():
    rows.append("| " + " | ".join([model] + [
        cell([by_len[str(n)][str(s)] for s in seeds]) for n in lengths]) + " |")
  caption = (f"Seeds that learned (mean training success of {ppo_lib.SOLVED_WINDOW} logged "
             f"updates >= {100 * ppo_lib.SOLVED_LEVEL:.0f}%) and their median frames to get "
             "there; for cores with an attended memory, the median share of evaluation "
             "episodes whose first state (the bit's) was still in memory at the query")
  return caption + "\n\n" + "\n".join(rows) + "\n"


def plot(workdir: pathlib.Path, summary: dict, lengths, frames: int):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  seeds = summary["seeds"]
  for model, runs in summary["success"].items():
    line, = ax.plot(lengths, [runs[str(n)] for n in lengths], marker="o", label=model)
    if len(seeds) > 1:
      per = np.array([[summary["per_seed"][model][str(n)][str(s)] for s in seeds]
                      for n in lengths])
      ax.fill_between(lengths, per.min(1), per.max(1), color=line.get_color(), alpha=0.2,
                      lw=0)
  ax.axhline(summary["threshold"], color="gray", ls="--", lw=1,
             label=f"solved (>= {100 * summary['threshold']:.0f}%)")
  ax.axhline(0.5, color="gray", ls=":", lw=1, label="chance")
  ax.set(xscale="log", xlabel="memory length", ylabel="success (fresh episodes)",
         ylim=(-0.02, 1.02), title=f"MemoryChain, {frames:,} frames per run, "
         f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}")
  ax.set_xticks(lengths, [str(n) for n in lengths])
  ax.minorticks_off()  # only the swept lengths are labelled
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(workdir / "success.png", dpi=100)
  plt.close(fig)

  n_models = len(summary["success"])
  cols = min(4, n_models)  # panels wrap after four models
  rows = -(-n_models // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
  for ax in axes.flat[n_models:]:
    ax.set_visible(False)
  for ax, model in zip(axes.flat, summary["success"]):
    for n in lengths:
      curves = [ppo_lib.curve(workdir / run_name(model, n, s) / "metrics.jsonl") for s in seeds]
      curves = [(x, y) for x, y in curves if len(x)]
      few = bool(curves) and len(curves[0][0]) < 25
      ppo_lib.seed_band(ax, curves, label=f"L={n}", marker="o" if few else None, ms=3)
    ax.axhline(0.5, color="gray", ls=":", lw=1, label="chance")
    ax.set(xlabel="frames", ylabel="training success (smoothed)", title=model,
           ylim=(-0.02, 1.02))
    ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(workdir / "curves.png", dpi=100)
  plt.close(fig)


def sweep(workdir: pathlib.Path):
  lengths = _parse_lengths(_LENGTHS.value)
  seeds = _parse_seeds(_SEEDS.value)
  for model in _MODELS.value:
    parse_model(model)  # every spec checked before the first run
  memory = {k: flag.value for k, flag in (("nu", _NU), ("rho", _RHO)) if flag.value is not None}
  workdir = rundir.prepare(workdir)
  success, details = {}, {}
  for model in _MODELS.value:
    success[model] = {str(n): {} for n in lengths}
    details[model] = {str(n): {} for n in lengths}
    name, rules = parse_model(model)
    for seed in seeds:
      for n in lengths:
        config = ppo_config.get_config()
        config.update(env="MemoryChain-bsuite", memory_length=n, model=name,
                      frames=_FRAMES.value, seed=seed, log_every=10, **rules, **memory)
        run_dir = workdir / run_name(model, n, seed)
        record = ppo_lib.finished_or_trained(config, run_dir)
        success[model][str(n)][str(seed)] = record["success"]
        details[model][str(n)][str(seed)] = {
            "solved_frames": ppo_lib.training_figures(run_dir)["solved_frames"],
            "first_state_kept": record.get("first_state_kept", {}).get("all")}
        logging.info("%s, memory length %d, seed %d: success %.3f", model, n, seed,
                     record["success"])
  summary = {**summarize(success, lengths, seeds, _FRAMES.value, _THRESHOLD.value), **memory,
             "details": details}
  rundir.write_atomic(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
  rundir.write_atomic(workdir / "table.md", table(summary, lengths) + "\n"
                      + details_table(details, lengths, seeds))
  plot(workdir, summary, lengths, _FRAMES.value)
  logging.info("longest memory length solved (>= %.2f): %s", _THRESHOLD.value,
               summary["longest_solved"])


def main(argv):
  flags_lib.run_training(argv, {}, _WORKDIR,
                         lambda config, workdir: sweep(pathlib.Path(workdir).absolute()))


def run():
  """Console-script entry point (glibc's huge pages off by default: PPO gained
  nothing from them, docs/RESULTS.md)."""
  flags_lib.run_app(main, huge_pages=False)


if __name__ == "__main__":
  run()
