"""Times training steps and forward passes of several models side by side.

What it is for: the cost of attention as sequences grow. For every length L it
compiles each model's copy-task training step (data, loss, gradients, RMSprop
update: the function ``relscreen-copy`` runs) and its forward pass, reads XLA's
memory plan of each compiled step (peak = arguments + outputs + temporaries),
then times them round-robin (model after model, ``--repeats`` rounds) so that
the machine's noise hits all of them alike, and reports medians and ratios to
the first model.

Attentive models train with the custom reverse pass (``ModelConfig.custom_vjp``,
memory O(L B H)); name a model ``RelRNN@autodiff`` to time autodiff through the
scan instead, or ``RelRNN@xla`` to time the custom pass without its CPU kernels
(``relscreen.kernels``; ``ModelConfig.cpu_kernel``); ``attention-floor`` times the attention work a
relevance-screened layer adds to its cell and nothing else (nu + rho slots,
forward and the custom pass's reverse; ``timing.attention_floor``): the cell's
step plus it is what no RelRNN implementation can go below. Autodiff through MemRNN/MemLSTM's growing memory
saves it at every step (O(L^2 B H)), so ``@autodiff`` Mem models run with
``--mem_remat_chunk`` (chunked rematerialisation) unless it is 0.
Configurations whose plan exceeds ``--max_gb`` are reported but not run.
``max_rss_gb`` in benchmark.json is the process's peak resident memory. Each
record also has the first call's cost: ``trace_s`` (tracing and lowering to XLA)
and ``compile_s`` (XLA's compiler), with the ``XLA_FLAGS`` in force in ``meta``.

Command (the issue-5 measurement, see docs/RESULTS.md):
  relscreen-benchmark --models=RNN,RelRNN,RelRNN@autodiff,LSTM,RelLSTM,RelLSTM@autodiff,MemRNN \
      --lengths=1020 --repeats=11 --streaming_batches=1,256 --workdir=runs/bench_L1020
Expect, at batch 10 on a 2-core AVX-512 CPU, RelRNN at 1.1-1.7x the RNN's step
with the CPU kernels, depending on the machine (2.2-2.5x as RelRNN@xla; lower
with ``--nohuge_pages``, where the RNN's autodiff step pays for page faults; a
window over the same 25 slots, WinRNN ``--nu=25``, takes the same kernels) and
RelLSTM at 0.5-0.85x the LSTM's (docs/RESULTS.md, "Issue 14 at a glance").
``--streaming_batches`` also times the jitted streaming ``step``
(median latency per step, and stream-steps per second over the batch), with the
state passed as it is and donated (``rs.step(..., donate=True)``).
At batch 64 and more, several autodiff models in one run can mislead with
the default huge pages (``--huge_pages``): in a five-model run at batch 64 the
LSTM took 587-949 ms against 311-359 alone, the others not (docs/RESULTS.md, "glibc's
huge pages by default"); compare them there with ``--reuse_memory``, or one
model per run (the binary warns when a run is of that kind).
Writes benchmark.json and benchmark.png to --workdir.
"""

import json
import os
import resource
import statistics
import sys

from absl import flags
from absl import logging
import jax
import relscreen

from relscreen_experiments import rundir
from relscreen_experiments import flags_lib
from relscreen_experiments import timing

_MODELS = flags.DEFINE_list("models", ["RNN", "RelRNN", "MemRNN"],
                            "registered models (Name, Name@autodiff, or Name@xla: the custom "
                            "pass without its CPU kernels), memax:* models, "
                            "or attention-floor; ratios are to the first")
_LENGTHS = flags.DEFINE_list("lengths", ["1020"], "sequence lengths L (copy T = L - 20)")
_BATCH = flags.DEFINE_integer("batch", 10, "batch size")
_HIDDEN = flags.DEFINE_integer("hidden", 128, "hidden units")
_NU = flags.DEFINE_integer("nu", 10, "short-term buffer size")
_RHO = flags.DEFINE_integer("rho", 15, "relevant-set size")
_REMAT = flags.DEFINE_integer("remat_chunk", 0, "remat chunk for RNN/LSTM/Rel* (0: off)")
_MEM_REMAT = flags.DEFINE_integer("mem_remat_chunk", 32, "remat chunk for MemRNN/MemLSTM")
_KEEP = flags.DEFINE_integer(
    "keep_projections_mib", relscreen.ModelConfig.keep_projections_mib,
    "relevance and window memories' custom reverse pass reads each step's query and key "
    "from the forward pass when each [L, B, H] array takes at most this many MiB, else "
    "recomputes them (0: always recompute; ModelConfig.keep_projections_mib)", lower_bound=0)
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed rounds (after one warm-up)")
_MAX_GB = flags.DEFINE_float("max_gb", 8.0, "skip running steps whose memory plan exceeds this")
_STREAM = flags.DEFINE_list("streaming_batches", [],
                            "also time the streaming step at these batch sizes "
                            "(e.g. 1,256)")
_WORKDIR = flags.DEFINE_string("workdir", None, "where benchmark.json/png go")
flags.mark_flag_as_required("workdir")


def bench_length(length: int) -> list[dict]:
  built, records = {}, []
  for name in _MODELS.value:
    base, custom_vjp = timing.parse_model(name)
    chunk = _MEM_REMAT.value if base.startswith("Mem") and not custom_vjp else _REMAT.value
    built[name] = timing.build(name, length, _BATCH.value, _HIDDEN.value, _NU.value, _RHO.value,
                               chunk, keep_projections_mib=_KEEP.value)
  for kind in ("train", "forward"):
    runnable = {n: built[n][kind] for n in _MODELS.value
                if timing.peak_gb(built[n][kind][0]) <= _MAX_GB.value}
    times = timing.time_round_robin(runnable, _REPEATS.value)
    base = statistics.median(times[_MODELS.value[0]]) if _MODELS.value[0] in times else None
    for n in _MODELS.value:
      med = statistics.median(times[n]) if n in times else None
      records.append({"L": length, "kind": kind, "model": n, "median_s": med,
                      "min_s": min(times[n]) if n in times else None,
                      "times_s": times.get(n), "peak_gb": timing.peak_gb(built[n][kind][0]),
                      "remat_chunk": built[n]["remat_chunk"],
                      **built[n]["compile_s"][kind],
                      "per_step_us": 1e6 * med / length if med else None,
                      "ratio_to_first": med / base if med and base else None})
      logging.info("L=%d %-7s %-8s median %s  peak %.3f GB  ratio %s  first call: "
                   "trace %.1f s + compile %.1f s", length, kind, n,
                   f"{med * 1e3:.1f} ms" if med else "not run", records[-1]["peak_gb"],
                   f"{records[-1]['ratio_to_first']:.2f}x" if records[-1]["ratio_to_first"]
                   else "-", records[-1]["trace_s"], records[-1]["compile_s"])
  return records


def plot(records, models, meta, path):
  """Train-step time and memory plan against L; one bar per model for one L."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  train = [r for r in records if r["kind"] == "train"]
  lengths = sorted({r["L"] for r in train})
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, key, label in ((axes[0], "median_s", "train step (s)"),
                         (axes[1], "peak_gb", "train step memory plan (GiB)")):
    if len(lengths) == 1:
      rows = [next(r for r in train if r["model"] == name) for name in models]
      values = [r[key] or 0.0 for r in rows]
      bars = ax.barh(range(len(rows)), values)
      ax.bar_label(bars, [f"{v * 1e3:.0f} ms" if key == "median_s" else f"{v * 1024:.0f} MB"
                          for v in values], padding=2)
      ax.set(yticks=range(len(rows)), yticklabels=models, xlabel=label,
             title=f"L = {lengths[0]}", xlim=(0, 1.25 * max(values)))
      ax.invert_yaxis()
      continue
    for name in models:
      rows = [r for r in train if r["model"] == name and r[key] is not None]
      ax.plot([r["L"] for r in rows], [r[key] for r in rows], "o-", label=name)
    ax.set(xscale="log", yscale="log", xlabel="sequence length L", ylabel=label)
    ax.legend()
  fig.suptitle(f"B={meta['batch']}, H={meta['hidden']}, nu={meta['nu']}, rho={meta['rho']}, "
               f"{meta['device']}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  flags_lib.quiet_other_loggers()
  try:
    lengths = flags_lib.integers("lengths", _LENGTHS.value, minimum=21)
    stream_batches = flags_lib.integers("streaming_batches", _STREAM.value, minimum=1,
                                        nonempty=False)
  except ValueError as e:
    sys.exit(f"error: {e}")
  for n in _MODELS.value:
    try:
      timing.parse_model(n)
    except ValueError as e:
      sys.exit(f"error: --models: {e}")
  try:
    workdir = rundir.prepare(_WORKDIR.value)
  except rundir.WorkdirError as e:
    sys.exit(f"error: {e}")
  warning = timing.huge_page_mix_warning(_MODELS.value, _BATCH.value, os.environ)
  if warning:
    logging.warning(warning)
  records, stream = [], []

  meta = {"device": str(jax.devices()[0]), "batch": _BATCH.value, "hidden": _HIDDEN.value,
          "nu": _NU.value, "rho": _RHO.value, "repeats": _REPEATS.value,
          "keep_projections_mib": _KEEP.value,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "reuse_freed_memory": relscreen.allocator.applied,
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
          "compilation_cache": jax.config.jax_compilation_cache_dir,
          # the attention step's CPU kernels: "on", or why XLA's version runs instead
          "cpu_kernel": relscreen.kernels.why_not() or "on"}

  def save():  # after every length: a later failure loses nothing measured
    meta["max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    (workdir / "benchmark.json").write_text(json.dumps(
        {"meta": meta, "records": records, "streaming": stream}, indent=2) + "\n")

  for length in lengths:
    records.extend(bench_length(length))
    save()
  plot(records, _MODELS.value, meta, workdir / "benchmark.png")
  for b in stream_batches:
    for name in timing.streamed_models(_MODELS.value):
      for donate in (False, True):
        stream.append(timing.streaming(name, b, _HIDDEN.value, _NU.value, _RHO.value,
                                       donate=donate))
        logging.info("streaming %-7s batch %4d%s: %.0f us per step, %.0f stream-steps/s",
                     name, b, " (state donated)" if donate else "",
                     stream[-1]["median_step_us"], stream[-1]["stream_steps_per_s"])
  save()


def run():
  flags_lib.run_app(main)


if __name__ == "__main__":
  run()
