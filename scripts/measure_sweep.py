"""Cost of a sweep in one program vs one run: a P-point x S-seed grid (fetchjax.sweep) against the same algorithm,
config and env trained once (one point, one seed, vmapped as the train CLI runs it), both compiled first, then
timed over the same iterations.

    python scripts/measure_sweep.py [--algo sac] [--points 4] [--seeds 2] [--iterations 4] [--backend cpu]

Prints one JSON line: wall seconds of each (median of --repeats), the ratio, and what was run.
"""
from __future__ import annotations

import argparse
import json
import time

import fetchjax  # noqa: F401  (XLA flags before JAX starts)
import jax
import numpy as np

from fetchjax import agents, envs, runs, sweep

GRIDS = {  # 4 points each, the fields the book's sweeps vary
    "sac": {"ent_coef": [0.05, 0.1], "gamma": [0.95, 0.98]},
    "ppo": {"learning_rate": [3e-4, 1e-3], "clip_range": [0.1, 0.2]},
}


def timed(fn, arg, repeats: int) -> float:
  out = fn(arg)
  jax.block_until_ready(out)  # compile + first call
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(arg))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--algo", default="sac", choices=sorted(GRIDS))
  p.add_argument("--points", type=int, default=4, choices=(1, 2, 4))
  p.add_argument("--seeds", type=int, default=2)
  p.add_argument("--iterations", type=int, default=4)
  p.add_argument("--backend", default="cpu", choices=envs.BACKENDS)
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args(argv)
  algo = agents.get(a.algo)
  if a.algo == "sac":
    config = algo.preset("book_her", ent_coef=0.05, learning_starts=0)  # every timed step trains
    env_config = algo.env_preset("book_her", backend=a.backend)
  else:
    config = algo.preset("book")
    env_config = algo.env_preset("book", backend=a.backend)
  env = env_config.make()
  pts = sweep.points(GRIDS[a.algo])[:a.points]
  init, run = sweep.make_sweep(algo, config, env, pts)
  hp = sweep.stack(pts)
  keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in range(a.seeds)])
  runners = jax.jit(jax.vmap(jax.vmap(init, (None, 0)), (0, None)))(hp, keys)
  n = a.iterations
  sweep_fn = jax.jit(jax.vmap(jax.vmap(lambda h, r: run(h, r, n)[1], (None, 0)), (0, 0)))
  sweep_s = timed(lambda r: sweep_fn(hp, r), runners, a.repeats)
  one_init, one_run = algo.make_runner(config, env)  # one seed, vmapped as the train CLI runs it
  one = jax.jit(jax.vmap(one_init))(keys[:1])
  one_fn = jax.jit(jax.vmap(lambda r: one_run(r, n)[1]))
  one_s = timed(one_fn, one, a.repeats)
  runs_n = a.points * a.seeds
  print(json.dumps(dict(algo=a.algo, grid=pts, seeds=a.seeds, runs=runs_n, iterations=n, backend=env.backend_name,
                        num_envs=env.num_envs, env_steps_per_run=n * config.rollout_size(env.num_envs),
                        one_run_s=one_s, sweep_s=sweep_s, ratio=sweep_s / one_s, ratio_if_sequential=runs_n,
                        device=runs.device_info(), versions=runs.versions())))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
