"""Checkpoints of any pytree (any backend's env state) that are never half-written, never silently corrupt, and
never deleted before a newer one is complete.

    checkpoints/
      <step>/                 complete: renamed into place only once everything below is written and fsynced
        state/                the pytree (orbax StandardCheckpointHandler); zero-size leaves are not stored
        policy/               optional: a small pytree read on its own (what acting needs: load_policy, eval)
        <name>                extra files (the train CLI stores the metrics history that matches the state)
        manifest.json         size + sha256 of every file above, the zero-size leaves, the step
      .partial-<step>-<pid>/  a save in progress (removed by the next save: the process that wrote it is gone)
    checkpoints_set_aside/<step>-<reason>-<time>/   corrupt or superseded checkpoints, moved, never deleted

A checkpoint is *intact* when every file in its manifest exists with the recorded size and sha256. Restoring
the newest checkpoint skips (and, for a writer, sets aside) any that is not, saying so in one line. Checkpoints
written before manifests existed (orbax CheckpointManager layout, `<step>/default/`) load with a warning.

Zero-size leaves (mjx.Data has several: `act`, `plugin_state`, ... with na = 0) cannot be stored by orbax; they
are stored as absent and rebuilt from the restore target's shapes, so no field of any backend needs a special case.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

FORMAT = "fetchjax.checkpoint/1"
MANIFEST = "manifest.json"
STATE = "state"
POLICY = "policy"
_LEGACY_STATE = "default"  # orbax CheckpointManager's item directory (fetchjax 0.1 checkpoints)
_PARTIAL = ".partial-"


class CheckpointError(Exception):
  """A checkpoint problem the user must hear about in one line (missing, corrupt, unwritable)."""


def _warn(message: str) -> None:
  print(f"WARN {message}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _files_under(root: Path) -> list[Path]:
  return sorted(p for p in root.rglob("*") if p.is_file())


def _fsync(path: Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def first_line(e: BaseException) -> str:
  lines = [s.strip() for s in str(e).splitlines() if s.strip()]
  text = lines[0] if lines else ""
  return f"{type(e).__name__}: {text[:240]}" if text else type(e).__name__


def io_cause(e: BaseException) -> str:
  """The operating-system cause inside an I/O failure (orbax/TensorStore wrap `No space left on device` in
  ValueErrors with long messages), else the exception's first line."""
  seen = e
  while seen is not None:
    if isinstance(seen, OSError) and seen.strerror:
      return seen.strerror
    m = re.search(r"os_error_code='?(\d+)", str(seen)) or re.search(r"\[Errno (\d+)\]", str(seen))
    if m:
      return os.strerror(int(m[1]))
    seen = seen.__cause__ or seen.__context__
  return first_line(e)


class _OrbaxOrphanedWrites(logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" records for orbax's background writes. They are logged
  (with tracebacks) whenever the garbage collector reaches a failed write's task: often long after the save, so
  no capture window can hold them, and always a repeat of the failure the save already raised."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("Task exception was never retrieved") and "orbax" in message)


def _drop_orphaned_orbax_writes() -> None:
  asyncio_logger = logging.getLogger("asyncio")
  if not any(isinstance(f, _OrbaxOrphanedWrites) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_OrbaxOrphanedWrites())


@contextlib.contextmanager
def quiet_orbax(drain_s: float = 0.5):
  """Orbax logs every failed background write (with tracebacks) on the absl logger, and after a failure its
  TensorStore callbacks print "Event loop is closed" tracebacks to sys.stderr for a moment; the caller reports the
  failure in one line instead. On a failure, waits `drain_s` for those callbacks with stderr still captured."""
  _drop_orphaned_orbax_writes()
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    with contextlib.redirect_stderr(io.StringIO()):
      try:
        yield
      except Exception:
        time.sleep(drain_s)
        raise
  finally:
    logger.setLevel(level)


def _nbytes(tree) -> int:
  return sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(tree))


def io_error_message(e: OSError, what: str) -> str:
  """One line for an OSError: what failed, the path and the cause (e.g. 'No space left on device')."""
  path = e.filename if e.filename is not None else ""
  cause = e.strerror or first_line(e)
  return f"{what}{' ' + str(path) if path else ''}: {cause}"


def _is_empty(x) -> bool:
  return hasattr(x, "shape") and int(np.prod(x.shape)) == 0


def _without_empty(tree):
  return jax.tree.map(lambda x: None if _is_empty(x) else x, tree)


def _with_empty(target, restored):
  """`restored` (empty leaves absent) with the zero-size leaves of `target` put back as zeros."""
  filled = iter(jax.tree.leaves(restored))
  leaves, treedef = jax.tree.flatten(target)
  out = [np.zeros(t.shape, t.dtype) if _is_empty(t) else next(filled) for t in leaves]
  return jax.tree.unflatten(treedef, out)


NPZ = "arrays.npz"


def _path_names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def _save_npz(item_dir: Path, tree) -> None:
  """An item as one .npz of its leaves keyed by their tree paths. Used in a multi-process JAX (several hosts):
  there orbax refuses process-local arrays and writes numpy leaves from process 0 only, while each sweep host
  checkpoints its own runs; the manifest, atomic rename and checksums are the same."""
  item_dir.mkdir()
  leaves = {json.dumps(_path_names(p)): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  with open(item_dir / NPZ, "wb") as f:
    np.savez(f, **leaves)


def _load_npz(item_dir: Path, target):
  """`_save_npz`'s item into `target`'s structure, or (None) as nested dicts without the zero-size leaves."""
  with np.load(item_dir / NPZ) as z:
    data = {k: z[k] for k in z.files}
  if target is not None:
    paths, treedef = jax.tree_util.tree_flatten_with_path(target)
    try:
      return jax.tree.unflatten(treedef, [data[json.dumps(_path_names(p))] for p, _ in paths])
    except KeyError as e:
      raise CheckpointError(f"checkpoint {item_dir.parent} does not match this run (no leaf {e})") from None
  out: dict = {}
  for key, x in data.items():
    if x.size == 0:
      continue
    *parents, last = json.loads(key)
    node = out
    for name in parents:
      node = node.setdefault(name, {})
    node[last] = x
  return out


class CheckpointStore:
  """The checkpoints of one run directory. `keep`: how many intact checkpoints to keep (the newest)."""

  def __init__(self, directory: str | os.PathLike, set_aside_dir: str | os.PathLike, keep: int = 2,
               warn: Callable[[str], None] = _warn):
    self.dir = Path(directory)
    self.set_aside_dir = Path(set_aside_dir)
    self.keep = keep
    self.warn = warn

  # --- listing -------------------------------------------------------------------------------------------
  def steps(self) -> list[int]:
    """Steps of the complete checkpoint directories (intact or not), ascending."""
    if not self.dir.is_dir():
      return []
    return sorted(int(p.name) for p in self.dir.iterdir() if p.is_dir() and p.name.isdigit())

  def path(self, step: int) -> Path:
    return self.dir / str(int(step))

  def check(self, step: int, item: str | None = None) -> str | None:
    """None if checkpoint `step` is intact (only its `item` directory, e.g. POLICY, when given: a reader of the
    small policy item must not hash a replay buffer of many GB); otherwise why not, in a few words."""
    root = self.path(step)
    mpath = root / MANIFEST
    if not mpath.is_file():
      if (root / _LEGACY_STATE).is_dir() and (root / "commit_success.txt").is_file():
        return None  # fetchjax 0.1 layout: nothing to verify against (see restore)
      return f"{MANIFEST} is missing"
    try:
      manifest = json.loads(mpath.read_text())
      files = manifest["files"]
      if manifest.get("format") != FORMAT or manifest.get("step") != int(step):
        return f"{MANIFEST} is not a {FORMAT} manifest for step {step}"
    except (OSError, ValueError, KeyError, TypeError) as e:
      return f"{MANIFEST} is unreadable ({first_line(e)})"
    for rel, want in files.items():
      if item is not None and not rel.startswith(item + "/"):
        continue
      f = root / rel
      try:
        size = f.stat().st_size
      except OSError:
        return f"{rel} is missing"
      if size != want["size"]:
        return f"{rel} has {size} bytes, not {want['size']}"
      if _sha256(f) != want["sha256"]:
        return f"{rel} does not match its checksum"
    return None

  def _is_legacy(self, step: int) -> bool:
    return not (self.path(step) / MANIFEST).is_file()

  # --- writing -------------------------------------------------------------------------------------------
  def save(self, step: int, state: Any, files: dict[str, bytes] | None = None, policy: Any = None) -> Path:
    """Writes checkpoint `step` (atomically: all or nothing) and then drops checkpoints beyond `keep`. `policy`:
    a small pytree stored beside the state, so that readers of the policy alone skip the (large) state.

    A complete, intact checkpoint at `step` is left as it is (the same step of the same run holds the same
    state: e.g. Ctrl-C right after a chunk was checkpointed); one that is not intact is set aside first."""
    import orbax.checkpoint as ocp

    step = int(step)
    final = self.path(step)
    if final.exists():
      problem = self.check(step)
      if problem is None:
        return final
      self.set_aside(step, "corrupt", problem)
    self.dir.mkdir(parents=True, exist_ok=True)
    for stale in self.dir.glob(_PARTIAL + "*"):  # left by a process that died mid-save
      shutil.rmtree(stale, ignore_errors=True)
    need = _nbytes(state) + _nbytes(policy) + sum(len(b) for b in (files or {}).values())
    if need > shutil.disk_usage(self.dir).free:  # fail before writing anything (orbax fails noisily)
      raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a checkpoint needs {need:,} bytes)", str(self.dir))
    tmp = self.dir / f"{_PARTIAL}{step}-{os.getpid()}"
    try:
      tmp.mkdir()
      empty = [dict(path=jax.tree_util.keystr(p), shape=list(x.shape), dtype=str(x.dtype))
               for p, x in jax.tree_util.tree_leaves_with_path(state) if _is_empty(x)]
      if jax.process_count() > 1:  # several hosts, each writing its own runs (see _save_npz)
        _save_npz(tmp / STATE, state)
        if policy is not None:
          _save_npz(tmp / POLICY, policy)
      else:
        with quiet_orbax():
          ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())
          try:
            ckptr.save(tmp / STATE, args=ocp.args.StandardSave(_without_empty(state)))
            if policy is not None:
              ckptr.save(tmp / POLICY, args=ocp.args.StandardSave(_without_empty(policy)))
          finally:
            ckptr.close()
      for name, data in (files or {}).items():
        (tmp / name).write_bytes(data)
      listing = {}
      for f in _files_under(tmp):
        _fsync(f)
        listing[f.relative_to(tmp).as_posix()] = dict(size=f.stat().st_size, sha256=_sha256(f))
      manifest = dict(format=FORMAT, step=step, files=listing, empty_leaves=empty,
                      created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
      with open(tmp / MANIFEST, "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
      os.replace(tmp, final)
      _fsync(self.dir)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    self._prune(keep_step=step)
    return final

  def _prune(self, keep_step: int) -> None:
    """Deletes the oldest intact checkpoints beyond `keep` (never `keep_step`, never a newer one)."""
    older = [s for s in self.steps() if s < keep_step]
    excess = len(older) + 1 - self.keep
    for s in older[:max(0, excess)]:
      shutil.rmtree(self.path(s), ignore_errors=True)

  def set_aside(self, step: int, reason: str, detail: str = "") -> Path:
    """Moves checkpoint `step` out of the checkpoint directory (kept, never deleted)."""
    self.set_aside_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    dest = self.set_aside_dir / f"{step}-{reason}-{stamp}"
    k = 1
    while dest.exists():
      dest = self.set_aside_dir / f"{step}-{reason}-{stamp}.{k}"
      k += 1
    shutil.move(str(self.path(step)), str(dest))
    (dest / "WHY.txt").write_text(f"{reason}: {detail}\n" if detail else f"{reason}\n")
    return dest

  def set_aside_newer_than(self, step: int) -> list[Path]:
    """Checkpoints newer than `step` (e.g. when resuming from an older one) move aside: the run continues from
    `step` and will write its own."""
    return [self.set_aside(s, "superseded", f"the run was resumed from checkpoint {step}")
            for s in self.steps() if s > step]

  # --- reading -------------------------------------------------------------------------------------------
  def restore(self, target: Any = None, step: int | None = None, writable: bool = False, policy_only: bool = False
              ) -> tuple[int, Any, dict[str, bytes]]:
    """(step, state, extra files) of checkpoint `step`, or of the newest intact one.

    `target`: a pytree of arrays or ShapeDtypeStructs with the saved structure (None: nested dicts of numpy
    arrays, zero-size leaves left out). Without `step`, a checkpoint that is not intact is skipped with one
    line, and set aside if `writable`. With `step`, it is an error. `policy_only`: the policy item instead of
    the state (None when the checkpoint has none)."""
    steps = self.steps()
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.dir}")
    if step is not None:
      if int(step) not in steps:
        raise CheckpointError(f"no checkpoint at step {step}; available: {', '.join(map(str, steps))}")
      problem = self.check(step, POLICY if policy_only else None)
      if problem:
        raise CheckpointError(f"checkpoint {self.path(step)} is corrupt: {problem}")
      candidates = [int(step)]
    else:
      candidates = []
      for s in reversed(steps):
        problem = self.check(s, POLICY if policy_only else None)
        if problem is None:
          candidates.append(s)
          continue
        where = f"; moved to {self.set_aside(s, 'corrupt', problem)}" if writable else ""
        self.warn(f"checkpoint {self.path(s)} is corrupt ({problem}){where}; using an older checkpoint")
      if not candidates:
        raise CheckpointError(f"no intact checkpoint in {self.dir} (all of {', '.join(map(str, steps))} are "
                              "corrupt)")
    s = candidates[0]
    if self._is_legacy(s):
      self.warn(f"checkpoint {self.path(s)} predates integrity manifests: loaded unverified")
    if policy_only:
      return s, (self._load(s, target, POLICY) if self.has_policy(s) else None), {}
    return s, self._load(s, target), self._extras(s)

  def has_policy(self, step: int) -> bool:
    """Whether checkpoint `step` stores the policy item (checkpoints of fetchjax before 0.3 do not)."""
    return not self._is_legacy(step) and (self.path(step) / POLICY).is_dir()

  def _load(self, step: int, target: Any, item_name: str = STATE):
    import orbax.checkpoint as ocp

    root = self.path(step)
    if (root / item_name / NPZ).is_file():
      return _load_npz(root / item_name, target)
    legacy = self._is_legacy(step)
    ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    item = root / (_LEGACY_STATE if legacy else item_name)
    try:
      with quiet_orbax():
        if target is None:
          return ckptr.restore(item)
        stored = target if legacy else _without_empty(target)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), stored)
        restored = ckptr.restore(item, args=ocp.args.StandardRestore(abstract))
      return restored if legacy else _with_empty(target, restored)
    except Exception as e:  # orbax/tensorstore raise many types; the manifest already vouched for the bytes
      raise CheckpointError(f"checkpoint {root} does not match this run ({first_line(e)})") from None
    finally:
      ckptr.close()

  def _extras(self, step: int) -> dict[str, bytes]:
    root = self.path(step)
    if self._is_legacy(step):
      return {}
    files = json.loads((root / MANIFEST).read_text())["files"]
    return {name: (root / name).read_bytes() for name in files if "/" not in name}
