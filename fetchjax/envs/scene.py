"""Fetch scenes built in memory from the installed gymnasium-robotics assets (never vendored).

Two models per task:
  * the *stock* model, `MjModel.from_xml_path` exactly as gymnasium-robotics loads it (C MuJoCo backend);
  * the *MJX* model: the stock XML with the minimal edits MJX-JAX needs (see `mjx_model_edits`).
Both start from the same reset state, computed by the same warm-up C MuJoCo runs in `_env_setup`.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import mujoco
import numpy as np

from fetchjax.envs.tasks import FetchTask

# Contact bit masks (contype, conaffinity) of the MJX model. A pair collides if (ct1 & ca2) | (ct2 & ca1):
# floor <-> table/object and base feet; gripper (fingers + palm proxy) <-> table/object; table <-> object.
# The 15 arm/base meshes collide with nothing.
_FLOOR_BITS, _GRIPPER_BITS, _TABLE_OBJECT_BITS, _BASE_FOOT_BITS = (1, 5), (2, 2), (3, 3), (4, 0)
PALM_PROXY_NAME = "fetchjax:palm_proxy"
BASE_FOOT_PREFIX = "fetchjax:base_foot"
_FOOT_RADIUS = 1e-3


def fetch_assets_dir() -> str:
  from fetchjax.envs.reference import import_gymnasium_robotics  # lazily: heavy, only the asset path is needed

  return os.path.join(os.path.dirname(import_gymnasium_robotics().__file__), "envs", "assets", "fetch")


def xml_path(task: FetchTask) -> str:
  return os.path.join(fetch_assets_dir(), task.xml_name)


def _ids(m: mujoco.MjModel, obj: mujoco.mjtObj, name: str) -> int:
  i = mujoco.mj_name2id(m, obj, name)
  if i < 0:
    raise ValueError(f"'{name}' is not part of the Fetch model")
  return i


@dataclasses.dataclass(frozen=True)
class SceneIds:
  """Indices into the compiled model that the step and observation code need."""

  grip_site: int
  object_site: int  # -1 without object
  gripper_body: int
  finger_qposadr: tuple[int, int]  # (r, l) finger joints: the order of the observation
  finger_dofadr: tuple[int, int]
  robot_joint_names: tuple[str, ...]
  object_qposadr: int  # -1 without object
  # ctrl_set_action: a position actuator (biastype != 0: the fingers) targets its joint's qpos + the action
  actuator_qposadr: tuple[int, ...]
  actuator_relative: tuple[bool, ...]

  @staticmethod
  def of(m: mujoco.MjModel) -> "SceneIds":
    names = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j) for j in range(m.njnt)]
    robot = tuple(n for n in names if n.startswith("robot"))
    r = _ids(m, mujoco.mjtObj.mjOBJ_JOINT, "robot0:r_gripper_finger_joint")
    l = _ids(m, mujoco.mjtObj.mjOBJ_JOINT, "robot0:l_gripper_finger_joint")
    if robot[-2:] != ("robot0:r_gripper_finger_joint", "robot0:l_gripper_finger_joint"):
      raise RuntimeError(f"unexpected robot joint order in the Fetch XML: {robot}")
    has_obj = "object0:joint" in names
    return SceneIds(
        grip_site=_ids(m, mujoco.mjtObj.mjOBJ_SITE, "robot0:grip"),
        object_site=_ids(m, mujoco.mjtObj.mjOBJ_SITE, "object0") if has_obj else -1,
        gripper_body=_ids(m, mujoco.mjtObj.mjOBJ_BODY, "robot0:gripper_link"),
        finger_qposadr=(int(m.jnt_qposadr[r]), int(m.jnt_qposadr[l])),
        finger_dofadr=(int(m.jnt_dofadr[r]), int(m.jnt_dofadr[l])),
        robot_joint_names=robot,
        object_qposadr=int(m.jnt_qposadr[_ids(m, mujoco.mjtObj.mjOBJ_JOINT, "object0:joint")])
        if has_obj else -1,
        actuator_qposadr=tuple(int(m.jnt_qposadr[m.actuator_trnid[i, 0]]) for i in range(m.nu)),
        actuator_relative=tuple(bool(m.actuator_biastype[i] != 0) for i in range(m.nu)),
    )


def reset_mocap_welds(m: mujoco.MjModel) -> None:
  """gymnasium_robotics.utils.mujoco_utils.reset_mocap_welds, the model part (eq_data[:7])."""
  for i in range(m.neq):
    if m.eq_type[i] == mujoco.mjtEq.mjEQ_WELD:
      m.eq_data[i, :7] = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])


@dataclasses.dataclass(frozen=True)
class ResetState:
  """The snapshot gymnasium-robotics takes after its warm-up (`initial_qpos/qvel/time`) and the goal
  sampler constants derived from it. Computed with C MuJoCo on the stock model at construction."""

  qpos: np.ndarray
  qvel: np.ndarray
  time: float
  initial_gripper_xpos: np.ndarray
  height_offset: float  # nan without object


def warm_up(task: FetchTask, m: mujoco.MjModel) -> ResetState:
  """fetch_env.MujocoFetchEnv._env_setup + MujocoRobotEnv._initialize_simulation, step by step."""
  d = mujoco.MjData(m)
  for name, value in task.initial_qpos:
    j = _ids(m, mujoco.mjtObj.mjOBJ_JOINT, name)
    adr = m.jnt_qposadr[j]
    d.qpos[adr:adr + len(value)] = value
  reset_mocap_welds(m)
  mujoco.mj_forward(m, d)
  ids = SceneIds.of(m)
  gripper_target = np.array([-0.498, 0.005, -0.431 + task.gripper_extra_height]) + d.site_xpos[ids.grip_site]
  d.mocap_pos[0] = gripper_target
  d.mocap_quat[0] = np.array([1.0, 0.0, 1.0, 0.0])
  for _ in range(10):
    mujoco.mj_step(m, d, nstep=task.n_substeps)
  height = float(d.site_xpos[ids.object_site][2]) if task.has_object else float("nan")
  return ResetState(
      qpos=d.qpos.copy(), qvel=d.qvel.copy(), time=float(d.time),
      initial_gripper_xpos=d.site_xpos[ids.grip_site].copy(), height_offset=height)


@functools.lru_cache(maxsize=None)
def stock_model(task: FetchTask) -> tuple[mujoco.MjModel, ResetState]:
  """The model exactly as gymnasium-robotics builds it (weld edit applied) and its reset state."""
  m = mujoco.MjModel.from_xml_path(xml_path(task))
  return m, warm_up(task, m)


def _base_floor_contacts(task: FetchTask) -> np.ndarray:
  """World positions of the base_link mesh vertices C MuJoCo's plane-mesh collider touches at reset.

  The stock base rests *inside* its 1 mm margin band, so C keeps 3 (mujoco 3.11) or 4 (3.17) permanent
  base-floor contacts (12 / 16 pyramidal rows) that couple into the weld solve: dropping them moves the Reach grip 1.7e-4 m in one step.
  """
  m, reset = stock_model(task)
  d = mujoco.MjData(m)
  d.qpos[:], d.qvel[:] = reset.qpos, reset.qvel
  mujoco.mj_forward(m, d)
  base = _ids(m, mujoco.mjtObj.mjOBJ_BODY, "robot0:base_link")
  verts = []
  for c in (d.contact[i] for i in range(d.ncon)):
    if base in (m.geom_bodyid[c.geom1], m.geom_bodyid[c.geom2]) and 0 in (m.geom_bodyid[c.geom1], m.geom_bodyid[c.geom2]):
      verts.append(c.pos + 0.5 * c.dist * c.frame[:3])  # mjc_PlaneConvex puts the contact at v - dist/2 n
  if not verts:
    raise RuntimeError("no base_link-floor contact found at reset; the Fetch model changed")
  return np.array(verts)


def mjx_model_edits(spec: mujoco.MjSpec, task: FetchTask) -> None:
  """The edits MJX-JAX needs, applied in memory to the stock spec. Measured cost in docs/PHYSICS.md.

  1. margin 0 on MESH geoms: MJX-JAX implements no margin on MESH pairs (the robot class sets 1 mm).
     Boxes (fingers) keep their 1 mm margin, which MJX supports.
  2. contacts only where Reach/Push touch: fingers and a box proxy of the gripper_link palm against table
     and object, object against table and floor (bit masks, so C's mixing rules still set the contact
     parameters). The 15 arm/base meshes collide with nothing: with them one Reach env allocates 576
     contact slots and does not fit in memory on CPU.
  3. the permanent base-floor contact is kept exactly: one small sphere per touched base vertex, centred
     one radius above it with the base mesh's contact parameters, gives the same contact point, depth,
     frame and rows as C's plane-mesh contact (plane-sphere supports margins in MJX).
  """
  feet_world = _base_floor_contacts(task)
  m0 = spec.compile()
  d0 = mujoco.MjData(m0)
  d0.qpos[:] = stock_model(task)[1].qpos
  mujoco.mj_kinematics(m0, d0)
  base_id = _ids(m0, mujoco.mjtObj.mjOBJ_BODY, "robot0:base_link")
  base_geom = [i for i in range(m0.ngeom) if m0.geom_bodyid[i] == base_id][0]
  base_rot, base_pos = d0.xmat[base_id].reshape(3, 3), d0.xpos[base_id]
  gripper = _ids(m0, mujoco.mjtObj.mjOBJ_BODY, "robot0:gripper_link")
  palm = [i for i in range(m0.ngeom) if m0.geom_bodyid[i] == gripper and m0.geom_type[i] == mujoco.mjtGeom.mjGEOM_MESH][0]

  for geom in spec.geoms:
    if geom.type == mujoco.mjtGeom.mjGEOM_MESH:
      geom.margin = 0.0
    body = geom.parent.name
    if body in ("robot0:r_gripper_finger_link", "robot0:l_gripper_finger_link"):
      geom.contype, geom.conaffinity = _GRIPPER_BITS
    elif geom.name == "floor0":
      geom.contype, geom.conaffinity = _FLOOR_BITS
    elif body in ("table0", "object0"):
      geom.contype, geom.conaffinity = _TABLE_OBJECT_BITS
    else:
      geom.contype, geom.conaffinity = 0, 0

  def contact_params(g):  # the stock geom's contact parameters, for a proxy that replaces it
    return dict(condim=int(m0.geom_condim[g]), friction=m0.geom_friction[g], solref=m0.geom_solref[g],
                solimp=m0.geom_solimp[g], solmix=float(m0.geom_solmix[g]), priority=int(m0.geom_priority[g]),
                margin=float(m0.geom_margin[g]), gap=float(m0.geom_gap[g]), mass=0.0, density=0.0, group=3,
                rgba=[0, 0, 0, 0])

  base = spec.body("robot0:base_link")
  up = np.array([0.0, 0.0, 1.0])
  for k, v in enumerate(feet_world):
    local = base_rot.T @ (v + _FOOT_RADIUS * up - base_pos)
    base.add_geom(name=f"{BASE_FOOT_PREFIX}{k}", type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[_FOOT_RADIUS, 0, 0],
                  pos=local, contype=_BASE_FOOT_BITS[0], conaffinity=_BASE_FOOT_BITS[1], **contact_params(base_geom))

  # The palm proxy: the box bounding the gripper_link mesh, in the mesh geom's frame.
  center, half = m0.geom_aabb[palm][:3], m0.geom_aabb[palm][3:]
  rot = np.zeros(9)
  mujoco.mju_quat2Mat(rot, m0.geom_quat[palm])
  spec.body("robot0:gripper_link").add_geom(
      name=PALM_PROXY_NAME, type=mujoco.mjtGeom.mjGEOM_BOX, size=half,
      pos=m0.geom_pos[palm] + rot.reshape(3, 3) @ center, quat=m0.geom_quat[palm],
      contype=_GRIPPER_BITS[0], conaffinity=_GRIPPER_BITS[1], **contact_params(palm))


PHYSICS_PROFILES = {
    # The XML's own solver settings (Newton, 100 iterations, 50 line-search steps, tol 1e-8).
    "exact": dict(iterations=None, ls_iterations=None),
    # Same solver, capped. Under vmap a while_loop runs until its slowest env converges, so the caps bound
    # the batched cost. 8/16 is bit-identical to the stock solver in C MuJoCo on Reach and on contact-rich
    # scripted Push episodes; 4/8 (Playground-style) is not: it moved the Push gripper by cm (docs/PHYSICS.md).
    "fast": dict(iterations=8, ls_iterations=16),
}


@functools.lru_cache(maxsize=None)
def edited_model(task: FetchTask, physics: str = "fast") -> mujoco.MjModel:
  """The MJX model (weld edit applied). Also loadable in C MuJoCo, to isolate MJX-vs-C differences."""
  if physics not in PHYSICS_PROFILES:
    raise ValueError(f"unknown physics profile '{physics}'; choose from {sorted(PHYSICS_PROFILES)}")
  spec = mujoco.MjSpec.from_file(xml_path(task))
  mjx_model_edits(spec, task)
  m = spec.compile()
  reset_mocap_welds(m)
  for k, v in PHYSICS_PROFILES[physics].items():
    if v is not None:
      setattr(m.opt, k, v)
  return m


# --- the pixel observation's scene -------------------------------------------------------------------------
CAMERA_NAME = "fetchjax:book_camera"
GOAL_BODY = "fetchjax:goal_marker"
TARGET_SITE = "target0"
# gymnasium-robotics' Fetch free camera (fetch_env.DEFAULT_CAMERA_CONFIG, fetch_envs.md §10), the view of book ch9.
BOOK_CAMERA = {"distance": 2.5, "azimuth": 132.0, "elevation": -14.0, "lookat": (1.3, 0.75, 0.55)}


def free_camera_pose(distance: float, azimuth: float, elevation: float, lookat) -> tuple[np.ndarray, np.ndarray]:
  """(pos [3], quat [4]) of the fixed camera that sees what MuJoCo's free camera with these settings sees
  (mjv_updateCamera: forward from azimuth/elevation in degrees, eye = lookat - distance * forward; a MuJoCo camera
  looks along its -z axis with +y up)."""
  az, el = np.deg2rad(azimuth), np.deg2rad(elevation)
  forward = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
  up = np.array([-np.sin(el) * np.cos(az), -np.sin(el) * np.sin(az), np.cos(el)])
  rot = np.stack([np.cross(forward, up), up, -forward], axis=1)  # columns: the camera's x, y, z in the world
  quat = np.zeros(4)
  mujoco.mju_mat2Quat(quat, rot.ravel())
  return np.asarray(lookat, np.float64) - distance * forward, quat


@functools.lru_cache(maxsize=None)
def render_model(task: FetchTask) -> mujoco.MjModel:
  """The stock scene as the pixel observations see it (never stepped; geom order = the stock model's + 1):
    * the book's view as a fixed camera `CAMERA_NAME` (MJX-Warp's batch renderer draws model cameras only);
    * the goal drawn as gymnasium draws site `target0` (red sphere, r = 2 cm), but as a geom of a mocap body
      `GOAL_BODY` appended last (the renderers draw geoms, and a mocap pose is per env); target0 itself hidden;
    * the mocap crosshair (four translucent boxes, up to 2 m long, at the mocap target) hidden: its pose is not in
      the warp backend's state and its faint lines would be the only difference between backends' frames.
  Rendered with the free camera's own settings (`free_camera_pose`, the model's fovy), an 84x84 frame of this
  model equals `render.render_frames(..., 84, 84)` (which hides the crosshair too; tests/test_pixels.py)."""
  stock, _ = stock_model(task)
  spec = mujoco.MjSpec.from_file(xml_path(task))
  pos, quat = free_camera_pose(**BOOK_CAMERA)
  spec.worldbody.add_camera(name=CAMERA_NAME, pos=pos, quat=quat, fovy=float(stock.vis.global_.fovy))
  # The free camera's headlight as a model light (the warp renderer has no headlight): directional, at the camera,
  # along its view, with the headlight's colours; the headlight itself is switched off below.
  rot = np.zeros(9)
  mujoco.mju_quat2Mat(rot, quat)
  hl = stock.vis.headlight
  spec.worldbody.add_light(name=CAMERA_NAME + ":headlight", type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL, pos=pos,
                           dir=-rot.reshape(3, 3)[:, 2], ambient=hl.ambient, diffuse=hl.diffuse, specular=hl.specular,
                           castshadow=False)
  body = spec.worldbody.add_body(name=GOAL_BODY, mocap=True)
  body.add_geom(type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[0.02, 0, 0], rgba=[1, 0, 0, 1], contype=0, conaffinity=0,
                group=0)
  m = spec.compile()
  reset_mocap_welds(m)
  m.vis.headlight.active = 0
  mocap_body = stock.body("robot0:mocap").id
  hide = m.geom_bodyid == mocap_body
  m.geom_rgba[hide, 3] = 0.0
  m.geom_group[hide] = 3  # outside the warp renderer's geom groups (0, 1, 2)
  m.site_rgba[m.site(TARGET_SITE).id, 3] = 0.0
  if m.ngeom != stock.ngeom + 1 or m.geom_bodyid[-1] != m.body(GOAL_BODY).id or m.nq != stock.nq:
    raise RuntimeError("the Fetch render model does not extend the stock model as expected")
  return m
