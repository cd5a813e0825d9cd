"""Pure goal-env functions against gymnasium-robotics' own implementations."""
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium_robotics.utils.rotations import euler2mat, mat2euler as ref_mat2euler

from fetchjax.envs import goal

ENV_IDS = ["FetchReach-v4", "FetchReachDense-v4", "FetchPush-v4", "FetchPushDense-v4", "FetchPickAndPlace-v4",
           "FetchPickAndPlaceDense-v4", "FetchSlide-v4", "FetchSlideDense-v4"]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reward_and_success_bit_exact(env_id):
  """compute_reward / is_success vs gymnasium-robotics on goal pairs around the 5 cm threshold, eager and
  jitted: the parity suite's check (its one home, with its tolerances: bit-exact, jitted too; jax 0.11's XLA:CPU
  contracted the distance into FMAs, 2 ulp off, until goal_distance put its squares behind a barrier), plus the
  dtypes."""
  from fetchjax import envs
  from parity import envs as parity_envs

  checks = parity_envs.rewards(env_id, n=4096)
  failed = [f"{c.name}: {c.value:g} (bound {c.tol:g})" for c in checks if not c.passed]
  assert len(checks) == 4 and not failed, failed
  env = envs.FetchEnv(envs.TASKS[env_id], 1, physics_backend=None)
  ag, dg = jnp.zeros((2, 3)), jnp.array([[0.05, 0.0, 0.0], [0.0, 0.2, 0.0]])
  assert env.compute_reward(ag, dg, {}).dtype == env.is_success(ag, dg).dtype == jnp.float32


def test_vector_target_offset_shifts_the_goal_box():
  """Slide's target_offset (0.4, 0, 0): the goal box moves 0.4 m along x; the z offset is overwritten by the table
  height, as `_sample_goal` does; a scalar 0.0 (Reach/Push) leaves the draw unchanged, bit for bit."""
  import jax

  key, g0 = jax.random.PRNGKey(3), jnp.array([1.0, 0.75, 0.4])
  kw = dict(has_object=True, target_range=0.3, height_offset=0.42)
  base = goal.sample_goal(key, g0, **kw)
  shifted = goal.sample_goal(key, g0, target_offset=(0.4, 0.0, 0.0), **kw)
  np.testing.assert_allclose(np.asarray(shifted - base), [0.4, 0.0, 0.0], atol=1e-6)
  assert float(shifted[2]) == np.float32(0.42)
  np.testing.assert_array_equal(np.asarray(goal.sample_goal(key, g0, target_offset=0.0, **kw)), np.asarray(base))


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
