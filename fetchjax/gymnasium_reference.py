"""The CPU gymnasium-robotics envs as the reference fetchjax is checked against, and the tasks they sample.

Used by the evaluation protocol (every model is scored on the tasks gymnasium-robotics samples on
`reset(seed=base+i)`), by `python -m parity` and by the tests (reference envs, SB3 fixtures). The package itself is
imported quietly and shimmed by `fetchjax.envs.reference.import_gymnasium_robotics`.
"""
from __future__ import annotations

import functools

import numpy as np

from fetchjax.envs.reference import import_gymnasium_robotics


def gymnasium_make(env_id: str):
  """The CPU gymnasium-robotics env, TimeLimit-wrapped as `gym.make` returns it (`.unwrapped` for the raw env)."""
  import gymnasium as gym

  import_gymnasium_robotics()
  return gym.make(env_id)


def task_of(ref) -> tuple[np.ndarray, np.ndarray]:
  """(object_xy [2], goal [3]) float64 of a reset, unwrapped gymnasium-robotics Fetch env (xy 0 without object)."""
  xy = np.zeros(2)
  if ref.has_object:
    adr = ref.model.jnt_qposadr[ref._model_names.joint_name2id["object0:joint"]]
    xy = ref.data.qpos[adr:adr + 2].copy()
  return xy, ref.goal.copy()


@functools.lru_cache(maxsize=8)
def book_tasks(env_id: str, n: int, seed_base: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(object_xy [n, 2], goal [n, 3]) float64, as CPU gymnasium-robotics samples them on reset(seed=base+i)."""
  ref = gymnasium_make(env_id).unwrapped
  xy, goals = np.zeros((n, 2)), np.zeros((n, 3))
  for i in range(n):
    ref.reset(seed=seed_base + i)
    xy[i], goals[i] = task_of(ref)
  ref.close()
  return xy, goals
