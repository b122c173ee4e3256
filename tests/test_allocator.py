"""relscreen.allocator: glibc's malloc keeps the memory XLA frees for reuse; glibc's huge-page
tunable, which the binaries restart with, faults it in by 2 MB pages."""

import json
import os
import subprocess
import sys

import pytest

from relscreen import allocator


def test_an_environment_that_tunes_malloc_is_left_alone():
  assert allocator.tuned_by_environment({}) is None
  assert allocator.tuned_by_environment({"GLIBC_TUNABLES": "glibc.rtld.nns=2",
                                         "MALLOC": "x", "XLA_FLAGS": ""}) is None
  assert allocator.tuned_by_environment(
      {"GLIBC_TUNABLES": "glibc.rtld.nns=2:glibc.malloc.arena_max=8"}) == "GLIBC_TUNABLES"
  assert allocator.tuned_by_environment({"MALLOC_ARENA_MAX": "2"}) is None  # not glibc's
  assert allocator.tuned_by_environment({"MALLOC_ARENA_MAX_": "2"}) == "MALLOC_ARENA_MAX_"
  assert not allocator.reuse_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})


# The plain RNN's training step at L = 1020 (autodiff through the scan): its
# scratch (37 MB) is over glibc's largest mmap threshold (32 MB), so by default
# every call maps fresh pages and faults each one in. With reuse, the heap grows
# now and then: a call's scratch can be asked for before the last one's is
# freed, and the heap then grows by one whole scratch in that call, at any call
# (seen at calls 2 to 29 of 40; more often on a busy machine), and stays. So the
# tests read the median call, not the mean of a few.
_FAULTS = """
import json, resource, statistics, sys, relscreen as rs
applied = rs.reuse_freed_memory() if sys.argv[1] == "reuse" else False
import jax
from relscreen_experiments import timing
step, args = timing.build("RNN", 1020, 10, 128, 10, 15, 0)["train"]
pages = step.memory_analysis().temp_size_in_bytes / 4096
for _ in range(10):
  jax.block_until_ready(step(*args))
faults = []
for _ in range(21):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(step(*args))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps([applied, statistics.median(faults), pages]))
"""


# The suite's on-disk compilation cache (tests/conftest.py), not its compiler
# flags (the step is measured as the binaries compile it): the three processes
# below build the same step, so one compiles it and two read it.
_CACHE = {k: v for k, v in os.environ.items()
          if k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}


def _faults_per_step(tmp_path, mode, **environ):
  """[reuse applied, page faults of the median step, pages of scratch] of the RNN step in
  a fresh process; ``mode`` "reuse" calls ``reuse_freed_memory`` first (else
  "applied" is False by construction, so the tests read it only for "reuse")."""
  done = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                        timeout=300, cwd=tmp_path,
                        env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", **_CACHE, **environ})
  assert done.returncode == 0, done.stderr[-2000:]
  return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not allocator.is_glibc(), reason="glibc's malloc only")
def test_a_runs_scratch_is_reused_instead_of_faulted_in_afresh(tmp_path):
  _, faults, pages = _faults_per_step(tmp_path, "default")
  reused, faults_reused, _ = _faults_per_step(tmp_path, "reuse")
  assert pages > 32 * 2**20 / 4096  # over the threshold: the premise of the test
  assert reused is True
  assert faults > 0.9 * pages  # every page of the scratch, every call
  assert faults_reused < 0.05 * pages


def test_the_huge_page_restart_adds_the_tunable_only_where_it_applies():
  glibc, thp = (2, 36), "madvise"
  env = {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.rtld.nns=2"}
  got = allocator.huge_page_environment(env, glibc, thp)
  assert got == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.rtld.nns=2:glibc.malloc.hugetlb=1"}
  assert env["GLIBC_TUNABLES"] == "glibc.rtld.nns=2"  # the caller's mapping is left as it was
  assert allocator.huge_page_environment({}, (2, 35), "always") == {
      "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  assert allocator.huge_page_environment({}, (2, 34), thp) is None  # no such tunable before 2.35
  assert allocator.huge_page_environment({}, (3, 0), "never") is None
  assert allocator.huge_page_environment({}, (2, 40), "") is None  # THP unreadable
  # A process restarted with it (or tuned by its user) is not restarted again.
  assert allocator.huge_page_environment(got, glibc, thp) is None
  assert allocator.huge_page_environment({"MALLOC_ARENA_MAX_": "2"}, glibc, thp) is None


def test_the_kernels_huge_page_mode_is_the_bracketed_word(tmp_path):
  setting = tmp_path / "enabled"
  setting.write_text("always [madvise] never\n")
  assert allocator.transparent_huge_pages(str(setting)) == "madvise"
  setting.write_text("[always] madvise never\n")
  assert allocator.transparent_huge_pages(str(setting)) == "always"
  assert allocator.transparent_huge_pages(str(tmp_path / "missing")) is None


# What the binaries restart with (``--huge_pages``): glibc (2.35 on) asks the kernel for
# transparent huge pages for its mmapped blocks, so the scratch is faulted in
# 2 MB at a time; malloc's arenas and trimming stay as they are.
@pytest.mark.skipif(allocator.huge_page_environment({}) is None,
                    reason="glibc >= 2.35 and transparent huge pages only")
def test_glibcs_hugetlb_tunable_faults_the_scratch_in_by_huge_pages(tmp_path):
  _, faults, pages = _faults_per_step(tmp_path, "default",
                                      GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
  assert pages > 32 * 2**20 / 4096
  assert faults < 0.2 * pages  # 4 KB pages would be one fault each (the test above)


def test_the_restart_replaces_the_process_with_the_tunable_added(monkeypatch):
  calls = []

  def execve(path, argv, environ):
    calls.append((path, argv, environ))
    raise SystemExit  # what follows execve never runs

  monkeypatch.setattr(allocator.os, "execve", execve)
  monkeypatch.setattr(allocator, "glibc_version", lambda: (2, 36))
  monkeypatch.setattr(allocator, "transparent_huge_pages", lambda: "madvise")
  monkeypatch.setattr(allocator.sys, "orig_argv", ["python", "train.py", "--lr=1e-3"])
  monkeypatch.delitem(allocator.sys.modules, "IPython", raising=False)
  with pytest.raises(SystemExit):
    allocator.restart_with_huge_pages({"HOME": "/h"})
  assert calls == [(allocator.sys.executable, ["python", "train.py", "--lr=1e-3"],
                    {"HOME": "/h", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})]
  # Restarted (or tuned by its user), it returns and the process goes on.
  assert allocator.restart_with_huge_pages(calls[0][2]) is None
  monkeypatch.setattr(allocator, "transparent_huge_pages", lambda: "never")
  assert allocator.restart_with_huge_pages({"HOME": "/h"}) is None
  assert len(calls) == 1


def test_the_benchmark_warns_of_several_models_at_large_batches_with_huge_pages():
  from relscreen_experiments import timing  # pylint: disable=g-import-not-at-top
  huge = {"GLIBC_TUNABLES": "glibc.rtld.nns=2:glibc.malloc.hugetlb=1"}
  warning = timing.huge_page_mix_warning(["RNN", "LSTM", "RelLSTM"], 64, huge)
  assert warning.startswith("3 models in one process at batch 64")
  assert "--reuse_memory" in warning
  assert timing.huge_page_mix_warning(["RNN", "LSTM"], 63, huge) is None  # small batches measured fine
  assert timing.huge_page_mix_warning(["LSTM", "LSTM"], 256, huge) is None  # one model
  assert timing.huge_page_mix_warning(["RNN", "LSTM"], 256, {}) is None  # no huge pages
  assert timing.huge_page_mix_warning(["RNN", "LSTM"], 256,
                                      {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
