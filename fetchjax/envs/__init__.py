"""Fetch Reach/Push (gymnasium-robotics v4) as batched functional JAX environments."""
from __future__ import annotations

from fetchjax.envs.fetch import FetchEnv, State
from fetchjax.envs.goal import compute_reward, is_success, mat2euler
from fetchjax.envs.tasks import TASKS, FetchTask

BACKENDS = ("auto", "cpu", "mjx")


def list_envs() -> list[str]:
  return sorted(TASKS)


def default_backend() -> str:
  """The fastest backend for the default JAX device (docs/PERFORMANCE.md): C MuJoCo on CPUs, MJX elsewhere."""
  import jax

  return "cpu" if jax.default_backend() == "cpu" else "mjx"


def make(env_id: str, num_envs: int = 1, backend: str = "auto", physics: str = "fast", jdotv: bool = True,
         threads: int | None = None) -> FetchEnv:
  """Builds a batched Fetch env.

  backend: "cpu" = C MuJoCo on the stock gymnasium-robotics model (bit-exact; host threads through
    jax.pure_callback), "mjx" = MJX-JAX on the edited model (any accelerator), "auto" = the faster one here.
  physics (mjx only): "fast" (Newton capped at 4 iterations / 8 line-search steps) or "exact" (XML solver).
  jdotv (mjx only): add C MuJoCo's J̇·v weld term (keep on; off only to measure its effect).
  threads (cpu only): worker threads (default: all cores available to this process).
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
  if backend == "cpu":
    from fetchjax.envs.cpu_backend import CPhysics

    physics_backend = CPhysics(task, reset, threads=threads)
  else:
    from fetchjax.envs.mjx_backend import MjxPhysics

    physics_backend = MjxPhysics(task, reset, physics=physics, jdotv=jdotv)
  return FetchEnv(task, num_envs, physics_backend)


__all__ = ["FetchEnv", "FetchTask", "State", "TASKS", "compute_reward", "is_success", "list_envs", "make",
           "mat2euler", "default_backend"]
