"""The ablation's grid, without flags (so tests import it; ``ablation`` is the binary)."""

import itertools

import relscreen as rs
from relscreen.config import CELL_NAMES as _CELLS

CELL_NAMES = {name.lower(): name for name in _CELLS}  # --cells=rnn -> "RNN"


def configurations(cells, relevances, evictions, baselines) -> list[dict]:
  """Every (cell, relevance, eviction) of the relevance-screened models, then the
  baselines (with the paper's rules, which they ignore). An eviction rule that
  does not read the scores (``fifo``, ``reservoir``) gives the same model under
  every relevance rule, so it is trained once, with the first relevance given,
  and labelled ``any/<eviction>``; its work directory keeps that relevance's name
  (``RelRNN_sum-fifo``), where earlier ablations wrote it."""
  rows = []
  for cell, eviction in itertools.product(cells, evictions):
    model = "Rel" + CELL_NAMES[cell]
    reads = rs.Eviction(eviction).reads_scores
    for relevance in (relevances if reads else relevances[:1]):
      rows.append({"model": model, "relevance": relevance, "eviction": eviction,
                   "label": f"{model} {relevance if reads else 'any'}/{eviction}",
                   "dir": f"{model}_{relevance}-{eviction}"})
  for model in baselines:
    rows.append({"model": model, "relevance": "sum", "eviction": "top", "label": model,
                 "dir": model.replace(":", "_")})
  return rows


def markdown(rows: list[dict], summary: list[dict]) -> str:
  """The ablation as a Markdown table, one line per configuration in the order of
  ``summary`` (``ablation.summarise``): held-out accuracy per seed and the median,
  the gradient ratio per seed, the accuracy at equal wall time, ms per update and
  XLA's memory plan."""
  seeds = list(dict.fromkeys(r["seed"] for r in rows))
  per_seed = " / ".join(map(str, seeds))
  budget = summary[0]["equal_time_s"] if summary else 0.0
  lines = [f"| model | held out (seeds {per_seed}) | median | grad ratio ({per_seed}) | "
           f"at equal time ({budget:.0f} s): updates, accuracy | ms / update | "
           "memory plan |", "|" + " --- |" * 7]
  for s in summary:
    mine = {r["seed"]: r for r in rows if r["label"] == s["label"]}
    acc = " / ".join(f"{100 * mine[k]['accuracy']:.1f}%" if k in mine else "-"
                     for k in seeds)
    ratios = [mine[k]["grad_ratio_t0_over_last"] if k in mine else None for k in seeds]
    ratio = ("-" if all(v is None for v in ratios) else
             " / ".join("-" if v is None else f"{v:.3g}" for v in ratios))
    timed = ("-" if s["equal_time_accuracy_median"] is None else
             f"{100 * s['equal_time_accuracy_median']:.1f}%")
    lines.append(f"| {s['label']} | {acc} | {100 * s['accuracy_median']:.1f}% | {ratio} | "
                 f"{s['equal_time_updates']}, {timed} | {s['step_ms']:.1f} | "
                 f"{1e3 * s['peak_gb']:.0f} MB |")
  return "\n".join(lines) + "\n"
