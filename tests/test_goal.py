"""Pure goal-env functions against gymnasium-robotics' own implementations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium_robotics.utils.rotations import euler2mat, mat2euler as ref_mat2euler

from fetchjax.envs import goal

ENV_IDS = ["FetchReach-v4", "FetchReachDense-v4", "FetchPush-v4", "FetchPushDense-v4"]


def _pairs(n=4096, seed=0):
  rng = np.random.default_rng(seed)
  ag = rng.uniform(1.0, 1.6, (n, 3)).astype(np.float32)
  # distances concentrated around the 5 cm threshold, plus exact-boundary cases
  dg = ag + (rng.normal(size=(n, 3)) * 0.03).astype(np.float32)
  ag[:4] = 0.0
  dg[:4] = np.array([[0.05, 0, 0], [0, 0.05, 0], [0, 0, -0.05], [0.0499, 0, 0]], np.float32)
  return ag, dg


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reward_and_success_bit_exact(gym_make, env_id):
  from fetchjax import envs

  ref = gym_make(env_id)
  env = envs.FetchEnv(envs.TASKS[env_id], 1, physics_backend=None)
  ag, dg = _pairs()
  want_r = ref.compute_reward(ag, dg, {})
  want_s = ref._is_success(ag, dg)
  # eager: bit-exact, rewards and success
  got_r = np.asarray(env.compute_reward(jnp.asarray(ag), jnp.asarray(dg), {}))
  assert got_r.dtype == want_r.dtype
  np.testing.assert_array_equal(got_r, want_r)
  got_s = np.asarray(env.is_success(jnp.asarray(ag), jnp.asarray(dg)))
  assert got_s.dtype == want_s.dtype == np.float32
  np.testing.assert_array_equal(got_s, want_s)
  # jitted: XLA's FMA contraction may move the distance by 1 ulp; predicates stay exact here
  jit_r = np.asarray(jax.jit(env.compute_reward)(ag, dg))
  jit_s = np.asarray(jax.jit(env.is_success)(ag, dg))
  np.testing.assert_array_equal(jit_s, want_s)
  if env.task.reward_type == "sparse":
    np.testing.assert_array_equal(jit_r, want_r)
  else:
    assert np.max(np.abs(jit_r - want_r) / np.spacing(np.abs(want_r))) <= 1.0


def test_boundary_distance_is_zero_reward_but_failure():
  ag, dg = jnp.zeros((1, 3)), jnp.array([[0.05, 0.0, 0.0]])
  assert float(goal.compute_reward(ag, dg, reward_type="sparse")[0]) == 0.0
  assert float(goal.is_success(ag, dg)[0]) == 0.0


def test_compute_reward_rejects_bad_input():
  with pytest.raises(ValueError, match="reward_type"):
    goal.compute_reward(jnp.zeros(3), jnp.zeros(3), reward_type="shaped")
  with pytest.raises(ValueError, match="shapes"):
    goal.goal_distance(jnp.zeros(3), jnp.zeros(2))


def test_mat2euler_matches_reference():
  rng = np.random.default_rng(1)
  eul = rng.uniform(-np.pi, np.pi, (1000, 3))
  eul[:10, 1] = np.pi / 2  # gimbal lock branch
  mats = euler2mat(eul)
  want = ref_mat2euler(mats)
  got64 = np.asarray(goal.mat2euler(jnp.asarray(mats.astype(np.float32))))
  # compare as rotations (angles wrap at ±pi): reconstructed matrices agree
  np.testing.assert_allclose(euler2mat(got64.astype(np.float64)), mats, atol=2e-5)
  ok = np.abs(eul[:, 1]) < 1.5
  np.testing.assert_allclose(got64[ok], want[ok], atol=1e-5)
