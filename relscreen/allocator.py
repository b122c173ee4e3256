"""glibc's malloc on Linux: keep the memory XLA frees for its next run.

XLA's CPU runtime allocates a computation's scratch memory afresh at every run
and frees it at the end. glibc's malloc serves a block over 32 MB (less, at
first) with a fresh ``mmap`` and gives it back with ``munmap``, and a worker
thread's large block from a heap of that thread's arena, which it unmaps once
the block is freed: either way the next run gets new pages, and the kernel
faults in and zeroes each 4 KB page again at its first touch. A training step
of the plain RNN at L = 1020, batch 10 (37 MB of scratch) took 9,100 page
faults and 15-22 ms of kernel time out of its 31-37 ms; the LSTM's 32,000
faults and 64-87 ms out of 114-153; MemRNN's 18,700 and 72-90 ms.
How many faults a model takes also depends on what ran before it in the process
(malloc adapts its threshold to the blocks freed), which makes timings wander
from run to run.

``reuse_freed_memory()`` asks glibc, through ``mallopt``, for one arena shared
by all threads, no ``mmap`` for blocks and no trimming of the heap's top: freed
memory stays in the process and the next run reuses its pages (the heap grows
over the first calls, then stays). What it costs: the process keeps its peak
memory until it exits (the L = 100,000 RelRNN step peaked at 4.1 GB resident
against 3.2 GB), and the threads share one arena's lock, which slowed small,
latency-bound calls: the streaming step of an LSTM at batch 1 took 41-47 us
against 13-41, RelRNN's 55-72 against 33-59. So it is opt-in: the project's
binaries call it under ``--reuse_memory``, for training runs with large
scratch (autodiff through long sequences, large batches). In your own scripts
call it before the first JAX computation (the runtime's threads choose their
arena when they start). It leaves malloc alone where the environment tunes it
already (``GLIBC_TUNABLES`` with a ``glibc.malloc`` setting, or a
``MALLOC_*_`` variable). Elsewhere than glibc (macOS, musl) it does nothing.

The alternative without those costs is glibc's own tunable
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc 2.35 on, with the kernel's
transparent huge pages not off): malloc then asks for huge pages for the blocks
it maps, and a run's scratch is faulted in 2 MB at a time (the RNN step above:
429 faults instead of 9,100), with arenas and trimming as they are. glibc reads
it only when a process starts, so ``restart_with_huge_pages()`` re-executes the
running script once with it added (``huge_page_environment`` says where that
applies); the project's binaries do so right after parsing their flags
(``--huge_pages``, on by default but for the PPO binaries). In your own script call it first thing, before
any work worth keeping: the process is replaced and starts over.
"""

import ctypes
import logging
import os
import platform
import sys

HUGETLB = "glibc.malloc.hugetlb=1"  # the tunable ``huge_page_environment`` adds
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
applied = False  # whether this process's malloc was set by ``reuse_freed_memory``


def is_glibc() -> bool:
  """Whether this process runs on Linux with glibc, the only malloc this module tunes."""
  return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def tuned_by_environment(environ) -> str | None:
  """The environment variable that already tunes glibc's malloc, or None."""
  if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
    return "GLIBC_TUNABLES"
  for key in sorted(environ):
    if key.startswith("MALLOC_") and key.endswith("_"):
      return key
  return None


def reuse_freed_memory(environ=None) -> bool:
  """Sets glibc's malloc to keep freed memory for reuse (see the module's
  docstring). Returns whether it did: False on a C library other than glibc, or
  where ``environ`` (default ``os.environ``) tunes malloc already."""
  environ = os.environ if environ is None else environ
  if not is_glibc():
    return False
  if tuned_by_environment(environ) is not None:
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  global applied
  # mallopt returns 1 on success; all three are plain settings glibc accepts.
  applied = all([libc.mallopt(param, value) == 1 for param, value in SETTINGS]) or applied
  return applied


def glibc_version() -> tuple[int, int] | None:
  """glibc's (major, minor) version in this process, or None elsewhere."""
  if not is_glibc():
    return None
  parts = platform.libc_ver()[1].split(".")
  try:
    return int(parts[0]), int(parts[1])
  except (IndexError, ValueError):
    return None


def transparent_huge_pages(path: str = THP_SETTING) -> str | None:
  """The kernel's transparent huge page mode ("always", "madvise", "never"), or
  None where it cannot be read (not Linux, no such file)."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def huge_pages_on(environ) -> bool:
  """Whether ``environ``'s ``GLIBC_TUNABLES`` asks glibc's malloc for huge pages
  (``glibc.malloc.hugetlb`` set to anything but 0)."""
  settings = dict(t.partition("=")[::2] for t in environ.get("GLIBC_TUNABLES", "").split(":"))
  return settings.get("glibc.malloc.hugetlb", "0") != "0"


def huge_page_environment(environ=None, glibc=None, thp=None) -> dict | None:
  """The environment to restart this process with so that glibc's malloc asks
  for huge pages (``environ``, default ``os.environ``, with ``HUGETLB`` added to
  ``GLIBC_TUNABLES``), or None where that would not apply or was decided
  already: a C library other than glibc 2.35 or later, transparent huge pages
  off or unknown, or an environment that tunes malloc already (which includes
  a process restarted with it). ``glibc`` and ``thp`` stand in for
  ``glibc_version()`` and ``transparent_huge_pages()``."""
  environ = dict(os.environ if environ is None else environ)
  glibc = glibc_version() if glibc is None else glibc
  thp = transparent_huge_pages() if thp is None else thp
  if glibc is None or glibc < (2, 35) or thp not in ("always", "madvise"):
    return None
  if tuned_by_environment(environ) is not None:
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  environ["GLIBC_TUNABLES"] = f"{tunables}:{HUGETLB}" if tunables else HUGETLB
  return environ


def restart_with_huge_pages(environ=None, note: str = "") -> None:
  """Replaces this process (same pid, arguments and streams) by the same command
  started with glibc's huge-page tunable, where ``huge_page_environment`` finds
  it applies; returns where it does not (the restarted process finds the tunable
  in its environment, so it goes on). Never in an interactive session or a
  Jupyter/IPython kernel, which would restart and lose their state. Call it
  before JAX's first computation and before anything worth keeping: what ran
  before it runs again. ``note`` is added to the line it logs."""
  if sys.flags.interactive or hasattr(sys, "ps1") or "IPython" in sys.modules:
    return
  environ = huge_page_environment(environ)
  if environ is None or not sys.executable or not sys.orig_argv:
    return
  logging.getLogger(__name__).info(
      "restarting with GLIBC_TUNABLES=%s (glibc's huge pages for XLA's scratch)%s",
      environ["GLIBC_TUNABLES"], note)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, environ)
