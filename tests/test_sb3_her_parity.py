"""HER sampling parity against the real stable-baselines3 `HerReplayBuffer` (the `parity` extra).

SB3's buffer (with a DummyVecEnv of gymnasium-robotics FetchReach-v4 for `compute_reward`, as the book's
`--compare-sb3`) and fetchjax's `her` buffer are filled with the SAME episodes, step by step, the way each
algorithm adds them (SB3: obs, next_obs = terminal observation at the time limit, TimeLimit.truncated info;
fetchjax: `add(buf, action, env_state)` with the auto-reset observation and `info["final_obs"]`). Both are
sampled many times and compared:
  a. book stub (constant achieved goal per episode, goals 10 units away): rewards are -1 for real and 0 for
     virtual samples, so both reward vectors are deterministic and must be EQUAL: success fraction
     int(0.8 * 512) / 512 = 0.799 (the book's ch5 check of SB3's buffer), real rows first, then virtual;
  b. coded episodes (achieved goal = (episode, t, 0)): the set of sampled episodes (incl. after ring overwrite,
     mid-episode and at an episode boundary), the virtual share and positions, and the distribution of the
     relabelling offset t' - t for future / episode / final against each other and against the exact pmf;
  c. random FetchReach-v4 rollouts (fetchjax C-MuJoCo backend, bit-exact with gymnasium-robotics): relabelled
     rewards recomputed by the other side on the same (next achieved goal, new goal) pairs (exact, 0 mismatch),
     and the mean success fraction of sampled batches (within sampling error).
Run with `-s` to see the measured statistics. Line references: stable-baselines3 2.9.2 her_replay_buffer.py.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

sb3 = pytest.importorskip("stable_baselines3")
pytest.importorskip("torch")

import fetchjax  # noqa: E402,F401  (XLA flags before JAX initialises)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from scipy import stats  # noqa: E402
from stable_baselines3 import HerReplayBuffer  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from measured import Recorder  # noqa: E402

from fetchjax import envs  # noqa: E402
from fetchjax.agents import her  # noqa: E402
from fetchjax.envs.fetch import State  # noqa: E402

T, N = 50, 4
OBS_DIM = 10  # FetchReach
REPORT: dict[str, object] = {}
record = Recorder("sb3-her-parity")


@pytest.fixture(scope="module")
def vec_env():
  from fetchjax.gymnasium_reference import gymnasium_make

  venv = DummyVecEnv([lambda: gymnasium_make("FetchReach-v4")])
  yield venv
  venv.close()
  if REPORT:
    print("\nHER parity measurements:")
    for k, v in REPORT.items():
      print(f"  {k}: {v}")


def sb3_buffer(venv, buffer_size, strategy="future", k=4):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return HerReplayBuffer(buffer_size, venv.observation_space, venv.action_space, env=venv, device="cpu",
                           n_envs=N, n_sampled_goal=k, goal_selection_strategy=strategy)


# --- episodes: numpy arrays per block of N episodes ----------------------------------------------------------
def coded_block(b):
  """Achieved goal (e, t, 0), goal (e, -100, 0), observation (e, t, 0...), action (e, t, 0, 0), reward -1."""
  e = b * N + np.arange(N, dtype=np.float32)
  t = np.arange(T + 1, dtype=np.float32)
  ag = np.stack(np.broadcast_arrays(e[:, None], t[None], 0.0 * t[None]), -1).astype(np.float32)
  obs = np.concatenate([ag[..., :2], np.zeros((N, T + 1, OBS_DIM - 2), np.float32)], -1)
  dg = np.stack([e, np.full(N, -100.0), np.zeros(N)], -1).astype(np.float32)
  act = np.concatenate([ag[:, :T, :2], np.zeros((N, T, 2), np.float32)], -1)
  return dict(observation=obs, achieved_goal=ag, desired_goal=dg, action=act, reward=-np.ones((N, T), np.float32))


def stub_block(b, rng):
  """The book's stub: achieved goal constant within an episode, goal 10 units away (every real reward -1)."""
  ag = np.repeat(rng.normal(size=(N, 1, 3)).astype(np.float32), T + 1, axis=1)
  obs = rng.normal(size=(N, T + 1, OBS_DIM)).astype(np.float32)
  dg = (ag[:, 0] + 10.0).astype(np.float32)
  act = rng.uniform(-1, 1, (N, T, 4)).astype(np.float32)
  return dict(observation=obs, achieved_goal=ag, desired_goal=dg, action=act, reward=-np.ones((N, T), np.float32))


@functools.lru_cache(maxsize=1)
def reach_blocks(n_blocks=6):
  """Random-action FetchReach-v4 episodes from fetchjax (C MuJoCo backend)."""
  env = envs.make("FetchReach-v4", num_envs=N, backend="cpu")

  def rollout(key):
    k0, k1 = jax.random.split(key)

    def body(s, k):
      a = jax.random.uniform(k, (N, 4), minval=-1, maxval=1)
      s2 = env.step(s, a)
      return s2, (s.obs, a, s2.info["final_obs"], s2.reward)

    return jax.lax.scan(body, env.reset(k0), jax.random.split(k1, n_blocks * T))[1]

  obs, act, fin, rew = jax.tree.map(np.asarray, jax.jit(rollout)(jax.random.PRNGKey(0)))
  blocks = []
  for b in range(n_blocks):
    s = slice(b * T, (b + 1) * T)
    sw = lambda x: np.swapaxes(x, 0, 1)
    ep = {k: np.concatenate([sw(obs[k][s]), fin[k][s][-1][:, None]], 1) for k in ("observation", "achieved_goal")}
    blocks.append(dict(**ep, desired_goal=obs["desired_goal"][b * T], action=sw(act[s]), reward=sw(rew[s])))
  return blocks, env


def step_obs(blk, t):
  return {"achieved_goal": blk["achieved_goal"][:, t], "desired_goal": blk["desired_goal"],
          "observation": blk["observation"][:, t]}


_add = jax.jit(her.add)


def fill_both(blocks, sb3_buf, jx_buf, extra_steps=0, next_block=None):
  """Feeds the episodes of `blocks` (then `extra_steps` of `next_block`) to both buffers step by step."""
  jx_buf = her.start(jx_buf, jax.tree.map(jnp.asarray, step_obs(blocks[0], 0)))
  steps = [(blk, t, blocks[i + 1] if i + 1 < len(blocks) else next_block) for i, blk in enumerate(blocks)
           for t in range(T)]
  steps += [(next_block, t, None) for t in range(extra_steps)]
  for blk, t, following in steps:
    done = t == T - 1
    obs, nxt = step_obs(blk, t), step_obs(blk, t + 1)  # SB3 stores the terminal observation as next_obs
    infos = [{"TimeLimit.truncated": done} for _ in range(N)]
    sb3_buf.add(obs, nxt, blk["action"][:, t], blk["reward"][:, t], np.full(N, done), infos)
    reset_obs = step_obs(following, 0) if done and following is not None else nxt
    if done and following is None:  # the data ends here: any reset observation will do
      reset_obs = jax.tree.map(np.zeros_like, nxt)
    state = State(pipeline_state=None, obs=jax.tree.map(jnp.asarray, reset_obs),
                  reward=jnp.asarray(blk["reward"][:, t]), done=jnp.full(N, float(done)),
                  info={"final_obs": jax.tree.map(jnp.asarray, nxt)})
    jx_buf = _add(jx_buf, jnp.asarray(blk["action"][:, t]), state)
  return sb3_buf, jx_buf


def sample_sb3(buf, n_batches, batch_size, seed=0):
  np.random.seed(seed)
  out = []
  for _ in range(n_batches):
    s = buf.sample(batch_size)
    out.append(dict(ag=s.observations["achieved_goal"].numpy(), goal=s.observations["desired_goal"].numpy(),
                    next_goal=s.next_observations["desired_goal"].numpy(),
                    next_ag=s.next_observations["achieved_goal"].numpy(), reward=s.rewards.numpy()[:, 0],
                    done=s.dones.numpy()[:, 0]))
  return {k: np.stack([o[k] for o in out]) for k in out[0]}


@functools.lru_cache(maxsize=None)
def _sampler(batch_size, strategy, k, reward_fn):
  return jax.jit(lambda b, key: her.sample(b, key, batch_size, reward_fn, n_sampled_goal=k, strategy=strategy))


def sample_jx(buf, n_batches, batch_size, strategy="future", k=4, reward_fn=envs.compute_reward, seed=0):
  fn = _sampler(batch_size, strategy, k, reward_fn)
  out = []
  for key in jax.random.split(jax.random.PRNGKey(seed), n_batches):
    s = fn(buf, key)
    out.append(dict(ag=s.obs["achieved_goal"], goal=s.obs["desired_goal"], next_goal=s.next_obs["desired_goal"],
                    next_ag=s.next_obs["achieved_goal"], reward=s.reward, done=s.done))
  return {k_: np.stack([np.asarray(o[k_]) for o in out]) for k_ in out[0]}


# --- a. the book's --compare-sb3 stub ---------------------------------------------------------------------------
def test_book_stub_success_fraction(vec_env):
  rng = np.random.default_rng(0)
  blocks = [stub_block(b, rng) for b in range(3)]
  sb, jx = fill_both(blocks, sb3_buffer(vec_env, 10 * N * T), her.create(10 * N * T, N, her.state_spec(OBS_DIM)), 7, stub_block(3, rng))
  s, j = sample_sb3(sb, 20, 512), sample_jx(jx, 20, 512)
  nv = int(0.8 * 512)
  expected = np.concatenate([-np.ones(512 - nv), np.zeros(nv)]).astype(np.float32)  # real first, then virtual
  for side in (s, j):
    np.testing.assert_array_equal(side["reward"], np.broadcast_to(expected, side["reward"].shape))
    np.testing.assert_array_equal(side["goal"], side["next_goal"])
    np.testing.assert_array_equal(side["done"], 0.0)
  frac_s, frac_j = float((s["reward"] == 0).mean()), float((j["reward"] == 0).mean())
  REPORT["stub success fraction (SB3, fetchjax)"] = (round(frac_s, 6), round(frac_j, 6))
  record("stub relabel share |SB3 - fetchjax|", abs(frac_s - frac_j), 0.0)
  record("stub relabel share |fetchjax - int(0.8 B) / B|", abs(frac_j - nv / 512), 0.0)
  assert frac_s == frac_j == nv / 512 and round(frac_j, 3) == 0.799


# --- b. coded episodes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra_steps,blocks_valid", [(10, [3, 4]), (0, [2, 3, 4])])
def test_sampled_episodes_after_overwrite(vec_env, extra_steps, blocks_valid):
  """SB3 buffer of 3 episodes per env (buffer_size 3 * N * T) vs a ring of 3 blocks, after 5 blocks (+ 10 steps
  of the 6th): the same episodes are sampleable on both sides."""
  blocks = [coded_block(b) for b in range(5)]
  sb, jx = fill_both(blocks, sb3_buffer(vec_env, 3 * N * T), her.create(3 * N * T, N, her.state_spec(OBS_DIM)), extra_steps,
                     coded_block(5))
  s, j = sample_sb3(sb, 10, 256), sample_jx(jx, 10, 256)
  expected = {b * N + i for b in blocks_valid for i in range(N)}
  assert set(np.unique(s["ag"][..., 0]).astype(int)) == expected
  assert set(np.unique(j["ag"][..., 0]).astype(int)) == expected


def future_offset_pmf():
  return np.array([np.sum(1.0 / np.arange(d + 1, T + 1)) / T for d in range(T)])


@pytest.mark.parametrize("strategy", ["future", "episode", "final"])
def test_relabel_distribution(vec_env, strategy):
  blocks = [coded_block(b) for b in range(4)]
  sb, jx = fill_both(blocks, sb3_buffer(vec_env, 10 * N * T, strategy), her.create(10 * N * T, N, her.state_spec(OBS_DIM)), 5,
                     coded_block(4))
  B, n_batches = 1024, 50
  s, j = sample_sb3(sb, n_batches, B), sample_jx(jx, n_batches, B, strategy)
  nv = int(0.8 * B)
  stats_ = {}
  for name, side in (("sb3", s), ("fetchjax", j)):
    virtual = side["goal"][..., 1] != -100
    assert (virtual.sum(1) == nv).all() and virtual[:, B - nv:].all()   # 819 of 1024, the last ones
    np.testing.assert_array_equal(side["goal"][..., 0], side["ag"][..., 0])  # same episode (real: own goal)
    t = side["ag"][:, B - nv:, 1].astype(int).ravel()
    tg = side["goal"][:, B - nv:, 1].astype(int).ravel() - 1         # t' (goal = ag_{t'+1})
    r = side["reward"][:, B - nv:].ravel()
    np.testing.assert_array_equal(r, -(tg != t).astype(np.float32))  # reward 0 iff the goal is ag_{t+1}
    stats_[name] = (t, tg, r)
  if strategy == "final":
    for t, tg, _ in stats_.values():
      np.testing.assert_array_equal(tg, T - 1)
    return
  val = {name: (tg - t if strategy == "future" else tg) for name, (t, tg, _) in stats_.items()}
  pmf = future_offset_pmf() if strategy == "future" else np.full(T, 1.0 / T)
  hist = {name: np.bincount(v, minlength=T) for name, v in val.items()}
  for name, v in val.items():
    assert v.min() >= 0 and v.max() <= T - 1
    if strategy == "future":
      assert (v <= T - 1 - stats_[name][0]).all()
    assert stats.chisquare(hist[name], pmf * v.size).pvalue > 1e-3, name
  p_two = stats.chi2_contingency(np.stack([hist["sb3"], hist["fetchjax"]])).pvalue
  m_s, m_j = val["sb3"].mean(), val["fetchjax"].mean()
  se = np.sqrt(val["sb3"].var() / val["sb3"].size + val["fetchjax"].var() / val["fetchjax"].size)
  REPORT[f"{strategy}: mean {'offset' if strategy == 'future' else 't_prime'} SB3 / fetchjax / exact"] = (
      round(float(m_s), 3), round(float(m_j), 3), (T - 1) / 4 if strategy == "future" else (T - 1) / 2)
  REPORT[f"{strategy}: two-sample chi2 p, |mean diff| / se"] = (round(float(p_two), 3),
                                                                round(float(abs(m_s - m_j) / se), 2))
  REPORT[f"{strategy}: P(goal = ag_t+1) SB3 / fetchjax"] = tuple(round(float((r == 0).mean()), 4)
                                                              for _, _, r in stats_.values())
  record(f"{strategy}: goal offsets SB3 vs fetchjax, two-sample chi2 p-value", p_two, 1e-3, at_least=True)
  record(f"{strategy}: goal offsets |mean SB3 - mean fetchjax| / se", abs(m_s - m_j) / se, 4.0)
  assert p_two > 1e-3 and abs(m_s - m_j) < 4 * se


# --- c. FetchReach-v4 episodes --------------------------------------------------------------------------------------
def test_fetch_reach_rewards_and_success_fraction(vec_env):
  blocks, env = reach_blocks()
  ref = vec_env.envs[0].unwrapped
  sb, jx = fill_both(blocks[:5], sb3_buffer(vec_env, 10 * N * T), her.create(10 * N * T, N, her.state_spec(OBS_DIM)), 10, blocks[5])
  B, n_batches = 256, 200
  s, j = sample_sb3(sb, n_batches, B), sample_jx(jx, n_batches, B, reward_fn=env.compute_reward)
  nv = int(0.8 * B)
  # stored rewards = compute_reward(ag_{t+1}, g): real samples on both sides equal a recomputation
  for side in (s, j):
    real = slice(0, B - nv)
    np.testing.assert_array_equal(side["reward"][:, real],
                                  ref.compute_reward(side["next_ag"][:, real], side["goal"][:, real], None))
  # relabelled rewards: each side's (next achieved goal, new goal) pairs recomputed by the other side's function
  v = slice(B - nv, B)
  jx_on_sb3 = np.asarray(env.compute_reward(jnp.asarray(s["next_ag"][:, v], jnp.float32),
                                            jnp.asarray(s["goal"][:, v], jnp.float32)))
  ref_on_jx = ref.compute_reward(j["next_ag"][:, v], j["goal"][:, v], None).astype(np.float32)
  diff_s = float(np.abs(jx_on_sb3 - s["reward"][:, v]).max())
  diff_j = float(np.abs(ref_on_jx - j["reward"][:, v]).max())
  REPORT["Reach relabelled reward max |diff| (fetchjax fn on SB3 pairs, gym fn on fetchjax pairs)"] = (diff_s, diff_j)
  record("Reach relabelled rewards: fetchjax compute_reward on SB3 pairs, max abs diff", diff_s, 0.0)
  record("Reach relabelled rewards: gymnasium compute_reward on fetchjax pairs, max abs diff", diff_j, 0.0)
  assert diff_s == 0.0 and diff_j == 0.0
  # success fraction of whole batches (real + virtual)
  fs, fj = (s["reward"] == 0).mean(1), (j["reward"] == 0).mean(1)
  se = np.sqrt(fs.var(ddof=1) / fs.size + fj.var(ddof=1) / fj.size)
  REPORT["Reach success fraction per batch SB3 / fetchjax (mean, se of diff)"] = (
      round(float(fs.mean()), 4), round(float(fj.mean()), 4), round(float(se), 4))
  record("Reach batch success fraction |SB3 - fetchjax| / se", abs(fs.mean() - fj.mean()) / se, 4.0)
  assert abs(fs.mean() - fj.mean()) < 4 * se
  assert 0.0 < fs.mean() < 0.8
