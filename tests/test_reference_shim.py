"""The gymnasium-robotics 1.4.2 shim for mujoco >= 3.12 (fetchjax/envs/reference.py): applied by feature check,
a no-op where not needed, and effective wherever the reference env is loaded (also by user code)."""
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import mujoco
import numpy as np
import pytest

from fetchjax.envs import reference

ROOT = Path(__file__).resolve().parent.parent

UPSTREAM_1_4_2 = '''
import mujoco
def get_joint_qpos(model, data, name):
    joint_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
    joint_type = model.jnt_type[joint_id]
    if joint_type == mujoco.mjtJoint.mjJNT_FREE:
        ndim = 7
    elif joint_type == mujoco.mjtJoint.mjJNT_BALL:
        ndim = 4
    else:
        assert joint_type in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE)
        ndim = 1
    return data.qpos[model.jnt_qposadr[joint_id]:model.jnt_qposadr[joint_id] + ndim].copy()
set_joint_qpos = set_joint_qvel = get_joint_qvel = get_joint_qpos
'''


def _module(source: str) -> types.ModuleType:
  mod = types.ModuleType("fake_mujoco_utils")
  exec(source, mod.__dict__)  # noqa: S102  (test fixture: upstream's code, verbatim in the part that matters)
  return mod


def _mujoco_at_least(major, minor) -> bool:
  return tuple(int(p) for p in mujoco.__version__.split(".")[:2]) >= (major, minor)


def test_feature_check_and_patch_on_upstream_code():
  old = _module(UPSTREAM_1_4_2)
  trips = reference.joint_type_assert_trips(old)
  assert trips == _mujoco_at_least(3, 12)  # the enum comparison changed in mujoco 3.12
  original = old.get_joint_qpos
  assert reference.patch_mujoco_utils(old) is trips
  if trips:
    assert old.fetchjax_shim and old.get_joint_qpos is reference.REPLACEMENTS["get_joint_qpos"]
    assert not reference.joint_type_assert_trips(old)
  else:
    assert old.get_joint_qpos is original


def test_shim_is_a_noop_where_not_needed():
  fixed = _module(UPSTREAM_1_4_2.replace("joint_type = model.jnt_type[joint_id]",
                                         "joint_type = int(model.jnt_type[joint_id])"))  # upstream's fix
  original = fixed.get_joint_qpos
  assert not reference.joint_type_assert_trips(fixed)
  assert reference.patch_mujoco_utils(fixed) is False
  assert fixed.get_joint_qpos is original and not getattr(fixed, "fetchjax_shim", False)


def test_shim_functions_match_upstream_semantics():
  """The replacements on the Push model: free joint (7 qpos / 6 qvel), slides, hinges; set then get round-trips."""
  import gymnasium_robotics.utils.mujoco_utils as mu

  reference.import_gymnasium_robotics()
  from fetchjax.envs import scene, tasks

  m, _ = scene.stock_model(tasks.TASKS["FetchPush-v4"])
  d = mujoco.MjData(m)
  mu.set_joint_qpos(m, d, "object0:joint", [1.2, 0.7, 0.42, 1, 0, 0, 0])
  mu.set_joint_qpos(m, d, "robot0:slide0", 0.405)
  mu.set_joint_qvel(m, d, "object0:joint", np.arange(6.0))
  mu.set_joint_qvel(m, d, "robot0:shoulder_pan_joint", 0.25)
  np.testing.assert_array_equal(mu.get_joint_qpos(m, d, "object0:joint"), [1.2, 0.7, 0.42, 1, 0, 0, 0])
  np.testing.assert_array_equal(mu.get_joint_qvel(m, d, "object0:joint"), np.arange(6.0))
  assert mu.get_joint_qpos(m, d, "robot0:slide0").tolist() == [0.405]
  assert mu.get_joint_qvel(m, d, "robot0:shoulder_pan_joint").tolist() == [0.25]
  with pytest.raises(AssertionError, match="Value has incorrect shape"):
    mu.set_joint_qpos(m, d, "object0:joint", [1.0, 2.0])
  with pytest.raises(AssertionError, match="not part of the model"):
    mu.get_joint_qpos(m, d, "nope")


def _fresh(code: str):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                        env=env, cwd=str(ROOT))


def test_reference_env_works_after_import_fetchjax_even_when_imported_directly():
  """User code (the README's load_policy example) imports gymnasium_robotics itself: `import fetchjax` first
  is enough; without fetchjax, gymnasium-robotics 1.4.2 fails at reset on mujoco >= 3.12 (the reason for the shim)."""
  code = """
      {first}
      import warnings; warnings.simplefilter("ignore")
      import gymnasium as gym, gymnasium_robotics
      gym.register_envs(gymnasium_robotics)
      try:
        obs, _ = gym.make("FetchPush-v4").reset(seed=0)
        print("RESET OK", obs["observation"].shape)
      except AssertionError:
        print("RESET ASSERT")
  """
  r = _fresh(code.format(first="import fetchjax"))
  assert "RESET OK (25,)" in r.stdout, r.stderr[-2000:]
  if _mujoco_at_least(3, 12):
    r = _fresh(code.format(first=""))
    assert "RESET ASSERT" in r.stdout, r.stderr[-2000:]


def test_import_fetchjax_stays_light():
  r = _fresh("import sys, fetchjax; print(sorted(m for m in ('jax', 'mujoco', 'gymnasium_robotics') if m in sys.modules))")
  assert r.stdout.strip() == "[]", r.stdout + r.stderr[-2000:]
