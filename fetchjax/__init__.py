"""fetchjax: goal-conditioned Fetch manipulation RL on JAX / MuJoCo-MJX."""
from __future__ import annotations

import os as _os


def _set_xla_cpu_flags() -> None:
  # XLA:CPU's fusion emitters make MJX kinematics ~1000x slower on CPU (mjx_port_notes.md §9). Only takes
  # effect if fetchjax is imported before JAX initialises its backends; harmless on GPU.
  flag = "--xla_cpu_use_fusion_emitters=false"
  flags = _os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_use_fusion_emitters" not in flags:
    _os.environ["XLA_FLAGS"] = (flags + " " + flag).strip()


_set_xla_cpu_flags()

__version__ = "0.1.0"


def load_policy(run_dir, seed_index: int = 0, step: int | None = None):
  """The deterministic policy of a trained run as a numpy callable (see `fetchjax.policy.load_policy`)."""
  from fetchjax.policy import load_policy as _load

  return _load(run_dir, seed_index, step)
