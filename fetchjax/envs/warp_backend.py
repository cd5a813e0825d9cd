"""MJX-Warp physics for the Fetch scenes: the STOCK gymnasium-robotics model through MuJoCo Warp.

`mjx.put_model(m, impl="warp")` runs MuJoCo Warp kernels through a JAX FFI, with the envs of a batch as Warp
*worlds*. Unlike MJX-JAX it implements mesh margins, every collision pair of the stock model and C MuJoCo's J̇·v
term in the weld rows (docs/PHYSICS.md), so the model needs no edit: the same MjModel as the `cpu`
backend (weld `eq_data` edit of `reset_mocap_welds` included). It runs on NVIDIA GPUs and on CPUs (Warp compiles
its kernels with LLVM there), in float32. No autodiff.

State. The env state (`pipeline_state`) is NOT an `mjx.Data`: it is the part of the Data that the next step
reads (`CARRIED`: mjSTATE_INTEGRATION for these scenes, i.e. time, qpos, qvel, qacc_warmstart, with ctrl/act empty
and the mocap pose rebuilt from the action, plus three velocity-stage fields MuJoCo Warp reads one stage early),
plus the gripper_link pose that the action is added to, plus the constraint counts for overflow checks. Every leaf has a leading num_envs axis, so it checkpoints, selects
(`jnp.where` resets) and vmaps like any array tree. Each step rebuilds a full Warp `mjx.Data` from it; a test shows
the trajectory is bit-identical to carrying the full Data.

Batching. MuJoCo Warp sizes its contact buffer for all worlds together (`naconmax`) and shares it between
them. Every physics call goes through `_worlds`, a `jax.custom_batching.custom_vmap` whose batching rule folds
any vmapped axes (e.g. the seeds of `jax.vmap(train)`) into the env axis: one Warp launch over seeds × envs
worlds, with buffers sized for that many.

Sizes and knobs (`WarpConfig`): contacts per env (`naconmax = contacts_per_env × worlds`), constraint rows per
env (`njmax`), the solver caps of `physics` ("fast": Newton ≤ 8 iterations / 16 line-search steps, "exact": the
XML's 100/50; MuJoCo Warp stops once every world has converged, so caps only bound the worst case), and the
Warp graph mode (MJX's default: `WARP` on a GPU, `JAX` on a CPU, where `WARP` is refused; also
`WARP_STAGED`, `WARP_STAGED_EX`, `NONE`). The state records each
step's contact and constraint counts: `capacity(state)` reports them against the buffers (an overflow
drops contacts or rows, as MuJoCo Warp does).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from fetchjax.envs import scene
from fetchjax.envs.backend import Replay
from fetchjax.envs.mjx_backend import Observer
from fetchjax.envs.tasks import FetchTask

with contextlib.redirect_stdout(io.StringIO()):  # warp prints its banner / "Failed to import warp" at import
  from mujoco import mjx
  import mujoco.mjx.warp as _mjxw
if _mjxw.WARP_INSTALLED:
  # No init banner or "Module ... load on device 'cpu' took 13.57 ms" line per kernel module on stdout; on a JAX
  # CPU backend not the "Could not find or load the NVIDIA CUDA driver" warning either (Warp runs where JAX runs).
  # Overflow messages of the physics buffers are printed by the kernels themselves and stay.
  _mjxw.warp.config.quiet = True
  _mjxw.warp.config.log_level = _mjxw.warp.LOG_ERROR if jax.default_backend() == "cpu" else _mjxw.warp.LOG_WARNING
from mujoco.mjx._src import math as mjx_math, smooth  # noqa: E402

GRAPH_MODES = ("WARP", "JAX", "WARP_STAGED", "WARP_STAGED_EX", "NONE")
# Contacts per env: the stock models' C MuJoCo maxima over 20 x 50 biased-random steps (measured
# 2026-11-21: Reach 11, Push 13; PickAndPlace 25) with headroom; Warp counts margin-band contacts as C does.
DEFAULT_CONTACTS = {False: 32, True: 48}  # keyed by task.has_object
DEFAULT_NJMAX = {False: 96, True: 128}  # constraint rows per env (C maxima: Reach 67, Push 72)


# The Data fields the next step reads before writing them: mjSTATE_INTEGRATION's time, qpos, qvel, qacc_warmstart
# (ctrl, act, applied forces are empty/zero here) and the velocity-stage outputs that MuJoCo Warp's constraint
# stage reads from the PREVIOUS forward: it builds the weld's J̇·v term in fwd_position (make_constraint), before
# fwd_velocity refreshes cvel/cdof_dot (C MuJoCo computes it after, in mj_referenceConstraint). Carrying them
# makes a step from the compact state bit-identical to a step from the full Data (tests/test_warp_backend.py).
CARRIED = ("qpos", "qvel", "qacc_warmstart", "time", "cvel", "cdof_dot", "_impl.subtree_linvel")


def _get(d, path: str):
  for part in path.split("."):
    d = getattr(d, part)
  return d


def _key(path: str) -> str:
  return path.split(".")[-1]


def warp_available() -> bool:
  return bool(_mjxw.WARP_INSTALLED)


@dataclasses.dataclass(frozen=True)
class WarpConfig:
  """Tuning knobs of the warp backend (defaults are sane for Reach/Push on any device)."""

  contacts_per_env: int | None = None  # naconmax = contacts_per_env x worlds (default DEFAULT_CONTACTS)
  njmax: int | None = None  # constraint rows per world (default DEFAULT_NJMAX)
  graph_mode: str | None = None  # mjx.warp GraphMode; None = MJX's default (WARP on a GPU, JAX on a CPU)
  # Recompute cvel/cdof_dot before every substep so the weld's J̇·v term matches C MuJoCo (MuJoCo Warp 3.17 builds
  # it from the previous substep's). Off: MuJoCo Warp as shipped (~1e-5 m grip error per fast step).
  fresh_jdotv: bool = True
  # Solver overrides on top of `physics` (None: the profile's value). The XML's tolerance 1e-8 is below what the
  # float32 Newton solve resolves once contacts are active, so it then runs to the iteration cap.
  iterations: int | None = None
  ls_iterations: int | None = None
  tolerance: float | None = None

  def __post_init__(self):
    if self.tolerance is not None and (isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float))
                                       or not self.tolerance >= 0):
      raise ValueError(f"warp tolerance must be a number >= 0, got {self.tolerance!r}")
    for name in ("contacts_per_env", "njmax", "iterations", "ls_iterations"):
      v = getattr(self, name)
      if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ValueError(f"warp {name} must be a positive integer, got {v!r}")
    if not isinstance(self.fresh_jdotv, bool):
      raise ValueError(f"warp fresh_jdotv must be true or false, got {self.fresh_jdotv!r}")
    if self.graph_mode is not None and self.graph_mode not in GRAPH_MODES:
      raise ValueError(f"unknown warp graph_mode {self.graph_mode!r}; choose from {', '.join(GRAPH_MODES)}")

  @staticmethod
  def of(value) -> "WarpConfig":
    if value is None:
      return WarpConfig()
    if isinstance(value, WarpConfig):
      return value
    if isinstance(value, dict):
      unknown = sorted(set(value) - {f.name for f in dataclasses.fields(WarpConfig)})
      if unknown:
        raise ValueError(f"unknown warp option(s) {unknown}; choose from "
                         f"{', '.join(f.name for f in dataclasses.fields(WarpConfig))}")
      return WarpConfig(**value)
    raise ValueError(f"warp options must be a WarpConfig or a dict, got {type(value).__name__}")


def _worlds(fn):
  """`fn(*arrays)` whose arrays all have a leading batch axis, callable under any number of vmaps: the vmapped
  axes are folded into the leading one, so MuJoCo Warp sees one batch of worlds (and sizes its buffers for it)."""

  @jax.custom_batching.custom_vmap
  def call(*args):
    return fn(*args)

  @call.def_vmap
  def rule(axis_size, in_batched, *args):
    args = jax.tree.map(lambda x, b: x if b else jnp.broadcast_to(x, (axis_size,) + x.shape), list(args),
                        list(in_batched))
    out = call(*jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), args))
    out = jax.tree.map(lambda y: y.reshape((axis_size, -1) + y.shape[1:]), out)
    return out, jax.tree.map(lambda _: True, out)

  return call


class WarpPhysics:
  """Batched MJX-Warp physics on the stock model, behind the backend interface used by `FetchEnv`."""

  name = "warp"

  def __init__(self, task: FetchTask, reset: scene.ResetState, physics: str = "fast", config=None, pixels=None):
    if not warp_available():
      raise RuntimeError("backend 'warp' needs warp-lang (pip install 'mujoco-mjx[warp]'; fetchjax installs it)")
    if physics not in scene.PHYSICS_PROFILES:
      raise ValueError(f"unknown physics profile '{physics}'; choose from {sorted(scene.PHYSICS_PROFILES)}")
    self.task, self.config, self.physics = task, WarpConfig.of(config), physics
    stock, _ = scene.stock_model(task)
    self.mj = copy_model(stock)
    for k, v in scene.PHYSICS_PROFILES[physics].items():
      if v is not None:
        setattr(self.mj.opt, k, v)
    for k in ("iterations", "ls_iterations", "tolerance"):
      if getattr(self.config, k) is not None:
        setattr(self.mj.opt, k, getattr(self.config, k))
    self.ids = scene.SceneIds.of(self.mj)
    self.contacts_per_env = self.config.contacts_per_env or DEFAULT_CONTACTS[task.has_object]
    self.njmax = self.config.njmax or DEFAULT_NJMAX[task.has_object]
    graph_mode = None if self.config.graph_mode is None else getattr(_mjxw.types.GraphMode, self.config.graph_mode)
    with contextlib.redirect_stdout(io.StringIO()):
      m = mjx.put_model(self.mj, impl="warp", graph_mode=graph_mode)
    # MuJoCo Warp prints (from inside its kernels) when a buffer overflows (kept: raise contacts_per_env/njmax) and
    # when the solver hits its iteration caps. The latter is routine here: in float32 the XML's tolerance 1e-8 is
    # rarely met once contacts are active, so the solve runs to the cap (8 with physics="fast"); not printed.
    ot = _mjxw.mjwp_types.OverflowType
    quiet = int(m.opt._impl.warn_overflow) & ~int(ot.ITERATIONS | ot.LS_ITERATIONS)  # pylint: disable=protected-access
    self.m = m.tree_replace({"opt._impl.warn_overflow": quiet})
    self.observer = Observer(task, self.mj)
    self._reset = reset
    self._fq = np.array(self.ids.finger_qposadr)
    self._step_worlds = _worlds(self._step_and_reset_flat)
    self._reset_worlds = _worlds(self._reset_flat)
    self.pixels = pixels
    if pixels is not None:
      from fetchjax.envs.pixels import WarpRenderer

      self.renderer = WarpRenderer(task, pixels)
      self._step_render_worlds = _worlds(self._step_render_flat)
      self._reset_render_worlds = _worlds(self._reset_render_flat)

  @property
  def render(self):
    """With pixels: frames are rendered by `reset_render` / `step_render` inside the step (None without)."""
    return None if self.pixels is None else self.step_render

  # --- the compact state <-> Warp data ---------------------------------------------------------------
  @functools.lru_cache(maxsize=None)
  def _template(self, n: int):
    """A Warp `mjx.Data` for one world with buffers sized for `n` worlds, as numpy, and its shared (non-world)
    contact fields reduced to one row each (rebuilt by broadcasting inside the program: a 32k-world contact
    buffer would otherwise be a ~250 MB constant of the compiled program)."""
    with contextlib.redirect_stdout(io.StringIO()), jax.ensure_compile_time_eval():  # called while tracing
      d = mjx.make_data(self.mj, impl="warp", naconmax=self.contacts_per_env * n, njmax=self.njmax)
      d = jax.tree.map(np.asarray, d)
    shared = {}
    for f in dataclasses.fields(d._impl):  # pylint: disable=protected-access
      v = getattr(d._impl, f.name)  # pylint: disable=protected-access
      if f.name.startswith("contact__") and isinstance(v, np.ndarray) and v.ndim and v.shape[0] > 1:
        if not np.all(v == v[:1]):
          raise RuntimeError(f"unexpected non-uniform initial Warp field {f.name}")
        shared[f.name] = (v[:1], v.shape)
    return d, shared

  def _data(self, st: dict) -> mjx.Data:
    """The batched Warp data of a compact state (leading axis = worlds)."""
    n = st["qpos"].shape[0]
    tmpl, shared = self._template(n)
    impl = tmpl._impl.replace(**{k: jnp.broadcast_to(row, shape) for k, (row, shape) in shared.items()})  # pylint: disable=protected-access
    d0 = tmpl.replace(_impl=impl)

    def one(x):
      return d0.tree_replace({path: x[_key(path)] for path in CARRIED})

    return jax.vmap(one)({_key(p): st[_key(p)] for p in CARRIED})

  def _compact(self, d) -> dict:
    g = self.ids.gripper_body
    n = d.qpos.shape[0]
    impl = d._impl  # pylint: disable=protected-access
    return {**{_key(p): _get(d, p) for p in CARRIED},
            "gripper_pose": jnp.concatenate([d.xpos[:, g], d.xquat[:, g]], axis=-1),
            "nefc": impl.nefc.astype(jnp.int32).reshape(n),
            "nacon": jnp.broadcast_to(impl.nacon.astype(jnp.int32).reshape(-1)[0], (n,))}

  def capacity(self, state) -> dict:
    """Constraint rows and contacts of the last step vs the buffers (max over envs; `nacon` counts all the
    worlds of one physics call together). An overflow means dropped contacts or rows: raise the buffers."""
    nefc, nacon = int(np.max(np.asarray(state["nefc"]))), int(np.max(np.asarray(state["nacon"])))
    n = int(np.prod(np.asarray(state["nefc"]).shape))
    return {"nefc_max": nefc, "njmax": self.njmax, "nacon_max": nacon, "contacts_per_env": self.contacts_per_env,
            "naconmax_for_batch": self.contacts_per_env * n,
            "overflow": bool(nefc > self.njmax or nacon > self.contacts_per_env * n)}

  # --- physics on flat batches of worlds -----------------------------------------------------------------
  def _forward(self, d):
    return jax.vmap(mjx.forward, in_axes=(None, 0))(self.m, d)

  def _observe(self, d):
    return jax.vmap(self.observer)(d)

  def _velocity_stage(self, d):
    """cvel and cdof_dot of the current qpos/qvel (C's mj_comVel), so that MuJoCo Warp's weld J̇·v term, which it
    builds in the position stage from the PREVIOUS substep's cvel/cdof_dot, uses this substep's, as C does.
    Kinematics and com_pos run as Warp kernels; the velocity pass is a static loop over the bodies in JAX."""
    d = jax.vmap(smooth.com_pos, in_axes=(None, 0))(self.m, jax.vmap(smooth.kinematics, in_axes=(None, 0))(self.m, d))
    cvel, cdof_dot = jax.vmap(self._com_vel)(d.cdof, d.qvel)
    return d.replace(cvel=cvel, cdof_dot=cdof_dot)

  def _com_vel(self, cdof, qvel):
    """mj_comVel for one world: body spatial velocities (com-based) and cdof_dot, body by body (parents first)."""
    mj = self.mj
    cvel = [jnp.zeros(6, cdof.dtype)] * mj.nbody
    cdof_dot = [None] * mj.nv
    for b in range(1, mj.nbody):
      cv = cvel[int(mj.body_parentid[b])]
      for j in range(int(mj.body_jntadr[b]), int(mj.body_jntadr[b]) + int(mj.body_jntnum[b])):
        adr, typ = int(mj.jnt_dofadr[j]), int(mj.jnt_type[j])
        if typ == int(mujoco.mjtJoint.mjJNT_FREE):
          for k in range(3):  # translational dofs: cdof_dot = 0
            cdof_dot[adr + k] = jnp.zeros(6, cdof.dtype)
          cv = cv + cdof[adr:adr + 3].T @ qvel[adr:adr + 3]
          adr, typ = adr + 3, int(mujoco.mjtJoint.mjJNT_BALL)
        if typ == int(mujoco.mjtJoint.mjJNT_BALL):
          for k in range(3):
            cdof_dot[adr + k] = mjx_math.motion_cross(cv, cdof[adr + k])
          cv = cv + cdof[adr:adr + 3].T @ qvel[adr:adr + 3]
        else:  # hinge, slide
          cdof_dot[adr] = mjx_math.motion_cross(cv, cdof[adr])
          cv = cv + cdof[adr] * qvel[adr]
      cvel[b] = cv
    return jnp.stack(cvel), jnp.stack(cdof_dot)

  def _reset_data(self, object_xy):
    """mj_resetData + the reset qpos/qvel/time (object xy given) + mj_forward, for a flat batch of worlds."""
    n, rs = object_xy.shape[0], self._reset
    qpos = jnp.broadcast_to(jnp.asarray(rs.qpos, jnp.float32), (n, self.mj.nq))
    if self.task.has_object:
      adr = self.ids.object_qposadr
      qpos = qpos.at[:, adr:adr + 2].set(object_xy.astype(jnp.float32))
    st = self._initial(n)
    st.update(qpos=qpos, qvel=jnp.broadcast_to(jnp.asarray(rs.qvel, jnp.float32), (n, self.mj.nv)),
              time=jnp.full((n,), rs.time, jnp.float32))
    return self._forward(self._data(st))

  def _step_data(self, d, action, gripper_pose):
    """One env step of a flat batch of worlds: mocap target, 20 substeps, blocked fingers, mj_forward."""
    d = self._physics_data(d, action, gripper_pose)
    if not self.task.block_gripper:  # no _step_callback: the observation and the next mocap target read the
      return d                       # kinematics mj_step left (before the last substep's integration), as C does
    d = d.replace(qpos=d.qpos.at[:, self._fq].set(0.0))  # _step_callback: fingers to 0 (qvel untouched), mj_forward
    return self._forward(d)  # also what the observation reads

  def _physics_data(self, d, action, gripper_pose):
    """Mocap target and the substeps of a flat batch of worlds."""
    # _set_action + mocap_set_action: target = current gripper_link pose + 0.05 a, quat + (1,0,1,0) unnormalised.
    d = d.replace(mocap_pos=(gripper_pose[:, :3] + action[:, :3] * 0.05)[:, None],
                  mocap_quat=(gripper_pose[:, 3:] + jnp.array([1.0, 0.0, 1.0, 0.0], jnp.float32))[:, None])
    if self.mj.nu:  # _set_action: gripper ctrl [a3, a3] (zeros when blocked)
      grip = (jnp.zeros_like(action[:, 3]) if self.task.block_gripper else action[:, 3])[:, None]
      d = d.replace(ctrl=jnp.where(np.array(self.ids.actuator_relative),
                                   d.qpos[:, np.array(self.ids.actuator_qposadr, int)] + grip, grip))
    step = jax.vmap(mjx.step, in_axes=(None, 0))
    if self.config.fresh_jdotv:
      substep = lambda _, x: step(self.m, self._velocity_stage(x))  # noqa: E731
    else:
      substep = lambda _, x: step(self.m, x)  # noqa: E731
    return jax.lax.fori_loop(0, self.task.n_substeps, substep, d)

  def physics_step(self, state, action):
    """Mocap target + the substeps from the compact state, back to the compact state (no final forward: the
    gripper pose is that of the last substep's position stage). One flat batch of worlds, not folded across vmaps: for
    timing the physics alone."""
    return self._compact(self._physics_data(self._data(state), action.astype(jnp.float32), state["gripper_pose"]))

  def snapshot(self, state, k: int):
    return state["qpos"][:k]

  def replay(self, snapshots) -> Replay:
    return Replay(np.asarray(snapshots, np.float64))

  def observe_states(self, qpos, qvel):
    """(observation, achieved goal) of given MuJoCo states [n, nq], [n, nv] after mj_forward (parity checks)."""
    st = self._initial(qpos.shape[0])
    st.update(qpos=qpos.astype(jnp.float32), qvel=qvel.astype(jnp.float32))
    return self._observe(self._forward(self._data(st)))

  def _initial(self, n: int) -> dict:
    tmpl, _ = self._template(n)
    return {_key(p): jnp.broadcast_to(_get(tmpl, p), (n,) + _get(tmpl, p).shape) for p in CARRIED}

  def _reset_flat(self, object_xy):
    d = self._reset_data(object_xy)
    return (self._compact(d), *self._observe(d))

  def _step_flat(self, st, action):
    d = self._step_data(self._data(st), action, st["gripper_pose"])
    return (self._compact(d), *self._observe(d))

  # --- batched interface ---------------------------------------------------------------------------------
  def reset(self, object_xy):
    return self._reset_worlds(jnp.asarray(object_xy, jnp.float32))

  def step(self, state, action, reset_mask, reset_xy):
    return self._step_worlds(state, action.astype(jnp.float32), reset_mask, jnp.asarray(reset_xy, jnp.float32))

  # --- pixels: MJX-Warp's batch renderer on the same flat batch of worlds ----------------------------------
  def _frames(self, d, goal):
    return self.renderer(d.geom_xpos, d.geom_xmat, goal)

  def reset_render(self, object_xy, goal):
    return self._reset_render_worlds(jnp.asarray(object_xy, jnp.float32), jnp.asarray(goal, jnp.float32))

  def step_render(self, state, action, reset_mask, reset_xy, goal_last, goal_next):
    return self._step_render_worlds(state, action.astype(jnp.float32), reset_mask, jnp.asarray(reset_xy, jnp.float32),
                                    jnp.asarray(goal_last, jnp.float32), jnp.asarray(goal_next, jnp.float32))

  def _reset_render_flat(self, object_xy, goal):
    d = self._reset_data(object_xy)
    return (self._compact(d), *self._observe(d), self._frames(d, goal))

  def _step_render_flat(self, state, action, reset_mask, reset_xy, goal_last, goal_next):
    """`_step_and_reset_flat` with the frames of the step's state (goal_last) and of the next observation (the
    reset state with goal_next where an env resets: rendered only on steps where some env does)."""
    d = self._step_data(self._data(state), action, state["gripper_pose"])
    st, (obs, ag) = self._compact(d), self._observe(d)
    frame = self._frames(d, goal_last)

    def with_reset(_):
      dr = self._reset_data(reset_xy)
      st_r, (obs_r, ag_r), frame_r = self._compact(dr), self._observe(dr), self._frames(dr, goal_next)
      pick = lambda a, b: jnp.where(reset_mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
      st_n = jax.tree.map(pick, st_r, st)
      st_n["nacon"], st_n["nefc"] = st["nacon"], st["nefc"]
      return st_n, pick(obs_r, obs), pick(ag_r, ag), pick(frame_r, frame)

    st_next, obs_next, ag_next, frame_next = jax.lax.cond(jnp.any(reset_mask), with_reset,
                                                          lambda _: (st, obs, ag, frame), None)
    return st_next, obs_next, ag_next, obs, ag, frame_next, frame

  def _step_and_reset_flat(self, state, action, reset_mask, reset_xy):
    """The step with auto-reset on one flat batch of worlds (inside `_worlds`, so the cond below sees a plain
    predicate even when the caller vmaps over seeds: a batched predicate would run the reset on every step)."""
    st, obs, ag = self._step_flat(state, action)

    def with_reset(_):
      st_r, obs_r, ag_r = self._reset_flat(reset_xy)
      pick = lambda a, b: jnp.where(reset_mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
      st_n = jax.tree.map(pick, st_r, st)
      st_n["nacon"], st_n["nefc"] = st["nacon"], st["nefc"]  # the step's counts (the reset's are smaller)
      return st_n, pick(obs_r, obs), pick(ag_r, ag)

    # Episodes are synchronous (fixed length), so most steps skip the reset computation entirely.
    st_next, obs_next, ag_next = jax.lax.cond(jnp.any(reset_mask), with_reset, lambda _: (st, obs, ag), None)
    return st_next, obs_next, ag_next, obs, ag

def copy_model(m: mujoco.MjModel) -> mujoco.MjModel:
  """A copy of a compiled model (solver options are set on the copy, never on the shared stock model)."""
  import copy

  return copy.deepcopy(m)
