"""The functional batched API: shapes, dtypes, jit/vmap/scan, auto-reset, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fetchjax import envs


# The API contract holds on every backend; mjx is covered by test_mjx_parity.py and the CLI tests (its programs
# compile for ~1 min on a CPU), warp (MJX-Warp on the stock model) runs here at small sizes.
API_BACKENDS = ("cpu", "warp")


@pytest.mark.parametrize("backend", API_BACKENDS)
@pytest.mark.parametrize("env_id,n_obs", [("FetchReach-v4", 10), ("FetchPushDense-v4", 25),
                                          ("FetchPickAndPlace-v4", 25), ("FetchSlideDense-v4", 25)])
def test_layout_and_dtypes(env_id, n_obs, backend):
  env = envs.make(env_id, num_envs=3, backend=backend)
  s = jax.jit(env.reset)(jax.random.PRNGKey(0))
  assert env.observation_size == {"observation": n_obs, "achieved_goal": 3, "desired_goal": 3}
  assert s.obs["observation"].shape == (3, n_obs)
  for k in ("achieved_goal", "desired_goal"):
    assert s.obs[k].shape == (3, 3) and s.obs[k].dtype == jnp.float32
  obs = np.asarray(s.obs["observation"])
  if n_obs == 10:  # Reach: achieved goal = grip position
    np.testing.assert_array_equal(obs[:, :3], np.asarray(s.obs["achieved_goal"]))
  else:  # Push: achieved goal = object position
    np.testing.assert_array_equal(obs[:, 3:6], np.asarray(s.obs["achieved_goal"]))
    np.testing.assert_allclose(obs[:, 6:9], obs[:, 3:6] - obs[:, :3], atol=1e-6)
  s = jax.jit(env.step)(s, jnp.zeros((3, 4)))
  assert s.reward.shape == (3,) and s.done.shape == (3,)
  assert s.reward.dtype == jnp.float32
  if env.task.block_gripper:
    np.testing.assert_array_equal(np.asarray(s.obs["observation"])[:, 3:5] if n_obs == 10 else
                                  np.asarray(s.obs["observation"])[:, 9:11], 0.0)  # blocked fingers


@pytest.mark.parametrize("backend", API_BACKENDS)
def test_scan_autoreset_draws_fresh_goals(backend):
  env = envs.make("FetchReach-v4", num_envs=4, backend=backend)
  s0 = env.reset(jax.random.PRNGKey(1))

  def body(s, _):
    s = env.step(s, jnp.ones((4, 4)) * 0.3)
    return s, (s.done, s.obs["desired_goal"], s.info["final_obs"]["desired_goal"], s.reward,
               s.obs["achieved_goal"], s.info["final_obs"]["achieved_goal"])

  s, (done, goals, final_goals, rewards, ag, final_ag) = jax.jit(
      lambda s: jax.lax.scan(body, s, None, length=120))(s0)
  done = np.asarray(done)
  assert done.sum(0).tolist() == [2, 2, 2, 2] and np.all(done[49]) and np.all(done[99])
  goals = np.asarray(goals)
  # the goal is constant within an episode and new after each truncation
  np.testing.assert_array_equal(goals[0], goals[48])
  assert np.all(np.abs(goals[49] - goals[48]).max(-1) > 1e-4)
  assert np.all(np.abs(goals[99] - goals[49]).max(-1) > 1e-4)
  # the transition that truncates is scored against the goal of the episode it ends
  np.testing.assert_array_equal(np.asarray(final_goals)[49], goals[48])
  assert int(s.info["steps"][0]) == 20
  # the obs returned at truncation is a reset obs: the gripper back at its reset position (Reach resets to one
  # physics state, so bit for bit the first reset's), while the truncated transition's own last obs is not
  ag, final_ag, ag0 = np.asarray(ag), np.asarray(final_ag), np.asarray(s0.obs["achieved_goal"])
  np.testing.assert_allclose(ag0, np.broadcast_to(np.asarray(env._grip0), ag0.shape), atol=1e-5)
  for t in (49, 99):
    np.testing.assert_array_equal(ag[t], ag0)
    assert np.all(np.linalg.norm(final_ag[t] - ag0, axis=-1) > 0.05)  # 50 steps of 0.3 moved the gripper
  np.testing.assert_array_equal(final_ag[:49], ag[:49])  # no reset in between: the step's obs is final_obs


@pytest.mark.parametrize("backend", API_BACKENDS)
def test_vmap_over_seeds(backend):
  env = envs.make("FetchReach-v4", num_envs=2, backend=backend)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  s = jax.jit(jax.vmap(env.reset))(keys)
  assert s.obs["observation"].shape == (3, 2, 10)
  s = jax.jit(jax.vmap(env.step))(s, jnp.zeros((3, 2, 4)))
  assert s.obs["observation"].shape == (3, 2, 10)
  g = np.asarray(s.obs["desired_goal"]).reshape(6, 3)
  assert len(np.unique(g[:, 0])) == 6


@pytest.mark.parametrize("backend", API_BACKENDS)
def test_actions_are_clipped(backend):
  env = envs.make("FetchReach-v4", num_envs=1, backend=backend)
  s = env.reset(jax.random.PRNGKey(0))
  a = env.step(s, jnp.array([[5.0, -7.0, 3.0, 2.0]]))
  b = env.step(s, jnp.array([[1.0, -1.0, 1.0, 1.0]]))
  np.testing.assert_array_equal(np.asarray(a.obs["observation"]), np.asarray(b.obs["observation"]))


@pytest.mark.parametrize("kwargs,msg", [
    (dict(env_id="FetchSlide-v9"), "unknown env id"),
    (dict(env_id="FetchReach-v4", num_envs=0), "num_envs"),
    (dict(env_id="FetchReach-v4", num_envs=2.5), "num_envs"),
    (dict(env_id="FetchReach-v4", backend="tpu9"), "unknown backend"),
    (dict(env_id="FetchReach-v4", backend="mjx", physics="turbo"), "physics profile"),
    (dict(env_id="FetchReach-v4", backend="warp", physics="turbo"), "physics profile"),
])
def test_bad_arguments_raise_clear_errors(kwargs, msg):
  with pytest.raises(ValueError, match=msg):
    envs.make(**kwargs)


@pytest.mark.parametrize("backend", API_BACKENDS)
def test_bad_action_shape(backend):
  env = envs.make("FetchReach-v4", num_envs=1, backend=backend)
  s = env.reset(jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="4 components"):
    env.step(s, jnp.zeros((1, 3)))


def test_list_envs():
  assert envs.list_envs() == ["FetchPickAndPlace-v4", "FetchPickAndPlaceDense-v4", "FetchPush-v4", "FetchPushDense-v4",
                              "FetchReach-v4", "FetchReachDense-v4", "FetchSlide-v4", "FetchSlideDense-v4"]


def test_mjx_batches_are_chunked_on_cpu():
  """On XLA:CPU the MJX backend maps chunks of <= CPU_CHUNK envs (one vmap over 200 Push envs hung): any batch
  size works and keeps the env order."""
  from fetchjax.envs import mjx_backend

  phys = envs.make("FetchReach-v4", num_envs=1, backend="mjx").backend
  for n in (3, 128, 200, 256, 131):
    x = jnp.arange(n, dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(phys._batched(lambda v: v * 2.0, x)), 2.0 * np.arange(n))
  assert mjx_backend.CPU_CHUNK == 128


@pytest.mark.parametrize("backend", ("cpu", "mjx", "warp"))
def test_backend_protocol(backend):
  """Outside fetchjax/envs/ a backend is used only through `envs.backend.PhysicsBackend`: its state is opaque,
  read through snapshot/replay (rendering) and observe_states (parity), timed through physics_step."""
  from fetchjax.envs.backend import PhysicsBackend, Replay

  env = envs.make("FetchReach-v4", num_envs=2, backend=backend)
  be = env.backend
  assert isinstance(be, PhysicsBackend) and be.name == backend == env.backend_name and be.render is None
  s = jax.jit(env.reset)(jax.random.PRNGKey(0))
  s = jax.jit(env.step)(s, jnp.full((2, 4), 0.5))

  # snapshot (in a program) -> replay (host): qpos whose kinematics put the grip where the observation says
  import mujoco

  from fetchjax.envs import cpu_backend, scene

  m, _ = scene.stock_model(env.task)
  rep = be.replay(jax.jit(lambda ps: be.snapshot(ps, 1))(s.pipeline_state))
  assert isinstance(rep, Replay) and rep.qpos.shape == (1, m.nq) and rep.qpos.dtype == np.float64
  assert (rep.mocap_pos is None) == (backend != "cpu")
  d = mujoco.MjData(m)
  d.qpos[:] = rep.qpos[0]
  mujoco.mj_kinematics(m, d)
  grip = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "robot0:grip")
  np.testing.assert_allclose(d.site_xpos[grip], np.asarray(s.obs["observation"])[0, :3], atol=2e-6)

  # observe_states of C MuJoCo's state (the cpu env's, i.e. gymnasium-robotics') gives that env's observation
  c_env = envs.make("FetchReach-v4", num_envs=2, backend="cpu")
  c = jax.jit(c_env.step)(c_env.reset(jax.random.PRNGKey(3)), jnp.full((2, 4), 0.7))
  c_state = c_env.backend.physics_state(c.pipeline_state)
  qpos, qvel = (cpu_backend.state_part(m, c_state, p) for p in (mujoco.mjtState.mjSTATE_QPOS,
                                                                 mujoco.mjtState.mjSTATE_QVEL))
  obs, ag = jax.jit(be.observe_states)(jnp.asarray(qpos, jnp.float32), jnp.asarray(qvel, jnp.float32))
  # the state passes in float32 (JAX's default); mjx/warp also compute in float32
  np.testing.assert_allclose(np.asarray(obs), np.asarray(c.obs["observation"]), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(ag), np.asarray(obs)[:, :3])

  # physics_step moves the arm as the env step does (which then also zeroes Reach's blocked fingers)
  a = jnp.full((2, 4), -0.4)
  moved = be.replay(be.snapshot(jax.jit(be.physics_step)(s.pipeline_state, a), 2)).qpos
  stepped = be.replay(be.snapshot(jax.jit(env.step)(s, a).pipeline_state, 2)).qpos
  arm = np.setdiff1d(np.arange(m.nq), scene.SceneIds.of(m).finger_qposadr)
  assert np.abs(moved - rep.qpos[:1]).max() > 1e-3
  np.testing.assert_allclose(moved[:, arm], stepped[:, arm], atol=0 if backend == "cpu" else 1e-6)
