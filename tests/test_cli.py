"""The installed command line: every binary's --help lists its own flags, and the
binaries' package never shadows (or is shadowed by) a user's own ``experiments``."""

import pathlib
import subprocess
import sys

import pytest

BIN = pathlib.Path(sys.executable).parent


# relscreen-copy's flags come from a field table (defined in flags_lib on its
# behalf); relscreen-benchmark defines its own.
@pytest.mark.parametrize("binary,flag", [("relscreen-copy", "--steps"),
                                         ("relscreen-benchmark", "--lengths")])
def test_help_lists_the_binarys_own_flags(binary, flag, tmp_path):
  done = subprocess.run([str(BIN / binary), "--help"], capture_output=True, text=True,
                        timeout=120, cwd=tmp_path)
  assert done.returncode in (0, 1), done.stderr  # absl's --help exits with status 1
  assert f"  {flag}:" in done.stdout and "  --workdir:" in done.stdout
  assert "Command" in done.stdout or "relscreen-" in done.stdout  # the docstring


# glibc's huge pages: on for the supervised binaries, off for PPO's (which
# gained nothing from them, docs/RESULTS.md).
@pytest.mark.parametrize("binary,default", [("relscreen-copy", "true"),
                                            ("relscreen-ppo", "false"),
                                            ("relscreen-ppo-seeds", "false")])
def test_each_binary_has_its_own_huge_pages_default(binary, default, tmp_path):
  done = subprocess.run([str(BIN / binary), "--help"], capture_output=True, text=True,
                        timeout=120, cwd=tmp_path)
  after = done.stdout.split("--[no]huge_pages:", 1)[1]
  assert after.split("(default: ", 1)[1].startswith(f"'{default}')")


def test_a_users_experiments_package_is_left_alone(tmp_path):
  (tmp_path / "experiments").mkdir()
  (tmp_path / "experiments" / "__init__.py").write_text("MINE = True\n")
  code = ("import experiments, relscreen_experiments.copy_task as c; "
          "print(experiments.MINE, c.__file__)")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120, cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  mine, path = done.stdout.split()
  root = pathlib.Path(__file__).resolve().parents[1]
  assert mine == "True" and pathlib.Path(path) == root / "experiments" / "copy_task.py"


def test_list_flags_are_checked_by_name():
  """The sweeps' and the benchmark's list flags (``--seeds=1,2``, ``--baselines=...``)
  go through these two checks; the ablation binary's wiring is tested end to end
  in test_composable.py."""
  from relscreen_experiments import flags_lib  # pylint: disable=g-import-not-at-top
  assert flags_lib.integers("seeds", ["3", "1"], distinct=True) == [3, 1]
  assert flags_lib.integers("streaming_batches", [], nonempty=False) == []
  for values, kwargs, message in (
      (["1", "x"], {}, "--seeds must be integers, got 1,x"),
      ([], {}, "--seeds needs at least one value"),
      (["21", "20"], {"minimum": 21}, "--seeds must be >= 21, got 21,20"),
      (["2", "2"], {"distinct": True}, "--seeds must be distinct, got 2,2")):
    with pytest.raises(ValueError) as error:
      flags_lib.integers("seeds", values, **kwargs)
    assert str(error.value) == message
  flags_lib.check_choices("baselines", ["LSTM"], ["MemRNN", "LSTM"])
  with pytest.raises(ValueError) as error:
    flags_lib.check_choices("baselines", ["LSTM", "Transformer"], ["MemRNN", "LSTM"])
  assert str(error.value) == "--baselines: unknown ['Transformer']; choose from MemRNN, LSTM"
