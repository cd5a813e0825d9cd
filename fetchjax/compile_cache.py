"""JAX's persistent compilation cache for fetchjax's command-line tools.

The train/eval programs of the mjx backend take ~1 min to compile on a CPU and 60-90 s on an H200; with the
cache a second run of the same program (same shapes, config, jax/jaxlib version and XLA flags) loads it in
seconds. JAX does not cache programs with host callbacks, so the cpu backend (C MuJoCo via pure_callback)
gains nothing.

Where: `--compile-cache DIR|off` beats $FETCHJAX_COMPILE_CACHE (a directory or "off"), which beats the
per-user default $XDG_CACHE_HOME/fetchjax/jax (~/.cache/fetchjax/jax).
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "FETCHJAX_COMPILE_CACHE"
OFF = ("off", "none", "0", "false", "no")


def resolve(flag: str | None = None, environ=None) -> Path | None:
  """The cache directory to use (None: cache off), from the flag, the environment variable, or the default."""
  environ = os.environ if environ is None else environ
  for value in (flag, environ.get(ENV_VAR)):
    if value is not None and value.strip() != "":
      return None if value.strip().lower() in OFF else Path(value).expanduser().absolute()
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "fetchjax" / "jax"


def enable(directory: Path | None) -> dict:
  """Points JAX's persistent cache at `directory` (None: leaves it off) and returns what meta.json records.

  Programs that compile in under a second are not worth a file; entries of any size are kept."""
  import jax

  if directory is None:
    return {"dir": None, "enabled": False}
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError as e:  # an unwritable cache must not stop a run: compile without it
    return {"dir": str(directory), "enabled": False, "error": f"{e.strerror or e}"}
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return {"dir": str(directory), "enabled": True}
