import os
from pathlib import Path

import numpy as np
import pytest

# Device-aware numerics. The tests compare float32 results with float32/float64 references (SB3 on CPU torch,
# C MuJoCo) and check bitwise-exact resume. On NVIDIA GPUs JAX computes float32 matmuls with TF32 by default
# (~1e-3 relative) and XLA may use atomics in reductions and scatters (not bit-reproducible): on such a device the
# tests pin full float32 matmuls and XLA:GPU's deterministic ops. Neither setting changes anything on CPU (the
# flag is known to jaxlib 0.10.2 and 0.11.2 alike, CPU builds included; checked 2026-11-30).
from fetchjax import xla_flags  # noqa: E402  (does not start JAX)

os.environ["XLA_FLAGS"] = xla_flags.merged(os.environ.get("XLA_FLAGS", ""), ("--xla_gpu_deterministic_ops=true",))

import fetchjax  # noqa: E402,F401  (sets XLA flags before JAX initialises)
import jax  # noqa: E402
from fetchjax import compile_cache  # noqa: E402
from skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401  (hooks)

if jax.default_backend() != "cpu":
  jax.config.update("jax_default_matmul_precision", "float32")

# One persistent compilation cache for the test session, in-process and in the CLIs the tests start: the mjx
# programs (~1 min each on 2 cores) compile once. Kept in .pytest_cache between local runs; CI starts empty.
os.environ.setdefault(compile_cache.ENV_VAR, str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax"))
compile_cache.enable(compile_cache.resolve())


@pytest.fixture(scope="session")
def gym_make():
  """CPU gymnasium-robotics envs (the reference), unwrapped from TimeLimit."""
  from fetchjax.gymnasium_reference import gymnasium_make

  return lambda env_id: gymnasium_make(env_id).unwrapped


def task_params(ref):
  """The object xy and goal a reset gymnasium-robotics env sampled (to inject into fetchjax)."""
  from fetchjax.gymnasium_reference import task_of

  xy, goal = task_of(ref)
  return xy[None], goal[None]


@pytest.fixture
def tmpfs(tmp_path):
  """`tmpfs(size, readonly=False) -> Path`: a small filesystem of its own (full-disk and read-only faults).
  Needs root, as in CI and on the dev machines; elsewhere the test is skipped."""
  import subprocess

  made = []

  def make(size: str, readonly: bool = False) -> Path:
    mnt = tmp_path / f"tmpfs{len(made)}"
    mnt.mkdir()
    opts = f"size={size}" + (",ro" if readonly else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True).returncode:
      pytest.skip("cannot mount a tmpfs here (needs root)")
    made.append(mnt)
    return mnt

  yield make
  for m in made:
    subprocess.run(["umount", "-l", str(m)], capture_output=True)
