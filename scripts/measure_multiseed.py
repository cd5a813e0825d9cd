"""Cost of N vmapped seeds vs 1 seed, measured in one process with interleaved calls (robust to load drift).

  python scripts/measure_multiseed.py --algo ppo --seeds 4 --rounds 5 [--preset book] [--updates-per-call 1]

Builds the CLI's program (`jit(vmap(run))` of the algorithm's `make_runner`) for 1 seed and for N seeds,
compiles both, then alternates calls (1 seed, N seeds, 1 seed, ...) and prints one JSON line with every call's
wall-clock, the median ratio t_N / t_1 and each program's compile time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import fetchjax  # noqa: F401  (XLA flags before JAX starts)
import jax
import numpy as np

from fetchjax import agents, runs


def program(algo, cfg, env, n_seeds: int, updates: int):
  init, run = algo.make_runner(cfg, env)
  keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in range(n_seeds)])
  runner = jax.jit(jax.vmap(init))(keys)
  t0 = time.time()
  step = jax.jit(jax.vmap(lambda r: run(r, updates))).lower(runner).compile()
  return runner, step, time.time() - t0


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--algo", default="ppo")
  p.add_argument("--preset", default="book")
  p.add_argument("--env", default="FetchReachDense-v4")
  p.add_argument("--seeds", type=int, default=4)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--updates-per-call", type=int, default=1)
  a = p.parse_args()
  algo = agents.get(a.algo)
  cfg = algo.preset(a.preset)
  env = algo.env_preset(a.preset, env_id=a.env).make()
  r1, f1, c1 = program(algo, cfg, env, 1, a.updates_per_call)
  rn, fn, cn = program(algo, cfg, env, a.seeds, a.updates_per_call)
  r1, _ = f1(r1)  # warm-up call each
  rn, _ = fn(rn)
  jax.block_until_ready((r1, rn))
  t1, tn = [], []
  for _ in range(a.rounds):
    for f, store, which in ((f1, t1, 1), (fn, tn, a.seeds)):
      t0 = time.time()
      if which == 1:
        r1, m = f(r1)
      else:
        rn, m = f(rn)
      jax.block_until_ready(m)
      store.append(time.time() - t0)
  steps = cfg.rollout_size(env.num_envs) * a.updates_per_call
  print(json.dumps(dict(
      algo=a.algo, preset=a.preset, env=a.env, seeds=a.seeds, env_steps_per_seed_per_call=steps,
      device=runs.device_info(), date=runs.now(), t_one_seed_s=t1, t_n_seeds_s=tn,
      ratio_median=float(np.median(tn) / np.median(t1)), ratio_per_round=[b / x for x, b in zip(t1, tn)],
      compile_one_s=c1, compile_n_s=cn, steps_per_s_one=steps / float(np.median(t1)),
      steps_per_s_n_total=a.seeds * steps / float(np.median(tn)))))
  return 0


if __name__ == "__main__":
  sys.exit(main())
