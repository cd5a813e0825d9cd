"""Headless pictures of Fetch rollouts: frames with C MuJoCo, MP4/PNG files, learning-curve plots.

Frames come from the *stock* gymnasium-robotics model (`scene.stock_model`) drawn the way gymnasium-robotics'
`rgb_array` mode draws them (free camera `DEFAULT_CAMERA_CONFIG`, goal marker moved by `_render_callback`):
given the same qpos, goal and mocap they are pixel-identical to `env.render()`, so a rollout of either
backend can be replayed from its states alone.

OpenGL backend (no display needed): MUJOCO_GL if the user set it (egl | osmesa | glfw; checked, never
replaced), otherwise EGL if a probe works, otherwise OSMesa. PyOpenGL binds one platform per process on first
use, so a failed EGL attempt would rule out OSMesa for the rest of the process: candidates are therefore
probed in a subprocess, and the context is then made directly from `mujoco.egl` / `mujoco.osmesa` (this works
even though `import mujoco` already ran: `mujoco` only imports PyOpenGL when MUJOCO_GL asks for egl/osmesa).
"""
from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
import warnings

import mujoco
import numpy as np

from fetchjax.envs import scene
from fetchjax.envs.tasks import TASKS

HEADLESS_BACKENDS = ("egl", "osmesa")
INSTALL_HINT = ("install OSMesa (apt-get install libosmesa6) or a working EGL (libegl1 + libegl-mesa0, or the "
                "NVIDIA driver), or set MUJOCO_GL=egl|osmesa")
TARGET_SITE = "target0"

# The only module state: the backend chosen for this process (PyOpenGL cannot switch platforms later).
_backend: str | None = None

# Run by `probe_backend` in a fresh Python: prints one line and exits without interpreter teardown (where
# mujoco.egl's atexit handlers print misleading tracebacks).
_PROBE = """
import ctypes.util, os, sys
backend = sys.argv[1]
try:
  lib = {"egl": "EGL", "osmesa": "OSMesa"}[backend]
  ctypes.CDLL(ctypes.util.find_library(lib) or f"lib{lib}.so")  # PyOpenGL's own error would be cryptic
  import mujoco
  import numpy as np
  if backend == "egl":
    from mujoco.egl import GLContext
  else:
    from mujoco.osmesa import GLContext
  ctx = GLContext(16, 16)
  ctx.make_current()
  m = mujoco.MjModel.from_xml_string(
      "<mujoco><visual><global offwidth='16' offheight='16'/></visual><worldbody><light pos='0 0 2'/>"
      "<geom size='1' rgba='1 1 1 1'/></worldbody></mujoco>")
  d = mujoco.MjData(m)
  mujoco.mj_forward(m, d)
  con = mujoco.MjrContext(m, mujoco.mjtFontScale.mjFONTSCALE_100)
  mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, con)
  cam = mujoco.MjvCamera()
  cam.lookat[:], cam.distance = (0, 0, 0), 4.0
  scn = mujoco.MjvScene(m, 10)
  mujoco.mjv_updateScene(m, d, mujoco.MjvOption(), mujoco.MjvPerturb(), cam, mujoco.mjtCatBit.mjCAT_ALL, scn)
  rect = mujoco.MjrRect(0, 0, 16, 16)
  mujoco.mjr_render(rect, scn, con)
  rgb = np.zeros((16, 16, 3), np.uint8)
  mujoco.mjr_readPixels(rgb, None, rect, con)
  con.free()
  ctx.free()
  if rgb.max() == 0:
    raise RuntimeError("rendered a black frame")
except BaseException as e:
  print(f"{type(e).__name__}: {e}".replace(chr(10), " "), flush=True)
  os._exit(1)
print("ok", flush=True)
os._exit(0)
"""


def _one_line(text: str, limit: int = 200) -> str:
  lines = [s.strip() for s in str(text).strip().splitlines() if s.strip()]
  return (lines[-1] if lines else "no output")[:limit]


@contextlib.contextmanager
def _spawning():
  """Silences JAX's at-fork warning around fork+exec of a helper (GL probe, ffmpeg): the child runs no Python
  and no JAX before exec, so the deadlock it warns about cannot happen."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    yield


def probe_backend(backend: str, timeout: float = 60.0) -> str | None:
  """Renders one tiny frame with `backend` in a fresh Python; None if it worked, else the last error line.

  A subprocess, because a failed attempt in this process would leave PyOpenGL bound to that platform."""
  env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
  try:
    with _spawning():
      r = subprocess.run([sys.executable, "-c", _PROBE, backend], env=env, capture_output=True, text=True,
                         timeout=timeout)
  except (OSError, subprocess.TimeoutExpired) as e:
    return f"{type(e).__name__}: {e}"
  return None if r.returncode == 0 else _one_line(r.stdout or r.stderr or f"exit status {r.returncode}")


def _pyopengl_platform() -> str | None:
  """The platform PyOpenGL already bound in this process (egl, osmesa, glx, ...), None if not loaded yet."""
  if "OpenGL.platform" not in sys.modules:
    return None
  from OpenGL import platform

  name = type(platform.PLATFORM).__name__.lower()
  return name[:-len("platform")] if name.endswith("platform") else name


def _choose_backend() -> str:
  user = os.environ.get("MUJOCO_GL", "").strip().lower()
  if user:  # the user's choice, checked but never replaced
    if user not in HEADLESS_BACKENDS + ("glfw",):
      raise RuntimeError(f"MUJOCO_GL={user!r} cannot render offscreen here; use egl or osmesa, or {INSTALL_HINT}")
    err = probe_backend(user) if user in HEADLESS_BACKENDS else None
    if err is not None:
      raise RuntimeError(f"MUJOCO_GL={user} does not work here ({err}); {INSTALL_HINT}")
    return user
  bound = _pyopengl_platform()
  if bound is not None:
    if bound in HEADLESS_BACKENDS:
      return bound
    raise RuntimeError(f"PyOpenGL was already initialised for {bound!r} in this process; set MUJOCO_GL=egl or "
                       "osmesa before starting Python")
  forced = os.environ.get("PYOPENGL_PLATFORM", "").strip().lower()
  candidates = (forced,) if forced in HEADLESS_BACKENDS else HEADLESS_BACKENDS
  errors = []
  for b in candidates:
    err = probe_backend(b)
    if err is None:
      return b
    errors.append(f"{b}: {err}")
  raise RuntimeError(f"no headless OpenGL backend works ({'; '.join(errors)}); {INSTALL_HINT}")


def gl_backend() -> str:
  """The OpenGL backend of this process, chosen on first call. Raises a one-line RuntimeError if none works."""
  global _backend
  if _backend is None:
    _backend = _choose_backend()
  return _backend


def _gl_context(width: int, height: int):
  backend = gl_backend()
  try:
    if backend == "egl":
      from mujoco.egl import GLContext
    elif backend == "osmesa":
      from mujoco.osmesa import GLContext
    else:
      from mujoco.glfw import GLContext
    ctx = GLContext(width, height)
    ctx.make_current()
  except Exception as e:  # any import/driver failure becomes the one-line message the CLI prints
    raise RuntimeError(f"cannot create a {backend} OpenGL context ({type(e).__name__}: {_one_line(e)}); "
                       f"{INSTALL_HINT}") from e
  return ctx


def default_camera() -> dict:
  """gymnasium-robotics' Fetch camera (fetch_env.DEFAULT_CAMERA_CONFIG), read from the installed package."""
  from gymnasium_robotics.envs.fetch.fetch_env import DEFAULT_CAMERA_CONFIG

  return {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in DEFAULT_CAMERA_CONFIG.items()}


class Offscreen:
  """gymnasium's OffScreenViewer reduced to what Fetch needs, freed explicitly (context manager). Its OpenGL
  context is current in the thread that made it: use (and close) it only there. `camera`: None or a dict (the
  free camera, gymnasium's settings updated by the dict) or a camera of the model (name or id).

  Explicit freeing matters: mujoco.egl terminates its display at exit, and a context left to the garbage
  collector after that prints EGLError tracebacks."""

  def __init__(self, m: mujoco.MjModel, width: int, height: int, camera=None):
    if m.vis.global_.offwidth < width or m.vis.global_.offheight < height:  # a model big enough is only read
      m.vis.global_.offwidth = max(int(m.vis.global_.offwidth), width)  # the offscreen buffer size
      m.vis.global_.offheight = max(int(m.vis.global_.offheight), height)
    self.m, self.gl, self.con = m, None, None
    self.rect = mujoco.MjrRect(0, 0, width, height)
    self.opt, self.pert, self.cam = mujoco.MjvOption(), mujoco.MjvPerturb(), mujoco.MjvCamera()
    if camera is None or isinstance(camera, dict):
      self.cam.type = mujoco.mjtCamera.mjCAMERA_FREE
      for k, v in {**default_camera(), **(camera or {})}.items():
        if k == "lookat":
          self.cam.lookat[:] = v
        else:
          setattr(self.cam, k, v)
    else:  # a camera of the model, by name or id
      cid = camera if isinstance(camera, (int, np.integer)) else mujoco.mj_name2id(
          m, mujoco.mjtObj.mjOBJ_CAMERA, str(camera))
      if not 0 <= cid < m.ncam:
        names = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(m.ncam)]
        raise ValueError(f"unknown camera {camera!r}; the Fetch model has {names}")
      self.cam.type, self.cam.fixedcamid = mujoco.mjtCamera.mjCAMERA_FIXED, int(cid)
    self.gl = _gl_context(width, height)  # GL objects last, so that argument errors leak nothing
    try:
      self.con = mujoco.MjrContext(m, mujoco.mjtFontScale.mjFONTSCALE_150)
      mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self.con)
      self.scn = mujoco.MjvScene(m, 1000)
    except Exception:
      self.close()
      raise

  def render(self, d: mujoco.MjData) -> np.ndarray:
    mujoco.mjv_updateScene(self.m, d, self.opt, self.pert, self.cam, mujoco.mjtCatBit.mjCAT_ALL, self.scn)
    mujoco.mjr_render(self.rect, self.scn, self.con)
    rgb = np.empty((self.rect.height, self.rect.width, 3), np.uint8)
    mujoco.mjr_readPixels(rgb, None, self.rect, self.con)
    return rgb[::-1]  # OpenGL rows start at the bottom

  def close(self):
    if self.con is not None:
      self.con.free()
      self.con = None
    if self.gl is not None:
      self.gl.free()
      self.gl = None

  def abandon(self):
    """Frees the OpenGL context from another thread (at interpreter exit, once its own thread is gone): the GL
    objects of the MjrContext go with it, the MjrContext is dropped unfreed."""
    if self.gl is not None:
      self.gl.free()
    self.gl = self.con = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def render_frames(env_id: str, qpos: np.ndarray, goal: np.ndarray, width: int = 480, height: int = 480,
                  camera=None, mocap_pos: np.ndarray | None = None,
                  mocap_quat: np.ndarray | None = None) -> np.ndarray:
  """RGB frames [T, height, width, 3] uint8 of the stock Fetch scene at joint positions qpos [T, nq].

  goal: [T, 3] or [3], drawn with the `target0` marker as gymnasium-robotics' `_render_callback` does.
  camera: None = gymnasium-robotics' Fetch view; a dict overrides free-camera fields of that view (distance,
    azimuth, elevation, lookat); a str/int selects a camera of the model (e.g. "head_camera_rgb").
  mocap_pos [T, 3] / mocap_quat [T, 4] (optional, e.g. from the cpu backend's `replay`): the translucent green
    crosshair of the mocap target that gymnasium-robotics draws. Not in qpos, so without them it is hidden
    rather than drawn at the world origin; with them (and the same goal) frames match gymnasium-robotics'
    `render()` pixel for pixel on the same GL stack.
  """
  stock, _ = scene.stock_model(TASKS[env_id])
  m = copy.deepcopy(stock)  # marker, buffer size, crosshair are edited; the cached stock model drives physics
  qpos = np.asarray(qpos, np.float64)
  if qpos.ndim != 2 or qpos.shape[1] != m.nq:
    raise ValueError(f"qpos must be [T, {m.nq}] for {env_id}, got {qpos.shape}")
  n = qpos.shape[0]
  goal = np.broadcast_to(np.asarray(goal, np.float64), (n, 3))
  mocap_body = np.nonzero(m.body_mocapid >= 0)[0]
  if mocap_pos is None:
    m.geom_rgba[np.isin(m.geom_bodyid, mocap_body), 3] = 0.0
  else:
    mocap_pos = np.broadcast_to(np.asarray(mocap_pos, np.float64).reshape(-1, m.nmocap, 3), (n, m.nmocap, 3))
    mocap_quat = np.broadcast_to(np.asarray(
        m.body_quat[mocap_body] if mocap_quat is None else mocap_quat, np.float64).reshape(-1, m.nmocap, 4),
        (n, m.nmocap, 4))
  target = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, TARGET_SITE)
  d = mujoco.MjData(m)
  frames = np.empty((n, height, width, 3), np.uint8)
  with Offscreen(m, width, height, camera) as r:
    for t in range(n):
      d.qpos[:] = qpos[t]
      if mocap_pos is not None:
        d.mocap_pos[:], d.mocap_quat[:] = mocap_pos[t], mocap_quat[t]
      mujoco.mj_kinematics(m, d)
      # _render_callback, with the target's own offset (gymnasium-robotics uses site 0, which is target0).
      m.site_pos[target] = goal[t] - (d.site_xpos[target] - m.site_pos[target])
      mujoco.mj_forward(m, d)
      frames[t] = r.render(d)
  return frames


def side_by_side(small: np.ndarray, big: np.ndarray) -> np.ndarray:
  """Frames [T, h, w, 3] (e.g. the agent's 84x84 pixel observations) scaled up to the height of frames
  [T, H, W', 3] with nearest-neighbour sampling (each observed pixel stays a visible block), on their left."""
  small, big = np.asarray(small, np.uint8), np.asarray(big, np.uint8)
  if small.ndim != 4 or big.ndim != 4 or small.shape[0] != big.shape[0]:
    raise ValueError(f"expected frames [T, h, w, 3] and [T, H, W, 3], got {small.shape} and {big.shape}")
  height = big.shape[1]
  width = round(small.shape[2] * height / small.shape[1])
  rows = np.arange(height) * small.shape[1] // height
  cols = np.arange(width) * small.shape[2] // width
  return np.concatenate([small[:, rows][:, :, cols], big], axis=2)


def write_video(frames: np.ndarray, path: str, fps: int = 25) -> str:
  """H.264 MP4 (yuv420p, plays everywhere) of frames [T, H, W, 3] uint8, through imageio-ffmpeg."""
  import imageio.v2 as imageio

  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  # macro_block_size=2: yuv420p needs even sizes only; imageio's default 16 would rescale e.g. 500x500.
  with _spawning(), imageio.get_writer(path, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p",
                                       macro_block_size=2, ffmpeg_log_level="error") as w:
    for f in frames:
      w.append_data(f)
  return path


def write_png(frame: np.ndarray, path: str) -> str:
  import imageio.v3 as iio

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  iio.imwrite(path, np.asarray(frame, np.uint8), extension=".png")
  return path


def smoke_frame(env_id: str = "FetchReachDense-v4", path: str = "fetch_smoke.png", width: int = 480,
                height: int = 480) -> float:
  """Renders the reset scene (goal 10 cm off the gripper, on the table for Push) to a PNG; returns the mean
  pixel value, which is ~0 when the GL stack draws nothing."""
  task = TASKS[env_id]
  _, reset = scene.stock_model(task)
  goal = reset.initial_gripper_xpos + np.array([0.1, 0.1, 0.0])
  if task.has_object:
    goal[2] = reset.height_offset
  frame = render_frames(env_id, reset.qpos[None], goal, width, height)[0]
  write_png(frame, path)
  return float(frame.mean())


def plot_learning_curve(steps: np.ndarray, values: dict[str, np.ndarray], path: str, title: str = "") -> str:
  """PNG with one panel per metric: values[name] is [S, U] (seeds x updates, NaN = no data) against env steps
  [U]; thin line per seed, thick line = mean over the seeds that have data. Uses matplotlib's Agg canvas
  directly, so no pyplot state or display is touched."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import EngFormatter

  steps = np.asarray(steps)
  fig = Figure(figsize=(5.0 * max(1, len(values)), 3.6), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, max(1, len(values)), squeeze=False)[0]
  for ax, (name, v) in zip(axes, values.items()):
    v = np.atleast_2d(np.asarray(v, np.float64))
    if v.shape[1] != steps.shape[0]:
      raise ValueError(f"{name}: expected [S, {steps.shape[0]}] values, got {v.shape}")
    for s, row in enumerate(v):
      ax.plot(steps, row, lw=0.8, alpha=0.45, label=f"seed {s}" if v.shape[0] <= 8 else None)
    ok = ~np.isnan(v)
    count = ok.sum(0)
    mean = np.where(count > 0, np.where(ok, v, 0.0).sum(0) / np.maximum(count, 1), np.nan)  # nanmean, no warning
    ax.plot(steps, mean, color="black", lw=2.0, label=f"mean of {v.shape[0]} seeds")
    ax.set_xlabel("env steps")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 250k, 1M: raw step counts overlap
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  if title:
    fig.suptitle(title)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  return path
