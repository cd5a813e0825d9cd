"""The installed gymnasium-robotics package (the reference implementation), imported in one place, and its shim.

Every fetchjax module that touches gymnasium-robotics (scene assets, rotations, reference envs for eval,
parity and tests) imports it through `import_gymnasium_robotics`, so its import-time notices (about Adroit
envs, printed to stderr) never reach fetchjax's output, and version shims have one place to live.

The shim (mujoco >= 3.12 with gymnasium-robotics 1.4.2): `gymnasium_robotics/utils/mujoco_utils.py` checks
`assert joint_type in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE)` in get/set_joint_qpos/qvel,
with `joint_type = model.jnt_type[i]` a numpy integer. Since mujoco 3.12 the enum's `__eq__` no longer equals
numpy integers (`np.int32(3) == mjJNT_HINGE` is True but `mjJNT_HINGE == np.int32(3)` is False, and tuple
membership compares element-first), so every Fetch env dies at reset. Upstream fixed it with
`int(model.jnt_type[...])` (unreleased). `patch_mujoco_utils` replaces the four functions in memory with that
fix when a feature check on a one-joint model shows the assert trips, and does nothing otherwise.
`install_import_hook` (called by `import fetchjax`) applies it whenever gymnasium-robotics gets imported, also
by user code that imports it directly (the README's load_policy example).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.abc
import io
import sys
import warnings

MUJOCO_UTILS = "gymnasium_robotics.utils.mujoco_utils"
_PATCHED = ("set_joint_qpos", "set_joint_qvel", "get_joint_qpos", "get_joint_qvel")
_ONE_HINGE_XML = '<mujoco><worldbody><body><joint name="j" type="hinge"/><geom size=".1"/></body></worldbody></mujoco>'


@functools.lru_cache(maxsize=None)
def import_gymnasium_robotics():
  """gymnasium_robotics with its envs registered in gymnasium (and the mujoco_utils shim applied), quietly."""
  import gymnasium as gym

  with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
    warnings.simplefilter("ignore")
    import gymnasium_robotics
  patch_mujoco_utils()
  gym.register_envs(gymnasium_robotics)
  return gymnasium_robotics


# ----------------------------------------------------------------------------------------------------------
# The joint-type shim
# ----------------------------------------------------------------------------------------------------------
def joint_type_assert_trips(utils_module=None) -> bool:
  """Feature check: does `mujoco_utils.get_joint_qpos` fail on a plain hinge joint with this mujoco?"""
  import mujoco

  if utils_module is None:
    utils_module = sys.modules.get(MUJOCO_UTILS) or __import__(MUJOCO_UTILS, fromlist=["_"])
  m = mujoco.MjModel.from_xml_string(_ONE_HINGE_XML)
  try:
    utils_module.get_joint_qpos(m, mujoco.MjData(m), "j")
  except AssertionError:
    return True
  return False


def _joint_slice(model, name, qpos: bool):
  """(start, ndim) of a joint in qpos or qvel, with the joint type compared as an int (the upstream fix)."""
  import mujoco

  joint_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
  assert joint_id != -1, f"Joint with name '{name}' is not part of the model!"
  joint_type = int(model.jnt_type[joint_id])
  if joint_type == int(mujoco.mjtJoint.mjJNT_FREE):
    ndim = 7 if qpos else 6
  elif joint_type == int(mujoco.mjtJoint.mjJNT_BALL):
    ndim = 4 if qpos else 3
  else:
    assert joint_type in (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
    ndim = 1
  return int((model.jnt_qposadr if qpos else model.jnt_dofadr)[joint_id]), ndim


def _set(field: str):
  import numpy as np

  def setter(model, data, name, value):
    start, ndim = _joint_slice(model, name, field == "qpos")
    value = np.array(value)
    if ndim > 1:
      assert value.shape == (ndim,), f"Value has incorrect shape {name}: {value}"
    getattr(data, field)[start:start + ndim] = value

  setter.__name__ = f"set_joint_{field}"
  setter.__doc__ = f"gymnasium-robotics' set_joint_{field} with an int joint-type check (fetchjax shim)."
  setter.fetchjax_shim = True
  return setter


def _get(field: str):
  def getter(model, data, name):
    start, ndim = _joint_slice(model, name, field == "qpos")
    return getattr(data, field)[start:start + ndim].copy()

  getter.__name__ = f"get_joint_{field}"
  getter.__doc__ = f"gymnasium-robotics' get_joint_{field} with an int joint-type check (fetchjax shim)."
  getter.fetchjax_shim = True
  return getter


# Upstream's get_joint_qvel returns 4 values for a BALL joint (a bug that the Fetch envs never reach: they have
# no ball joints); the shim keeps its FREE/HINGE/SLIDE behaviour, which is all Fetch uses.
REPLACEMENTS = {"set_joint_qpos": _set("qpos"), "set_joint_qvel": _set("qvel"), "get_joint_qpos": _get("qpos"),
                "get_joint_qvel": _get("qvel")}


def patch_mujoco_utils(utils_module=None) -> bool:
  """Applies the shim if (and only if) the feature check trips. Returns whether the module is patched now.

  Also rebinds modules that imported the original functions by name (the Adroit/maze envs do)."""
  if utils_module is None:
    utils_module = sys.modules.get(MUJOCO_UTILS) or __import__(MUJOCO_UTILS, fromlist=["_"])
  if getattr(utils_module, "fetchjax_shim", False):
    return True
  if not joint_type_assert_trips(utils_module):
    return False
  originals = {name: getattr(utils_module, name) for name in _PATCHED}
  for name, fn in REPLACEMENTS.items():
    setattr(utils_module, name, fn)
  utils_module.fetchjax_shim = True
  for mod in list(sys.modules.values()):
    if mod is not None and getattr(mod, "__name__", "").startswith("gymnasium_robotics.") and mod is not utils_module:
      for name, fn in originals.items():
        if getattr(mod, name, None) is fn:
          setattr(mod, name, REPLACEMENTS[name])
  return True


class _PatchOnImport(importlib.abc.MetaPathFinder):
  """Applies `patch_mujoco_utils` right after gymnasium_robotics.utils.mujoco_utils is first executed."""

  def find_spec(self, fullname, path, target=None):
    if fullname != MUJOCO_UTILS:
      return None
    sys.meta_path.remove(self)  # find the real spec with the other finders, then wrap its loader
    try:
      import importlib.util

      spec = importlib.util.find_spec(fullname)
    finally:
      sys.meta_path.insert(0, self)
    if spec is None or spec.loader is None:
      return spec
    exec_module = spec.loader.exec_module

    def exec_and_patch(module):
      exec_module(module)
      patch_mujoco_utils(module)

    spec.loader.exec_module = exec_and_patch
    return spec


_HOOK = _PatchOnImport()


def install_import_hook() -> None:
  """Makes every import of gymnasium-robotics in this process get the shim (no-op when already imported:
  then it is patched now). Cheap: imports neither mujoco nor gymnasium-robotics."""
  if MUJOCO_UTILS in sys.modules:
    patch_mujoco_utils(sys.modules[MUJOCO_UTILS])
  elif _HOOK not in sys.meta_path:
    sys.meta_path.insert(0, _HOOK)
