"""Helpers for parity tests that report what they measure: every compared quantity is recorded with its
tolerance and printed (run pytest with `-s` to see the numbers), then asserted. When the environment variable
FETCHJAX_PARITY_RECORDS names a file, each record is also appended to it as one JSON line: that is how
`python -m parity` puts the SB3 checks into its report."""
from __future__ import annotations

import json
import math
import os

import numpy as np

RECORDS_ENV = "FETCHJAX_PARITY_RECORDS"


class Recorder:
  def __init__(self, tag: str):
    self.tag = tag
    self.errors: dict[str, float] = {}

  def __call__(self, name: str, value, tol: float, at_least: bool = False) -> None:
    """Asserts value <= tol (an error), or value >= tol with `at_least` (e.g. a p-value)."""
    value = float(value)
    self.errors[name] = value
    passed = value >= tol if at_least else value <= tol
    print(f"[{self.tag}] {name}: {value:.3g} ({'min' if at_least else 'tol'} {tol:g})")
    path = os.environ.get(RECORDS_ENV)
    if path:
      with open(path, "a") as fh:
        fh.write(json.dumps(dict(tag=self.tag, name=name, value=value if math.isfinite(value) else None,
                                 tol=float(tol), at_least=at_least, passed=bool(passed))) + "\n")
    assert passed, f"{name}: {value} {'<' if at_least else '>'} {tol}"


def max_abs(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def rel(a, b, floor: float = 1e-6) -> float:
  """max |a - b| relative to max |a| (at least `floor`)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), floor))
