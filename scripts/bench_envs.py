"""Env-steps/s vs num_envs for each Fetch env and backend, beside CPU gymnasium-robotics, in one run.

  python scripts/bench_envs.py --envs FetchReach-v4 FetchPush-v4 --backends cpu mjx \
      --num-envs 1,16,64,256 --out bench_envs.json

An env step = 20 physics substeps + observation + reward (+ auto-reset); random actions; the rollout is a
jitted lax.scan of `--steps` steps, timed after a warm-up call (compile time reported separately).
`python -m fetchjax.profile envs` measures the same rollouts (plus physics-only rates, memory and a plot); this
script keeps the flat JSON of docs/PERFORMANCE.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import fetchjax  # noqa: F401  (XLA flags before JAX starts)
import jax

from fetchjax import envs
from fetchjax.profile import fetchjax_rate, gym_rate  # the measurements live in fetchjax.profile


def _write(path: str, report: dict) -> None:
  with open(path, "w") as f:
    json.dump(report, f, indent=1)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--envs", nargs="+", default=["FetchReach-v4", "FetchPush-v4"])
  p.add_argument("--backends", nargs="+", default=["cpu", "mjx"], choices=["cpu", "mjx"])
  p.add_argument("--num-envs", default="1,16,64,256")
  p.add_argument("--mjx-num-envs", default=None, help="num_envs list for mjx (default: --num-envs)")
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--physics", default="fast", choices=["fast", "exact"])
  p.add_argument("--gym-steps", type=int, default=2000)
  p.add_argument("--out", default="bench_envs.json")
  a = p.parse_args(argv)
  try:
    sizes = [int(x) for x in a.num_envs.split(",")]
    mjx_sizes = [int(x) for x in a.mjx_num_envs.split(",")] if a.mjx_num_envs else sizes
  except ValueError:
    print(f"error: --num-envs must be a comma-separated list of integers, got '{a.num_envs}'", file=sys.stderr)
    return 2
  for e in a.envs:
    if e not in envs.TASKS:
      print(f"error: unknown env '{e}'; available: {', '.join(envs.list_envs())}", file=sys.stderr)
      return 2
  import mujoco
  report = dict(date=datetime.date.today().isoformat(), device=str(jax.devices()[0]),
                jax=jax.__version__, mujoco=mujoco.__version__, python=platform.python_version(),
                cpu_count=os.cpu_count(), results=[], gymnasium={})
  for env_id in a.envs:
    report["gymnasium"][env_id] = g = gym_rate(env_id, a.gym_steps)
    print(f"{env_id:20s} gymnasium-robotics (1 env, 1 thread): {g:9.0f} steps/s", flush=True)
    for backend in a.backends:
      for n in (mjx_sizes if backend == "mjx" else sizes):
        r = fetchjax_rate(env_id, backend, n, a.steps, a.physics)
        r["vs_gymnasium"] = r["env_steps_per_s"] / g
        report["results"].append(r)
        _write(a.out, report)  # after every row: an interrupted run keeps what it measured
        print(f"{env_id:20s} {backend:4s} num_envs={n:6d}: {r['env_steps_per_s']:9.0f} steps/s "
              f"({r['vs_gymnasium']:.2f}x gymnasium), compile {r['compile_s']:.1f} s", flush=True)
  _write(a.out, report)
  print(f"wrote {a.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
