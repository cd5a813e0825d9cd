"""SB3 checks: the Stable-Baselines3 parity tests (GAE, PPO losses/gradients/update, SAC/TD3 losses, log-probs
and updates, HER sampling statistics), run through pytest; every quantity they measure comes back as a Check."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from parity.report import Check, skipped

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("tests/test_sb3_parity.py", "tests/test_sb3_sac_parity.py", "tests/test_sb3_her_parity.py")


class _Outcomes:
  """pytest plugin: the outcome of every test."""

  def __init__(self):
    self.reports = []

  def pytest_runtest_logreport(self, report):
    if report.when == "call" or report.outcome != "passed":
      self.reports.append(report)


def run(say=print) -> list[Check]:
  try:
    import stable_baselines3  # noqa: F401
    import torch  # noqa: F401
  except ImportError as e:
    return [skipped("sb3", "Stable-Baselines3 parity", f"needs the parity extra (pip install -e '.[parity]'): {e}")]
  import pytest

  with tempfile.TemporaryDirectory() as tmp:
    records = Path(tmp) / "records.jsonl"
    old = os.environ.get("FETCHJAX_PARITY_RECORDS")
    os.environ["FETCHJAX_PARITY_RECORDS"] = str(records)
    outcomes = _Outcomes()
    try:
      say(f"  pytest {' '.join(MODULES)}")
      pytest.main(["-q", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(ROOT),
                   *[str(ROOT / m) for m in MODULES]], plugins=[outcomes])
    finally:
      if old is None:
        os.environ.pop("FETCHJAX_PARITY_RECORDS", None)
      else:
        os.environ["FETCHJAX_PARITY_RECORDS"] = old
    lines = records.read_text().splitlines() if records.exists() else []
  out = []
  for line in lines:
    r = json.loads(line)
    value = float("nan") if r["value"] is None else r["value"]
    out.append(Check("sb3", r["name"], value, r["tol"], unit="p-value (min)" if r["at_least"] else "",
                     detail=r["tag"], ok=r["passed"]))
  for rep in outcomes.reports:  # a failing test fails the suite even where it recorded nothing
    if rep.outcome == "failed":
      msg = str(rep.longrepr).strip().splitlines()[-1][:200] if rep.longrepr else ""
      out.append(Check("sb3", f"test {rep.nodeid.split('::', 1)[-1]}", float("nan"), 0.0, detail=msg, ok=False))
  n_pass = sum(r.outcome == "passed" for r in outcomes.reports)
  n_fail = sum(r.outcome == "failed" for r in outcomes.reports)
  out.append(Check("sb3", "SB3 parity tests failed", float(n_fail), 0.0, unit="tests",
                   detail=f"{n_pass} passed, {n_fail} failed, {len(outcomes.reports) - n_pass - n_fail} skipped in "
                   f"{', '.join(MODULES)}", ok=n_fail == 0 and n_pass > 0))
  return out
