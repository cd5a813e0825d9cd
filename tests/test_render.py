"""fetchjax.render: plots, state slicing, headless frames and videos.

GL tests skip only when no headless OpenGL backend works here (CI without EGL/OSMesa); with one, they render
small frames to stay fast on software GL.
"""
import os
import subprocess
import sys
import textwrap
import warnings

import imageio.v2 as imageio
import mujoco
import numpy as np
import pytest

from fetchjax import render
from fetchjax.envs import cpu_backend, scene, tasks

ENV = "FetchReach-v4"
SIZE = 96


@pytest.fixture(scope="module")
def gl():
  try:
    return render.gl_backend()
  except RuntimeError as e:
    pytest.skip(f"no headless OpenGL backend: {e}")


def _reset(env_id=ENV):
  return scene.stock_model(tasks.TASKS[env_id])[1]


def test_plot_learning_curve(tmp_path):
  steps = np.arange(1, 11) * 1000
  rng = np.random.default_rng(0)
  success = rng.uniform(size=(3, 10))
  success[1, 4:] = np.nan  # a seed that stopped early
  success[:, 0] = np.nan  # no seed has data: mean is NaN there, without a warning
  path = str(tmp_path / "sub" / "curve.png")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    render.plot_learning_curve(steps, {"success_rate": success, "ep_rew_mean": -rng.uniform(size=(3, 10))},
                               path, "FetchReach-v4 PPO")
  img = imageio.imread(path)
  assert os.path.getsize(path) > 1000
  assert img.ndim == 3 and img.shape[0] >= 200 and img.shape[1] > img.shape[0]  # two panels side by side
  with pytest.raises(ValueError, match="expected"):
    render.plot_learning_curve(steps, {"x": np.zeros((2, 9))}, path, "")


@pytest.mark.parametrize("env_id", ["FetchReach-v4", "FetchPush-v4"])
def test_state_parts_match_mj_setState(env_id):
  m, reset = scene.stock_model(tasks.TASKS[env_id])
  rng = np.random.default_rng(1)
  d = mujoco.MjData(m)
  spec = mujoco.mjtState.mjSTATE_INTEGRATION
  states, want = [], []
  for _ in range(6):
    d.qpos[:] = reset.qpos + rng.normal(size=m.nq) * 0.01
    d.qvel[:] = rng.normal(size=m.nv)
    d.mocap_pos[:] = rng.normal(size=(m.nmocap, 3))
    d.mocap_quat[:] = rng.normal(size=(m.nmocap, 4))
    s = np.empty(mujoco.mj_stateSize(m, spec))
    mujoco.mj_getState(m, d, s, spec)
    states.append(s)
    want.append((d.qpos.copy(), d.mocap_pos.ravel().copy(), d.mocap_quat.ravel().copy()))
  states = np.array(states).reshape(2, 3, -1)
  part = lambda p: cpu_backend.state_part(m, states, p)  # noqa: E731
  qpos, mpos, mquat = (part(mujoco.mjtState.mjSTATE_QPOS), part(mujoco.mjtState.mjSTATE_MOCAP_POS),
                       part(mujoco.mjtState.mjSTATE_MOCAP_QUAT))
  assert qpos.shape == (2, 3, m.nq) and mpos.shape == (2, 3, 3) and mquat.shape == (2, 3, 4)
  np.testing.assert_array_equal(qpos.reshape(6, -1), [w[0] for w in want])
  np.testing.assert_array_equal(mpos.reshape(6, -1), [w[1] for w in want])
  np.testing.assert_array_equal(mquat.reshape(6, -1), [w[2] for w in want])
  with pytest.raises(ValueError, match="mjSTATE_INTEGRATION"):
    cpu_backend.state_part(m, states[..., :-1], mujoco.mjtState.mjSTATE_QPOS)


def test_cpu_backend_states_give_the_observed_grip():
  """End to end: the cpu backend's snapshot -> replay qpos puts the grip where the observation says."""
  import jax
  import jax.numpy as jnp

  from fetchjax import envs

  env = envs.make(ENV, num_envs=2, backend="cpu")
  s = env.reset(jax.random.PRNGKey(0))
  s = env.step(s, jnp.full((2, 4), 0.5))
  qpos = env.backend.replay(env.backend.snapshot(s.pipeline_state, 2)).qpos
  m, _ = scene.stock_model(tasks.TASKS[ENV])
  d = mujoco.MjData(m)
  grip = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "robot0:grip")
  for i in range(2):
    d.qpos[:] = qpos[i]
    mujoco.mj_kinematics(m, d)
    np.testing.assert_allclose(d.site_xpos[grip], np.asarray(s.obs["observation"])[i, :3], atol=1e-6)


def test_smoke_frame_shows_the_scene(gl, tmp_path):
  path = str(tmp_path / "smoke.png")
  mean = render.smoke_frame(ENV, path, SIZE, SIZE)
  img = imageio.imread(path)
  assert img.shape == (SIZE, SIZE, 3)
  assert mean > 20.0, f"black frame with {gl}"
  assert img.std() > 20.0 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # not a uniform picture


def test_goal_marker_and_arm_move_the_picture(gl):
  reset = _reset()
  g0 = reset.initial_gripper_xpos + np.array([0.1, 0.1, 0.0])
  goals = np.stack([g0, g0, g0 + np.array([-0.1, -0.2, 0.1]), g0])
  qpos = np.repeat(reset.qpos[None], 4, 0)
  qpos[3, 6] += 0.5  # a robot joint: the arm moves
  f = render.render_frames(ENV, qpos, goals, SIZE, SIZE)
  assert f.shape == (4, SIZE, SIZE, 3) and f.dtype == np.uint8
  np.testing.assert_array_equal(f[0], f[1])  # deterministic
  goal_moved = np.any(f[0] != f[2], axis=-1).mean()
  assert 0 < goal_moved < 0.05, goal_moved  # only the small marker changed
  assert np.any(f[0] != f[3], axis=-1).mean() > goal_moved


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # reading back spawns ffmpeg (fork+exec)
def test_video_roundtrip(gl, tmp_path):
  reset = _reset()
  qpos = np.repeat(reset.qpos[None], 7, 0)
  qpos[:, 6] += np.linspace(0.0, 0.6, 7)
  frames = render.render_frames(ENV, qpos, reset.initial_gripper_xpos, SIZE, SIZE)
  path = str(tmp_path / "clip.mp4")
  render.write_video(frames, path, fps=25)
  with imageio.get_reader(path) as r:
    back = [f for f in r]
    assert r.get_meta_data()["fps"] == 25
  assert len(back) == 7 and back[0].shape == (SIZE, SIZE, 3)
  assert np.abs(back[3].astype(int) - frames[3]).mean() < 10  # lossy, but the same picture


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # fork+exec of a fresh Python
def test_matches_gymnasium_robotics_render(gl):
  """Same state, goal and mocap: pixel-identical to gymnasium-robotics' own rgb_array render (in a subprocess
  pinned to the same backend, so its renderer cannot bind PyOpenGL to another platform here)."""
  code = textwrap.dedent(f"""
      import os, warnings
      warnings.simplefilter("ignore")
      import gymnasium as gym, gymnasium_robotics, numpy as np
      from fetchjax import render
      gym.register_envs(gymnasium_robotics)
      env = gym.make("FetchPush-v4", render_mode="rgb_array", width=120, height=100).unwrapped
      env.reset(seed=3)
      for _ in range(3):
        env.step(env.action_space.sample())
      ref = env.render()
      mine = render.render_frames("FetchPush-v4", env.data.qpos[None], env.goal, 120, 100,
                                  mocap_pos=env.data.mocap_pos, mocap_quat=env.data.mocap_quat)[0]
      env.close()
      print("RESULT", render.gl_backend(), ref.shape, int(np.abs(ref.astype(int) - mine).max()), flush=True)
      os._exit(0)
  """)
  env = dict(os.environ, MUJOCO_GL=gl, PYOPENGL_PLATFORM=gl)
  r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  line = [s for s in r.stdout.splitlines() if s.startswith("RESULT")]
  assert line, r.stderr[-2000:]
  assert line[0] == f"RESULT {gl} (100, 120, 3) 0"
