"""brax interop (fetchjax/envs/brax_adapter.py): brax's Env protocol, a fresh task every episode under brax's own
rollout code, and brax's PPO learning FetchReachDense-v4 through the adapter. C MuJoCo backend (no MJX compile)."""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("brax")

from brax.envs import base as brax_base  # noqa: E402
from brax.envs import training as brax_training  # noqa: E402
from brax.training import acting  # noqa: E402

from fetchjax import envs  # noqa: E402
from fetchjax.encoders import flatten_obs  # noqa: E402
from fetchjax.envs import scene  # noqa: E402
from fetchjax.envs.brax_adapter import BraxFetchEnv, wrap_for_training  # noqa: E402

T = 50


@pytest.fixture(scope="module")
def reach():
  return BraxFetchEnv("FetchReachDense-v4", backend="cpu", threads=1)


@pytest.fixture(scope="module")
def push():
  return BraxFetchEnv("FetchPush-v4", backend="cpu", threads=1)


def _rollout(env, state, n_steps, key, extra=("truncation", "steps", "episode_done", "is_success")):
  """`n_steps` steps of a uniform-random policy through brax's own `acting.generate_unroll` (what brax's PPO and
  SAC collect with)."""

  def policy(obs, k):
    return jax.random.uniform(k, (obs.shape[0], 4), minval=-1.0, maxval=1.0), {}

  return jax.jit(lambda s, k: acting.generate_unroll(env, s, policy, k, n_steps, extra_fields=extra))(state, key)


# --- (a) brax's Env protocol ----------------------------------------------------------------------
@pytest.mark.parametrize("env_name,obs_size", [("reach", 16), ("push", 31)])
def test_brax_env_protocol(env_name, obs_size, request):
  env = request.getfixturevalue(env_name)
  assert isinstance(env, brax_base.Env) and env.unwrapped is env
  assert env.observation_size == obs_size and env.action_size == 4 and env.backend == "cpu"
  assert env.episode_length == T
  n = 3
  s = jax.jit(env.reset)(jax.random.split(jax.random.PRNGKey(0), n))
  assert isinstance(s, brax_base.State)
  assert s.obs.shape == (n, obs_size) and s.obs.dtype == jnp.float32
  for x in (s.reward, s.done, s.info["truncation"], s.info["steps"], s.info["episode_done"], s.metrics["is_success"]):
    assert x.shape == (n,) and x.dtype == jnp.float32
  np.testing.assert_array_equal(s.done, 0.0)
  # SB3's sorted-key flattening of the fetchjax goal dict underneath
  np.testing.assert_array_equal(s.obs, flatten_obs(s.pipeline_state.obs))
  np.testing.assert_array_equal(s.obs[:, :3], s.pipeline_state.obs["achieved_goal"])
  np.testing.assert_array_equal(s.obs[:, 3:6], s.pipeline_state.obs["desired_goal"])
  np.testing.assert_array_equal(s.obs[:, 6:], s.pipeline_state.obs["observation"])

  step = jax.jit(env.step)
  rewards = []
  for t in range(1, T + 1):
    prev = s
    s = step(s, jnp.full((n, 4), 0.2))
    rewards.append(np.asarray(s.reward))
    assert s.obs.shape == (n, obs_size) and s.obs.dtype == jnp.float32
    assert s.reward.dtype == jnp.float32 and s.done.dtype == jnp.float32
    assert jax.tree.structure(s) == jax.tree.structure(prev)  # a scan carry
    np.testing.assert_array_equal(s.info["steps"], float(t))
    expected_done = 1.0 if t == T else 0.0
    np.testing.assert_array_equal(s.done, expected_done)
    np.testing.assert_array_equal(s.info["truncation"], expected_done)  # brax: time limit = truncation
    np.testing.assert_array_equal(s.info["time_out"], expected_done)
  # the episode's last observation (to bootstrap from) vs the next episode's first
  np.testing.assert_array_equal(s.info["final_obs"][:, 3:6], prev.obs[:, 3:6])
  assert not np.allclose(s.obs[:, 3:6], prev.obs[:, 3:6])
  em = s.info["episode_metrics"]
  np.testing.assert_allclose(em["sum_reward"], np.sum(rewards, 0), rtol=1e-5)
  np.testing.assert_array_equal(em["length"], float(T))
  np.testing.assert_array_equal(em["is_success"], s.info["is_success"])  # success of the last step only
  s = step(s, jnp.zeros((n, 4)))  # the next episode: counters restart
  np.testing.assert_array_equal(s.info["steps"], 1.0)
  np.testing.assert_array_equal(s.info["episode_metrics"]["length"], 1.0)
  np.testing.assert_array_equal(s.done, 0.0)


def test_eval_wrapper_counts_one_episode(reach):
  """brax's evaluator (EvalWrapper over `episode_length` steps, another batch size than training) sees one
  50-step episode per env, its return and its final success."""
  env = brax_training.EvalWrapper(reach)
  n = 5
  s = jax.jit(env.reset)(jax.random.split(jax.random.PRNGKey(3), n))
  s, data = _rollout(env, s, T, jax.random.PRNGKey(4))
  ev = s.info["eval_metrics"]
  np.testing.assert_array_equal(ev.episode_steps, float(T))
  np.testing.assert_array_equal(ev.active_episodes, 0.0)
  np.testing.assert_allclose(ev.episode_metrics["reward"], np.asarray(data.reward).sum(0), rtol=1e-5)
  np.testing.assert_array_equal(ev.episode_metrics["is_success"], np.asarray(data.extras["state_extras"]["is_success"])[-1])


def test_batch_sizes_and_typed_keys(reach):
  """brax passes num_envs keys for training, num_eval_envs for eval: any batch works on the one backend; typed
  keys give the same envs as raw ones."""
  keys = jax.random.split(jax.random.PRNGKey(5), 7)
  a = reach.reset(keys)
  b = reach.reset(jax.random.wrap_key_data(keys))
  np.testing.assert_array_equal(a.obs, b.obs)
  np.testing.assert_array_equal(a.obs[:2], reach.reset(keys[:2]).obs)  # env i depends on key i only
  assert reach.fetch_env(7).backend is reach.fetch_env(2).backend


def test_brax_default_wrapping_refused_with_the_fix(reach):
  """brax's own `envs.training.wrap` (VmapWrapper + EpisodeWrapper + AutoResetWrapper, which replays the first
  state on every reset) is refused with a one-line pointer to `wrap_for_training`."""
  wrapped = brax_training.wrap(reach, episode_length=T)
  with pytest.raises(ValueError, match="wrap_env_fn=fetchjax.envs.brax_adapter.wrap_for_training"):
    wrapped.reset(jax.random.split(jax.random.PRNGKey(0), 2))
  assert wrap_for_training(reach, episode_length=T, action_repeat=1, randomization_fn=None) is reach
  with pytest.raises(ValueError, match="episode_length=50"):
    wrap_for_training(reach, episode_length=1000)
  with pytest.raises(ValueError, match="action_repeat"):
    wrap_for_training(reach, episode_length=T, action_repeat=2)
  with pytest.raises(ValueError, match="randomization_fn"):
    wrap_for_training(reach, episode_length=T, randomization_fn=lambda sys: (sys, None))
  with pytest.raises(TypeError, match="BraxFetchEnv"):
    wrap_for_training(envs.make("FetchReach-v4", backend="cpu"), episode_length=T)


def test_constructors(reach):
  cfg = envs.EnvConfig("FetchPush-v4", num_envs=2, backend="cpu", threads=1)
  assert BraxFetchEnv(cfg).observation_size == 31
  assert BraxFetchEnv(envs.make("FetchReach-v4", num_envs=4, backend="cpu", threads=1)).env_id == "FetchReach-v4"
  with pytest.raises(ValueError, match="not both"):
    BraxFetchEnv(cfg, backend="cpu")
  with pytest.raises(TypeError, match="env id"):
    BraxFetchEnv(3)
  with pytest.raises(ValueError, match="unknown env id"):
    BraxFetchEnv("FetchSlide-v3")


def test_missing_brax_names_the_extra(monkeypatch):
  for name in [m for m in sys.modules if m == "brax" or m.startswith("brax.")]:
    monkeypatch.setitem(sys.modules, name, None)
  monkeypatch.setitem(sys.modules, "brax", None)
  monkeypatch.delitem(sys.modules, "fetchjax.envs.brax_adapter")
  with pytest.raises(ImportError, match=r"pip install 'fetchjax\[brax\]'"):
    import fetchjax.envs.brax_adapter  # noqa: F401


def test_jax_shim_replicates_for_pmap():
  """The `jax.device_put_replicated` that brax 0.14.2 calls (removed in jax 0.10): a leading device axis that
  pmap takes, on brax's pmap axis name."""
  devices = jax.local_devices()[:1]
  x = jax.device_put_replicated({"a": jnp.arange(3.0), "b": np.float32(2.0)}, devices)
  assert x["a"].shape == (1, 3) and x["b"].shape == (1,)
  y = jax.pmap(lambda t: jax.tree.map(lambda v: v * 2, t), axis_name="i")(x)
  np.testing.assert_array_equal(y["a"][0], [0.0, 2.0, 4.0])


# --- (b) a fresh task every episode ----------------------------------------------------------------
@pytest.mark.parametrize("env_name", ["reach", "push"])
def test_every_autoreset_draws_a_fresh_task(env_name, request):
  """3 episodes of 6 envs through brax's `generate_unroll`: each episode's goal (and Push's block) is new, and it
  is exactly what fetchjax's sampler draws from the env's own PRNG stream (FetchEnv.step's key schedule), where
  brax's AutoResetWrapper would have replayed the first one."""
  env = request.getfixturevalue(env_name)
  n, episodes = 6, 3
  keys = jax.random.split(jax.random.PRNGKey(11), n)
  s0 = jax.jit(env.reset)(keys)
  _, data = _rollout(env, s0, episodes * T, jax.random.PRNGKey(12))
  obs, next_obs = np.asarray(data.observation), np.asarray(data.next_observation)  # [t, n, obs]
  done = np.asarray(data.discount) == 0.0
  ends = [T * (e + 1) - 1 for e in range(episodes)]
  assert np.array_equal(np.flatnonzero(done.all(1)), ends) and done.sum() == n * episodes
  np.testing.assert_array_equal(np.asarray(data.extras["state_extras"]["truncation"]), done)

  goals = np.stack([obs[e * T, :, 3:6] for e in range(episodes)])  # [episode, n, 3]
  for e in range(episodes):
    np.testing.assert_array_equal(obs[e * T:(e + 1) * T, :, 3:6], np.broadcast_to(goals[e], (T, n, 3)))
    if e:  # the step that ends an episode already shows the next episode's first observation
      np.testing.assert_array_equal(next_obs[e * T - 1], obs[e * T])
  flat = goals.reshape(-1, 3)
  dist = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
  assert dist[~np.eye(len(flat), dtype=bool)].min() > 1e-4  # all 18 goals distinct

  # fetchjax's sampler semantics: env i's first task from split(key_i)[1], then at the step that ends episode e
  # the task key that FetchEnv.step splits off the env's stream that step
  fetch = env.fetch_env(n)
  expect_goal, expect_xy = [], []
  for i in range(n):
    rng, task_key = jax.random.split(keys[i])
    xy, g = fetch.sample_task(task_key)
    goals_i, xys_i = [g], [xy]
    for t in range(1, episodes * T):
      rng, task_key = jax.random.split(rng)
      if t % T == 0:
        xy, g = fetch.sample_task(task_key)
        goals_i.append(g)
        xys_i.append(xy)
    expect_goal.append(goals_i)
    expect_xy.append(xys_i)
  np.testing.assert_array_equal(goals, np.swapaxes(np.asarray(expect_goal), 0, 1))

  _, reset = scene.stock_model(fetch.task)
  grip0 = np.asarray(reset.initial_gripper_xpos)
  r = fetch.task.target_range
  assert np.all(np.abs(flat[:, :2] - grip0[:2]) <= r + 1e-6)
  if env_name == "push":  # the block: a fresh position every episode, at the sampled xy, on the table
    blocks = np.stack([obs[e * T, :, 0:3] for e in range(episodes)])  # achieved goal = block position
    np.testing.assert_allclose(blocks[..., :2], np.swapaxes(np.asarray(expect_xy), 0, 1), atol=1e-5)
    b = blocks.reshape(-1, 3)
    bd = np.linalg.norm(b[:, None, :2] - b[None, :, :2], axis=-1)
    assert bd[~np.eye(len(b), dtype=bool)].min() > 1e-4
    np.testing.assert_allclose(flat[:, 2], reset.height_offset, atol=1e-6)  # Push goals on the table
  else:
    assert np.all(np.abs(flat[:, 2] - grip0[2]) <= r + 1e-6)


# --- (c) brax PPO learns through the adapter -------------------------------------------------------
def test_brax_ppo_improves_fetch_reach_dense(reach):
  """brax's own `ppo.train` on FetchReachDense-v4 (C MuJoCo, 32 envs, 25,600 steps; ~35 s on 2 cores):
  measured (seed 0) eval return -7.12 -> -3.02 and success 0.00 -> 0.56 after 25,600 steps (seeds 1, 2: +3.5,
  +3.7); -1.36 / 0.97 after 51,200 steps."""
  from brax.training.agents.ppo import train as ppo

  evals = []
  t0 = time.time()
  _, params, _ = ppo.train(
      reach, num_timesteps=25_600, num_evals=3, wrap_env_fn=wrap_for_training, episode_length=T,
      num_envs=32, num_eval_envs=32, unroll_length=10, batch_size=32, num_minibatches=8,
      num_updates_per_batch=4, learning_rate=3e-4, entropy_cost=1e-3, discounting=0.95,
      normalize_observations=True, deterministic_eval=True, seed=0,
      progress_fn=lambda step, m: evals.append((step, float(m["eval/episode_reward"]),
                                                float(m["eval/episode_is_success"]),
                                                float(m["eval/avg_episode_length"]))))
  print(f"brax PPO on FetchReachDense-v4: {evals} in {time.time() - t0:.1f} s")
  assert [e[0] for e in evals] == [0, 12_800, 25_600]
  assert all(e[3] == T for e in evals)
  (_, r0, s0, _), (_, r1, s1, _) = evals[0], evals[-1]
  assert r1 > r0 + 1.5, evals  # measured +4.1
  assert s1 > s0 + 0.2, evals  # measured +0.56


def test_brax_sac_runs(reach):
  """brax's `sac.train` through `wrap_for_training` (its `wrap_env=False` path is broken in brax 0.14.2): trains
  and evaluates finite returns over full 50-step episodes."""
  from brax.training.agents.sac import train as sac

  evals = []
  sac.train(reach, num_timesteps=2_000, episode_length=T, wrap_env_fn=wrap_for_training, num_envs=16,
            num_eval_envs=16, num_evals=2, batch_size=64, min_replay_size=500, max_replay_size=10_000,
            learning_rate=1e-3, discounting=0.95, seed=0, deterministic_eval=True,
            progress_fn=lambda step, m: evals.append((step, float(m["eval/episode_reward"]),
                                                      float(m["eval/avg_episode_length"]))))
  assert [e[0] for e in evals][0] == 0 and evals[-1][0] >= 2_000
  assert all(np.isfinite(e[1]) and e[2] == T for e in evals)
