"""C MuJoCo backend vs CPU gymnasium-robotics: same initial task, same actions -> same trajectory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fetchjax import envs
from measured import Recorder
from tests import rollouts
from tests.conftest import task_params


def push_script(obs, goal):
  """A scripted push: go behind the block (opposite the goal), descend, push through it."""
  grip, obj = obs[:3], obs[3:6]
  direction = (goal - obj)[:2] / (np.linalg.norm((goal - obj)[:2]) + 1e-8)
  behind = obj.copy()
  behind[:2] -= direction * 0.06
  if np.linalg.norm((grip - behind)[:2]) > 0.02:
    target = behind + np.array([0, 0, 0.05])  # approach from above
  else:
    target = goal.copy()
    target[:2] += direction * 0.03
    target[2] = obj[2]
  return np.clip(10 * (target - grip), -1, 1).tolist() + [0.0]


@pytest.mark.parametrize("env_id,policy", [("FetchReach-v4", "random"), ("FetchPushDense-v4", "random"),
                                           ("FetchPush-v4", "script"), ("FetchPickAndPlace-v4", "random"),
                                           ("FetchSlideDense-v4", "random")])
def test_cpu_backend_is_bit_exact(gym_make, env_id, policy):
  ref = gym_make(env_id)
  ref.reset(seed=5)
  xy, g = task_params(ref)
  env = envs.make(env_id, num_envs=1, backend="cpu")
  s = env.reset_to(xy, g)
  step = jax.jit(env.step)
  rng = np.random.default_rng(0)
  obs = ref._get_obs()["observation"]
  for t in range(49):
    a = rng.uniform(-1, 1, 4) if policy == "random" else push_script(obs, ref.goal)
    a = np.asarray(a, np.float32)
    o, r, *_ = ref.step(a)
    obs = o["observation"]
    s = step(s, jnp.asarray(a[None]))
    # observations: float32 rounding of the reference's float64 values
    np.testing.assert_allclose(np.asarray(s.obs["observation"][0]), obs, rtol=1e-6, atol=1e-7)
    if env.task.reward_type == "sparse":
      np.testing.assert_array_equal(np.asarray(s.reward[0]), np.float32(r))
    else:  # dense: -distance of the float32 goals, vs float64 upstream
      np.testing.assert_allclose(np.asarray(s.reward[0]), r, rtol=1e-6, atol=1e-7)
  # the physics state itself is the reference's, bit for bit
  phys = env.backend.physics_state(s.pipeline_state)[0]
  nq, nv = ref.model.nq, ref.model.nv
  np.testing.assert_array_equal(phys[1:1 + nq], ref.data.qpos)
  np.testing.assert_array_equal(phys[1 + nq:1 + nq + nv], ref.data.qvel)
  if policy == "script":  # the script really pushed the block
    assert np.linalg.norm(obs[3:5] - xy[0]) > 0.02


def test_threads_do_not_change_results():
  outs = []
  for threads in (1, 2):
    env = envs.make("FetchPush-v4", num_envs=5, backend="cpu", threads=threads)
    s = env.reset(jax.random.PRNGKey(3))
    for t in range(3):
      s = env.step(s, jnp.full((5, 4), 0.7) * (t - 1))
    outs.append(np.asarray(s.obs["observation"]))
  np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("env_id", ["FetchReach-v4", "FetchReachDense-v4", "FetchPush-v4", "FetchPushDense-v4",
                                    "FetchPickAndPlace-v4", "FetchPickAndPlaceDense-v4", "FetchSlide-v4",
                                    "FetchSlideDense-v4"])
def test_multi_episode_rollouts_match_gymnasium(env_id):
  """8 envs x 150 steps of random actions (three auto-resets each, per-env tasks, contact allowed): every
  observation component of every transition, the observation returned at each truncation (the next episode's
  first one, with the task drawn for that env), rewards, success and the final physics state, against 8
  gymnasium-robotics envs driven with the same tasks. Float32 rounding of the same float64 physics only."""
  n, T, seed = 8, 150, 200
  env = envs.make(env_id, num_envs=n, backend="cpu")
  ro = rollouts.run(env, rollouts.random_actions(T, n, seed), rollouts.first_tasks(env_id, n, seed), seed_base=seed)
  scale = rollouts.component_scale(ro.theirs_final["observation"])
  # float32 rounding of float64 values: <= 0.5 ulp, i.e. 6e-8 relative to the component's magnitude
  tol = {c: 1e-7 + 1e-6 * s for c, s in scale.items()}
  rollouts.check(ro, Recorder(f"cpu rollout {env_id}"), tol, reset_tol=1e-6, goal_tol=1e-6,
                 sparse=env.task.reward_type == "sparse")
  # the physics after three auto-resets is the reference's, bit for bit
  np.testing.assert_array_equal(ro.ours_physics, ro.theirs_physics)
  if env.task.has_object:  # random actions push the block in some env: contact is part of this check
    assert ro.block_moved.max() > 0.02, ro.block_moved.max()
