"""The off-policy loop SAC and TD3 share (fetchjax.agents.offpolicy): warm-up, when gradient steps start,
train_freq / gradient_steps, chunked runs = one run, jit(vmap) over seeds."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import fetchjax  # noqa: F401
import jax
import jax.numpy as jnp

import fetchjax.envs as envs
from fetchjax.agents import her, offpolicy, sac

SMALL = dict(buffer_size=2_000, batch_size=32, hidden_sizes=(16, 16))  # on reach2
SPEC = her.state_spec(10)  # FetchReach's goal dict


@pytest.fixture(scope="module")
def reach2():
  return envs.make("FetchReach-v4", num_envs=2, backend="cpu")


def test_warmup_random_actions_and_when_training_starts(reach2):
  """Uniform actions while num_timesteps < learning_starts, then the policy; gradient steps once
  num_timesteps > learning_starts (and an episode is complete: see test_td3_smoke); run in two chunks."""
  cfg = sac.SACConfig(**SMALL, learning_starts=120, her=True)
  learner = sac.make_learner(cfg, SPEC, 4)
  learner = dataclasses.replace(learner, explore=lambda ts, obs, key: jnp.full((obs["observation"].shape[0], 4), 0.5))
  init, run = offpolicy.make_offpolicy_runner(cfg, reach2, learner)
  run1 = jax.jit(run, static_argnums=1)
  r0 = init(jax.random.PRNGKey(0))
  r1, m1 = run1(r0, 1)
  # no gradient step in the first 50 vectorised steps (num_timesteps <= 100 < 120): weights untouched
  assert int(m1["n_updates"][0]) == 0 and np.isnan(float(m1["critic_loss"][0]))
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), r0.train_state, r1.train_state.replace(
      key=r0.train_state.key, step=r0.train_state.step, num_timesteps=r0.train_state.num_timesteps)))
  r2, m2 = run1(r1, 1)
  # vectorised step k (1-based) has num_timesteps 2k after it; warm-up while 2(k-1) < 120: k <= 60
  acts = np.asarray(r2.buffer.action[:4])  # [episodes (2 blocks of 2 envs), 50, 4]
  steps = np.concatenate([acts[0:2], acts[2:4]], axis=1)  # per env: vectorised steps 1..100
  random_part, policy_part = steps[:, :60], steps[:, 60:]
  assert np.all(policy_part == 0.5)
  assert np.all(np.abs(random_part) <= 1) and abs(random_part.mean()) < 0.1 and np.all(random_part != 0.5)
  assert abs(random_part.std() - 1 / math.sqrt(3)) < 0.05  # U(-1, 1)
  # gradient steps at k = 61..100 (num_timesteps 122 > 120)
  assert int(m2["n_updates"][0]) == 40 and int(m2["train_calls"][0]) == 40
  np.testing.assert_array_equal([int(m1["timesteps"][0]), int(m2["timesteps"][0])], [100, 200])
  assert np.isfinite(float(m2["critic_loss"][0])) and np.isfinite(float(m2["ent_coef_loss"][0]))
  assert not jnp.allclose(r2.train_state.actor_params["params"]["mu"]["kernel"],
                          r0.train_state.actor_params["params"]["mu"]["kernel"])
  assert int(r2.train_state.step) == 2 and int(r2.train_state.num_timesteps) == 200
  # the iteration's episode metrics are those of the 2 episodes it completed (buffer slots 2, 3): the return is
  # the stored rewards' sum, success is is_success of the last transition (d < 0.05 at the final achieved goal)
  ep_ret = np.asarray(r2.buffer.reward[2:4]).sum(1)
  final_success = np.asarray(reach2.is_success(r2.buffer.achieved_goal[2:4, -1], r2.buffer.desired_goal[2:4]))
  assert float(m2["ep_rew_mean"][0]) == pytest.approx(ep_ret.mean(), abs=1e-5)
  assert float(m2["success_rate"][0]) == pytest.approx(final_success.mean())
  assert float(m1["ep_rew_mean"][0]) == pytest.approx(np.asarray(r2.buffer.reward[0:2]).sum(1).mean(), abs=1e-5)
  # two chunks == one run of 2 iterations, bit for bit (what checkpoint/resume relies on)
  r2b, m2b = jax.jit(run, static_argnums=1)(r0, 2)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), r2, r2b)), "chunked run differs"
  np.testing.assert_array_equal(np.asarray(m2b["critic_loss"]), [np.nan, np.asarray(m2["critic_loss"][0])])


def test_jit_vmap_two_seeds(reach2):
  """jit(vmap) over 2 seeds (no QR in the init, so no XLA:CPU stall); seeds are independent."""
  cfg = sac.SACConfig(**SMALL, learning_starts=50, gradient_steps=2, train_freq=2)
  init, run = sac.make_runner(cfg, reach2)
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  r = jax.jit(jax.vmap(init))(keys)
  v_run = jax.jit(jax.vmap(run, in_axes=(0, None)), static_argnums=1)
  r1, m1 = v_run(r, 1)
  r2, m2 = v_run(r1, 1)
  assert m2["success_rate"].shape == (2, 1) and m2["critic_loss"].shape == (2, 1)
  # train_freq 2: 2 gradient steps after even vectorised steps with num_timesteps > 50 and an episode stored
  np.testing.assert_array_equal(np.asarray(m1["n_updates"]), [[2], [2]])
  np.testing.assert_array_equal(np.asarray(m2["n_updates"]), [[52], [52]])
  assert np.all(np.isfinite(np.asarray(m2["critic_loss"])))
  p = r2.train_state.actor_params["params"]["mu"]["kernel"]
  assert not jnp.allclose(p[0], p[1])  # independent seeds
  # the vmapped init is the per-seed init (sequential_vmap: one seed at a time)
  one = init(keys[1])
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a[1] == b)), r.train_state.critic_params,
                                   one.train_state.critic_params))
