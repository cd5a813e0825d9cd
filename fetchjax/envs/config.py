"""`EnvConfig`: what `envs.make` builds, apart from any algorithm: the task, the envs per seed, the physics
backend and its settings. A run records it in meta.json beside the algorithm's config; `make_runner(config, env)`
receives the env built from it (brax style)."""
from __future__ import annotations

import dataclasses

from fetchjax.envs.tasks import TASKS

BACKENDS = ("auto", "cpu", "mjx", "warp")
PHYSICS = ("fast", "exact")


@dataclasses.dataclass(frozen=True)
class EnvConfig:
  env_id: str = "FetchReachDense-v4"
  num_envs: int = 8                   # parallel envs per seed
  backend: str = "auto"               # "auto" (cpu on CPUs, warp on NVIDIA GPUs), "cpu", "mjx", "warp"
  physics: str = "fast"               # mjx, warp: "fast" (capped Newton) or "exact" (the XML's solver settings)
  jdotv: bool = True                  # mjx: C MuJoCo's J̇·v weld term (off only to measure its effect)
  threads: int | None = None          # cpu: worker threads (None: every core this process may use)

  def __post_init__(self):
    if self.env_id not in TASKS:
      raise ValueError(f"unknown env id {self.env_id!r}; available: {', '.join(sorted(TASKS))}")
    if isinstance(self.num_envs, bool) or not isinstance(self.num_envs, int) or self.num_envs < 1:
      raise ValueError(f"num_envs must be a positive integer, got {self.num_envs!r}")
    if self.backend not in BACKENDS:
      raise ValueError(f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
    if self.physics not in PHYSICS:
      raise ValueError(f"physics must be one of {', '.join(PHYSICS)}, got {self.physics!r}")
    if not isinstance(self.jdotv, bool):
      raise ValueError(f"jdotv must be true or false, got {self.jdotv!r}")
    if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                     or self.threads < 1):
      raise ValueError(f"threads must be a positive integer, got {self.threads!r}")

  def make(self):
    """The batched env (`envs.make` with these settings)."""
    from fetchjax import envs

    return envs.make(self.env_id, num_envs=self.num_envs, backend=self.backend, physics=self.physics,
                     jdotv=self.jdotv, threads=self.threads)

  @classmethod
  def from_dict(cls, d: dict) -> "EnvConfig":
    """The EnvConfig a run recorded in meta.json (an unknown key is an error: the file is from another version)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(f"unknown EnvConfig field(s) {unknown}; valid fields: {', '.join(sorted(fields))}")
    return cls(**d)
