"""Attention maps of a trained copy or denoise run, without flags: collect the
diagnostics and draw them. The ``relscreen-attention`` binary calls these."""

import pathlib

import jax
import numpy as np

from relscreen_experiments import train
import relscreen as rs


def task_of(config):
  """Copy runs record ``variable``; denoise runs do not."""
  cls = rs.CopyTask if "variable" in config else rs.DenoiseTask
  return cls(config.T, config.n_symbols, config.c_length)


def collect(checkpoint_dir, sequences: int, seed: int) -> dict:
  """Runs held-out sequences with diagnostics; returns arrays for the plots."""
  config, _, params, step = train.load_trained(checkpoint_dir, task_of)
  task = task_of(config)
  model = train.build_model(config, task, diagnostics=True)
  if not model.config.attentive:
    raise ValueError(f"{config.model} has no attention memory to draw")
  batch = task.batch(jax.random.PRNGKey(seed), sequences)
  _, out, _ = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, batch.x)
  out = jax.device_get(out)
  tokens = np.argmax(np.asarray(batch.x), -1)
  symbol = (tokens >= 1) & (tokens <= task.n_symbols)  # [b, t]
  length = task.length
  weights = np.zeros((length, length))  # [t, position] for sequence 0
  alpha, times = out["alpha"][0], out["slot_time"][0]
  for t in range(length):
    ok = times[t] >= 0
    np.add.at(weights[t], times[t][ok], alpha[t][ok])
  info = {"model": config.model, "T": config.T, "update": step,
          "weights": weights, "symbol_positions": np.nonzero(symbol[0])[0]}
  if model.config.memory is rs.MemoryType.RELEVANCE:
    ev_t, ev_s = out["evicted_time"], out["evicted_score"]
    screened = ev_t >= 0
    rows = np.nonzero(screened)[0]
    is_symbol = symbol[rows, ev_t[screened]]
    info.update(scores_symbol=ev_s[screened][is_symbol],
                scores_other=ev_s[screened][~is_symbol],
                final_r=times[-1][model.config.nu:],
                final_r_all=out["slot_time"][:, -1, model.config.nu:])
    # Fraction of the symbol positions that R holds at the last step, over sequences.
    held = [np.isin(np.nonzero(symbol[b])[0], info["final_r_all"][b]).mean()
            for b in range(sequences)]
    info["symbols_in_final_r"] = float(np.mean(held))
  return info


def draw(info: dict, workdir: pathlib.Path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  title = f"{info['model']}, T={info['T']}, update {info['update']}"
  fig, ax = plt.subplots(figsize=(6, 5))
  im = ax.imshow(info["weights"], aspect="auto", origin="lower", cmap="magma")
  for i, p in enumerate(info["symbol_positions"]):
    ax.axvline(p, color="cyan", lw=0.6, alpha=0.7,
               label="where the symbols to recall were" if i == 0 else None)
  ax.set(xlabel="attended past position", ylabel="time step", title=title)
  if len(info["symbol_positions"]):
    ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
  fig.colorbar(im, ax=ax, label="attention weight")
  fig.tight_layout()
  fig.savefig(workdir / "attention.png", dpi=100)
  plt.close(fig)
  if "scores_symbol" not in info:
    return
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  bins = np.linspace(0, max(info["scores_symbol"].max(initial=0),
                            info["scores_other"].max(initial=0)) + 1e-6, 40)
  ax.hist(info["scores_other"], bins, alpha=0.6, label="blank / marker", density=True)
  ax.hist(info["scores_symbol"], bins, alpha=0.6, label="symbol", density=True)
  ax.set(xlabel="relevance score when screened", ylabel="density", title=title)
  ax.legend()
  fig.tight_layout()
  fig.savefig(workdir / "relevance.png", dpi=100)
  plt.close(fig)
  fig, ax = plt.subplots(figsize=(7, 1.8))
  length = info["weights"].shape[0]
  ax.vlines(info["symbol_positions"], 0, 1, color="tab:orange", label="symbols")
  held = info["final_r"][info["final_r"] >= 0]
  ax.plot(held, np.full(len(held), 0.5), "kx", label="relevant set at the end")
  ax.set(xlim=(-1, length), yticks=[], xlabel="position",
         title=f"{title}: {100 * info['symbols_in_final_r']:.0f}% of symbols held in R")
  ax.legend(loc="upper right", fontsize=7)
  fig.tight_layout()
  fig.savefig(workdir / "relevant_set.png", dpi=100)
  plt.close(fig)
