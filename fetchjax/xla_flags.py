"""The XLA:CPU flags fetchjax sets before JAX starts, decided by the installed jaxlib version.

XLA parses XLA_FLAGS once, when the first backend starts, and aborts the process on a flag it does not know
(jaxlib 0.11.2: `Unknown flag in XLA_FLAGS: --xla_cpu_use_fusion_emitters=false`). So a flag is only ever set
for the jaxlib versions known to have it, and never where the user already chose a value.

Measured on a 2-core x86 CPU (docs/PERFORMANCE.md, "XLA:CPU flags"): with jaxlib 0.10.2's fusion emitters on,
MJX kinematics of 16 Fetch Reach envs takes 475 ms per call instead of 0.37 ms, and the env step compiles in
~300 s instead of ~50 s. jaxlib 0.11 removed the flag (its default CPU pipeline is the fast one).
"""
from __future__ import annotations

import re
import shlex

# (first jaxlib version without the flag, flag): a flag is set for jaxlib < that version.
_CPU_FLAGS: tuple[tuple[tuple[int, int], str], ...] = (
    ((0, 11), "--xla_cpu_use_fusion_emitters=false"),
)


def parse_version(text: str | None) -> tuple[int, ...] | None:
  """"0.10.2" -> (0, 10, 2); "0.11.0.dev20260101" -> (0, 11, 0); None or junk -> None."""
  if not text:
    return None
  m = re.match(r"\s*(\d+(?:\.\d+)*)", str(text))
  return tuple(int(p) for p in m[1].split(".")) if m else None


def cpu_flags_for(jaxlib_version: str | None) -> tuple[str, ...]:
  """The XLA:CPU flags fetchjax wants with this jaxlib; none for an unknown or unparseable version (an
  unknown flag kills the process, a missing one only costs speed)."""
  v = parse_version(jaxlib_version)
  if v is None:
    return ()
  return tuple(flag for first_without, flag in _CPU_FLAGS if v < first_without)


def merged(xla_flags: str, wanted: tuple[str, ...]) -> str:
  """`xla_flags` with each wanted `--name=value` appended unless the user already set `--name`."""
  have = {tok.split("=", 1)[0] for tok in shlex.split(xla_flags or "")}
  add = [f for f in wanted if f.split("=", 1)[0] not in have]
  return " ".join([xla_flags.strip()] + add if xla_flags and xla_flags.strip() else add)


def installed_jaxlib() -> str | None:
  """The jaxlib version from package metadata (cheap: does not import jax)."""
  from importlib import metadata

  try:
    return metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return None


def apply(environ) -> str:
  """Sets environ["XLA_FLAGS"] for the installed jaxlib; returns the value."""
  value = merged(environ.get("XLA_FLAGS", ""), cpu_flags_for(installed_jaxlib()))
  if value:
    environ["XLA_FLAGS"] = value
  return value
