"""FetchPickAndPlace-v4 and FetchSlide-v4 beyond the cpu backend (whose bit-exact parity with gymnasium-robotics is
in test_parity_cpu.py): MJX-Warp trajectories within the warp Push bounds, MJX-JAX refusing Slide, and (slow: a ~1 min
compile on a CPU) MJX-JAX PickAndPlace within its Push bounds."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fetchjax import envs
from fetchjax.gymnasium_reference import gymnasium_make, task_of
from measured import Recorder
from parity.envs import MJX_TOL, WARP_TOL

N, T = 2, 50


def _replay_vs_gymnasium(env_id, backend, seed=0):
  """N episodes of random actions (random gripper command; dz >= 0: the gripper drifts up, away from the
  object) in gymnasium-robotics, replayed in one batch of `backend` envs from the same tasks. Returns
  (ours, theirs) observations [N, T, 25], rewards [N, T] each, and the tasks' object xy [N, 2]."""
  env = envs.make(env_id, num_envs=N, backend=backend)
  ref = gymnasium_make(env_id).unwrapped
  rng = np.random.default_rng(seed)
  acts = rng.uniform(-1, 1, (T, N, 4)).astype(np.float32)
  acts[..., 2] = np.abs(acts[..., 2])
  theirs, rew = np.zeros((N, T, 25)), np.zeros((N, T))
  xy, goals = np.zeros((N, 2)), np.zeros((N, 3))
  for e in range(N):
    ref.reset(seed=seed + 100 * e + 7)
    xy[e], goals[e] = task_of(ref)
    for t in range(T):
      o, rew[e, t], *_ = ref.step(acts[t, e])
      theirs[e, t] = o["observation"]

  @jax.jit
  def replay(s, a):
    def body(s, a):
      s = env.step(s, a)
      return s, (s.info["final_obs"]["observation"], s.reward)
    return jax.lax.scan(body, s, a)[1]

  obs, r = replay(env.reset_to(xy, goals), jnp.asarray(acts))
  return np.swapaxes(np.asarray(obs, np.float64), 0, 1), np.asarray(r).T, theirs, rew, xy, env


def _check(env_id, backend, tol_grip, tol_obj, rec):
  ours, r, theirs, rew, xy, env = _replay_vs_gymnasium(env_id, backend)
  assert np.abs(theirs[:, :, 3:5] - xy[:, None]).max() < 1e-3  # the object stays put: no contact case
  grip = np.linalg.norm(ours[..., :3] - theirs[..., :3], axis=-1)
  obj = np.linalg.norm(ours[..., 3:6] - theirs[..., 3:6], axis=-1)
  fingers = np.abs(ours[..., 9:11] - theirs[..., 9:11])
  rec("gripper position error, max over steps", grip.max(), tol_grip)
  rec("object position error, max over steps", obj.max(), tol_obj)
  rec("finger joint error, max over steps", fingers.max(), tol_grip)
  np.testing.assert_array_equal(r, rew.astype(np.float32))  # sparse: the same -1/0 every step
  # the object rests on the table through all 50 steps (Slide: the cylinder puck collides with the box table)
  np.testing.assert_allclose(ours[..., 5], env.height_offset, atol=1e-3)
  if not env.task.block_gripper:  # the random gripper commands really moved the fingers
    assert np.ptp(theirs[..., 9], axis=1).min() > 0.01


@pytest.mark.parametrize("env_id", ["FetchPickAndPlace-v4", "FetchSlide-v4"])
def test_warp_trajectories_match_gymnasium(env_id):
  pytest.importorskip("warp")
  _check(env_id, "warp", WARP_TOL["push_no_contact"], WARP_TOL["push_no_contact"], Recorder(f"warp {env_id}"))


@pytest.mark.slow
def test_mjx_pick_and_place_matches_gymnasium():
  _check("FetchPickAndPlace-v4", "mjx", MJX_TOL["push_no_contact"], MJX_TOL["push_no_contact"],
         Recorder("mjx FetchPickAndPlace-v4"))


@pytest.mark.parametrize("env_id", ["FetchSlide-v4", "FetchSlideDense-v4"])
def test_mjx_refuses_slide_with_one_clear_error(env_id):
  t0 = time.perf_counter()
  with pytest.raises(ValueError, match="box-cylinder") as e:
    envs.make(env_id, num_envs=1, backend="mjx")
  msg = str(e.value)
  assert "\n" not in msg and "cpu" in msg and "warp" in msg and env_id in msg
  assert time.perf_counter() - t0 < 10  # refused before any MJX model is built


def test_sac_her_defaults_to_the_books_push_settings_on_every_object_task(monkeypatch):
  from fetchjax import train as fj_train

  monkeypatch.setattr(fj_train.jax, "default_backend", lambda: "cpu")  # the CPU presets (an accelerator: "gpu")
  for env_id in ("FetchPush-v4", "FetchPickAndPlace-v4", "FetchSlideDense-v4"):
    assert fj_train.default_preset("sac", env_id, her=True) == "book_her_push", env_id
  assert fj_train.default_preset("sac", "FetchReach-v4", her=True) == "book_her"
  assert fj_train.default_preset("td3", "FetchPickAndPlace-v4", her=True) == "book_her"


def test_full_parity_suite_skips_slide_on_mjx_with_the_backends_reason(tmp_path):
  """The full suite's mjx checks (observations, trajectories) ask the backend's own check and record Slide as
  skipped with its reason, rather than failing on the refused envs.make."""
  import json

  from parity.__main__ import main as parity_main

  assert parity_main(["--envs", "FetchSlide-v4", "--only", "observations", "--skip", "warp",
                      "--out", str(tmp_path)]) == 0
  checks = json.loads((tmp_path / "parity_report.json").read_text())["checks"]
  assert [c["name"] for c in checks] == ["mjx checks"] and "box-cylinder" in checks[0]["skipped"]
