"""MJX backend (edited model, float32) vs CPU gymnasium-robotics (stock model, float64).

Each case compiles the MJX step once (~45 s on a 2-core CPU).
"""
import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from fetchjax import envs
from fetchjax.envs import scene
from fetchjax.envs.cpu_backend import _HostSim
from tests.conftest import task_params


def _rollout(ref, env, actions):
  s = env.reset_to(*task_params(ref))
  step = jax.jit(env.step)
  ours, theirs = [], []
  for a in actions:
    o, *_ = ref.step(a)
    s = step(s, jnp.asarray(a[None]))
    ours.append(np.asarray(s.info["final_obs"]["observation"][0], np.float64))
    theirs.append(o["observation"])
  return np.array(ours), np.array(theirs)


def test_edited_model_is_the_stock_model_in_c_mujoco():
  """The MJX edits (contact set, margins, foot spheres, solver caps) change nothing in C MuJoCo for Reach."""
  task = envs.TASKS["FetchReach-v4"]
  stock, reset = scene.stock_model(task)
  edited = scene.edited_model(task, "fast")
  rng = np.random.default_rng(1)
  acts = rng.uniform(-1, 1, (50, 4)).astype(np.float32)
  xy, mask = np.zeros((1, 2)), np.zeros(1, bool)
  sims = [_HostSim(task, m, reset, 1) for m in (stock, edited)]
  states = [h.reset(xy)[0] for h in sims]
  for a in acts:
    outs = []
    for k, h in enumerate(sims):
      states[k], _, _, obs, _ = h.step(states[k], a[None], mask, xy)
      outs.append(obs)
    np.testing.assert_array_equal(outs[0], outs[1])
  n_feet = len(scene._base_floor_contacts(task))  # C's base-floor contacts at reset: 3 (mujoco 3.11), 4 (3.17)
  assert n_feet >= 3 and edited.ngeom == stock.ngeom + n_feet + 1  # base feet + palm proxy
  foot = mujoco.mj_name2id(edited, mujoco.mjtObj.mjOBJ_GEOM, scene.BASE_FOOT_PREFIX + "0")
  assert edited.geom_margin[foot] == pytest.approx(0.001)


def test_reach_trajectory_parity(gym_make):
  ref = gym_make("FetchReach-v4")
  ref.reset(seed=11)
  env = envs.make("FetchReach-v4", num_envs=1, backend="mjx")
  acts = np.random.default_rng(0).uniform(-1, 1, (50, 4)).astype(np.float32)
  ours, theirs = _rollout(ref, env, acts)
  err = np.linalg.norm(ours[:, :3] - theirs[:, :3], axis=1)
  print("Reach MJX grip error at steps 1/10/50:", err[0], err[9], err[49])
  assert err[49] <= 1e-4 and err.max() <= 1e-4
  # gripper moved far: the test is not trivially passing on a still arm
  assert np.linalg.norm(theirs[-1, :3] - theirs[0, :3]) > 0.05


def test_push_gripper_parity_before_object_contact(gym_make):
  ref = gym_make("FetchPush-v4")
  ref.reset(seed=2)
  env = envs.make("FetchPush-v4", num_envs=1, backend="mjx")
  acts = np.random.default_rng(3).uniform(-1, 1, (20, 4)).astype(np.float32)
  acts[:, 2] = np.abs(acts[:, 2])  # keep away from the block: upward drift
  ours, theirs = _rollout(ref, env, acts)
  grip_err = np.linalg.norm(ours[:, :3] - theirs[:, :3], axis=1)
  obj_err = np.linalg.norm(ours[:, 3:6] - theirs[:, 3:6], axis=1)
  print("Push MJX grip error max", grip_err.max(), "object error max", obj_err.max())
  # The fingers start 3 mm inside the table (stock model), and MJX's box-box collider places those contact
  # points differently from C's: a ~0.9-1.1 mm offset appears at step 1 and stays flat. The 1e-3
  # target is met on some seeds, not all (docs/PHYSICS.md); this bound guards against regressions.
  assert grip_err.max() <= 1.5e-3
  assert np.ptp(grip_err[1:]) <= 3e-4  # no drift after the first step
  assert obj_err.max() <= 1e-3  # block at rest on the table


def test_jdotv_term_matters():
  """Without the J̇·v correction MJX drifts from C by centimetres (mjx_port_notes.md §6)."""
  env_on = envs.make("FetchReach-v4", num_envs=1, backend="mjx", jdotv=True)
  env_off = envs.make("FetchReach-v4", num_envs=1, backend="mjx", jdotv=False)
  a = jnp.array([[1.0, 0.5, -0.3, 0.0]])
  outs = []
  for env in (env_on, env_off):
    s = env.reset(jax.random.PRNGKey(0))
    s = jax.jit(lambda s: jax.lax.fori_loop(0, 5, lambda i, x: env.step(x, a), s))(s)
    outs.append(np.asarray(s.obs["observation"][0, :3]))
  assert np.linalg.norm(outs[0] - outs[1]) > 1e-4


@pytest.mark.parametrize("physics", ["fast", "exact"])
@pytest.mark.parametrize("xy,goal,tol", [
    ((1.25, 0.62), (1.40, 0.85), 0.0),
    # here the stock gripper_link mesh comes within its 1 mm margin of the block at step 13; MJX has no mesh
    # margins, and the palm box proxy differs from the mesh there (measured: 5.4 mm, docs/PHYSICS.md)
    ((1.45, 0.80), (1.30, 0.65), 1e-2),
])
def test_edited_push_model_vs_stock_in_c_during_contact(physics, xy, goal, tol):
  """Scripted pushes (gripper, block, table in contact): the edited model with the solver caps of either
  profile reproduces the stock C trajectory (exactly while the palm stays clear of the block)."""
  from tests.test_parity_cpu import push_script
  task = envs.TASKS["FetchPush-v4"]
  stock, reset = scene.stock_model(task)
  edited = scene.edited_model(task, physics)
  xy, goal = np.array([xy]), np.array([*goal, reset.height_offset])
  sims = [_HostSim(task, m, reset, 1) for m in (stock, edited)]
  outs = [h.reset(xy) for h in sims]
  states, obs = [o[0] for o in outs], [o[1][0] for o in outs]
  for _ in range(50):
    for k, h in enumerate(sims):
      a = np.asarray(push_script(obs[k].astype(np.float64), goal), np.float32)
      states[k], _, _, o, _ = h.step(states[k], a[None], np.zeros(1, bool), xy)
      obs[k] = o[0]
    np.testing.assert_allclose(obs[0], obs[1], rtol=0, atol=tol)
  assert np.linalg.norm(obs[0][3:5] - xy[0]) > 0.1, "the script must actually push the block"
