import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import fetchjax  # noqa: F401  (sets XLA flags before JAX initialises)
from fetchjax import compile_cache

# One persistent compilation cache for the test session, in-process and in the CLIs the tests start: the mjx
# programs (~1 min each on 2 cores) compile once. Kept in .pytest_cache between local runs; CI starts empty.
os.environ.setdefault(compile_cache.ENV_VAR, str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax"))
compile_cache.enable(compile_cache.resolve())


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
