"""`EnvConfig`: what `envs.make` builds, apart from any algorithm: the task, the envs per seed, the physics
backend and its settings. A run records it in meta.json beside the algorithm's config; `make_runner(config, env)`
receives the env built from it (brax style)."""
from __future__ import annotations

import dataclasses

from fetchjax.envs.tasks import TASKS

BACKENDS = ("auto", "cpu", "mjx", "warp")
RENDER_MODES = ("native", "resize")
PHYSICS = ("fast", "exact")


@dataclasses.dataclass(frozen=True)
class EnvConfig:
  env_id: str = "FetchReachDense-v4"
  num_envs: int = 8                   # parallel envs per seed
  backend: str = "auto"               # "auto" (cpu on CPUs, warp on NVIDIA GPUs), "cpu", "mjx", "warp"
  physics: str = "fast"               # mjx, warp: "fast" (capped Newton) or "exact" (the XML's solver settings)
  jdotv: bool = True                  # mjx: C MuJoCo's J̇·v weld term (off only to measure its effect)
  threads: int | None = None          # cpu: worker threads (None: every core this process may use)
  pixels: bool = False                # book ch9 observations: pixels (one rendered frame), proprioception, goals
  strict_pixels: bool = False         # pixels, and the networks never read achieved_goal (the true object position)
  image_size: int = 84                # pixels: frames are image_size x image_size RGB uint8
  render_mode: str = "native"         # pixels: "native" (rendered at image_size) or "resize" (480, antialiased resize)

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
    for name in ("pixels", "strict_pixels"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
    if self.strict_pixels and not self.pixels:
      raise ValueError("strict_pixels needs pixels")
    if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or not 8 <= self.image_size <= 480:
      raise ValueError(f"image_size must be an integer in [8, 480], got {self.image_size!r}")
    if self.render_mode not in RENDER_MODES:
      raise ValueError(f"render_mode must be one of {', '.join(RENDER_MODES)}, got {self.render_mode!r}")
    if self.pixels and self.backend == "mjx":
      raise ValueError("pixels need a renderer: backend 'mjx' (MJX-JAX) has none; use backend cpu or warp")

  def make(self):
    """The batched env (`envs.make` with these settings)."""
    from fetchjax import envs

    return envs.make(self.env_id, num_envs=self.num_envs, backend=self.backend, physics=self.physics,
                     jdotv=self.jdotv, threads=self.threads, pixels=self.pixel_config())

  def pixel_config(self):
    """The `pixels.PixelConfig` of these settings (None without pixels)."""
    if not self.pixels:
      return None
    from fetchjax.envs.pixels import PixelConfig

    return PixelConfig(size=self.image_size, mode=self.render_mode, strict=self.strict_pixels)

  @classmethod
  def from_dict(cls, d: dict) -> "EnvConfig":
    """The EnvConfig a run recorded in meta.json (an unknown key is an error: the file is from another version; a
    missing one takes its default, so runs recorded before the pixel fields load as pixels=False)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(f"unknown EnvConfig field(s) {unknown}; valid fields: {', '.join(sorted(fields))}")
    return cls(**d)
