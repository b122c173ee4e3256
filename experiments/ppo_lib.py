"""What the PPO sweeps share (no flags here): core specs, learning curves, and
the seeds-per-core comparison behind ``relscreen-ppo-seeds``."""

import json
import pathlib

from absl import logging
import numpy as np

from relscreen_experiments import memax_peers
from relscreen_experiments import rl_envs
from relscreen_experiments import rundir
from relscreen_experiments.configs import ppo as ppo_config
from relscreen.config import Eviction, Relevance


def parse_model(spec: str) -> tuple[str, dict]:
  """``RelLSTM`` or ``RelLSTM:decay/fifo`` (relevance/eviction rules) -> (name, rules);
  a memax model (``memax:S6``) -> (name, {})."""
  if memax_peers.is_memax(spec):
    return spec, {}
  name, _, rules = spec.partition(":")
  if not rules:
    return name, {}
  relevance, _, eviction = rules.partition("/")
  if (relevance not in {r.value for r in Relevance}
      or eviction not in {"", *(e.value for e in Eviction)}):
    raise ValueError(f"--models: {spec!r} is not MODEL or MODEL:RELEVANCE/EVICTION "
                     "(e.g. RelLSTM:decay/top)")
  return name, {"relevance": relevance, "eviction": eviction or "top"}


def curve(path: pathlib.Path):
  """(frames, success) of one run's metrics.jsonl, without the updates in which
  no episode ended (they log 0)."""
  return _curve_of(rundir.read_records(path))


def _curve_of(records: list[dict]):
  from relscreen_experiments import train_ppo  # pylint: disable=g-import-not-at-top
  records = train_ppo.with_episodes(records)
  return (np.array([r["frames"] for r in records], float),
          np.array([r["success"] for r in records], float))


# A run has learned when the mean training success of this many logged updates
# reaches this level (``solved_at``): the step from chance to the task is sudden
# on the memory tasks, and a window keeps one lucky update from counting.
SOLVED_LEVEL = 0.9
SOLVED_WINDOW = 5


def solved_at(frames, success, level: float = SOLVED_LEVEL,
              window: int = SOLVED_WINDOW) -> float | None:
  """The frame count of the first logged update at which the mean training
  success of the last ``window`` logged updates reaches ``level``; None if it never does."""
  success = np.asarray(success, float)
  if len(success) < window:
    return None
  hit = np.flatnonzero(np.convolve(success, np.ones(window) / window, mode="valid") >= level)
  return float(frames[hit[0] + window - 1]) if hit.size else None


def training_figures(run_dir: pathlib.Path) -> dict:
  """From a run's metrics.jsonl: the frames at which it learned (``solved_at``) and
  its median frames per second over the logged updates (None where not logged)."""
  records = rundir.read_records(run_dir / "metrics.jsonl")  # read once for both
  frames, success = _curve_of(records)
  fps = [r["fps"] for r in records if "fps" in r]
  return {"solved_frames": solved_at(frames, success),
          "fps": float(np.median(fps)) if fps else None}


def learned_cell(solved_frames, runs: int) -> str:
  """A table cell from the runs' ``solved_at`` frames (None: never): how many of
  ``runs`` learned and their median frames, e.g. ``2 of 3, at 2.27M``."""
  solved = [f for f in solved_frames if f is not None]
  if not solved:
    return f"0 of {runs}"
  n = float(np.median(solved))
  return f"{len(solved)} of {runs}, at " + (f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,.0f}")


def seed_run_name(spec: str, seed: int) -> str:
  """The sub-directory of one run: ``RelLSTM_decay-top_s2``."""
  return f"{spec.replace(':', '_').replace('/', '-')}_s{seed}"


def summarize_seeds(evals: dict, env: str, frames: int) -> dict:
  """``evals[model][seed]`` (eval.json records, with ``training_figures``' fields
  where known) -> the summary.json record."""
  per_seed = {m: {s: {"success": e["success"], "length": e["length"],
                      "by_start": {k: v["success"] for k, v in e.get("by_start", {}).items()},
                      "solved_frames": e.get("solved_frames"), "fps": e.get("fps")}
                  for s, e in by_seed.items()} for m, by_seed in evals.items()}

  def median(values):
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None

  medians = {}
  for m, by_seed in per_seed.items():
    runs = list(by_seed.values())
    parts = list(dict.fromkeys(k for r in runs for k in r["by_start"]))
    medians[m] = {"success": median([r["success"] for r in runs]),
                  "length": median([r["length"] for r in runs]),
                  "by_start": {k: median([r["by_start"].get(k) for r in runs]) for k in parts},
                  # over the seeds that learned, and how many did
                  "solved_frames": median([r["solved_frames"] for r in runs]),
                  "solved": sum(r["solved_frames"] is not None for r in runs),
                  "fps": median([r["fps"] for r in runs])}
  return {"env": env, "frames": frames, "per_seed": per_seed, "median": medians,
          "solved_level": SOLVED_LEVEL, "solved_window": SOLVED_WINDOW}


def seeds_table(summary: dict) -> str:
  """summary.json as Markdown: one row a core."""
  def pct(v):
    return "-" if v is None else f"{100 * v:.1f}%"
  parts = list(dict.fromkeys(k for m in summary["median"].values() for k in m["by_start"]))
  level = round(100 * summary.get("solved_level", SOLVED_LEVEL))
  head = (["core", "success per seed", "median"] + [f"{k} (median)" for k in parts]
          + ["episode length (median)",
             f"learned (training >= {level}%: seeds, median frames)", "frames/s (median)"])
  rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for m, by_seed in summary["per_seed"].items():
    med = summary["median"][m]
    seeds = " / ".join(f"{pct(r['success'])} (s{s})" for s, r in by_seed.items())
    rows.append("| " + " | ".join([m, seeds, pct(med["success"])]
                                  + [pct(med["by_start"].get(k)) for k in parts]
                                  + [f"{med['length']:.1f}",
                                     learned_cell([r["solved_frames"] for r in by_seed.values()],
                                                  len(by_seed)),
                                     "-" if med.get("fps") is None else f"{med['fps']:,.0f}"])
                + " |")
  caption = (f"{summary['env']}: success on fresh episodes after {summary['frames']:,} "
             f"frames per run; a run has learned when the mean training success of "
             f"{summary.get('solved_window', SOLVED_WINDOW)} logged updates reaches {level}%")
  return caption + "\n\n" + "\n".join(rows) + "\n"


def seed_band(ax, curves, **line):
  """Draws runs' training curves ``[(frames, success)]`` (seeds of one setting,
  logged at the same frames) on ``ax``: each smoothed over a twentieth of the
  run, then their median as a line and, with several, their range shaded."""
  curves = [(x, y) for x, y in curves if len(x)]
  if not curves:
    return
  grid = curves[0][0]
  w = max(1, len(grid) // 20)
  ys = np.array([np.convolve(np.interp(grid, x, y), np.ones(w) / w, mode="valid")
                 for x, y in curves])
  drawn, = ax.plot(grid[w - 1:], np.median(ys, 0), **line)
  if len(ys) > 1:
    ax.fill_between(grid[w - 1:], ys.min(0), ys.max(0), color=drawn.get_color(), alpha=0.15,
                    lw=0)


def plot_seeds(workdir: pathlib.Path, env: str, models, seeds):
  """Training success against frames, one line a core (median over seeds), shaded min-max."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.5, 3.8))
  for model in models:
    seed_band(ax, [curve(workdir / seed_run_name(model, s) / "metrics.jsonl") for s in seeds],
              label=f"{model} ({len(seeds)} seeds)")
  ax.axhline(0.5, color="gray", ls=":", lw=1, label="chance (a memory task's guess)")
  ax.set(xlabel="frames", ylabel="training success (smoothed)", ylim=(-0.02, 1.02),
         title=env)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(workdir / "curves.png", dpi=100)
  plt.close(fig)


def finished_or_trained(config, run_dir: pathlib.Path) -> dict:
  """The evaluation record of the run ``config`` asks for in ``run_dir``: read from
  its eval.json when the run has trained ``config.frames`` and been evaluated on
  ``config.eval_episodes`` episodes, else trained (or resumed) and evaluated."""
  from relscreen_experiments import train_ppo  # pylint: disable=g-import-not-at-top
  done = run_dir / "eval.json"
  record = json.loads(done.read_text()) if done.exists() else None
  if (record is None or record["frames"] < config.frames
      or record["episodes"] != config.eval_episodes):
    record = train_ppo.train_and_evaluate(config, run_dir)
  return record


def run_seeds(workdir, env: str, models, seeds, frames: int, eval_episodes: int) -> dict:
  """Trains (or resumes, or skips when finished) every core in ``models`` for every
  seed on ``env``; writes summary.json, table.md and curves.png; returns the summary."""
  if frames < 1 or eval_episodes < 1:
    raise ValueError(f"--frames and --eval_episodes must be >= 1, got {frames}, "
                     f"{eval_episodes}")
  rl_envs.make_env(env)  # a bad --env is named before anything is written
  specs = {m: parse_model(m) for m in models}
  workdir = rundir.prepare(workdir)
  evals = {}
  for model, (name, rules) in specs.items():
    evals[model] = {}
    for seed in seeds:
      config = ppo_config.get_config()
      config.update(env=env, model=name, frames=frames, seed=seed, log_every=20,
                    checkpoint_every=50, eval_episodes=eval_episodes, **rules)
      run_dir = workdir / seed_run_name(model, seed)
      record = finished_or_trained(config, run_dir)
      evals[model][str(seed)] = {**record, **training_figures(run_dir)}
      logging.info("%s, seed %d: success %.3f", model, seed, record["success"])
  summary = summarize_seeds(evals, env, frames)
  rundir.write_atomic(workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
  rundir.write_atomic(workdir / "table.md", seeds_table(summary))
  plot_seeds(workdir, env, list(specs), seeds)
  logging.info("wrote %s", workdir / "table.md")
  return summary
