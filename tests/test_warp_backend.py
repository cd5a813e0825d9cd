"""The warp backend (MJX-Warp on the stock model): API, state, batching over vmapped seeds, capacity, knobs.

Small sizes: one Warp step of a few worlds takes ~0.1-0.5 s on 2 CPU cores (kernel launches dominate) and each
program compiles in ~5-15 s (Warp kernels are cached on disk). Parity with gymnasium-robotics: test_warp_parity.py.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fetchjax import envs
from fetchjax.envs import warp_backend

N = 2


@pytest.fixture(scope="module")
def push():
  return envs.make("FetchPush-v4", num_envs=N, backend="warp")


def test_choose_backend_is_a_pure_function_of_the_device():
  assert envs.choose_backend("cpu", False, True) == "cpu"
  assert envs.choose_backend("gpu", True, True) == "warp"      # NVIDIA (CUDA) with warp-lang installed
  assert envs.choose_backend("gpu", True, False) == "mjx"      # no warp-lang
  assert envs.choose_backend("gpu", False, True) == "mjx"      # e.g. ROCm
  assert envs.choose_backend("tpu", False, True) == "mjx"
  assert envs.default_backend() == "cpu"                       # this machine


def test_state_layout_and_observation(push):
  s = jax.jit(push.reset)(jax.random.PRNGKey(0))
  ps = s.pipeline_state
  assert set(ps) == {"qpos", "qvel", "qacc_warmstart", "time", "cvel", "cdof_dot", "subtree_linvel", "gripper_pose",
                     "nefc", "nacon"}
  for k, v in ps.items():  # every leaf has the env axis first: checkpoints, jnp.where resets and vmap just work
    assert v.shape[0] == N, k
  assert ps["qpos"].shape == (N, 22) and ps["qpos"].dtype == jnp.float32
  s = jax.jit(push.step)(s, jnp.zeros((N, 4)))
  obs = np.asarray(s.obs["observation"])
  assert obs.shape == (N, 25) and np.isfinite(obs).all()
  np.testing.assert_array_equal(obs[:, 3:6], np.asarray(s.obs["achieved_goal"]))
  np.testing.assert_array_equal(obs[:, 9:11], 0.0)  # blocked fingers
  cap = push.backend.capacity(s.pipeline_state)
  assert not cap["overflow"] and 0 < cap["nefc_max"] <= cap["njmax"]
  assert push.backend_name == "warp"


def test_compact_state_is_the_full_data(push):
  """Stepping from the compact state (rebuilt into a Warp Data every step) equals carrying the full Data, bit for
  bit; without the velocity-stage fields (and the fresh J̇·v refresh that would hide it) it does not."""
  ph = push.backend
  xy = jnp.array([[1.25, 0.62], [1.45, 0.80]])
  acts = jax.random.uniform(jax.random.PRNGKey(0), (3, N, 4), minval=-1, maxval=1)
  g = ph.ids.gripper_body

  def full(ph, xy, acts):
    def body(d, a):
      d = ph._step_data(d, a, jnp.concatenate([d.xpos[:, g], d.xquat[:, g]], -1))
      return d, ph._compact(d)
    return jax.lax.scan(body, ph._reset_data(xy), acts)[1]

  def compact(ph, xy, acts):
    def body(st, a):
      st = ph._step_flat(st, a)[0]
      return st, st
    return jax.lax.scan(body, ph._reset_flat(xy)[0], acts)[1]

  a, b = jax.jit(lambda x, u: (full(ph, x, u), compact(ph, x, u)))(xy, acts)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)

  # negative control: MuJoCo Warp reads cvel/cdof_dot of the previous forward; dropping them changes the result
  stale = warp_backend.WarpPhysics(push.task, push._reset_state, config={"fresh_jdotv": False})
  carried = warp_backend.CARRIED
  try:
    warp_backend.CARRIED = tuple(p for p in carried if p not in ("cvel", "cdof_dot"))
    a, b = jax.jit(lambda x, u: (full(stale, x, u), compact(stale, x, u)))(xy, acts)
  finally:
    warp_backend.CARRIED = carried
  assert np.abs(np.asarray(a["qpos"]) - np.asarray(b["qpos"])).max() > 1e-7


def test_vmap_over_seeds_folds_into_one_batch_of_worlds(push):
  """jax.vmap(env.reset / env.step) over seeds runs one Warp batch of seeds x envs worlds (buffers sized for all
  of them) and gives each seed exactly what an unvmapped env gives."""
  keys = jax.random.split(jax.random.PRNGKey(3), 2)
  a = jnp.array([[0.5, -0.3, 0.2, 0.0], [-0.4, 0.6, -0.1, 0.0]])

  def run(key):
    s = push.reset(key)
    return push.step(s, a)

  both = jax.jit(jax.vmap(run))(keys)
  assert both.obs["observation"].shape == (2, N, 25) and both.pipeline_state["qpos"].shape == (2, N, 22)
  single = jax.jit(run)
  for i in range(2):
    one = single(keys[i])
    np.testing.assert_array_equal(np.asarray(both.obs["observation"][i]), np.asarray(one.obs["observation"]))
    np.testing.assert_array_equal(np.asarray(both.pipeline_state["qvel"][i]), np.asarray(one.pipeline_state["qvel"]))


def test_capacity_overflow_is_reported():
  env = envs.make("FetchPush-v4", num_envs=1, backend="warp", warp={"contacts_per_env": 1, "njmax": 8})
  s = jax.jit(env.reset)(jax.random.PRNGKey(0))
  cap = env.backend.capacity(s.pipeline_state)
  assert cap["overflow"] and cap["njmax"] == 8 and cap["naconmax_for_batch"] == 1


@pytest.mark.parametrize("warp,msg", [
    ({"contacts_per_env": 0}, "contacts_per_env must be a positive integer"),
    ({"njmax": 2.5}, "njmax must be a positive integer"),
    ({"graph_mode": "TURBO"}, "unknown warp graph_mode"),
    ({"fresh_jdotv": "yes"}, "fresh_jdotv must be true or false"),
    ({"tolerance": -1.0}, "tolerance must be a number >= 0"),
    ({"naconmax": 5}, "unknown warp option"),
    ("fast", "must be a WarpConfig or a dict"),
])
def test_bad_warp_options(warp, msg):
  with pytest.raises(ValueError, match=msg):
    envs.make("FetchReach-v4", backend="warp", warp=warp)


def test_warp_config_defaults():
  c = warp_backend.WarpConfig.of(None)
  assert dataclasses.asdict(c) == {"contacts_per_env": None, "njmax": None, "graph_mode": None, "fresh_jdotv": True,
                                   "iterations": None, "ls_iterations": None, "tolerance": None}
  env = envs.make("FetchReach-v4", backend="warp", physics="exact")
  assert env.backend.mj.opt.iterations == 100 and env.backend.contacts_per_env == 32 and env.backend.njmax == 96
  env = envs.make("FetchReach-v4", backend="warp")  # "fast": Newton capped at 8 / 16 (bit-identical in C)
  assert env.backend.mj.opt.iterations == 8
  assert envs.make("FetchReach-v4", backend="cpu").backend.host.m.opt.iterations == 100  # stock model untouched
  env = envs.make("FetchReach-v4", backend="warp", warp={"iterations": 3, "ls_iterations": 5, "tolerance": 1e-6})
  assert (env.backend.mj.opt.iterations, env.backend.mj.opt.ls_iterations, env.backend.mj.opt.tolerance) == (3, 5, 1e-6)
  assert int(env.backend.m.opt.iterations) == 3


_CACHE_SCRIPT = """
import sys, fetchjax, jax, jax.numpy as jnp, numpy as np
from fetchjax import compile_cache, envs
compile_cache.enable(compile_cache.resolve(sys.argv[1]))
env = envs.make("FetchReach-v4", num_envs=2, backend="warp")
s = jax.jit(lambda k: env.step(env.reset(k), jnp.full((2, 4), 0.5)))(jax.random.PRNGKey(0))
print("OBS", np.asarray(s.obs["observation"]).tobytes().hex())
"""


def test_warp_programs_load_from_the_persistent_compile_cache(tmp_path):
  """A warp program (Warp kernels behind JAX FFI calls) is written to JAX's persistent cache and a fresh process
  loads it instead of compiling (no new entry), with identical results. Safe by construction: the cache key
  contains the FFI target names and call ids, which each process registers while tracing the same program."""
  import os
  import subprocess
  import sys
  from pathlib import Path

  root = Path(__file__).resolve().parent.parent
  cache = tmp_path / "cache"
  outs, entries = [], []
  for _ in range(2):
    r = subprocess.run([sys.executable, "-c", _CACHE_SCRIPT, str(cache)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(root)), cwd=str(root))
    line = [x for x in r.stdout.splitlines() if x.startswith("OBS")]
    assert line, r.stderr[-2000:]
    outs.append(line[0])
    entries.append(sorted(p.name for p in cache.iterdir()))
  assert entries[0] and entries[1] == entries[0]  # the second process compiled nothing new
  assert outs[0] == outs[1]
