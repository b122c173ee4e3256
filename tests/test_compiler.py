"""relscreen.compiler: 512-bit vectors for XLA on CPUs with AVX-512."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from relscreen import allocator
from relscreen import compiler
from relscreen import kernels

BIN = pathlib.Path(sys.executable).parent
WIDE = "--xla_cpu_prefer_vector_width=512"


def _cpuinfo(tmp_path, flags: str) -> pathlib.Path:
  path = tmp_path / f"cpuinfo-{flags.replace(' ', '-')}"
  path.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                  f"flags\t\t: {flags}\nbugs\t\t: sysret_ss_attrs\n\n"
                  "processor\t: 1\nflags\t\t: fpu\n")
  return path


def test_the_flag_is_added_only_for_avx512_and_never_over_the_users_width():
  assert compiler.with_wide_vectors("", {"sse", "avx2", "avx512f"}) == WIDE
  assert compiler.with_wide_vectors("--xla_dump_to=/tmp/d", {"avx512f"}) == (
      "--xla_dump_to=/tmp/d " + WIDE)
  assert compiler.with_wide_vectors("", {"sse", "avx2", "avx512_bf16"}) == ""  # no avx512f
  kept = "--xla_cpu_prefer_vector_width=256 --xla_dump_to=/tmp/d"
  assert compiler.with_wide_vectors(kept, {"avx512f"}) == kept


def test_cpu_feature_flags_are_the_first_cpus(tmp_path):
  assert compiler.cpu_feature_flags(_cpuinfo(tmp_path, "fpu avx2 avx512f")) == {
      "fpu", "avx2", "avx512f"}
  assert compiler.cpu_feature_flags(tmp_path / "missing") == set()
  (tmp_path / "empty").write_text("processor\t: 0\n")
  assert compiler.cpu_feature_flags(tmp_path / "empty") == set()


def test_nothing_changes_once_a_backend_has_started(tmp_path):
  jax.devices()  # this process's backend has started
  environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/d"}
  assert not compiler.prefer_wide_vectors(environ, _cpuinfo(tmp_path, "avx512f"))
  assert environ == {"XLA_FLAGS": "--xla_dump_to=/tmp/d"}
  assert compiler.prefer_wide_vectors({"XLA_FLAGS": WIDE}, _cpuinfo(tmp_path, "avx512f"))


@pytest.mark.parametrize("flags,expected", [("fpu avx512f", True), ("fpu avx2", False)])
def test_a_fresh_process_gets_the_flag_before_its_backend_starts(tmp_path, flags, expected):
  code = ("import os, json, jax, relscreen as rs\n"
          f"first = rs.prefer_wide_vectors(cpuinfo={str(_cpuinfo(tmp_path, flags))!r})\n"
          "seen = os.environ.get('XLA_FLAGS', '')\n"
          "jax.devices()\n"
          f"late = rs.prefer_wide_vectors({{}}, cpuinfo={str(_cpuinfo(tmp_path, 'avx512f'))!r})\n"
          "print(json.dumps([first, seen, late]))\n")
  env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120, cwd=tmp_path, env=env)
  assert done.returncode == 0, done.stderr
  first, seen, late = json.loads(done.stdout.splitlines()[-1])
  assert (first, WIDE in seen, late) == (expected, expected, False)


def test_the_benchmark_binary_records_the_width_it_compiled_with(tmp_path):
  """The binaries call ``prefer_wide_vectors`` before their first computation:
  benchmark.json's ``xla_flags`` carries the flag exactly where this CPU has
  AVX-512 (the suite's own XLA_FLAGS, inherited, set no width). They also call
  ``reuse_freed_memory`` when ``--reuse_memory`` asks: on with glibc, unless
  the environment tunes malloc. Without it, they restart once with glibc's
  huge-page tunable where it applies (``--huge_pages``, on by default), with the
  same arguments (the results land in the workdir asked for)."""
  metas = []
  for extra in ([], ["--reuse_memory"], ["--nohuge_pages"]):
    done = subprocess.run([str(BIN / "relscreen-benchmark"), "--models=RNN", "--lengths=21",
                           "--repeats=1", f"--workdir={tmp_path / str(len(metas))}", *extra],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    metas.append(json.loads((tmp_path / str(len(metas)) / "benchmark.json").read_text())["meta"])
  assert (WIDE in metas[0]["xla_flags"]) == ("avx512f" in compiler.cpu_feature_flags())
  reuse = allocator.is_glibc() and allocator.tuned_by_environment(os.environ) is None
  assert [m["reuse_freed_memory"] for m in metas] == [False, reuse, False]
  inherited = os.environ.get("GLIBC_TUNABLES", "")
  restarted = allocator.huge_page_environment(os.environ)
  assert [m["glibc_tunables"] for m in metas] == [
      inherited if restarted is None else restarted["GLIBC_TUNABLES"], inherited, inherited]
  # And whether the attention's CPU kernels ran: "on", or why not.
  if kernels.find_compiler() is not None and os.environ.get(kernels.ENV) != "0":
    assert [m["cpu_kernel"] for m in metas] == ["on"] * 3
