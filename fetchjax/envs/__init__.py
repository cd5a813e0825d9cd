"""Fetch Reach/Push/PickAndPlace/Slide (gymnasium-robotics v4) as batched functional JAX environments."""
from __future__ import annotations

from fetchjax.envs import reference
from fetchjax.envs.config import BACKENDS, EnvConfig
from fetchjax.envs.tasks import TASKS, FetchTask

# Light at import (`import fetchjax` imports this package for the gymnasium-robotics shim hook, reference.py):
# the JAX-heavy names load on first use.
_LAZY = {"FetchEnv": "fetch", "State": "fetch", "compute_reward": "goal", "is_success": "goal", "mat2euler": "goal"}


def __getattr__(name):
  if name in _LAZY:
    import importlib

    return getattr(importlib.import_module(f"fetchjax.envs.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'fetchjax.envs' has no attribute {name!r}")

def list_envs() -> list[str]:
  return sorted(TASKS)


def choose_backend(platform: str, nvidia: bool, warp_installed: bool) -> str:
  """`backend="auto"` as a pure function of the default device: C MuJoCo on CPUs (exact, and the fastest there),
  MJX-Warp on NVIDIA (CUDA) GPUs when warp-lang is installed (stock model; expected faster than MJX-JAX there
  but NOT yet measured on a GPU: docs/PERFORMANCE.md), MJX-JAX on other accelerators (TPUs, ROCm GPUs)."""
  if platform == "cpu":
    return "cpu"
  if nvidia and warp_installed:
    return "warp"
  return "mjx"


def default_backend() -> str:
  """The backend `auto` picks here (choose_backend of JAX's default device)."""
  import jax

  platform = jax.default_backend()
  if platform == "cpu":
    return "cpu"
  from jax.extend import backend as _jax_backend

  from fetchjax.envs.warp_backend import warp_available

  return choose_backend(platform, "cuda" in _jax_backend.backends(), warp_available())


def make(env_id: str, num_envs: int = 1, backend: str = "auto", physics: str = "fast", jdotv: bool = True,
         threads: int | None = None, warp=None, pixels=None) -> "FetchEnv":
  """Builds a batched Fetch env.

  backend: "cpu" = C MuJoCo on the stock gymnasium-robotics model (bit-exact; host threads through
    jax.pure_callback), "mjx" = MJX-JAX on the edited model (any accelerator, autodiff), "warp" = MJX-Warp on the
    stock model (NVIDIA GPUs and CPUs; float32), "auto" = `default_backend()` (cpu on CPUs, warp on NVIDIA GPUs).
    Slide runs on cpu and warp only: MJX-JAX has no box-cylinder collider for its puck (mjx raises a ValueError).
  physics (mjx, warp): "fast" (Newton capped at 8 iterations / 16 line-search steps) or "exact" (XML solver).
  jdotv (mjx only): add C MuJoCo's J̇·v weld term (keep on; off only to measure its effect).
  threads (cpu only): worker threads (default: all cores available to this process).
  warp (warp only): a `warp_backend.WarpConfig` or dict (contacts_per_env, njmax, graph_mode).
  pixels (cpu, warp): a `pixels.PixelConfig` (or True for its defaults): the book's pixel observations, rendered
    inside the step (envs/pixels.py); None: the goal-dict observations.
  """
  if env_id not in TASKS:
    raise ValueError(f"unknown env id '{env_id}'; available: {', '.join(list_envs())}")
  if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
    raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
  if backend not in BACKENDS:
    raise ValueError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")
  task = TASKS[env_id]
  from fetchjax.envs import scene

  _, reset = scene.stock_model(task)
  if backend == "auto":
    backend = default_backend()
  if pixels is True:
    from fetchjax.envs.pixels import PixelConfig

    pixels = PixelConfig()
  elif pixels is False:
    pixels = None
  if pixels is not None and backend == "mjx":
    raise ValueError("pixels need a renderer: backend 'mjx' (MJX-JAX) has none; use backend cpu or warp")
  if backend == "cpu":
    from fetchjax.envs.cpu_backend import CPhysics

    physics_backend = CPhysics(task, reset, threads=threads, **({} if pixels is None else {"pixels": pixels}))
  elif backend == "warp":
    from fetchjax.envs.warp_backend import WarpPhysics

    physics_backend = WarpPhysics(task, reset, physics=physics, config=warp,
                                  **({} if pixels is None else {"pixels": pixels}))
  else:
    from fetchjax.envs.mjx_backend import MjxPhysics

    physics_backend = MjxPhysics(task, reset, physics=physics, jdotv=jdotv)
  from fetchjax.envs.fetch import FetchEnv

  return FetchEnv(task, num_envs, physics_backend, pixels=pixels)


__all__ = ["EnvConfig", "BACKENDS", "FetchEnv", "FetchTask", "State", "TASKS", "compute_reward", "is_success", "list_envs", "make",
           "mat2euler", "default_backend", "choose_backend"]
