"""C MuJoCo physics behind the functional JAX API, for CPUs.

MJX-JAX on a CPU runs this scene ~10x slower than single-thread C MuJoCo (docs/PERFORMANCE.md), so on CPU
the default backend steps the *stock* gymnasium-robotics model with C MuJoCo, batched over a thread pool
(MuJoCo releases the GIL in mj_step), reached from jitted code through `jax.pure_callback`.

The physics state travels as the float64 `mjSTATE_INTEGRATION` vector viewed as uint32 pairs, so a state
round-trips bit-exactly even with JAX's default float32, and `step` stays a pure function of its inputs:
the trajectories are gymnasium-robotics' own, bit for bit.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import os
import threading
import weakref

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from fetchjax.envs import reference, scene
from fetchjax.envs.backend import Replay

reference.import_gymnasium_robotics()  # quietly, before the submodule import below triggers the package's notices
from gymnasium_robotics.utils.rotations import mat2euler as np_mat2euler  # noqa: E402
from fetchjax.envs.tasks import FetchTask

_STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION


def default_threads() -> int:
  return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class _HostSim:
  """The numpy side: steps and resets env batches with C MuJoCo, one MjData per worker thread."""

  def __init__(self, task: FetchTask, m: mujoco.MjModel, reset: scene.ResetState, threads: int, pixels=None):
    self.task, self.m, self.reset_state = task, m, reset
    self.ids = scene.SceneIds.of(m)
    self.nstate = mujoco.mj_stateSize(m, _STATE_SPEC)
    # Without the blocked-finger mj_forward (PickAndPlace), gymnasium's next step reads the gripper pose that
    # mj_step left: the kinematics before the last substep's integration, not those of the current qpos. That pose
    # rides after the mjSTATE vector (pos 3 + quat 4); blocked tasks recompute it from qpos (same bits, no extra).
    self.npose = 0 if task.block_gripper else 7
    self.nrow = self.nstate + self.npose
    self.dt = task.n_substeps * m.opt.timestep
    self.threads = threads
    self._datas = [mujoco.MjData(m) for _ in range(threads)]
    self._pool = concurrent.futures.ThreadPoolExecutor(threads) if threads > 1 else None
    self.pixels = pixels
    self._slots = None
    if pixels is not None:
      # An OpenGL context is current in ONE thread: with pixels, range k always runs on the single thread of slot k
      # (even with one thread, since JAX may run the callback on any of its threads), which owns its renderer.
      self._pool = None
      self._local = threading.local()
      self._slots = [concurrent.futures.ThreadPoolExecutor(1, initializer=_set_slot, initargs=(self._local, k))
                     for k in range(threads)]
      self._renderers: list = []  # (slot executor, GLRenderer): freed on their own threads by `close`
      weakref.finalize(self, _close_renderers, self._slots, self._renderers)
    self.obs_size = task.obs_size
    self._fq, self._fv = np.array(self.ids.finger_qposadr), np.array(self.ids.finger_dofadr)
    self._quat_delta = np.array([1.0, 0.0, 1.0, 0.0])
    self._act_qposadr = np.array(self.ids.actuator_qposadr, int)
    self._act_relative = np.array(self.ids.actuator_relative, bool)

  # Work on index ranges of the batch, one range per thread.
  def _parallel(self, fn, n):
    if self._slots is not None:
      bounds = np.linspace(0, n, min(self.threads, n) + 1).astype(int)
      futures = [self._slots[k].submit(fn, self._datas[k], range(bounds[k], bounds[k + 1]))
                 for k in range(len(bounds) - 1)]
      for f in futures:
        f.result()
      return
    if self._pool is None or n < 2:
      fn(self._datas[0], range(n))
      return
    bounds = np.linspace(0, n, min(self.threads, n) + 1).astype(int)
    futures = [self._pool.submit(fn, self._datas[k], range(bounds[k], bounds[k + 1]))
               for k in range(len(bounds) - 1)]
    for f in futures:
      f.result()

  def _renderer(self):
    """This worker thread's GL renderer (made on first use, in the thread that will use it)."""
    r = getattr(self._local, "renderer", None)
    if r is None:
      from fetchjax.envs.pixels import GLRenderer

      r = self._local.renderer = GLRenderer(self.task, self.pixels)
      if not self._renderers:  # after the GL library registered its own exit hook, so that this one runs first
        atexit.register(_free_contexts_at_exit, self._renderers)
      self._renderers.append((self._slots[self._local.slot], r))
    return r

  def _frames(self, n):
    s = self.pixels.size
    return np.zeros((n, s, s, 3), np.uint8)

  def close(self):
    """Frees the GL renderers and the worker threads (also done when the backend is garbage collected)."""
    if self._slots is not None:
      _close_renderers(self._slots, self._renderers)

  def _new_buffers(self, n):
    nv = self.m.nv
    # zeros, not empty: rows a step does not reset are never written and must stay finite.
    return dict(state=np.zeros((n, self.nrow)), grip=np.zeros((n, 3)), jac=np.zeros((n, 3, 3, nv)),
                qvel=np.zeros((n, nv)), fq=np.zeros((n, 2)), fv=np.zeros((n, 2)), opos=np.zeros((n, 3)),
                omat=np.tile(np.eye(3), (n, 1, 1)))

  def _record(self, d, i, buf):
    """Everything `generate_mujoco_observations` reads, from a forwarded MjData."""
    ids, m = self.ids, self.m
    buf["grip"][i] = d.site_xpos[ids.grip_site]
    mujoco.mj_jacSite(m, d, buf["jac"][i, 0], None, ids.grip_site)
    if self.task.has_object:
      buf["opos"][i] = d.site_xpos[ids.object_site]
      buf["omat"][i] = d.site_xmat[ids.object_site].reshape(3, 3)
      mujoco.mj_jacSite(m, d, buf["jac"][i, 1], buf["jac"][i, 2], ids.object_site)
    buf["qvel"][i] = d.qvel
    buf["fq"][i] = d.qpos[self._fq]
    buf["fv"][i] = d.qvel[self._fv]
    self._get_state(d, buf["state"][i])

  def _get_state(self, d, row):
    """mjSTATE_INTEGRATION (+ the gripper pose the next step's mocap target starts from, see `npose`)."""
    mujoco.mj_getState(self.m, d, row[:self.nstate], _STATE_SPEC)
    if self.npose:
      gid = self.ids.gripper_body
      row[self.nstate:self.nstate + 3] = d.xpos[gid]
      row[self.nstate + 3:] = d.xquat[gid]

  def _observations(self, buf):
    """`_get_obs` vectorised over the batch (float64, as upstream), returned as float32."""
    dt = self.dt
    vel = np.einsum("nkjv,nv->nkj", buf["jac"], buf["qvel"]) * dt
    grip_velp = vel[:, 0]
    parts = [buf["grip"]]
    if self.task.has_object:
      parts += [buf["opos"], buf["opos"] - buf["grip"]]
    parts.append(buf["fq"])
    if self.task.has_object:
      parts += [np_mat2euler(buf["omat"]), vel[:, 1] - grip_velp, vel[:, 2]]
    parts += [grip_velp, buf["fv"] * dt]
    achieved = buf["opos"] if self.task.has_object else buf["grip"]
    return np.concatenate(parts, axis=-1).astype(np.float32), achieved.astype(np.float32)

  def _reset_into(self, d, xy):
    """MujocoRobotEnv._reset_sim with the object position given."""
    rs = self.reset_state
    mujoco.mj_resetData(self.m, d)
    d.time = rs.time
    d.qpos[:] = rs.qpos
    d.qvel[:] = rs.qvel
    if self.task.has_object:
      d.qpos[self.ids.object_qposadr:self.ids.object_qposadr + 2] = xy
    mujoco.mj_forward(self.m, d)

  def _advance(self, d, state, action):
    """The physics of one env step from `state`: mocap target from the gripper pose, then the substeps."""
    m, gid = self.m, self.ids.gripper_body
    mujoco.mj_setState(m, d, state[:self.nstate], _STATE_SPEC)
    if self.npose:  # the pose mj_step (or the reset's mj_forward) left
      pos, quat = state[self.nstate:self.nstate + 3], state[self.nstate + 3:]
    else:
      mujoco.mj_kinematics(m, d)  # xpos/xquat of the gripper, as left by the last forward
      pos, quat = d.xpos[gid], d.xquat[gid]
    # _set_action/mocap_set_action: 0.05*a in the action's dtype, added to the body pose in float64.
    d.mocap_pos[0] = pos + action[:3] * 0.05
    d.mocap_quat[0] = quat + self._quat_delta
    if m.nu:  # _set_action: gripper ctrl [a3, a3] (zeros when blocked), float32 widened to float64
      grip = 0.0 if self.task.block_gripper else np.float64(np.float32(action[3]))
      d.ctrl[:] = np.where(self._act_relative, d.qpos[self._act_qposadr] + grip, grip)
    mujoco.mj_step(m, d, nstep=self.task.n_substeps)

  def physics_step(self, state, action):
    """`_advance` alone for every env: no blocked fingers, observation or reset."""
    lead = state.shape[:-1]
    st = np.ascontiguousarray(state).reshape(-1, 2 * self.nrow).view(np.float64).copy()
    action = np.asarray(action).reshape(-1, 4)

    def work(d, idx):
      for i in idx:
        self._advance(d, st[i], action[i])
        self._get_state(d, st[i])

    self._parallel(work, len(st))
    return st.view(np.uint32).reshape(lead + (-1,))

  def observe_states(self, qpos, qvel):
    """(observation, achieved goal) of given qpos/qvel after mj_forward, as `_get_obs` computes them."""
    qpos, qvel = np.asarray(qpos, np.float64), np.asarray(qvel, np.float64)
    buf = self._new_buffers(len(qpos))

    def work(d, idx):
      for i in idx:
        d.qpos[:], d.qvel[:] = qpos[i], qvel[i]
        mujoco.mj_forward(self.m, d)
        self._record(d, i, buf)

    self._parallel(work, len(qpos))
    return self._observations(buf)

  def reset(self, object_xy, exact_xy=None, goal=None):
    object_xy = np.asarray(object_xy, np.float64)
    if exact_xy is not None:  # float64 bits, lossless
      object_xy = np.ascontiguousarray(exact_xy).view(np.float64).reshape(object_xy.shape)
    lead = object_xy.shape[:-1]
    xy = object_xy.reshape(-1, 2)
    buf = self._new_buffers(len(xy))
    if goal is not None:
      goal = np.asarray(goal, np.float64).reshape(-1, 3)
      frames = self._frames(len(xy))

    def work(d, idx):
      for i in idx:
        self._reset_into(d, xy[i])
        self._record(d, i, buf)
        if goal is not None:
          frames[i] = self._renderer().frame(d.qpos, goal[i])

    self._parallel(work, len(xy))
    obs, ag = self._observations(buf)
    out = (buf["state"].view(np.uint32).reshape(lead + (-1,)), obs.reshape(lead + obs.shape[-1:]),
           ag.reshape(lead + (3,)))
    return out if goal is None else out + (frames.reshape(lead + frames.shape[1:]),)

  def step(self, state, action, reset_mask, reset_xy, goal_last=None, goal_next=None):
    """With goals (pixels): also the frames of the next observation and of the step's own (goal_last: the
    episode's goal; goal_next: the next observation's, a fresh one where an env resets)."""
    lead = state.shape[:-1]
    state = np.ascontiguousarray(state).reshape(-1, 2 * self.nrow).view(np.float64)
    action = np.asarray(action).reshape(-1, 4)
    mask = np.asarray(reset_mask).reshape(-1)
    xy = np.asarray(reset_xy, np.float64).reshape(-1, 2)
    n = len(state)
    term, nxt = self._new_buffers(n), self._new_buffers(n)
    m, task = self.m, self.task
    pixels = goal_last is not None
    if pixels:
      goal_last, goal_next = (np.asarray(g, np.float64).reshape(-1, 3) for g in (goal_last, goal_next))
      f_last, f_next = self._frames(n), self._frames(n)

    def work(d, idx):
      for i in idx:
        self._advance(d, state[i], action[i])
        if task.block_gripper:  # _step_callback
          d.qpos[self._fq] = 0.0
          mujoco.mj_forward(m, d)
        self._record(d, i, term)
        if pixels:
          f_last[i] = self._renderer().frame(d.qpos, goal_last[i])
        if mask[i]:
          self._reset_into(d, xy[i])
          self._record(d, i, nxt)
          if pixels:
            f_next[i] = self._renderer().frame(d.qpos, goal_next[i])
        else:
          nxt["state"][i] = term["state"][i]
          if pixels:
            f_next[i] = f_last[i]

    self._parallel(work, n)
    obs_t, ag_t = self._observations(term)
    obs_n, ag_n = obs_t, ag_t
    if mask.any():  # episodes end together: 49 of 50 steps reset nothing
      obs_r, ag_r = self._observations(nxt)
      obs_n = np.where(mask[:, None], obs_r, obs_t)
      ag_n = np.where(mask[:, None], ag_r, ag_t)
    shape = lambda x: x.reshape(lead + x.shape[-1:])
    out = (shape(nxt["state"].view(np.uint32)), shape(obs_n), shape(ag_n), shape(obs_t), shape(ag_t))
    if pixels:
      frame = lambda f: f.reshape(lead + f.shape[1:])  # noqa: E731
      out += (frame(f_next), frame(f_last))
    return out


def _set_slot(local, k):
  local.slot = k


def _free_contexts_at_exit(renderers):
  """At interpreter exit the worker threads are gone: destroy the GL contexts from here, before EGL terminates its
  display (a context left to the garbage collector after that prints EGL errors). Their GL objects go with them."""
  for _, r in renderers:
    r.abandon()


def _close_renderers(slots, renderers):
  """Frees each GL renderer on the thread that owns its context, then stops the threads."""
  while renderers:
    slot, r = renderers.pop()
    try:
      slot.submit(r.close).result()
    except RuntimeError:  # interpreter exit: the worker threads are gone and EGL/OSMesa free their contexts anyway
      pass
  for s in slots:
    s.shutdown(wait=False)


def state_part(m: mujoco.MjModel, state_f64: np.ndarray, part: mujoco.mjtState) -> np.ndarray:
  """One component of float64 mjSTATE_INTEGRATION vectors [..., nstate] of model `m`: components are stored in
  the order of their bits, so the offset is the size of the lower-bit components."""
  state_f64 = np.asarray(state_f64, np.float64)
  full = int(_STATE_SPEC)
  n = mujoco.mj_stateSize(m, full)
  if state_f64.shape[-1] != n:
    raise ValueError(f"expected mjSTATE_INTEGRATION vectors of size {n}, got {state_f64.shape}")
  start = mujoco.mj_stateSize(m, full & (int(part) - 1))
  return state_f64[..., start:start + mujoco.mj_stateSize(m, int(part))].copy()


class CPhysics:
  """C MuJoCo (stock model) behind the backend interface used by `FetchEnv`."""

  name = "cpu"
  exact_reset = True

  def __init__(self, task: FetchTask, reset: scene.ResetState, threads: int | None = None, pixels=None):
    m, _ = scene.stock_model(task)
    self.host = _HostSim(task, m, reset, threads or default_threads(), pixels)
    self.task, self.pixels = task, pixels

  @property
  def render(self):
    """With pixels: frames are rendered by `reset_render` / `step_render` in the worker threads (None without)."""
    return None if self.pixels is None else self.step_render

  def _frame_shape(self, n):
    s = self.pixels.size
    return jax.ShapeDtypeStruct((n, s, s, 3), jnp.uint8)

  def reset_render(self, object_xy, goal, exact_xy=None):
    """`reset` and the frames [n, S, S, 3] of the reset states with the goal marker at goal [n, 3]."""
    n = object_xy.shape[0]
    host = lambda xy, g, *e: self.host.reset(xy, *(e or (None,)), goal=g)  # noqa: E731
    args = (object_xy, goal) if exact_xy is None else (object_xy, goal, jnp.asarray(exact_xy))
    return jax.pure_callback(host, (*self._shapes(n), self._frame_shape(n)), *args, vmap_method="broadcast_all")

  def step_render(self, state, action, reset_mask, reset_xy, goal_last, goal_next):
    """`step` and the frames of the next observation and of the step's own, in the same callback."""
    n = state.shape[0]
    s, o, a = self._shapes(n)
    f = self._frame_shape(n)
    return jax.pure_callback(self.host.step, (s, o, a, o, a, f, f), state, action.astype(jnp.float32), reset_mask,
                             reset_xy, goal_last.astype(jnp.float32), goal_next.astype(jnp.float32),
                             vmap_method="broadcast_all")

  def _shapes(self, n):
    f32 = jnp.float32
    return (jax.ShapeDtypeStruct((n, 2 * self.host.nrow), jnp.uint32),
            jax.ShapeDtypeStruct((n, self.task.obs_size), f32), jax.ShapeDtypeStruct((n, 3), f32))

  def reset(self, object_xy, exact_xy=None):
    args = (object_xy,) if exact_xy is None else (object_xy, jnp.asarray(exact_xy))
    return jax.pure_callback(self.host.reset, self._shapes(object_xy.shape[0]), *args, vmap_method="broadcast_all")

  def step(self, state, action, reset_mask, reset_xy):
    n = state.shape[0]
    s, o, a = self._shapes(n)
    return jax.pure_callback(self.host.step, (s, o, a, o, a), state, action.astype(jnp.float32), reset_mask,
                             reset_xy, vmap_method="broadcast_all")

  def physics_step(self, state, action):
    return jax.pure_callback(self.host.physics_step, jax.ShapeDtypeStruct(state.shape, jnp.uint32), state,
                             action.astype(jnp.float32), vmap_method="broadcast_all")

  def observe_states(self, qpos, qvel):
    n = qpos.shape[0]
    return jax.pure_callback(self.host.observe_states, self._shapes(n)[1:], qpos, qvel, vmap_method="sequential")

  def snapshot(self, state, k: int):
    return state[:k]  # the whole C state (the bits of float64 mjSTATE_INTEGRATION: qpos and the mocap target)

  def replay(self, snapshots) -> Replay:
    states = self.physics_state(snapshots)
    part = lambda p: state_part(self.host.m, states, p)  # noqa: E731
    return Replay(part(mujoco.mjtState.mjSTATE_QPOS), part(mujoco.mjtState.mjSTATE_MOCAP_POS),
                  part(mujoco.mjtState.mjSTATE_MOCAP_QUAT))

  def physics_state(self, state) -> np.ndarray:
    """The float64 mjSTATE_INTEGRATION vectors of a (batched) pipeline_state (without the carried gripper pose)."""
    s = np.ascontiguousarray(np.asarray(state))
    return s.reshape(s.shape[:-1] + (-1,)).view(np.float64)[..., :self.host.nstate]
