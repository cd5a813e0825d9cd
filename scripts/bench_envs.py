"""Env-steps/s vs num_envs for each Fetch env and backend, beside CPU gymnasium-robotics, in one run.

  python scripts/bench_envs.py --envs FetchReach-v4 FetchPush-v4 --backends cpu mjx \
      --num-envs 1,16,64,256 --out bench_envs.json

An env step = 20 physics substeps + observation + reward (+ auto-reset); random actions; the rollout is a
jitted lax.scan of `--steps` steps, timed after a warm-up call (compile time reported separately).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings

import fetchjax  # noqa: F401  (XLA flags before JAX starts)
import jax
import numpy as np

from fetchjax import envs


def gym_rate(env_id: str, steps: int) -> float:
  import gymnasium as gym
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import gymnasium_robotics
  gym.register_envs(gymnasium_robotics)
  e = gym.make(env_id)
  e.reset(seed=0)
  e.action_space.seed(0)
  t0 = time.perf_counter()
  for _ in range(steps):
    *_, terminated, truncated, _ = e.step(e.action_space.sample())
    if terminated or truncated:
      e.reset()
  return steps / (time.perf_counter() - t0)


def fetchjax_rate(env_id: str, backend: str, n: int, steps: int, physics: str) -> dict:
  env = envs.make(env_id, num_envs=n, backend=backend, physics=physics)

  def rollout(state, key):
    def body(s, k):
      s = env.step(s, jax.random.uniform(k, (n, 4), minval=-1.0, maxval=1.0))
      return s, s.reward
    return jax.lax.scan(body, state, jax.random.split(key, steps))

  rollout = jax.jit(rollout)
  state = jax.jit(env.reset)(jax.random.PRNGKey(0))
  t0 = time.perf_counter()
  jax.block_until_ready(rollout(state, jax.random.PRNGKey(1)))
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(rollout(state, jax.random.PRNGKey(2)))
  run = time.perf_counter() - t0
  return dict(env=env_id, backend=backend, physics=physics, num_envs=n, steps_per_env=steps,
              env_steps_per_s=n * steps / run, compile_s=max(first - run, 0.0))


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
