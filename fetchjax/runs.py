"""The run directory: one training run (N vmapped seeds) and everything it leaves behind.

    RUN_DIR/
      meta.json            algo, env, seeds, steps, full config, device, versions, git commit, timing, status
      checkpoints/<step>/  the FULL vmapped runner state (params, optimiser, normaliser, PRNG keys, env state of
                           any backend, update count) and the metrics history up to it, atomic and checksummed
                           (fetchjax/checkpoints.py): `--resume` continues bit-exactly
      checkpoints_set_aside/  corrupt checkpoints (and ones superseded by resuming from an older step), kept
      metrics.npz          per-update training metrics, [n_seeds, n_updates] each (+ "steps")
      tb/seed<N>/          TensorBoard (tensorboardX) with SB3 metric names, one run per directory
      eval.json            the book's evaluation report (fetchjax/eval.py: aggregate, across_seeds, per_seed)
      learning_curve.png, videos/<algo>_<EnvId>_seed<N>.mp4, diagnostics.json

`<step>` counts env transitions per seed (SB3's `num_timesteps`).
"""
from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from fetchjax import checkpoints

META = "meta.json"
METRICS = "metrics.npz"
CKPT_DIR = "checkpoints"
SET_ASIDE_DIR = "checkpoints_set_aside"  # corrupt or superseded checkpoints, moved here, never deleted
KEEP_CHECKPOINTS = 2
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "mujoco", "mujoco-mjx", "gymnasium",
             "gymnasium-robotics", "numpy", "tensorboardX", "fetchjax")


class RunError(Exception):
  """A user-facing problem with a run directory (missing, corrupt, incompatible); the CLIs print it in one line."""


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str | None]:
  out = {"python": platform.python_version()}
  for name in _PACKAGES:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def git_commit() -> str | None:
  """The fetchjax source commit (with "-dirty" if the tree has changes); None outside a git checkout."""
  src = Path(__file__).resolve().parent.parent
  try:
    sha = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    if sha.returncode:
      return None
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return sha.stdout.strip() + ("-dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return None


def device_info() -> dict[str, Any]:
  import jax

  d = jax.devices()[0]
  return {"platform": d.platform, "kind": getattr(d, "device_kind", str(d)), "count": jax.device_count(),
          "x64": bool(jax.config.jax_enable_x64)}


def parse_seeds(text: str) -> list[int]:
  """"3" -> [3]; "0-4" -> [0..4]; "0,2,5" -> [0, 2, 5]. Raises ValueError with a readable message."""
  bad = ValueError(f"bad seed list {text!r}: use N, A-B or A,B,C with non-negative integers (A <= B)")
  seeds: list[int] = []
  for part in str(text).split(","):
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
    if not m:
      raise bad
    lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
    if hi < lo:
      raise bad
    seeds.extend(range(lo, hi + 1))
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seed list {text!r} repeats a seed")
  return seeds


def _atomic_write(path: Path, write) -> None:
  tmp = path.with_name(path.name + ".tmp")
  write(tmp)
  os.replace(tmp, path)


def write_json(path: Path, obj: dict) -> None:
  _atomic_write(Path(path), lambda p: p.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n"))


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if dataclasses.is_dataclass(x):
    return dataclasses.asdict(x)
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")


class RunDir:
  def __init__(self, path: str | os.PathLike):
    self.path = Path(path).expanduser().absolute()

  # --- files ---------------------------------------------------------------------------------------------
  @property
  def meta_path(self) -> Path:
    return self.path / META

  def tb_dir(self, seed: int) -> Path:
    return self.path / "tb" / f"seed{seed}"

  def video_path(self, algo: str, env_id: str, seed: int) -> Path:
    return self.path / "videos" / f"{algo}_{env_id}_seed{seed}.mp4"

  def is_fresh(self) -> bool:
    return not self.path.exists() or not any(self.path.iterdir())

  def create(self, meta: dict) -> None:
    """Makes the run directory with its meta.json; on failure leaves nothing behind and raises RunError."""
    if not self.is_fresh():
      raise RunError(f"run directory {self.path} already holds a run; pass --resume {self.path} to continue it "
                     "or choose another --run-dir")
    self._made_dir = not self.path.exists()
    try:
      self.path.mkdir(parents=True, exist_ok=True)
      self.write_meta(meta)
    except OSError as e:
      self.remove_new()
      where = f" (at {e.filename})" if e.filename and Path(e.filename) != self.path else ""
      raise RunError(f"cannot create the run directory {self.path}: {e.strerror or e}{where}") from None

  def remove_new(self) -> None:
    """Removes what `create` made: the directory, or only its contents if it existed (empty) before."""
    if getattr(self, "_made_dir", True):
      shutil.rmtree(self.path, ignore_errors=True)
    elif self.path.is_dir():
      for p in self.path.iterdir():
        if p.is_dir():
          shutil.rmtree(p, ignore_errors=True)
        else:
          p.unlink(missing_ok=True)

  def read_meta(self) -> dict:
    if not self.path.is_dir():
      raise RunError(f"no run directory at {self.path}")
    try:
      return json.loads(self.meta_path.read_text())
    except FileNotFoundError:
      raise RunError(f"{self.path} is not a fetchjax run directory (no {META})") from None
    except json.JSONDecodeError as e:
      raise RunError(f"{self.meta_path} is corrupt ({e})") from None

  def write_meta(self, meta: dict) -> None:
    write_json(self.meta_path, meta)

  def update_meta(self, **fields) -> dict:
    meta = self.read_meta()
    meta.update(fields)
    self.write_meta(meta)
    return meta

  # --- metrics history -----------------------------------------------------------------------------------
  def save_metrics(self, steps: np.ndarray, history: dict[str, np.ndarray]) -> None:
    _atomic_write(self.path / METRICS, lambda p: np.savez(open(p, "wb"), steps=steps, **history))

  def load_metrics(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    try:
      with np.load(self.path / METRICS) as z:
        data = {k: z[k] for k in z.files}
    except FileNotFoundError:
      raise RunError(f"{self.path} has no {METRICS} (the run saved no training metrics)") from None
    except Exception as e:  # zipfile/pickle errors of a truncated file
      raise RunError(f"{self.path / METRICS} is corrupt ({type(e).__name__}: {e})") from None
    return data.pop("steps"), data

  # --- checkpoints ---------------------------------------------------------------------------------------
  def checkpoints(self, warn=None) -> "checkpoints.CheckpointStore":
    kw = {} if warn is None else dict(warn=warn)
    return checkpoints.CheckpointStore(self.path / CKPT_DIR, self.path / SET_ASIDE_DIR, keep=KEEP_CHECKPOINTS, **kw)

  def checkpoint_steps(self) -> list[int]:
    return self.checkpoints().steps()

  def save_checkpoint(self, step: int, state: Any, steps: np.ndarray, history: dict[str, np.ndarray],
                      policy: Any = None) -> None:
    """The state, the metrics history up to it and (if given) the policy alone, in one atomic, checksummed
    checkpoint."""
    buf = io.BytesIO()
    np.savez(buf, steps=steps, **history)
    try:
      self.checkpoints().save(step, state, {METRICS: buf.getvalue()}, policy=policy)
    except OSError as e:
      raise RunError(f"could not write a checkpoint in {self.path / CKPT_DIR}: {checkpoints.io_cause(e)}") from None
    except Exception as e:  # orbax/tensorstore report I/O failures (a full disk) with their own types
      raise RunError(f"could not write a checkpoint in {self.path / CKPT_DIR}: {checkpoints.io_cause(e)}") from None

  def restore_checkpoint(self, target: Any, step: int | None = None, writable: bool = False
                         ) -> tuple[int, Any, tuple[np.ndarray, dict[str, np.ndarray]] | None]:
    """(step, state, (steps, history) saved with it or None) of the newest intact (or the given) checkpoint,
    restored into the structure of `target` (arrays or ShapeDtypeStructs). `writable`: set corrupt ones aside."""
    s, state, extras = self._restore(target, step, writable)
    metrics = None
    if METRICS in extras:
      with np.load(io.BytesIO(extras[METRICS])) as z:
        data = {k: z[k] for k in z.files}
      metrics = data.pop("steps"), data
    return s, state, metrics

  def restore_raw(self, step: int | None = None) -> tuple[int, dict]:
    """The newest intact (or the given) checkpoint as nested dicts of numpy arrays, without knowing its
    structure (for load_policy and eval)."""
    s, state, _ = self._restore(None, step, False)
    return s, state

  def restore_policy(self, step: int | None = None) -> tuple[int, dict | None]:
    """(step, the policy item as nested dicts of numpy arrays, or None if that checkpoint has none) of the newest
    intact (or the given) checkpoint: reads only the small policy item, never the state."""
    s, policy, _ = self._restore(None, step, False, policy_only=True)
    return s, policy

  def _restore(self, target, step, writable, policy_only=False):
    if not (self.path / CKPT_DIR).is_dir() or not self.checkpoint_steps():
      raise RunError(f"{self.path} has no checkpoint ({self.path / CKPT_DIR} is missing or empty)")
    try:
      return self.checkpoints().restore(target, step, writable, policy_only=policy_only)
    except checkpoints.CheckpointError as e:
      raise RunError(str(e)) from None
