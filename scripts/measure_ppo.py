"""Train PPO for N vmapped seeds, then evaluate each seed deterministically (100 episodes) in fetchjax.

  python scripts/measure_ppo.py --seeds 1 --total-steps 500000 --preset book --backend cpu

Prints one JSON line: wall-clock (compile included), per-seed eval success and return, last training stats.
A stand-in until `python -m fetchjax.train` / `python -m fetchjax.eval` land (issue 3).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import fetchjax  # noqa: F401  (XLA flags before JAX starts)
import jax
import numpy as np

from fetchjax import agents, envs
from fetchjax.agents import ppo


def evaluate(env, params, obs_rms, cfg, key, episodes: int) -> dict:
  def episode(state):
    def body(s, _):
      s = env.step(s, ppo.policy_action(params, s.obs, cfg, obs_rms))
      return s, (s.reward, s.info["is_success"])
    return jax.lax.scan(body, state, None, env.max_episode_steps)

  _, (rewards, success) = jax.jit(episode)(env.reset(key))
  return dict(success=float(np.asarray(success)[-1].mean()), return_mean=float(np.asarray(rewards).sum(0).mean()),
              episodes=episodes)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--env", default="FetchReachDense-v4", choices=envs.list_envs())
  p.add_argument("--seeds", type=int, default=1)
  p.add_argument("--total-steps", type=int, default=500_000)
  p.add_argument("--preset", default="book", choices=sorted(agents.get("ppo").presets))
  p.add_argument("--backend", default="auto", choices=envs.BACKENDS)
  p.add_argument("--episodes", type=int, default=100)
  a = p.parse_args(argv)
  if a.seeds < 1 or a.total_steps < 1 or a.episodes < 1:
    print("error: --seeds, --total-steps and --episodes must be positive", file=sys.stderr)
    return 2
  algo = agents.get("ppo")
  cfg = algo.preset(a.preset, total_timesteps=a.total_steps)
  t0 = time.time()
  train = jax.jit(jax.vmap(ppo.make_train(cfg, algo.env_preset(a.preset, env_id=a.env, backend=a.backend).make())))
  state, metrics = train(jax.random.split(jax.random.PRNGKey(0), a.seeds))
  jax.block_until_ready(metrics)
  wall = time.time() - t0
  env = envs.make(a.env, num_envs=a.episodes, backend=a.backend)
  evals = [evaluate(env, jax.tree.map(lambda x: x[i], state.params), jax.tree.map(lambda x: x[i], state.obs_rms),
                    cfg, jax.random.PRNGKey(100 + i), a.episodes) for i in range(a.seeds)]
  print(json.dumps(dict(env=a.env, preset=a.preset, seeds=a.seeds, total_steps_per_seed=a.total_steps,
                        device=str(jax.devices()[0]), wall_s_incl_compile=wall, eval=evals,
                        train_success_last=np.asarray(metrics["success_rate"])[:, -1].tolist(),
                        train_ep_rew_mean_last=np.asarray(metrics["ep_rew_mean"])[:, -1].tolist())))
  return 0


if __name__ == "__main__":
  sys.exit(main())
