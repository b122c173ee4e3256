"""A training run's work directory: what makes a resumed run the same run.

Every training binary writes to its ``--workdir`` through these pieces:

- ``locked(workdir)``: creates the directory (a one-line error naming the path
  when it cannot be) and holds an OS lock on ``workdir/LOCK`` for the whole run,
  so a second run on the same directory stops at once, naming the holder's pid.
  The kernel drops the lock when the holder ends, even by ``kill -9``: a lock
  left by a dead process is never in the way.
- ``check_config`` / ``write_config``: a rerun must agree with ``config.json``
  (only resumable fields may change); the file is rewritten only after the
  rerun is known to be valid.
- ``resume``: restores the newest checkpoint that restores. A damaged one is
  moved to ``damaged_checkpoints/`` (nothing is deleted) with a warning saying
  why, and the one before it is tried. One that reads but holds another tree
  than this code's (written by an older relscreen) is converted where a
  conversion is known (the RSM memory's layout before 2026-12-03: a PPO or PTB
  run carries a memory state across updates), and is otherwise an error that
  moves nothing. A total (``--steps``, ``--epochs``)
  below the restored step is refused by name instead of mislabelling results.
- ``MetricsLog``: ``metrics.jsonl``, cut back on resume to exactly one record per
  logged step up to the restored checkpoint. A torn last line (a kill during a
  write) is dropped with a warning; any other bad line is an error naming the
  file and line.
- ``opened``: all of the above around a training loop, closing what it opened.
- ``set_aside_from``: after a non-finite loss, waits for pending saves and
  moves the checkpoints whose parameters produced it to
  ``nonfinite_checkpoints/``, so the newest one left is one that did not.
"""

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import socket

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from relscreen_experiments.configs import common


class WorkdirError(ValueError):
  """The work directory cannot be used (bad path, in use, bad files)."""


def prepare(workdir) -> pathlib.Path:
  """The absolute work directory, created if needed; a ``WorkdirError`` names
  the path when it is a file, lies under a file or cannot be created."""
  path = pathlib.Path(workdir).expanduser().absolute()
  try:
    if path.exists() and not path.is_dir():
      raise WorkdirError(f"--workdir {path} is a file, not a directory")
    for parent in path.parents:
      if parent.exists() and not parent.is_dir():
        raise WorkdirError(f"--workdir {path} cannot be created: {parent} is a file")
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"--workdir {path} cannot be created: {e.strerror}") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise WorkdirError(f"--workdir {path} is not writable")
  return path


@contextlib.contextmanager
def locked(workdir):
  """Prepares ``workdir`` and holds its lock while the block runs; yields the path."""
  path = prepare(workdir)
  lock_path = path / "LOCK"
  try:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise WorkdirError(f"cannot open the lock file {lock_path}: {e.strerror}") from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
    os.close(fd)
    raise WorkdirError(
        f"{path} is in use by another run (process {holder}; lock {lock_path}): wait for "
        "it to end or use another --workdir") from None
  try:
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    yield path
  finally:
    os.close(fd)  # releases the lock


def check_config(workdir: pathlib.Path, config, resumable, later_fields=None):
  """Raises ``WorkdirError`` unless ``config`` agrees with ``config.json`` (when
  there is one) on every field not in ``resumable``. Writes nothing.
  ``later_fields``: fields added after runs were first written, with the value
  an older config.json (which lacks them) ran with (default: the supervised
  binaries' ``configs.common.LATER_FIELDS``)."""
  later_fields = common.LATER_FIELDS if later_fields is None else later_fields
  path = workdir / "config.json"
  if not path.exists():
    return
  try:
    saved = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise WorkdirError(f"{path} is not valid JSON ({e}); move it away to start afresh") from e
  current = config.to_dict()
  saved = {**{k: v for k, v in later_fields.items() if k in current}, **saved}
  changed = sorted(k for k in set(saved) | set(current)
                   if k not in resumable and saved.get(k) != current.get(k))
  if changed:
    diffs = ", ".join(f"--{k}: saved {saved.get(k)!r}, now {current.get(k)!r}"
                      for k in changed)
    raise WorkdirError(f"{workdir} holds a run with a different configuration ({diffs}); "
                       "use another --workdir or the saved values")


def write_config(workdir: pathlib.Path, config):
  write_atomic(workdir / "config.json",
                json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def write_eval(workdir: pathlib.Path, record: dict) -> dict:
  """Writes ``record`` as eval.json with the device it was measured on (its
  times depend on it: the same command runs on CPU and GPU); returns it so."""
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  record = {**record, "device": f"{device.platform}: {device.device_kind}",
            "device_count": jax.device_count()}
  write_atomic(workdir / "eval.json", json.dumps(record, indent=2) + "\n")
  return record


def write_atomic(path: pathlib.Path, text: str):
  """Writes ``text`` to ``path`` through a temporary file and a rename."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def checkpoint_manager(workdir: pathlib.Path, create: bool = True) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      workdir / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=create))


def _without_empty(tree):
  """``tree`` with its zero-size arrays replaced by None: Orbax refuses to save
  them (a window memory's relevant set is [b, 0, h]), and they hold nothing."""
  return jax.tree_util.tree_map(lambda a: None if getattr(a, "size", 1) == 0 else a, tree)


def _with_empty(restored, template):
  """Puts ``template``'s zero-size arrays back into what ``_without_empty`` saved."""
  return jax.tree_util.tree_map(lambda t, r: t if getattr(t, "size", 1) == 0 else r,
                                template, restored)


def save(manager: ocp.CheckpointManager, step: int, state):
  """Saves ``state`` as checkpoint ``step`` (``restore_latest`` reads it back)."""
  manager.save(step, args=ocp.args.StandardSave(_without_empty(state)))


def _reason(error: Exception) -> str:
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _set_aside(workdir: pathlib.Path, step: int, folder: str = "damaged_checkpoints"
               ) -> pathlib.Path:
  """Moves checkpoint ``step`` to ``workdir/folder/`` (never deletes it)."""
  dest_dir = workdir / folder
  dest_dir.mkdir(exist_ok=True)
  dest, n = dest_dir / str(step), 1
  while dest.exists():
    dest, n = dest_dir / f"{step}.{n}", n + 1
  shutil.move(str(workdir / "checkpoints" / str(step)), dest)
  return dest


# The RSM memory state until 2026-12-03: S right-aligned (oldest first, empty
# slots on the left) and R as arrays of their own. Its slots, S's then R's, make
# a valid state of today's one-bank layout, whose S is a ring ordered by time.
_SHIFTED_RSM = ("s_vals", "s_keys", "s_score", "s_time", "r_vals", "r_keys", "r_score",
                "r_time", "seen")


def _upgraded(tree):
  """``tree`` (a checkpoint as Orbax reads it without a template: nested dicts
  and lists) with every RSM memory of the shifted layout in today's."""
  if isinstance(tree, dict):
    if sorted(tree) == sorted(_SHIFTED_RSM):
      def bank(name):
        return np.concatenate([np.asarray(tree["s_" + name]), np.asarray(tree["r_" + name])],
                              axis=1)
      return {"vals": bank("vals"), "keys": bank("keys"), "score": bank("score"),
              "time": bank("time"), "seen": tree["seen"]}
    return {k: _upgraded(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_upgraded(v) for v in tree]
  return tree


def _in_structure(raw, template):
  """``raw`` (nested dicts and lists) as a tree of ``template``'s structure, leaf
  by leaf along the template's paths; a ``ValueError`` names the first path
  that is missing or differs in shape or dtype."""
  def key(k):
    for attr in ("name", "key", "idx"):
      if hasattr(k, attr):
        return getattr(k, attr)
    raise ValueError(f"unsupported tree key {k!r}")

  leaves, treedef = jax.tree_util.tree_flatten_with_path(_without_empty(template))
  out = []
  for path, leaf in leaves:
    node = raw
    try:
      for k in path:
        node = node[key(k)]
    except (KeyError, IndexError, TypeError):
      raise ValueError(f"{jax.tree_util.keystr(path)} is not in the checkpoint") from None
    node = np.asarray(node)
    want = np.asarray(leaf) if not hasattr(leaf, "shape") else leaf
    if node.shape != want.shape or node.dtype != want.dtype:
      raise ValueError(f"{jax.tree_util.keystr(path)} is {node.dtype}{list(node.shape)} in "
                       f"the checkpoint, {want.dtype}{list(want.shape)} here")
    out.append(jax.numpy.asarray(node))
  return _with_empty(treedef.unflatten(out), template)


def restore_latest(workdir: pathlib.Path, template):
  """``(restored, step, manager)`` from the newest checkpoint that restores
  (``(template, 0, manager)`` when there is none); damaged ones are set aside
  with a warning. One that reads but holds another tree than ``template`` is
  converted (``_upgraded``) or, failing that, a ``WorkdirError`` that moves
  nothing. The manager is made anew after each: Orbax infers the checkpoint
  layout from what the directory holds."""
  while True:
    manager = checkpoint_manager(workdir)
    step = manager.latest_step()
    if step is None:
      return template, 0, manager
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(_without_empty(template)))
      return _with_empty(restored, template), step, manager
    except Exception as e:  # pylint: disable=broad-except  (any damage: skip it)
      try:  # does it read at all, without a template?
        raw = manager.restore(step, args=ocp.args.StandardRestore())
      except Exception:  # pylint: disable=broad-except
        raw = None
      if raw is not None:  # it reads: another structure, not damage
        try:
          restored = _in_structure(_upgraded(raw), template)
        except ValueError as mismatch:
          manager.close()
          raise WorkdirError(
              f"checkpoint {step} in {workdir / 'checkpoints'} holds another state than "
              f"this code makes ({mismatch}); was it written by another relscreen version? "
              "Nothing was moved: resume it with the code that wrote it, or use another "
              "--workdir") from e
        logging.info("checkpoint %d in %s: converted from an older relscreen's layout",
                     step, workdir / "checkpoints")
        return restored, step, manager
      manager.close()
      dest = _set_aside(workdir, step)
      logging.warning("checkpoint %d in %s could not be restored (%s); moved it to %s "
                      "and trying the one before", step, workdir / "checkpoints",
                      _reason(e), dest)


def resume(workdir: pathlib.Path, template, unit: str = "update", total: int | None = None,
           total_flag: str = "steps"):
  """Restores the newest good checkpoint of ``workdir`` into ``template``'s structure.

  Returns ``(restored or template, its step or 0, manager, metrics log)``; the log
  keeps exactly the records up to that step. With ``total``, a checkpoint past
  it is refused (``--{total_flag}`` names the flag): evaluating it would label
  later parameters with an earlier step.
  """
  restored, start, manager = restore_latest(workdir, template)
  if total is not None and start > total:
    manager.close()
    raise WorkdirError(
        f"--{total_flag}={total} is below {unit} {start}, already saved in "
        f"{workdir / 'checkpoints'}; pass --{total_flag}={start} or more to evaluate or "
        "extend that run, or use another --workdir")
  if start:
    logging.info("resumed from %s after %s %d", workdir / "checkpoints", unit, start)
  return restored, start, manager, MetricsLog(workdir / "metrics.jsonl", start,
                                              workdir / "tb")


@contextlib.contextmanager
def opened(workdir, config, resumable, template, unit: str = "update",
           total: int | None = None, total_flag: str = "steps"):
  """A run's directory for the length of the block: locked, ``config`` checked
  against ``config.json``, the newest good checkpoint restored into
  ``template``'s structure, ``config.json`` written. Yields
  ``(path, restored, start, manager, log)``; on exit, pending saves are waited
  for and the manager and the log closed, however the block ends."""
  with locked(workdir) as path:
    check_config(path, config, resumable)
    restored, start, manager, log = resume(path, template, unit, total, total_flag)
    try:
      write_config(path, config)
      yield path, restored, start, manager, log
    finally:
      manager.wait_until_finished()
      manager.close()
      log.close()


def set_aside_from(manager: ocp.CheckpointManager, workdir: pathlib.Path, step: int,
                   folder: str = "nonfinite_checkpoints"):
  """Waits for pending saves and moves the checkpoints at ``step`` or later to
  ``workdir/folder/`` (resuming will not pick them; nothing is deleted).

  Returns ``(moved paths, newest checkpoint left or None)``.
  """
  manager.wait_until_finished()
  moved = [_set_aside(workdir, s, folder) for s in sorted(manager.all_steps()) if s >= step]
  manager.reload()
  return moved, manager.latest_step()


class MetricsLog:
  """One JSON record per line; on resume keeps one record per step up to the
  checkpoint (the last one written for a step wins).

  With ``tb_dir``, every record written is also written to TensorBoard event
  files there (tensorboardX; each numeric field as ``<split>/<field>`` at the
  record's step), and events past ``resume_step`` are purged on resume.
  """

  def __init__(self, path: pathlib.Path, resume_step: int,
               tb_dir: pathlib.Path | None = None):
    self.path = path
    self._tb = None
    if path.exists():
      kept = {}
      for record in read_records(path):
        if record["step"] <= resume_step:
          kept.pop(record["step"], None)
          kept[record["step"]] = record
      write_atomic(path, "".join(json.dumps(r) + "\n" for r in
                                 sorted(kept.values(), key=lambda r: r["step"])))
    if tb_dir is not None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(tb_dir), purge_step=resume_step + 1 if resume_step
                               else None)

  def write(self, record: dict):
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    self.scalars(record)

  def close(self):
    """Writes out pending TensorBoard events (tensorboardX writes them from a
    background thread; ``flush`` alone does not wait for it)."""
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def scalars(self, record: dict):
    """Writes ``record``'s numeric fields to TensorBoard only (no-op without tb_dir)."""
    if self._tb is None:
      return
    split = record.get("split", "train")
    for key, value in record.items():
      if key not in ("step", "split", "epoch") and isinstance(value, (int, float)) \
          and not isinstance(value, bool):
        self._tb.add_scalar(f"{split}/{key}", value, record["step"])
    self._tb.flush()

  def read(self) -> list[dict]:
    if not self.path.exists():
      return []
    return read_records(self.path)


def read_records(path: pathlib.Path) -> list[dict]:
  """The records of a JSON-lines file, read only: a torn last line is skipped
  with a warning, any other bad line is a ``WorkdirError`` naming it."""
  text = path.read_text()
  lines = text.split("\n")
  records = []
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or "step" not in record:
        raise ValueError("not a record with a 'step'")
    except ValueError as e:  # json.JSONDecodeError is a ValueError
      if i == len(lines) and not text.endswith("\n"):
        logging.warning("%s: dropped a torn last line %d (a run stopped while writing "
                        "it): %r", path, i, line[:80])
        continue
      raise WorkdirError(f"{path}, line {i}: {e}; fix or remove that line") from None
    records.append(record)
  return records
