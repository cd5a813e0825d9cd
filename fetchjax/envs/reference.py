"""The installed gymnasium-robotics package (the reference implementation), imported in one place.

Every fetchjax module that touches gymnasium-robotics (scene assets, rotations, reference envs for eval,
parity and tests) imports it through `import_gymnasium_robotics`, so its import-time notices (about Adroit
envs, printed to stderr) never reach fetchjax's output, and version shims have one place to live.
"""
from __future__ import annotations

import contextlib
import functools
import io
import warnings


@functools.lru_cache(maxsize=None)
def import_gymnasium_robotics():
  """gymnasium_robotics with its envs registered in gymnasium, imported quietly."""
  import gymnasium as gym

  with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
    warnings.simplefilter("ignore")
    import gymnasium_robotics
  gym.register_envs(gymnasium_robotics)
  return gymnasium_robotics
