"""fetchjax: goal-conditioned Fetch manipulation RL on JAX / MuJoCo-MJX."""
from __future__ import annotations

import os as _os

from fetchjax import xla_flags as _xla_flags

# XLA:CPU flags for the installed jaxlib, set before JAX starts its backends (see fetchjax/xla_flags.py).
_xla_flags.apply(_os.environ)

# gymnasium-robotics 1.4.2 on mujoco >= 3.12: its joint-type assert fails at every Fetch reset. The shim is applied
# in memory whenever gymnasium-robotics is imported in this process, only where a feature check shows it is needed
# (fetchjax/envs/reference.py).
from fetchjax.envs import reference as _reference  # noqa: E402  (light: no jax, mujoco or gymnasium here)

_reference.install_import_hook()

__version__ = "0.1.0"


def load_policy(run_dir, seed_index: int = 0, step: int | None = None):
  """The deterministic policy of a trained run as a numpy callable (see `fetchjax.policy.load_policy`)."""
  from fetchjax.policy import load_policy as _load

  return _load(run_dir, seed_index, step)
