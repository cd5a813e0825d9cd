"""Goal and object samplers: ranges, rejection radius and moments match gymnasium-robotics."""
import jax
import numpy as np
import pytest

from fetchjax import envs

N = 2000


def _jax_samples(env_id):
  env = envs.make(env_id, num_envs=1, backend="cpu")
  xy, g = jax.jit(jax.vmap(env.sample_task))(jax.random.split(jax.random.PRNGKey(0), N))
  return env, np.asarray(xy), np.asarray(g)


def _ref_samples(gym_make, env_id, n=400):
  ref = gym_make(env_id)
  xy, g = [], []
  for seed in range(n):
    ref.reset(seed=seed)
    g.append(ref.goal.copy())
    if ref.has_object:
      xy.append(ref.data.qpos[15:17].copy())
  return ref, np.array(xy), np.array(g)


@pytest.mark.parametrize("env_id", ["FetchReach-v4", "FetchPush-v4"])
def test_goal_distribution(gym_make, env_id):
  env, xy, g = _jax_samples(env_id)
  ref, rxy, rg = _ref_samples(gym_make, env_id)
  g0 = np.asarray(ref.initial_gripper_xpos, np.float32)
  lo, hi = g0 - 0.15, g0 + 0.15
  dims = 3 if not ref.has_object else 2
  assert np.all(g[:, :dims] >= lo[:dims] - 1e-6) and np.all(g[:, :dims] <= hi[:dims] + 1e-6)
  # uniform on the box: mean at the centre (5 sigma of the sample mean), std 0.3/sqrt(12)
  np.testing.assert_allclose(g[:, :dims].mean(0), g0[:dims], atol=5 * 0.0866 / np.sqrt(N))
  np.testing.assert_allclose(g[:, :dims].std(0), 0.3 / np.sqrt(12), rtol=0.08)
  # the reference's samples have the same moments
  np.testing.assert_allclose(g.mean(0), rg.mean(0), atol=5 * 0.0866 / np.sqrt(400))
  if ref.has_object:
    np.testing.assert_allclose(g[:, 2], ref.height_offset, atol=1e-6)
    np.testing.assert_allclose(rg[:, 2], ref.height_offset, atol=0)


def test_object_rejection_sampler(gym_make):
  env, xy, _ = _jax_samples("FetchPush-v4")
  ref, rxy, _ = _ref_samples(gym_make, "FetchPush-v4")
  g0 = np.asarray(ref.initial_gripper_xpos[:2])
  dist, rdist = np.linalg.norm(xy - g0, axis=1), np.linalg.norm(rxy - g0, axis=1)
  assert dist.min() >= 0.1 - 1e-6 and rdist.min() >= 0.1
  assert np.all(np.abs(xy - g0) <= 0.15 + 1e-6)
  # same distribution of distances (uniform square minus a disc): compare quantiles
  np.testing.assert_allclose(np.quantile(dist, [0.25, 0.5, 0.75]), np.quantile(rdist, [0.25, 0.5, 0.75]),
                             atol=0.008)
  # square minus disc: P(accept) = 1 - pi 0.1^2 / 0.3^2; the accepted mass sits symmetric around g0
  np.testing.assert_allclose(xy.mean(0), g0, atol=5 * 0.09 / np.sqrt(N))


def test_reach_initial_distance_matches_reference_stats():
  env, _, g = _jax_samples("FetchReach-v4")
  d = np.linalg.norm(g - np.asarray(env._grip0), axis=1)
  # gymnasium-robotics, measured over 1000 CPU resets: mean 0.143 m, 5th-95th percentile 0.067-0.212 m
  assert abs(d.mean() - 0.143) < 0.005
  np.testing.assert_allclose(np.quantile(d, [0.05, 0.95]), [0.067, 0.212], atol=0.01)
