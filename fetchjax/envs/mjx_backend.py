"""MJX-JAX physics for the Fetch scenes: jittable, vmappable, runs on any XLA device.

Uses the edited model of `scene.edited_model` and adds C MuJoCo's J̇·v term (mujoco >= 3.7) to the mocap weld's
reference acceleration, which MJX-JAX lacks (docs/PHYSICS.md): without it the arm drifts ~1.5 cm in 50 steps.
"""
from __future__ import annotations

import contextlib
import io

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from fetchjax.envs import scene
from fetchjax.envs.backend import Replay
from fetchjax.envs.goal import mat2euler
from fetchjax.envs.tasks import FetchTask

with contextlib.redirect_stdout(io.StringIO()):  # mjx prints "Failed to import warp" when it is absent
  from mujoco import mjx
from mujoco.mjx._src import constraint, forward, smooth, solver  # noqa: E402

# XLA:CPU's batched dense Cholesky was seen to hang at 512 envs in one vmap (README, Known issues).
CPU_CHUNK = 128


def weld_jdotv(m: mjx.Model, d: mjx.Data, qpos_dot: jax.Array) -> jax.Array:
  """d/dt (J_weld(q) · v) at fixed v = qvel: the term C subtracts from the weld rows' aref.

  `qpos_dot` is dq/dt; exact for the hinge/slide chain that carries the weld (the free object joint
  gets a zero tangent: it is not in the chain).
  """

  def weld_velocity(qpos):
    dd = smooth.com_pos(m, smooth.kinematics(m, d.replace(qpos=qpos)))
    return constraint._efc_equality_weld(m, dd).J @ d.qvel  # pylint: disable=protected-access

  return jax.jvp(weld_velocity, (d.qpos,), (qpos_dot,))[1]


class Observer:
  """gymnasium-robotics' `_get_obs` for one env from a forwarded `mjx.Data` of either MJX implementation (JAX or
  Warp): site positions and frames, site Jacobians (as `mj_jacSite`: `cdof` and `subtree_com`) times qvel × dt,
  `mat2euler`, the finger joints. Returns (observation, achieved_goal)."""

  def __init__(self, task: FetchTask, mj: mujoco.MjModel):
    self.task, self.ids = task, scene.SceneIds.of(mj)
    self.dt = task.n_substeps * float(mj.opt.timestep)
    self._grip = self._site_jac_consts(mj, self.ids.grip_site)
    self._obj = self._site_jac_consts(mj, self.ids.object_site) if task.has_object else None
    self._fq, self._fv = np.array(self.ids.finger_qposadr), np.array(self.ids.finger_dofadr)

  @staticmethod
  def _site_jac_consts(mj, site):
    """(dof mask, root body) of a site's body: the dofs of the body and its ancestors (support.jac's mask)."""
    body = int(mj.site_bodyid[site])
    chain, b = set(), body
    while True:
      chain.add(b)
      if b == 0:
        break
      b = int(mj.body_parentid[b])
    mask = np.array([int(mj.dof_bodyid[i]) in chain for i in range(mj.nv)], np.float32)
    return mask, int(mj.body_rootid[body])

  @staticmethod
  def _jac(d, point, consts):
    """mjx support.jac (translational, rotational) with the mask computed once, in numpy."""
    mask, root = consts
    offset = point - d.subtree_com[root]
    jacp = jax.vmap(lambda a: a[3:] + jnp.cross(a[:3], offset))(d.cdof)
    return jacp * mask[:, None], d.cdof[:, :3] * mask[:, None]

  def __call__(self, d):
    ids, dt = self.ids, self.dt
    grip_pos = d.site_xpos[ids.grip_site]
    jacp, _ = self._jac(d, grip_pos, self._grip)
    grip_velp = jacp.T @ d.qvel * dt
    gripper_state, gripper_vel = d.qpos[self._fq], d.qvel[self._fv] * dt
    if not self.task.has_object:
      return jnp.concatenate([grip_pos, gripper_state, grip_velp, gripper_vel]), grip_pos
    obj_pos = d.site_xpos[ids.object_site]
    jacp_o, jacr_o = self._jac(d, obj_pos, self._obj)
    obj_velp = jacp_o.T @ d.qvel * dt - grip_velp
    obj_velr = jacr_o.T @ d.qvel * dt
    obj_rot = mat2euler(d.site_xmat[ids.object_site])
    obs = jnp.concatenate([grip_pos, obj_pos, obj_pos - grip_pos, gripper_state, obj_rot, obj_velp, obj_velr,
                           grip_velp, gripper_vel])
    return obs, obj_pos


def make_substep(m: mjx.Model, mj: mujoco.MjModel, jdotv: bool = True):
  """mjx.step for these scenes (Euler, no sensors), with the J̇·v weld correction when `jdotv`."""
  if mj.opt.integrator != mujoco.mjtIntegrator.mjINT_EULER:
    raise NotImplementedError("the Fetch scenes use the Euler integrator")
  welds = np.nonzero(mj.eq_type == mujoco.mjtEq.mjEQ_WELD)[0]
  if np.any(mj.eq_type == mujoco.mjtEq.mjEQ_CONNECT) or len(welds) != 1:
    raise NotImplementedError("expected exactly one weld and no connect: the weld rows are efc rows 0..5")
  # int(): since mujoco 3.12 `mjtJoint.X == np.int32(...)` is False, so a tuple membership test on the raw value
  # silently matched nothing (the gymnasium-robotics assert of reference.py; here it zeroed the J̇·v term)
  hinge_slide = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
  chain = [j for j in range(mj.njnt) if int(mj.jnt_type[j]) in hinge_slide]
  if not chain:
    raise RuntimeError("no hinge/slide joints found for the J̇·v term")
  qadr, vadr = np.array(mj.jnt_qposadr[chain]), np.array(mj.jnt_dofadr[chain])

  def substep(d: mjx.Data) -> mjx.Data:
    d = forward.fwd_position(m, d)
    d = forward.fwd_velocity(m, d)
    d = forward.fwd_actuation(m, d)
    d = forward.fwd_acceleration(m, d)
    if jdotv:
      qpos_dot = jnp.zeros_like(d.qpos).at[qadr].set(d.qvel[vadr])
      aref = d._impl.efc_aref.at[0:6].add(-weld_jdotv(m, d, qpos_dot))  # pylint: disable=protected-access
      d = d.tree_replace({"_impl.efc_aref": aref})
    d = solver.solve(m, d)
    return forward.euler(m, d)

  return substep


def check_supported(task: FetchTask) -> None:
  """One clear error where MJX-JAX cannot simulate a task: it has no box-cylinder collider (mujoco 3.x collision
  table), so Slide's cylinder puck would fall through the box table unnoticed."""
  m, _ = scene.stock_model(task)
  obj = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "object0")
  if obj >= 0 and m.geom_type[obj] == mujoco.mjtGeom.mjGEOM_CYLINDER:
    raise ValueError(f"{task.env_id} cannot run on backend 'mjx': MJX-JAX has no box-cylinder collision (the puck "
                     "would fall through the table); use backend cpu or warp")


class MjxPhysics:
  """Batched MJX physics behind the backend interface used by `FetchEnv`."""

  name = "mjx"
  render = None  # MJX-JAX has no batch renderer: the pixel issue renders through the warp backend

  def __init__(self, task: FetchTask, reset: scene.ResetState, physics: str = "fast", jdotv: bool = True):
    check_supported(task)
    self.task = task
    self.mj = scene.edited_model(task, physics)
    self.ids = scene.SceneIds.of(self.mj)
    self.m = mjx.put_model(self.mj)
    self.dt = task.n_substeps * float(self.mj.opt.timestep)
    self._substep = make_substep(self.m, self.mj, jdotv)
    d0 = mjx.make_data(self.m)
    self._d0 = d0.replace(qpos=jnp.asarray(reset.qpos, d0.qpos.dtype), qvel=jnp.asarray(reset.qvel, d0.qvel.dtype),
                          time=jnp.asarray(reset.time, d0.time.dtype))
    self._on_cpu = jax.default_backend() == "cpu"
    self.observer = Observer(task, self.mj)

  # --- single-env functions ---------------------------------------------------------------
  def _kinematics(self, d):
    return smooth.com_pos(self.m, smooth.kinematics(self.m, d))

  def _observe(self, d):
    return self.observer(d)

  def _reset_one(self, object_xy):
    d = self._d0
    if self.task.has_object:
      adr = self.ids.object_qposadr
      d = d.replace(qpos=d.qpos.at[adr:adr + 2].set(object_xy.astype(d.qpos.dtype)))
    d = self._kinematics(d)
    return (d, *self._observe(d))

  def _step_one(self, d, action):
    # _set_action + mocap_set_action: target = current gripper_link pose + 0.05 a, quat + (1,0,1,0) unnormalised.
    d = self._physics_one(d, action)
    # Without _step_callback (PickAndPlace), the observation and the next mocap target read the kinematics the
    # last substep computed (before its integration), as in C MuJoCo.
    if self.task.block_gripper:  # _step_callback: fingers to 0 (qvel untouched), then forward
      d = d.replace(qpos=d.qpos.at[np.array(self.ids.finger_qposadr)].set(0.0))
      # Only kinematics is recomputed: the next mj_step recomputes everything else from qpos/qvel/warmstart,
      # and the observation reads only positions, frames and Jacobians.
      d = self._kinematics(d)
    return (d, *self._observe(d))

  def _physics_one(self, d, action):
    g = self.ids.gripper_body
    d = d.replace(mocap_pos=(d.xpos[g] + action[:3] * 0.05)[None],
                  mocap_quat=(d.xquat[g] + jnp.array([1.0, 0.0, 1.0, 0.0], d.xquat.dtype))[None])
    if self.mj.nu:  # _set_action: gripper ctrl [a3, a3] (zeros when blocked)
      grip = jnp.zeros_like(action[3]) if self.task.block_gripper else action[3]
      ctrl = jnp.where(np.array(self.ids.actuator_relative),
                       d.qpos[np.array(self.ids.actuator_qposadr, int)] + grip, grip)
      d = d.replace(ctrl=ctrl.astype(d.ctrl.dtype))
    return jax.lax.fori_loop(0, self.task.n_substeps, lambda _, x: self._substep(x), d)

  def _observe_one(self, qpos, qvel):
    d0 = self._d0
    return self._observe(self._kinematics(d0.replace(qpos=qpos.astype(d0.qpos.dtype), qvel=qvel.astype(d0.qvel.dtype))))

  # --- batched interface ------------------------------------------------------------------
  def _batched(self, fn, *args):
    n = jax.tree_util.tree_leaves(args)[0].shape[0]
    if not self._on_cpu or n <= CPU_CHUNK:
      return jax.vmap(fn)(*args)
    # chunks of the largest size <= CPU_CHUNK that divides n: one vmap over all 200 envs of `python -m parity`'s
    # scripted push hung the same way (2026-11-21; it used to fall back to one vmap when 128 did not divide n)
    chunk = max(c for c in range(1, CPU_CHUNK + 1) if n % c == 0)
    chunks = jax.tree_util.tree_map(lambda x: x.reshape((n // chunk, chunk) + x.shape[1:]), args)
    out = jax.lax.map(lambda a: jax.vmap(fn)(*a), chunks)
    return jax.tree_util.tree_map(lambda x: x.reshape((n,) + x.shape[2:]), out)

  def reset(self, object_xy):
    return self._batched(self._reset_one, object_xy)

  def physics_step(self, d, action):
    """Mocap target + the substeps (no kinematics, observation or reset). Unlike `step`, the next step must
    start from kinematics of its own: this is for timing the physics alone."""
    return self._batched(self._physics_one, d, action)

  def observe_states(self, qpos, qvel):
    return self._batched(self._observe_one, qpos, qvel)

  def snapshot(self, d, k: int):
    return d.qpos[:k]

  def replay(self, snapshots) -> Replay:
    return Replay(np.asarray(snapshots, np.float64))

  def step(self, d, action, reset_mask, reset_xy):
    d, obs, ag = self._batched(self._step_one, d, action)

    def with_reset(_):
      d_r, obs_r, ag_r = self.reset(reset_xy)
      pick = lambda a, b: jnp.where(reset_mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
      return jax.tree_util.tree_map(pick, d_r, d), pick(obs_r, obs), pick(ag_r, ag)

    # Episodes are synchronous (fixed length), so most steps skip the reset computation entirely.
    d_next, obs_next, ag_next = jax.lax.cond(jnp.any(reset_mask), with_reset, lambda _: (d, obs, ag), None)
    return d_next, obs_next, ag_next, obs, ag
