"""Pixel observations of book ch9: frames rendered inside the env step, by the physics backend that steps the envs.

What an env with `pixels` observes per env and step (the book's `PixelObservationWrapper`, one frame: the agents
stack frames themselves, `frame_stack`):
  pixels          [S, S, 3] uint8, NHWC: the stock scene from gymnasium's default free camera (fetch_envs.md §10)
                  with the goal marker, S = `PixelConfig.size` (84)
  proprioception  [10] float32: the robot part of the observation (grip_pos, gripper_state, grip_velp, gripper_vel;
                  indices [0,1,2,9,10,20,21,22,23,24] of the 25-D Push vector, the whole 10-D Reach vector)
  achieved_goal, desired_goal [3] float32 (HER recomputes rewards from them)
No `observation` key. With `strict`, achieved_goal (in Push the true object position) stays in the observation
for reward recomputation, and `hidden_keys` names it so that the networks never read it.

Renderers (same scene, `scene.render_model`):
  cpu   C MuJoCo + OpenGL (EGL/OSMesa) in the backend's host worker threads, one GL context per worker thread,
        inside the step's own pure_callback (no extra round trip); the reference image.
  warp  MJX-Warp's batch ray tracer (`mjx.create_render_context`, `refit_bvh`, `render`), jittable, inside
        lax.scan; one render context per flat world count (seeds x envs).
`mode`: "native" renders at `size`; "resize" renders 480 x 480 and resizes with antialiasing (the book's
`env.render()` + PIL BILINEAR path: PIL on the cpu backend, `jax.image.resize(antialias=True)` on warp).
"""
from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

from fetchjax.envs import scene
from fetchjax.envs.tasks import FetchTask

IMAGE_KEY = "pixels"
OBS_KEYS = ("achieved_goal", "desired_goal", "pixels", "proprioception")  # sorted, as the book's Dict space
MODES = ("native", "resize")
SOURCE_SIZE = 480  # gymnasium's default render size, the book's (resize mode)
PUSH_PROPRIO = (0, 1, 2, 9, 10, 20, 21, 22, 23, 24)
# Warp rays per pixel per axis (2: 4 samples averaged). OpenGL draws the model's offscreen buffer with 4x MSAA
# (vis.quality.offsamples = 4), so its edges are antialiased: one ray per pixel would leave 1.2% of an 84x84 frame's
# pixels > 64 grey levels off the OpenGL frame at silhouettes, 2x2 leaves 0.02% (scripts/measure_pixels.py parity).
WARP_SAMPLES = 2  # native mode; "resize" traces 1 ray per 480x480 pixel (its antialiased resize averages them)


@dataclasses.dataclass(frozen=True)
class PixelConfig:
  size: int = 84
  mode: str = "native"
  strict: bool = False

  def __post_init__(self):
    if isinstance(self.size, bool) or not isinstance(self.size, int) or not 8 <= self.size <= SOURCE_SIZE:
      raise ValueError(f"image size must be an integer in [8, {SOURCE_SIZE}], got {self.size!r}")
    if self.mode not in MODES:
      raise ValueError(f"render mode must be one of {', '.join(MODES)}, got {self.mode!r}")

  @property
  def render_size(self) -> int:
    """The size the renderer draws at (before any resize)."""
    return SOURCE_SIZE if self.mode == "resize" else self.size


def proprio_indices(task: FetchTask) -> np.ndarray:
  return np.array(PUSH_PROPRIO if task.has_object else range(task.obs_size))


def hidden_keys(config: PixelConfig | None) -> tuple[str, ...]:
  """Observation keys the networks must not read (kept for reward recomputation)."""
  return ("achieved_goal",) if config is not None and config.strict else ()


def resize_np(frames: np.ndarray, size: int) -> np.ndarray:
  """PIL `Image.resize((size, size), BILINEAR)` of uint8 frames [..., H, W, 3] (the book's path; PIL's bilinear
  filter widens with the scale when downscaling, i.e. antialiases)."""
  from PIL import Image

  frames = np.asarray(frames, np.uint8)
  flat = frames.reshape((-1,) + frames.shape[-3:])
  out = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in flat])
  return out.reshape(frames.shape[:-3] + out.shape[-3:])


def goal_mocap_id(m: mujoco.MjModel) -> int:
  return int(m.body_mocapid[m.body(scene.GOAL_BODY).id])


class GLRenderer:
  """C MuJoCo + OpenGL frames of `scene.render_model` from the book's camera. One per thread: an OpenGL context is
  current in the thread that made it, so a renderer must only be used (and closed) by the thread that built it."""

  def __init__(self, task: FetchTask, config: PixelConfig):
    from fetchjax import render

    m = scene.render_model(task)
    self.config, self.size = config, config.render_size
    self.m = m  # shared read-only; the offscreen buffer size is checked, never set on the cached model
    if self.size > min(m.vis.global_.offwidth, m.vis.global_.offheight):
      raise ValueError(f"the Fetch model's offscreen buffer is smaller than {self.size}")
    self.d = mujoco.MjData(m)
    self.goal_mocap = goal_mocap_id(m)
    self.view = render.Offscreen(m, self.size, self.size, scene.CAMERA_NAME)

  def frame(self, qpos: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """One frame [size, size, 3] uint8 (after the mode's resize) of the scene at qpos with the goal marker at goal."""
    m, d = self.m, self.d
    d.qpos[:] = qpos
    d.mocap_pos[self.goal_mocap] = goal
    mujoco.mj_kinematics(m, d)
    mujoco.mj_camlight(m, d)
    rgb = self.view.render(d)
    if self.config.mode == "resize":
      return resize_np(rgb, self.config.size)
    return np.ascontiguousarray(rgb)

  def close(self):
    self.view.close()

  def abandon(self):
    """`render.Offscreen.abandon`: at interpreter exit, from a thread that did not make the context."""
    self.view.abandon()


def gl_frames(task: FetchTask, config: PixelConfig, qpos, goal) -> np.ndarray:
  """Frames [n, S, S, 3] uint8 of states qpos [n, nq] with goals [n, 3], rendered here with OpenGL (the reference
  image of the parity check; the cpu backend renders the same way in its worker threads)."""
  qpos, goal = np.asarray(qpos, np.float64), np.broadcast_to(np.asarray(goal, np.float64), (len(qpos), 3))
  r = GLRenderer(task, config)
  try:
    return np.stack([r.frame(q, g) for q, g in zip(qpos, goal)])
  finally:
    r.close()


class WarpRenderer:
  """MJX-Warp's batch renderer for flat batches of worlds, from the physics `mjx.Data` of the stock model.

  The render model has the stock geoms plus the goal marker last, and a world-fixed camera and light, so the render
  Data is a template whose geom poses are the physics Data's plus the goal's: the render model is never stepped.
  `nworld` is fixed per Warp render context, so one context is made (at trace time) per flat world count."""

  def __init__(self, task: FetchTask, config: PixelConfig):
    import contextlib
    import io

    import jax
    with contextlib.redirect_stdout(io.StringIO()):
      from mujoco import mjx
    self.task, self.config = task, config
    self.mj = scene.render_model(task)
    self.cam_id = self.mj.camera(scene.CAMERA_NAME).id
    with contextlib.redirect_stdout(io.StringIO()):
      self.m = mjx.put_model(self.mj, impl="warp")
    d = mujoco.MjData(self.mj)
    mujoco.mj_kinematics(self.mj, d)
    mujoco.mj_camlight(self.mj, d)  # camera and light are fixed to the world: any state gives their poses
    with contextlib.redirect_stdout(io.StringIO()), jax.ensure_compile_time_eval():
      tmpl = mjx.make_data(self.mj, impl="warp")
      tmpl = tmpl.tree_replace({"cam_xpos": np.asarray(d.cam_xpos, np.float32),
                                "cam_xmat": np.asarray(d.cam_xmat, np.float32).reshape(-1, 3, 3),
                                "_impl.light_xpos": np.asarray(d.light_xpos, np.float32),
                                "_impl.light_xdir": np.asarray(d.light_xdir, np.float32)})
      self.template = jax.tree.map(np.asarray, tmpl)
    self._contexts = {}

  def _context(self, n: int):
    """The render context for n worlds (made once per n, on the host, while tracing)."""
    if n not in self._contexts:
      import contextlib
      import io

      with contextlib.redirect_stdout(io.StringIO()):
        from mujoco import mjx
        rc = mjx.create_render_context(self.mj, nworld=n, cam_res=(self.config.render_size,) * 2, render_rgb=True,
                                       render_depth=False, use_textures=True, use_shadows=False,
                                       cam_active=[self.cam_id], render_skybox=True,
                                       samples_per_pixel=WARP_SAMPLES if self.config.mode == "native" else 1)
      self._contexts[n] = rc
    return self._contexts[n]

  def __call__(self, geom_xpos, geom_xmat, goal):
    """Frames [n, S, S, 3] uint8 of a flat batch: geom poses [n, ngeom, 3] / [n, ngeom, 3, 3] of the stock model,
    goal [n, 3]."""
    import jax
    import jax.numpy as jnp
    from mujoco import mjx

    n = geom_xpos.shape[0]
    ctx = self._context(n).pytree()
    eye = jnp.broadcast_to(jnp.eye(3, dtype=geom_xmat.dtype), (n, 1, 3, 3))
    xpos = jnp.concatenate([geom_xpos, goal[:, None].astype(geom_xpos.dtype)], axis=1)
    xmat = jnp.concatenate([geom_xmat, eye], axis=1)
    tmpl = self.template
    d = jax.vmap(lambda p, r: tmpl.replace(geom_xpos=p, geom_xmat=r))(xpos, xmat)
    d = jax.vmap(mjx.refit_bvh, in_axes=(None, 0, None))(self.m, d, ctx)
    rgb, _, _ = jax.vmap(mjx.render, in_axes=(None, 0, None))(self.m, d, ctx)
    img = mjx.get_rgb(ctx, 0, rgb)  # float [n, S, S, 3] in [0, 1]; index 0 = the only active camera
    if self.config.mode == "resize":
      s = self.config.size
      img = jax.image.resize(img, (n, s, s, 3), "bilinear", antialias=True)
    return jnp.round(jnp.clip(img, 0.0, 1.0) * 255.0).astype(jnp.uint8)
