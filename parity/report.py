"""One parity check's result, and the JSON + Markdown report of a suite run."""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
from typing import Iterable


@dataclasses.dataclass(frozen=True)
class Check:
  """A measured quantity against its tolerance. `passed` is `value <= tol` unless `ok` says otherwise (e.g. a
  statistic that must stay inside a band); value NaN never passes. `skipped` carries the reason a check did not
  run (a missing optional dependency, no policy given)."""
  group: str           # "rewards", "trajectories", "scripted", "transfer", "sb3", ...
  name: str
  value: float
  tol: float
  env: str = ""
  unit: str = ""
  detail: str = ""
  ok: bool | None = None
  skipped: str = ""
  info: bool = False   # a measurement reported without a pass/fail bound (the detail says why)

  @property
  def passed(self) -> bool:
    if self.skipped or self.info:
      return True
    if self.ok is not None:
      return bool(self.ok)
    return bool(math.isfinite(self.value) and self.value <= self.tol)

  @property
  def status(self) -> str:
    if self.skipped:
      return "skip"
    return "info" if self.info else ("pass" if self.passed else "FAIL")


def skipped(group: str, name: str, reason: str, env: str = "") -> Check:
  return Check(group, name, math.nan, math.nan, env=env, skipped=reason)


def _num(x):
  return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None  # strict JSON


def versions() -> dict:
  from importlib import metadata

  out = {}
  for pkg in ("fetchjax", "jax", "jaxlib", "mujoco", "mujoco-mjx", "gymnasium", "gymnasium-robotics",
              "stable-baselines3", "torch", "numpy"):
    try:
      out[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      out[pkg] = None
  return out


def write(out_dir: str, checks: Iterable[Check], run: dict) -> tuple[str, str]:
  """Writes parity_report.json and parity_report.md into out_dir; returns their paths."""
  checks = list(checks)
  os.makedirs(out_dir, exist_ok=True)
  n_fail = sum(not c.passed for c in checks)
  summary = dict(n_checks=len(checks), n_passed=sum(c.passed and not c.skipped and not c.info for c in checks),
                 n_failed=n_fail, n_skipped=sum(bool(c.skipped) for c in checks),
                 n_info=sum(bool(c.info) for c in checks), passed=n_fail == 0)
  doc = dict(run, summary=summary, versions=versions(),
             created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             checks=[dict(dataclasses.asdict(c), value=_num(c.value), tol=_num(c.tol), status=c.status,
                          passed=c.passed) for c in checks])
  jpath = os.path.join(out_dir, "parity_report.json")
  with open(jpath, "w") as fh:
    json.dump(doc, fh, indent=2)
  mpath = os.path.join(out_dir, "parity_report.md")
  with open(mpath, "w") as fh:
    fh.write(markdown(doc))
  return jpath, mpath


def _fmt(x) -> str:
  if x is None:
    return "–"
  if x == 0:
    return "0"
  return f"{x:.3g}"


def markdown(doc: dict) -> str:
  s = doc["summary"]
  lines = [f"# fetchjax parity report ({'quick' if doc.get('quick') else 'full'})", "",
           f"{s['n_passed']} passed, {s['n_failed']} failed, {s['n_skipped']} skipped, {s.get('n_info', 0)} "
           f"informational of {s['n_checks']} checks; "
           f"{doc.get('wall_s', 0):.0f} s on {doc.get('device', '?')}, {doc['created_at']}.", "",
           "Command: `" + doc.get("command", "python -m parity") + "`", "",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v), ""]
  groups: dict[str, list] = {}
  for c in doc["checks"]:
    groups.setdefault(c["group"], []).append(c)
  for group, cs in groups.items():
    lines += [f"## {group}", "", "| env | check | measured | tolerance | unit | status | detail |",
              "|---|---|---|---|---|---|---|"]
    for c in cs:
      detail = (c["skipped"] or c["detail"]).replace("|", "/")
      lines.append(f"| {c['env'] or '–'} | {c['name'].replace('|', '/')} | {_fmt(c['value'])} | {_fmt(c['tol'])} | "
                   f"{c['unit']} | {c['status']} | {detail} |")
    lines.append("")
  return "\n".join(lines)
