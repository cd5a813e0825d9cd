"""The last step of scripts/device_check.sh: reads every stage's output under OUT, writes OUT/summary.json and prints
a short table (throughput per backend and size, fidelity, training). Missing outputs print as "–".

    python scripts/device_check_summary.py OUT [SIZE] [WALL_S]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _fmt(x, spec=",.0f") -> str:
  return "–" if x is None else format(x, spec)


def summarize(out: Path) -> dict:
  s: dict = {"stages": _load(out / "stages.json") or []}
  doc = _load(out / "doctor" / "doctor.json")
  if doc:
    s["doctor"] = {"summary": doc.get("summary"), "device": doc.get("device"), "versions": doc.get("versions"),
                   "warp": next((x for x in doc.get("steps", []) if x["name"] == "warp"), None)}
  s["throughput"] = []
  for name in ("profile_warp", "profile_mjx"):
    prof = _load(out / name / "profile.json")
    if prof:
      s.setdefault("gymnasium", prof.get("gymnasium"))
      s.setdefault("device", prof.get("device"))
      for r in prof.get("envs", []):
        s["throughput"].append({k: r.get(k) for k in ("env", "backend", "num_envs", "env_steps_per_s", "compile_s",
                                                      "error", "warp_capacity")}
                               | {"device_peak_bytes": (r.get("memory") or {}).get("device_peak_bytes")})
  s["fidelity"] = {}
  for name in ("fidelity_warp", "fidelity_mjx"):
    rep = _load(out / name / "parity_report.json")
    if rep:
      s["fidelity"][name] = {"summary": rep["summary"],
                             "checks": [{k: c[k] for k in ("env", "name", "value", "tol", "status")}
                                        for c in rep["checks"] if c["status"] != "skip"]}
  for name in ("ppo", "sac_push"):
    meta = _load(out / name / "meta.json")
    ev = _load(out / name / "eval.json")
    if meta:
      s[name] = {k: meta.get(k) for k in ("algo", "env_id", "backend", "preset", "n_envs", "total_steps", "status",
                                          "compile_time_sec", "training_time_sec", "steps_per_sec")}
      s[name]["eval_success_rate"] = (ev or {}).get("aggregate", {}).get("success_rate")
  return s


def table(s: dict) -> str:
  lines = ["", "=== device check summary ===", f"device: {(s.get('device') or {}).get('kind', '?')}"]
  st = ", ".join(f"{x['stage']} rc={x.get('rc')} {x.get('seconds', 0)}s" + (" TIMEOUT" if x.get("timed_out") else "")
                 + (f" ({x['skipped']})" if x.get("skipped") else "") for x in s["stages"])
  lines.append(f"stages: {st or '–'}")
  if s.get("doctor"):
    lines.append(f"doctor: {s['doctor']['summary']}")
  lines.append(f"{'env':16s} {'backend':7s} {'num_envs':>8s} {'env-steps/s':>12s} {'compile s':>9s}")
  for r in s["throughput"]:
    if r.get("error"):
      lines.append(f"{r['env']:16s} {r['backend']:7s} {r['num_envs']:8d} FAILED: {r['error'][:60]}")
    else:
      lines.append(f"{r['env']:16s} {r['backend']:7s} {r['num_envs']:8d} {_fmt(r['env_steps_per_s']):>12s} "
                   f"{_fmt(r['compile_s'], '.1f'):>9s}")
  for name, f in s["fidelity"].items():
    sm = f["summary"]
    lines.append(f"{name}: {sm['n_passed']} passed, {sm['n_failed']} failed of {sm['n_checks']}")
    for c in f["checks"]:
      if c["status"] == "FAIL" or "step 50" in c["name"] or "success rate" in c["name"] or "until contact" in c["name"]:
        if c["name"].startswith(("warp", "mjx")):
          lines.append(f"  {c['status']:4s} {c['env']:16s} {c['name'][:70]:70s} {_fmt(c['value'], '.2e')}")
  for name in ("ppo", "sac_push"):
    r = s.get(name)
    if r:
      lines.append(f"{name}: {r['algo']} {r['env_id']} backend {r['backend']} {r['n_envs']} envs: {r['status']}, "
                   f"{_fmt(r['steps_per_sec'])} env-steps/s, compile {_fmt(r['compile_time_sec'], '.1f')} s, "
                   f"eval success {_fmt(r['eval_success_rate'], '.2f')}")
  return "\n".join(lines)


def main(argv) -> int:
  out = Path(argv[1])
  s = summarize(out)
  if len(argv) > 2:
    s["size"] = argv[2]
  if len(argv) > 3:
    s["wall_s"] = int(argv[3])
  (out / "summary.json").write_text(json.dumps(s, indent=1, default=str))
  print(table(s) + f"\n(wall {s.get('wall_s', '?')} s; {out / 'summary.json'})")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
