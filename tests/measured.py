"""Helpers for parity tests that report what they measure: every compared quantity is recorded with its
tolerance and printed (run pytest with `-s` to see the numbers), then asserted."""
from __future__ import annotations

import numpy as np


class Recorder:
  def __init__(self, tag: str):
    self.tag = tag
    self.errors: dict[str, float] = {}

  def __call__(self, name: str, err, tol: float) -> None:
    self.errors[name] = float(err)
    print(f"[{self.tag}] {name}: {float(err):.3g} (tol {tol:g})")
    assert err <= tol, f"{name}: {err} > {tol}"


def max_abs(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def rel(a, b, floor: float = 1e-6) -> float:
  """max |a - b| relative to max |a| (at least `floor`)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), floor))
