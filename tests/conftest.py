import os
import warnings

import numpy as np
import pytest

# Device-aware numerics. The tests compare float32 results with float32/float64 references (SB3 on CPU torch,
# C MuJoCo) and check bitwise-exact resume. On NVIDIA GPUs JAX computes float32 matmuls with TF32 by default
# (~1e-3 relative) and XLA may use atomics in reductions and scatters (not bit-reproducible): on such a device the
# tests pin full float32 matmuls and XLA:GPU's deterministic ops. Neither setting changes anything on CPU.
if "xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()

import fetchjax  # noqa: E402,F401  (sets XLA flags before JAX initialises)
import jax  # noqa: E402
from skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401  (hooks)

if jax.default_backend() != "cpu":
  jax.config.update("jax_default_matmul_precision", "float32")


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
