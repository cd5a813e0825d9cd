"""HER episode buffer (fetchjax.agents.her): storage, ring overwrite, SB3 sampling semantics, jit / vmap, and a
real fetchjax env rollout.

Synthetic episodes encode where every number came from: episode e (global id = block * N + env) at step t has
achieved_goal (e, t, 0), observation (e, t, seed, 1), desired goal (e, -100, 0) (far from every achieved goal),
action (e, t, seed, 0) and stored reward -(1000 e + t), so a sampled batch decodes into (episode, t, t').
"""
import functools
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

import fetchjax  # noqa: F401  (XLA flags before JAX initialises)
import jax
import jax.numpy as jnp

from fetchjax import envs
from fetchjax.agents import her
from fetchjax.envs.fetch import State

T, N, OBS_DIM = 50, 3, 4
reward_fn = envs.compute_reward  # sparse Fetch reward: 0 iff |a - g| <= 0.05


def synth_obs(e, t, seed):
  e, t = jnp.asarray(e, jnp.float32), jnp.broadcast_to(jnp.asarray(t, jnp.float32), e.shape)
  z = jnp.zeros_like(e)
  return {"observation": jnp.stack([e, t, z + seed, z + 1], -1), "achieved_goal": jnp.stack([e, t, z], -1),
          "desired_goal": jnp.stack([e, z - 100, z], -1)}


def synth_step(s, seed):
  """The env state after global step s (block s // T, step t = s % T) and the action taken."""
  blk, t = s // T, s % T
  e = blk * N + jnp.arange(N)
  final = synth_obs(e, t + 1, seed)
  ended = t + 1 == T
  nxt = jax.tree.map(lambda a, b: jnp.where(ended, a, b), synth_obs(e + N, 0, seed), final)
  reward = -(1000.0 * e + t).astype(jnp.float32)
  state = State(pipeline_state=None, obs=nxt, reward=reward, done=jnp.full(N, ended, jnp.float32),
                info={"final_obs": final})
  action = jnp.stack([e.astype(jnp.float32), jnp.full(N, t, jnp.float32), jnp.full(N, seed, jnp.float32),
                      jnp.zeros(N)], -1)
  return state, action


def fill(buf, n_steps, seed=0):
  buf = her.start(buf, synth_obs(jnp.arange(N), 0, seed))

  def body(s, b):
    state, action = synth_step(s, seed)
    return her.add(b, action, state)

  return jax.lax.fori_loop(0, n_steps, body, buf)  # traced n_steps: one compile per buffer shape


def new_buf(blocks):
  return her.create(blocks * N * T, N, her.state_spec(OBS_DIM))


_fill = jax.jit(fill)


@functools.lru_cache(maxsize=None)
def filled(blocks, steps, seed=0.0):
  """A buffer with `blocks` blocks of slots after `steps` env steps (cached: tests share compiles and data)."""
  return _fill(new_buf(blocks), steps, seed)


@functools.lru_cache(maxsize=None)
def sampler(batch_size, **kw):
  return jax.jit(lambda b, k: her.sample(b, k, batch_size, reward_fn, **kw))


def draw(buf, n_batches=20, batch_size=256, seed=0, **kw):
  """n_batches batches (jitted sample) as numpy arrays [n_batches, B, ...]."""
  fn = sampler(batch_size, **kw)
  bs = [fn(buf, k) for k in jax.random.split(jax.random.PRNGKey(seed), n_batches)]
  return jax.tree.map(lambda *x: np.stack([np.asarray(a) for a in x]), *bs)


def decode(batch):
  ep = batch.obs["achieved_goal"][..., 0].astype(int)
  t = batch.obs["achieved_goal"][..., 1].astype(int)
  return ep, t


# --- create / storage --------------------------------------------------------------------------------------
def test_create_shapes_and_capacity():
  buf = her.create(1_000_000, 8, her.state_spec(25))
  assert buf.capacity_episodes == 20_000 and buf.episode_length == 50  # SB3: 125k rows x 8 envs = 20k episodes
  assert buf.obs["observation"].shape == (20_000, 51, 25) and buf.achieved_goal.shape == (20_000, 51, 3)
  assert buf.action.shape == (20_000, 50, 4) and buf.desired_goal.shape == (20_000, 3)
  assert her.capacity_episodes(1000, 8) == 16          # 20 episodes -> whole blocks of 8
  assert her.capacity_episodes(100, 8) == 16           # at least two blocks
  with pytest.raises(ValueError):
    her.create(0, 8, her.state_spec(25))
  with pytest.raises(ValueError, match="goal key"):
    her.create(200, 2, {"observation": jax.ShapeDtypeStruct((25,), jnp.float32)})


def pixel_obs(n, frame=0, dtype=jnp.uint8):
  """A pixel goal dict: uint8 frames whose every value is `frame`, float proprioception and goals."""
  return {"pixels": jnp.full((n, 84, 84, 3), frame, dtype), "proprioception": jnp.full((n, 10), float(frame)),
          "achieved_goal": jnp.full((n, 3), float(frame)), "desired_goal": jnp.zeros((n, 3))}


def test_a_pytree_observation_keeps_each_leaf_dtype_and_stores_every_frame_once():
  """uint8 frames beside float proprioception and goals: each key in its own dtype, one frame per time index
  (T + 1 per episode, not 2T as obs/next_obs copies), and sampled obs/next_obs rebuilt by index."""
  n, T_ = 2, 3
  obs0 = pixel_obs(n)
  pix = her.create(4 * T_, n, her.spec_of(obs0), T=T_)
  assert pix.obs["pixels"].shape == (4, T_ + 1, 84, 84, 3) and pix.obs["pixels"].dtype == jnp.uint8
  assert pix.obs["proprioception"].dtype == jnp.float32 and "desired_goal" not in pix.obs
  with pytest.raises(ValueError, match="'pixels' dtype float32 != buffer storage dtype uint8"):
    her.start(pix, pixel_obs(n, dtype=jnp.float32))
  with pytest.raises(ValueError, match="keys"):
    her.start(pix, {k: v for k, v in obs0.items() if k != "proprioception"})
  buf = her.start(pix, obs0)
  for step in range(1, T_ + 1):
    o = pixel_obs(n, step)
    state = SimpleNamespace(obs=o, reward=jnp.zeros(n), info={"final_obs": o})
    buf = her.add(buf, jnp.zeros((n, 4)), state)
  assert int(buf.size) == n
  np.testing.assert_array_equal(np.asarray(buf.obs["pixels"][:n, :, 0, 0, 0]), [[0, 1, 2, 3]] * n)
  b = her.sample(buf, jax.random.PRNGKey(0), 64, reward_fn, her=False)
  assert b.obs["pixels"].dtype == jnp.uint8 and b.obs["pixels"].shape == (64, 84, 84, 3)
  np.testing.assert_array_equal(np.asarray(b.next_obs["pixels"][:, 0, 0, 0]),
                                np.asarray(b.obs["pixels"][:, 0, 0, 0]) + 1)          # o_{t+1} by index
  np.testing.assert_array_equal(np.asarray(b.obs["proprioception"][:, 0]), np.asarray(b.obs["pixels"][:, 0, 0, 0]))


def test_storage_layout():
  buf = filled(4, 2 * T + 10)
  assert (int(buf.t), int(buf.size), int(buf.pos)) == (10, 2 * N, 2 * N)
  ag, ob, act = np.asarray(buf.achieved_goal), np.asarray(buf.obs["observation"]), np.asarray(buf.action)
  for e in range(2 * N):
    np.testing.assert_array_equal(ag[e, :, 0], e)
    np.testing.assert_array_equal(ag[e, :, 1], np.arange(T + 1))      # o_T is final_obs (e, T), not (e + N, 0)
    np.testing.assert_array_equal(ob[e, :, :2], ag[e, :, :2])
    np.testing.assert_array_equal(act[e, :, :2], np.stack([np.full(T, e), np.arange(T)], -1))
    np.testing.assert_array_equal(np.asarray(buf.reward[e]), -(1000.0 * e + np.arange(T)))
    np.testing.assert_array_equal(np.asarray(buf.desired_goal[e]), [e, -100, 0])
  # the episodes in progress: o_0..o_10 written in their slots, the staged observation is o_10
  np.testing.assert_array_equal(ag[2 * N:3 * N, :11, 1], np.tile(np.arange(11), (N, 1)))
  np.testing.assert_array_equal(np.asarray(buf.last_obs["achieved_goal"])[:, :2],
                                np.stack([np.arange(2 * N, 3 * N), np.full(N, 10)], -1))


# --- which episodes are sampled ------------------------------------------------------------------------------
def test_only_complete_episodes_and_empty_buffer():
  empty = filled(4, T - 1)                     # no episode complete yet: SB3 raises, we return a finite batch
  assert not bool(her.can_sample(empty))
  b = draw(empty, 1)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(b))
  part = filled(4, T + 20)                     # block 0 complete, block 1 in progress
  assert bool(her.can_sample(part)) and int(her.num_sampleable(part)) == N
  ep, _ = decode(draw(part, 4))
  assert set(np.unique(ep)) == set(range(N))


@pytest.mark.parametrize("steps,expected_blocks", [(5 * T + 10, [3, 4]), (5 * T, [2, 3, 4])])
def test_ring_overwrite(steps, expected_blocks):
  """3 blocks of slots after 5 complete blocks: mid-episode the oldest block (2) is being overwritten and is
  invalid; at the episode boundary it is still valid (SB3: ep_length zeroed by the next add)."""
  buf = filled(3, steps)
  assert buf.capacity_episodes == 3 * N and int(buf.size) == 3 * N
  ep, t = decode(draw(buf, 8))
  expected = {b * N + i for b in expected_blocks for i in range(N)}
  assert set(np.unique(ep)) == expected
  assert set(np.unique(t)) == set(range(T))


# --- sampling semantics --------------------------------------------------------------------------------------
@pytest.mark.parametrize("k,batch_size", [(4, 256), (8, 256), (4, 100), (2, 7)])
def test_virtual_fraction_real_goals_and_rewards(k, batch_size):
  buf = filled(4, 3 * T + 5)
  b = draw(buf, 10, batch_size, n_sampled_goal=k)
  n_virtual = int((1 - 1.0 / (k + 1)) * batch_size)
  assert her.num_virtual(batch_size, k) == n_virtual
  ep, t = decode(b)
  real, virt = slice(0, batch_size - n_virtual), slice(batch_size - n_virtual, batch_size)
  goal = b.obs["desired_goal"]
  np.testing.assert_array_equal(goal, b.next_obs["desired_goal"])              # both obs and next_obs
  # real rows: own goal, stored reward
  np.testing.assert_array_equal(goal[:, real], np.stack([ep[:, real], np.full_like(ep[:, real], -100),
                                                         np.zeros_like(ep[:, real])], -1))
  np.testing.assert_array_equal(b.reward[:, real], -(1000.0 * ep[:, real] + t[:, real]))
  # virtual rows: an achieved goal ag_{t'+1}, t' in [t, T-1], of the same episode; reward recomputed
  np.testing.assert_array_equal(goal[:, virt, 0], ep[:, virt])
  assert (goal[:, virt, 1] >= t[:, virt] + 1).all() and (goal[:, virt, 1] <= T).all()
  np.testing.assert_array_equal(b.reward[:, virt],
                                np.asarray(reward_fn(b.next_obs["achieved_goal"][:, virt], goal[:, virt])))
  np.testing.assert_array_equal(b.reward[:, virt], -(goal[:, virt, 1] != t[:, virt] + 1).astype(np.float32))
  # the rest of the transition is real and consistent
  np.testing.assert_array_equal(b.next_obs["achieved_goal"][..., :2], np.stack([ep, t + 1], -1))
  np.testing.assert_array_equal(b.obs["observation"][..., :2], np.stack([ep, t], -1))
  np.testing.assert_array_equal(b.next_obs["observation"][..., :2], np.stack([ep, t + 1], -1))
  np.testing.assert_array_equal(b.action[..., :2], np.stack([ep, t], -1))
  assert b.reward.dtype == np.float32 and b.reward.shape == (10, batch_size)
  np.testing.assert_array_equal(b.done, 0.0)


def test_no_her_is_plain_replay():
  buf = filled(4, 3 * T + 5)
  b = draw(buf, 4, her=False)
  ep, t = decode(b)
  np.testing.assert_array_equal(b.obs["desired_goal"][..., 1], -100)
  np.testing.assert_array_equal(b.reward, -(1000.0 * ep + t))


def future_offset_pmf(T):
  """P(t' - t = d) for t ~ U{0..T-1}, t' ~ U{t..T-1}: (1/T) sum_{m=d+1}^{T} 1/m."""
  return np.array([np.sum(1.0 / np.arange(d + 1, T + 1)) / T for d in range(T)])


def test_future_offsets_uniform():
  buf = filled(4, 3 * T + 5)
  b = draw(buf, 40, 1024)                     # 40 x 819 = 32760 virtual samples
  nv = her.num_virtual(1024)
  _, t = decode(b)
  t, d = t[:, -nv:].ravel(), (b.obs["desired_goal"][:, -nv:, 1] - 1).astype(int).ravel() - t[:, -nv:].ravel()
  assert (d >= 0).all() and (d <= T - 1 - t).all()
  assert (d[t == T - 1] == 0).all() and (d == 0).any()          # inclusive: ag_{t+1} itself can be drawn
  counts = np.bincount(d, minlength=T)
  p = stats.chisquare(counts, future_offset_pmf(T) * d.size).pvalue
  assert p > 1e-3, (p, counts)
  assert abs(d.mean() - (T - 1) / 4) < 5 * d.std() / np.sqrt(d.size)   # E[d] = (T - 1) / 4 = 12.25
  # conditionally on t, d is uniform on {0..T-1-t}: the rank (d + 0.5) / (T - t) is U(0, 1) up to discreteness
  for t0 in (0, 25):
    c = np.bincount(d[t == t0], minlength=T - t0)
    assert stats.chisquare(c).pvalue > 1e-3


def test_future_exclusive_book_lab():
  buf = filled(4, 3 * T + 5)
  b = draw(buf, 4, future_inclusive=False)
  _, t = decode(b)
  nv = her.num_virtual(256)
  tg, t = b.obs["desired_goal"][:, -nv:, 1].ravel(), t[:, -nv:].ravel()
  np.testing.assert_array_equal(tg[t == T - 1], T)
  assert (tg[t < T - 1] >= t[t < T - 1] + 2).all()


@pytest.mark.parametrize("strategy", ["final", "episode"])
def test_final_and_episode_strategies(strategy):
  buf = filled(4, 3 * T + 5)
  b = draw(buf, 20, 512, strategy=strategy)
  nv = her.num_virtual(512)
  ep, t = decode(b)
  tg = b.obs["desired_goal"][:, -nv:, 1].astype(int).ravel()
  np.testing.assert_array_equal(b.obs["desired_goal"][:, -nv:, 0], ep[:, -nv:])
  if strategy == "final":
    np.testing.assert_array_equal(tg, T)                                      # ag_T
  else:
    assert tg.min() == 1 and tg.max() == T                                    # ag_1..ag_T, independent of t
    assert stats.chisquare(np.bincount(tg - 1, minlength=T)).pvalue > 1e-3
    assert (tg < t[:, -nv:].ravel() + 1).any()                                # past goals too
  with pytest.raises(ValueError, match="strategy"):
    her.sample(buf, jax.random.PRNGKey(0), 8, reward_fn, strategy="random")


# --- jit / vmap over seeds -----------------------------------------------------------------------------------
def test_vmap_over_seeds():
  seeds = jnp.arange(2.0)
  buf0 = new_buf(4)
  bufs = jax.jit(jax.vmap(lambda s: fill(buf0, 2 * T + 10, s)))(seeds)
  assert bufs.obs["observation"].shape == (2, 4 * N, T + 1, OBS_DIM) and bufs.t.shape == (2,)
  keys = jax.random.split(jax.random.PRNGKey(3), 2)
  vs = jax.jit(jax.vmap(sampler(256)))(bufs, keys)
  for i in range(2):
    np.testing.assert_array_equal(np.asarray(vs.obs["observation"][i, :, 2]), i)   # each seed its own data
    one = jax.tree.map(lambda x: x[i], bufs)
    alone = filled(4, 2 * T + 10, float(i))                                         # the same data unvmapped
    np.testing.assert_array_equal(np.asarray(one.obs["observation"]), np.asarray(alone.obs["observation"]))
    single = sampler(256)(one, keys[i])
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(jax.tree.map(lambda x: x[i], vs))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))                  # vmap == per-seed call
  assert not np.array_equal(np.asarray(vs.obs["achieved_goal"][0]), np.asarray(vs.obs["achieved_goal"][1]))


# --- a real fetchjax env ------------------------------------------------------------------------------------
def test_real_env_rollout():
  env = envs.make("FetchReach-v4", num_envs=4, backend="cpu")
  buf = her.create(4 * 4 * 50, 4, her.state_spec(env.observation_size["observation"]))

  def rollout(key):
    k0, k1 = jax.random.split(key)
    s = env.reset(k0)
    b = her.start(buf, s.obs)

    def body(c, k):
      s, b = c
      a = jax.random.uniform(k, (4, 4), minval=-1, maxval=1)
      s2 = env.step(s, a)
      return (s2, her.add(b, a, s2)), (s.obs, a, s2.info["final_obs"], s2.obs, s2.reward, s2.info["steps"])

    return jax.lax.scan(body, (s, b), jax.random.split(k1, 60))

  (_, b), (obs, act, fin, nxt, rew, steps) = jax.jit(rollout)(jax.random.PRNGKey(0))
  obs, act, fin, nxt, rew = jax.tree.map(np.asarray, (obs, act, fin, nxt, rew))
  assert (int(b.t), int(b.size), int(b.pos)) == (10, 4, 4) and int(steps[-1][0]) == int(b.t)
  ep = lambda x: np.swapaxes(x, 0, 1)  # [time, env, ...] -> [env, time, ...]
  for k in ("observation", "achieved_goal"):
    stored = np.asarray(b.obs[k])
    np.testing.assert_array_equal(stored[:4, :T], ep(obs[k][:T]))
    np.testing.assert_array_equal(stored[:4, T], fin[k][T - 1])                # o_T = final_obs ...
    assert not np.array_equal(stored[:4, T], nxt[k][T - 1])                     # ... not the reset obs
    np.testing.assert_array_equal(stored[4:8, :10], ep(obs[k][T:]))            # episodes in progress: o_0..o_9
    np.testing.assert_array_equal(stored[4:8, 10], fin[k][-1])                  # and o_10
  np.testing.assert_array_equal(np.asarray(b.action[:4]), ep(act[:T]))
  np.testing.assert_array_equal(np.asarray(b.reward[:4]), ep(rew[:T]))
  # the goal is constant within an episode and changes at the auto-reset
  goal0 = obs["desired_goal"][0]
  np.testing.assert_array_equal(ep(obs["desired_goal"][:T]), np.broadcast_to(goal0[:, None], (4, T, 3)))
  np.testing.assert_array_equal(np.asarray(b.desired_goal[:4]), goal0)
  assert not np.array_equal(nxt["desired_goal"][T - 1], goal0)
  # Fetch: the stored reward is compute_reward(ag_{t+1}, g), so relabelling to the own goal reproduces it
  np.testing.assert_array_equal(np.asarray(b.reward[:4]),
                                np.asarray(env.compute_reward(b.achieved_goal[:4, 1:], b.desired_goal[:4, None])))
  s = jax.jit(lambda b, k: her.sample(b, k, 256, env.compute_reward))(b, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(np.asarray(s.reward),
                                np.asarray(env.compute_reward(s.next_obs["achieved_goal"], s.obs["desired_goal"])))


# --- frame stacks rebuilt at sample time ---------------------------------------------------------------------
TS, NS, K = 6, 2, 4  # a short episode length, 2 envs, the book's 4-frame stack


def frame_obs(e, t):
  """Observation of episode e (global id) at step t: a 2x2 uint8 frame (e, t, 255 - t) per pixel, goals and
  proprioception that carry (e, t) too."""
  e = jnp.asarray(e)
  t = jnp.broadcast_to(jnp.asarray(t), e.shape)
  px = jnp.stack([e, t, 255 - t], -1).astype(jnp.uint8)
  z = jnp.zeros(e.shape, jnp.float32)
  ef, tf = e.astype(jnp.float32), t.astype(jnp.float32)
  return {"pixels": jnp.broadcast_to(px[:, None, None, :], (*e.shape, 2, 2, 3)),
          "proprioception": jnp.stack([ef, tf] + [z] * 8, -1), "achieved_goal": jnp.stack([ef, tf, z], -1),
          "desired_goal": jnp.stack([ef, z - 100, z], -1)}


@functools.lru_cache(maxsize=None)
def frame_buffer(blocks=3, steps=4 * TS + 2):
  """A ring of `blocks` blocks of NS episodes after `steps` env steps (it wraps after 3 blocks), and the
  `acting_obs(k=K)` seen before every step (with the expected episode id and t)."""
  buf = her.create(blocks * NS * TS, NS, her.spec_of(frame_obs(jnp.arange(NS), 0)), T=TS)
  buf = her.start(buf, frame_obs(jnp.arange(NS), 0))
  acting = jax.jit(lambda b: her.acting_obs(b, K))
  add = jax.jit(her.add)
  seen = []
  for s in range(steps):
    blk, t = s // TS, s % TS
    e = blk * NS + jnp.arange(NS)
    seen.append((np.asarray(e), t, np.asarray(acting(buf)["pixels"])))
    final = frame_obs(e, t + 1)
    nxt = frame_obs(e + NS, 0) if t + 1 == TS else final
    state = State(pipeline_state=None, obs=nxt, reward=jnp.zeros(NS), done=jnp.zeros(NS), info={"final_obs": final})
    buf = add(buf, jnp.zeros((NS, 4)), state)
  return buf, seen


def expected_stack(e, t, k=K):
  """[..., 1, 1, 3k] the k-frame stack (oldest first) of episode e at step t: times max(t - k + 1 + j, 0)."""
  times = np.maximum(np.asarray(t)[..., None] + np.arange(1 - k, 1), 0)
  e = np.broadcast_to(np.asarray(e)[..., None], times.shape)
  return np.stack([e, times, 255 - times], -1).reshape(*times.shape[:-1], 1, 1, 3 * k).astype(np.uint8)


def test_frame_stacks_are_rebuilt_from_single_frames():
  """The buffer holds T+1 single 3-channel frames per episode; sample(frame_stack=4) returns obs = frames
  t-3..t and next_obs = frames t-2..t+1 of the same episode on the channel axis, oldest first, times < 0 as copies
  of o_0 (the book's wrapper fills its deque with the reset frame); next_obs at t = T-1 ends at o_T."""
  buf, _ = frame_buffer()
  assert buf.obs["pixels"].shape == (3 * NS, TS + 1, 2, 2, 3)          # memory: single frames, not stacks
  assert her.stacked_spec(her.spec_of(frame_obs(jnp.arange(NS), 0)), K)["pixels"].shape == (2, 2, 12)
  key = jax.random.PRNGKey(0)
  b = sampler(512, frame_stack=K)(buf, key)
  ep, t = (np.asarray(b.obs["achieved_goal"][:, i]).astype(int) for i in (0, 1))
  assert set(t) == set(range(TS)) and set(ep) == set(range(2 * NS, 4 * NS))   # every t; the ring has wrapped
  for side, tt in ((b.obs, t), (b.next_obs, t + 1)):
    px = np.asarray(side["pixels"])
    assert px.dtype == np.uint8 and px.shape == (512, 2, 2, 12)
    np.testing.assert_array_equal(px, np.broadcast_to(expected_stack(ep, tt), px.shape))
  first = np.asarray(b.obs["pixels"][t == 0, 0, 0])
  np.testing.assert_array_equal(first.reshape(-1, K, 3)[:, :, 1], 0)       # t = 0: four copies of o_0
  np.testing.assert_array_equal(np.asarray(b.obs["pixels"][t == 2, 0, 0, 1::3])[0], [0, 0, 1, 2])
  np.testing.assert_array_equal(np.asarray(b.next_obs["pixels"][t == TS - 1, 0, 0, 1::3])[0],
                                [TS - 3, TS - 2, TS - 1, TS])              # ... ends at o_T
  # everything else is the frame_stack=1 sample (same key, same draws), whose frame is the stack's newest
  one = sampler(512)(buf, key)
  np.testing.assert_array_equal(np.asarray(one.obs["pixels"]), np.asarray(b.obs["pixels"][..., -3:]))
  np.testing.assert_array_equal(np.asarray(one.next_obs["pixels"]), np.asarray(b.next_obs["pixels"][..., -3:]))

  def rest(x):
    return [np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(x) if "pixels" not in str(p)]

  for a, c in zip(rest(one), rest(b)):
    np.testing.assert_array_equal(a, c)
  assert b.obs["proprioception"].shape == (512, 10)                          # only stack_keys are stacked


def test_frame_stack_one_is_plain_indexing_and_bad_stacks_raise():
  buf, _ = frame_buffer()
  key = jax.random.PRNGKey(1)
  a, b = sampler(64)(buf, key), sampler(64, frame_stack=1)(buf, key)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert a.obs["pixels"].shape == (64, 2, 2, 3)
  with pytest.raises(ValueError, match="frame_stack must be a positive integer"):
    her.sample(buf, key, 8, reward_fn, frame_stack=0)
  with pytest.raises(ValueError, match="cannot stack"):
    her.sample(buf, key, 8, reward_fn, frame_stack=2, stack_keys=("rgb",))
  with pytest.raises(ValueError, match="cannot stack"):
    her.stacked_spec(her.state_spec(4), 2, ("achieved_goal",))


def test_acting_obs_stacks_the_episodes_in_progress():
  """What the policy acts on before each step: frames t-3..t of the current episodes (first-frame copies at
  t < 3, o_0 from last_obs at t = 0 while the slots still hold the overwritten episodes), also after the wrap."""
  _, seen = frame_buffer()
  assert {t for _, t, _ in seen} == set(range(TS))
  for e, t, px in seen:
    assert px.shape == (NS, 2, 2, 12)
    np.testing.assert_array_equal(px, np.broadcast_to(expected_stack(e, np.full(NS, t)), px.shape))


def test_frame_stacks_vmap_over_seeds():
  buf, _ = frame_buffer()
  bufs = jax.tree.map(lambda x: jnp.stack([x, x]), buf)
  keys = jax.random.split(jax.random.PRNGKey(2), 2)
  fn = sampler(32, frame_stack=K)
  vs = jax.jit(jax.vmap(fn))(bufs, keys)
  acting = jax.jit(jax.vmap(lambda b: her.acting_obs(b, K)))(bufs)
  for i in range(2):
    single = fn(buf, keys[i])
    for a, c in zip(jax.tree.leaves(single), jax.tree.leaves(jax.tree.map(lambda x: x[i], vs))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    want = expected_stack(4 * NS + np.arange(NS), np.full(NS, 2))                   # before step 4 T + 2
    np.testing.assert_array_equal(np.asarray(acting["pixels"][i]), np.broadcast_to(want, (NS, 2, 2, 12)))
