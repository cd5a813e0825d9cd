import warnings

import numpy as np
import pytest

import fetchjax  # noqa: F401  (sets XLA flags before JAX initialises)
from skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401  (hooks)


@pytest.fixture(scope="session")
def gym_make():
  """CPU gymnasium-robotics envs (the reference), unwrapped from TimeLimit."""
  import gymnasium as gym
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import gymnasium_robotics
  gym.register_envs(gymnasium_robotics)
  return lambda env_id: gym.make(env_id).unwrapped


def task_params(ref):
  """The object xy and goal a reset gymnasium-robotics env sampled (to inject into fetchjax)."""
  from fetchjax.eval import task_of

  xy, goal = task_of(ref)
  return xy[None], goal[None]
