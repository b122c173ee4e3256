"""The ablation's grid, without flags (so tests import it; ``ablation`` is the binary)."""

import itertools

import relscreen as rs

CELL_NAMES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


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
