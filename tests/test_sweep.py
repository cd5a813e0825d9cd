"""Sweeps in one program (fetchjax/sweep.py): grid points x seeds in one jit(vmap(vmap)), each point computing what
a separate run with its values computes (to float rounding), and one-line errors for what cannot be swept."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from fetchjax import agents, envs, sweep

PPO, SAC = agents.get("ppo"), agents.get("sac")


def test_points_and_what_cannot_be_swept():
  pts = sweep.points({"learning_rate": [1e-4, 3e-4], "gamma": [0.95, 0.98, 0.99]})
  assert len(pts) == 6 and pts[0] == {"learning_rate": 1e-4, "gamma": 0.95} and pts[-1]["gamma"] == 0.99
  stacked = sweep.stack(pts)
  assert stacked["learning_rate"].shape == (6,) and stacked["gamma"].dtype == np.float32
  assert sweep.stack([{"learning_starts": 100}, {"learning_starts": 500}])["learning_starts"].dtype == np.int32
  cfg = SAC.preset("book_her")
  for grid, message in (({"hidden_sizes": [(64, 64), (256, 256)]}, "hidden_sizes cannot vary inside one program"),
                        ({"n_sampled_goal": [4, 8]}, "n_sampled_goal cannot vary"),
                        ({"ent_coef": [0.05, "auto"]}, "sweep 'auto' separately"),
                        ({"gamma": [0.95, 1.5]}, r"gamma must be in \[0, 1\]"),
                        ({"lr": [1e-3]}, "unknown SAC config field 'lr'")):
    with pytest.raises(ValueError, match=message):
      sweep.check_points(SAC, cfg, sweep.points(grid))
  with pytest.raises(ValueError, match="at least one"):
    sweep.points({})


def _sweep_vs_runs(algo, config, env, grid, n_updates, seeds=(0, 1)):
  pts = sweep.points(grid)
  init, run = sweep.make_sweep(algo, config, env, pts)
  hp = sweep.stack(pts)
  keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in seeds])
  runners = jax.jit(jax.vmap(jax.vmap(init, (None, 0)), (0, None)))(hp, keys)
  _, swept = jax.jit(jax.vmap(jax.vmap(lambda h, r: run(h, r, n_updates), (None, 0)), (0, 0)))(hp, runners)
  for i, p in enumerate(pts):  # each point against its own separate run
    one = dataclasses.replace(config, **p)
    a_init, a_run = algo.make_runner(one, env)
    _, alone = jax.jit(jax.vmap(lambda k: a_run(a_init(k), n_updates)))(keys)
    for k in ("ep_rew_mean", "success_rate", *[m for m in alone if "loss" in m]):
      np.testing.assert_allclose(np.asarray(swept[k][i]), np.asarray(alone[k]), rtol=2e-4, atol=2e-5,
                                 err_msg=f"{k} at {p}")
  return swept


def test_ppo_sweep_points_match_separate_runs():
  cfg = PPO.preset("book", n_steps=64, batch_size=128, n_epochs=2, total_timesteps=3 * 256)
  env = envs.make("FetchReachDense-v4", num_envs=4, backend="cpu")
  m = _sweep_vs_runs(PPO, cfg, env, {"learning_rate": [3e-4, 3e-3], "clip_range": [0.1, 0.3]}, 3)
  assert m["value_loss"].shape == (4, 2, 3)
  # the points really differ (the sweep did not train one setting four times)
  assert not np.allclose(np.asarray(m["value_loss"][0]), np.asarray(m["value_loss"][2]))


def test_sac_her_sweep_points_match_separate_runs():
  cfg = SAC.preset("book_her", buffer_size=1_000, batch_size=32, hidden_sizes=(16, 16), learning_starts=100,
                   ent_coef=0.05, total_timesteps=3 * 100)
  env = envs.make("FetchReach-v4", num_envs=2, backend="cpu")
  m = _sweep_vs_runs(SAC, cfg, env, {"ent_coef": [0.05, 0.2], "gamma": [0.95, 0.98]}, 3)
  assert m["critic_loss"].shape == (4, 2, 3)
  np.testing.assert_allclose(np.asarray(m["ent_coef"][:, :, -1]),
                             np.array([[0.05, 0.05], [0.05, 0.05], [0.2, 0.2], [0.2, 0.2]]), rtol=1e-6)
