"""Pixel observations (book ch9): frames rendered inside the env step by the cpu backend (OpenGL in its worker
threads) and the warp backend (MJX-Warp's batch ray tracer), the observation layout, strict pixels, the CLI.

Small frames (16-32 px) keep the CI tests fast; the 84x84 parity numbers and the side-by-side image come from
scripts/pixel_parity.py (docs/PERFORMANCE.md, docs/pixel_parity.png).
"""
import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fetchjax import envs, render
from fetchjax.envs import scene
from fetchjax.envs.pixels import PixelConfig, gl_frames
from fetchjax.envs.tasks import TASKS

PUSH = TASKS["FetchPush-v4"]


def _tasks(env, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), env.num_envs)
  return jax.vmap(env.sample_task)(keys)


def _qpos(env, state):
  return env.backend.replay(env.backend.snapshot(state.pipeline_state, env.num_envs)).qpos


def test_render_model_sees_what_gymnasium_renders():
  """The fixed camera, the headlight-as-a-light and the goal geom reproduce gymnasium's free-camera rgb_array frame
  (render.render_frames, pixel-identical to env.render()) at 84x84: mean |diff| < 0.5 grey levels (measured 0: the
  same frame; at 480x480 one pixel differs by 1), while the view turned by 5 degrees of azimuth differs by > 3 (4.7)."""
  _, reset = scene.stock_model(PUSH)
  goal = reset.initial_gripper_xpos + np.array([0.1, -0.1, 0.0])
  goal[2] = reset.height_offset
  ours = gl_frames(PUSH, PixelConfig(84), reset.qpos[None], goal)[0].astype(int)
  gym = render.render_frames("FetchPush-v4", reset.qpos[None], goal, 84, 84)[0].astype(int)
  off = render.render_frames("FetchPush-v4", reset.qpos[None], goal, 84, 84, camera={"azimuth": 137.0})[0]
  assert np.abs(ours - gym).mean() < 0.5
  assert np.abs(ours - off.astype(int)).mean() > 3  # measured 4.7
  m = scene.render_model(PUSH)
  stock, _ = scene.stock_model(PUSH)
  assert m.ngeom == stock.ngeom + 1 and m.vis.headlight.active == 0


@pytest.fixture(scope="module")
def cpu_pair():
  """A Push cpu env with 48x48 pixels and the same env without (same tasks)."""
  px = envs.make("FetchPush-v4", num_envs=2, backend="cpu", threads=2, pixels=PixelConfig(48))
  plain = envs.make("FetchPush-v4", num_envs=2, backend="cpu", threads=2)
  return px, plain


def test_cpu_pixel_observations(cpu_pair):
  """Keys, shapes and dtypes as the book's wrapper (one frame: the agents stack), proprioception = the 10 robot
  values of the 25-D observation, the same physics as the env without pixels, and each frame exactly the OpenGL
  frame of the env's state and goal."""
  px, plain = cpu_pair
  assert set(px.observation_spec) == {"pixels", "proprioception", "achieved_goal", "desired_goal"}
  assert px.observation_spec["pixels"] == jax.ShapeDtypeStruct((48, 48, 3), jnp.uint8)
  assert px.observation_spec["proprioception"].shape == (10,) and px.hidden_keys == ()
  xy, goals = _tasks(px)
  s, sp = px.reset_to(xy, goals), plain.reset_to(xy, goals)
  step, step_plain = jax.jit(px.step), jax.jit(plain.step)
  a = jnp.array([[1.0, 0.3, -0.2, 1.0], [-0.5, 1.0, 0.0, -1.0]])
  for _ in range(3):
    s, sp = step(s, a), step_plain(sp, a)
  assert s.obs["pixels"].shape == (2, 48, 48, 3) and s.obs["pixels"].dtype == jnp.uint8
  book = [0, 1, 2, 9, 10, 20, 21, 22, 23, 24]  # grip_pos, gripper_state, grip_velp, gripper_vel (algorithms.md §5.1)
  np.testing.assert_array_equal(s.obs["proprioception"], sp.obs["observation"][:, book])
  np.testing.assert_array_equal(s.obs["achieved_goal"], sp.obs["achieved_goal"])
  np.testing.assert_array_equal(s.reward, sp.reward)
  np.testing.assert_array_equal(s.obs["pixels"], gl_frames(PUSH, PixelConfig(48), _qpos(px, s), s.obs["desired_goal"]))
  np.testing.assert_array_equal(s.info["final_obs"]["pixels"], s.obs["pixels"])  # no episode ended


def test_frames_follow_the_block_and_the_goal(cpu_pair):
  """A frame changes when only the block moves, or only the goal; it is identical for an identical state."""
  px, _ = cpu_pair
  xy = jnp.array([[1.15, 0.6], [1.45, 0.95]])  # on the table, clear of the gripper (1.34, 0.75)
  goals = jnp.array([[1.45, 0.55, 0.425], [1.3, 0.5, 0.425]])  # in view (the arm hides the far side)
  f = lambda xy, g: np.asarray(px.reset_to(xy, g).obs["pixels"]).astype(int)  # noqa: E731
  base = f(xy, goals)
  np.testing.assert_array_equal(base, f(xy, goals))
  moved = f(xy + jnp.array([0.0, 0.12]), goals)
  regoal = f(xy, goals + jnp.array([0.0, 0.12, 0.0]))
  for other in (moved, regoal):
    changed = np.abs(other - base).max(-1) > 30
    assert changed.sum(axis=(1, 2)).min() >= 3, changed.sum(axis=(1, 2))


def test_episode_end_frames(cpu_pair):
  """At the 50th step final_obs holds the episode's last frame (its goal), obs the next episode's first frame (the
  fresh goal and object)."""
  px, _ = cpu_pair
  s = px.reset(jax.random.PRNGKey(3))
  step = jax.jit(px.step)
  for _ in range(px.max_episode_steps - 1):
    s = step(s, jnp.zeros((2, 4)))
  before = s
  s = step(s, jnp.zeros((2, 4)))
  assert bool(s.done.all())
  cfg = PixelConfig(48)
  last = px.backend.replay(px.backend.snapshot(before.pipeline_state, 2)).qpos  # zero action: the arm barely moves
  fin = s.info["final_obs"]
  np.testing.assert_array_equal(fin["desired_goal"], before.obs["desired_goal"])
  assert np.abs(fin["pixels"].astype(int) - gl_frames(PUSH, cfg, last, fin["desired_goal"])).mean() < 1.0
  np.testing.assert_array_equal(s.obs["pixels"], gl_frames(PUSH, cfg, _qpos(px, s), s.obs["desired_goal"]))
  assert not np.array_equal(s.obs["pixels"], fin["pixels"])


def test_pixel_settings_are_checked():
  with pytest.raises(ValueError, match="mjx"):
    envs.EnvConfig("FetchPush-v4", backend="mjx", pixels=True)
  with pytest.raises(ValueError, match="mjx"):
    envs.make("FetchPush-v4", 1, backend="mjx", pixels=True)
  with pytest.raises(ValueError, match="strict_pixels needs pixels"):
    envs.EnvConfig(strict_pixels=True)
  with pytest.raises(ValueError, match="image_size"):
    envs.EnvConfig(pixels=True, image_size=4)
  with pytest.raises(ValueError, match="render_mode"):
    envs.EnvConfig(pixels=True, render_mode="bicubic")
  old = {"env_id": "FetchPush-v4", "num_envs": 2, "backend": "cpu", "physics": "fast", "jdotv": True, "threads": None}
  cfg = envs.EnvConfig.from_dict(old)  # a meta.json written before the pixel fields
  assert not cfg.pixels and cfg.pixel_config() is None
  strict = envs.EnvConfig("FetchPush-v4", pixels=True, strict_pixels=True, image_size=32).pixel_config()
  assert strict == PixelConfig(32, "native", True)


def test_resize_mode_is_the_books_pil_path():
  """mode 'resize': 480x480 OpenGL frame -> PIL BILINEAR 84x84 (the book's path)."""
  from PIL import Image

  _, reset = scene.stock_model(PUSH)
  goal = reset.initial_gripper_xpos + np.array([0.05, 0.05, -0.1])
  big = gl_frames(PUSH, PixelConfig(480), reset.qpos[None], goal)[0]
  small = gl_frames(PUSH, PixelConfig(84, "resize"), reset.qpos[None], goal)[0]
  np.testing.assert_array_equal(small, np.asarray(Image.fromarray(big).resize((84, 84), Image.BILINEAR)))


def test_strict_pixels_networks_never_read_achieved_goal():
  """With hide_achieved_goal the SAC networks' outputs do not depend on achieved_goal (which stays in the
  observation for HER); without it they do. A strict env with a config that does not hide it is refused."""
  from fetchjax.agents import offpolicy, sac

  spec = {"pixels": jax.ShapeDtypeStruct((16, 16, 3), jnp.uint8),
          "proprioception": jax.ShapeDtypeStruct((10,), jnp.float32),
          "achieved_goal": jax.ShapeDtypeStruct((3,), jnp.float32),
          "desired_goal": jax.ShapeDtypeStruct((3,), jnp.float32)}
  obs = offpolicy.obs_zeros(spec, 2)
  obs["pixels"] = jax.random.randint(jax.random.PRNGKey(0), (2, 16, 16, 3), 0, 255).astype(jnp.uint8)
  moved = {**obs, "achieved_goal": obs["achieved_goal"] + 0.3}
  for hide in (False, True):
    c = sac.SACConfig(encoder="manipulation", hide_achieved_goal=hide, learning_starts=0, buffer_size=1000)
    actor, critic = sac.networks(c)
    p = actor.init(jax.random.PRNGKey(1), obs)
    q = critic.init(jax.random.PRNGKey(2), obs, jnp.zeros((2, 4)))
    same_pi = np.array_equal(actor.apply(p, obs)[0], actor.apply(p, moved)[0])
    same_q = np.array_equal(critic.apply(q, obs, jnp.zeros((2, 4)))[0], critic.apply(q, moved, jnp.zeros((2, 4)))[0])
    assert same_pi == same_q == hide
  with pytest.raises(ValueError, match="pixel encoder"):
    sac.SACConfig(hide_achieved_goal=True)
  env = envs.make("FetchPush-v4", 2, backend="cpu", threads=1, pixels=PixelConfig(16, strict=True))
  assert env.hidden_keys == ("achieved_goal",) and "achieved_goal" in env.observation_spec
  c = sac.SACConfig(encoder="manipulation", her=True, learning_starts=100, buffer_size=1000, batch_size=8)
  with pytest.raises(ValueError, match="hide_achieved_goal=True"):
    sac.make_runner(c, env)
  sac.make_runner(dataclasses.replace(c, hide_achieved_goal=True), env)


# --- warp: MJX-Warp's batch renderer against the OpenGL reference ------------------------------------------
def warp_and_gl(size, steps, num_envs=2):
  """Frames of a warp pixel env over `steps` jitted steps (reset first) and the OpenGL frames of the same states:
  int arrays [steps + 1, num_envs, S, S, 3]."""
  env = envs.make("FetchPush-v4", num_envs=num_envs, backend="warp", pixels=PixelConfig(size))
  xy, goals = _tasks(env, 5)
  s = env.reset_to(xy, goals)
  step = jax.jit(env.step)
  a = jnp.tile(jnp.array([[0.6, 0.8, -0.6, 1.0], [-0.8, -0.5, 0.3, -1.0]]), (num_envs // 2 + 1, 1))[:num_envs]
  warp, gl = [], []
  for t in range(steps + 1):
    if t:
      s = step(s, a)
    warp.append(np.asarray(s.obs["pixels"]))
    gl.append(gl_frames(PUSH, PixelConfig(size), _qpos(env, s), s.obs["desired_goal"]))
  return np.stack(warp).astype(int), np.stack(gl).astype(int)


def parity_stats(warp, gl):
  """Per-pixel |warp - OpenGL| (max over RGB): the mean, and the share of pixels more than 32 grey levels off."""
  d = np.abs(warp - gl).max(-1)
  return float(d.mean()), float((d > 32).mean())


# Tolerances of a warp frame vs the OpenGL frame of the same state at 84x84 (measured: mean 1.5, 1.3% of pixels
# > 32 off; where they differ: silhouette edges (2x2 rays vs OpenGL's 4x MSAA) and shading, docs/PERFORMANCE.md).
# Beside them, each warp frame must be nearest to its own state's OpenGL frame among all the states rendered
# (other env: other block, goal and arm; other steps), which a wrong camera, a stale frame or a misplaced goal
# marker fails (another state's frame scores mean 3.4-4.2, 3.3-3.9% > 32).
PARITY_MEAN, PARITY_FAR = 2.5, 0.025


def test_warp_frames_match_opengl():
  """Warp frames made inside the jitted step vs OpenGL frames of the same states (84x84, 2 envs, 3 steps)."""
  pytest.importorskip("warp")
  warp, gl = warp_and_gl(84, 3)
  mean, far = parity_stats(warp, gl)
  assert mean < PARITY_MEAN and far < PARITY_FAR, (mean, far)
  w, g = warp.reshape(-1, 84 * 84 * 3), gl.reshape(-1, 84 * 84 * 3)
  dist = np.abs(w[:, None] - g[None]).mean(-1)  # [warp frame, OpenGL frame]
  np.testing.assert_array_equal(dist.argmin(1), np.arange(len(w)))
  assert (np.abs(np.diff(warp, axis=0)).max(-1) > 32).any(axis=(2, 3)).all()  # every step changes every env's frame


# --- the CLI contract with --pixels --------------------------------------------------------------------------
PIXEL_TINY = ["--algo", "sac", "--her", "--env", "FetchPush-v4", "--strict-pixels", "--image-size", "16",
              "--n-envs", "2", "--encoder", "manipulation", "--critic-encoder", "--no-drq",
              "--frame-stack", "2", "--set", "buffer_size=1000", "--set", "batch_size=16",
              "--set", "learning_starts=100", "--set", "hidden_sizes=16,16", "--backend", "cpu", "--threads", "2",
              "--quiet"]


def test_pixel_run_contract(tmp_path, capsys):
  """`train --pixels` (strict, SAC+HER, ManipulationExtractor owned by the critic, 16x16 frames): the run directory
  records the pixel env, pauses and resumes, writes eval.json and the video (the agent's view beside the 480
  camera); `fetchjax.eval` and `load_policy` act on 2-frame stacks of the rendered frames."""
  import json

  import imageio.v2 as imageio

  import fetchjax
  from fetchjax import eval as fj_eval, train as fj_train

  d = tmp_path / "run"
  assert fj_train.main([*PIXEL_TINY, "--total-steps", "200", "--checkpoint-every", "100", "--pause-at", "100",
                        "--eval-episodes", "2", "--video-episodes", "1", "--run-dir", str(d)]) == 0
  meta = json.loads((d / "meta.json").read_text())
  assert meta["status"] == "paused"
  assert meta["env_config"]["pixels"] and meta["env_config"]["strict_pixels"] and meta["env_config"]["image_size"] == 16
  assert meta["config"]["hide_achieved_goal"] is True and meta["config"]["frame_stack"] == 2
  assert fj_train.main(["--resume", str(d), "--quiet", "--eval-episodes", "2", "--video-episodes", "1"]) == 0
  meta = json.loads((d / "meta.json").read_text())
  assert meta["status"] == "finished" and meta["total_steps"] == 200
  ev = json.loads((d / "eval.json").read_text())
  assert ev["checkpoint_steps"] == 200 and ev["aggregate"]["n_episodes"] == 2
  video = next((d / "videos").glob("*.mp4"))
  with warnings.catch_warnings():  # imageio starts ffmpeg (fork + exec, no Python in the child)
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    frames = [f for f in imageio.get_reader(str(video), "ffmpeg")]
  assert len(frames) == 50 and frames[0].shape == (480, 960, 3)  # 16x16 agent view scaled to 480 | 480x480 camera
  assert frames[0][:, :480].std() > 10 and frames[0][:, 480:].std() > 10  # both halves drawn
  assert fj_eval.main(["--run-dir", str(d), "--n-episodes", "2", "--json-out", str(tmp_path / "e.json")]) == 0
  assert json.loads((tmp_path / "e.json").read_text())["aggregate"]["n_episodes"] == 2
  pol = fetchjax.load_policy(d)
  assert pol.frame_stack == 2 and pol.image_shape == (16, 16, 3)
  env = envs.make("FetchPush-v4", 2, backend="cpu", threads=1, pixels=PixelConfig(16, strict=True))
  obs = {k: np.asarray(v) for k, v in env.reset(jax.random.PRNGKey(0)).obs.items()}
  a = pol(obs)  # a new episode: the stack is two copies of the first frame
  assert a.shape == (2, 4) and np.all(np.abs(a) <= 1)
  pol.reset()
  np.testing.assert_allclose(pol({k: v[1] for k, v in obs.items()}), a[1], atol=1e-5)  # a single observation
  pol.reset()
  np.testing.assert_array_equal(pol({**obs, "achieved_goal": obs["achieved_goal"] + 1.0}), a)  # strict: unread
  capsys.readouterr()


@pytest.mark.parametrize("args, message", [
    (["--pixels", "--algo", "ppo"], "--pixels needs an off-policy algorithm"),
    (["--pixels", "--algo", "sac", "--env", "FetchPush-v4", "--preset", "book_her_push"],
     "encoder 'flat' reads the state vector(s) ['observation'], which a pixel env"),
    (["--pixels", "--algo", "sac", "--set", "encoder=manipulation", "--backend", "mjx"], "backend 'mjx'"),
    (["--image-size", "32", "--algo", "sac"], "--image-size / --render-mode need --pixels"),
    (["--strict-pixels", "--algo", "sac", "--set", "encoder=manipulation", "--set", "hide_achieved_goal=false"],
     "drop --set hide_achieved_goal=false"),
    (["--pixels", "--algo", "sac", "--set", "encoder=manipulation", "--image-size", "4"], "image_size must be"),
    (["--algo", "sac", "--her", "--preset", "book_pixels", "--image-size", "4"], "image_size must be"),  # its pixels
])
def test_bad_pixel_flags_are_one_line(args, message, tmp_path, capsys):
  from fetchjax import train as fj_train

  assert fj_train.main([*args, "--run-dir", str(tmp_path / "x"), "--quiet"]) == 2
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(err) == 1 and message in err[0], err
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("backend", ["cpu", pytest.param("warp", marks=pytest.mark.slow)])  # warp: 11 s
def test_vmapped_seeds_render_their_own_frames(backend):
  """Under jax.vmap over seeds (seeds x envs folded into one batch: host threads / one flat world axis of a Warp
  render context) every seed's frames are those of the unbatched env."""
  if backend == "warp":
    pytest.importorskip("warp")
  env = envs.make("FetchPush-v4", 2, backend, pixels=PixelConfig(32))
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  px = np.asarray(jax.jit(jax.vmap(env.reset))(keys).obs["pixels"])
  assert px.shape == (3, 2, 32, 32, 3)
  for k in range(3):
    np.testing.assert_array_equal(px[k], env.reset(keys[k]).obs["pixels"])
  assert not np.array_equal(px[0], px[1])
