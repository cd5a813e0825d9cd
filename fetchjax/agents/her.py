"""Episode replay buffer with Hindsight Experience Replay, SB3 (2.9.2) `HerReplayBuffer` semantics,
as pure JAX functions: jittable, and vmappable over seeds (every function accepts a buffer with a leading seed
axis under `jax.vmap`).

Usage (the SAC loop; `state = env.step(state, action)` between the calls):

    buf = her.create(1_000_000, num_envs=8, obs_spec=her.spec_of(state.obs))
    buf = her.start(buf, state.obs)                 # after env.reset
    buf = her.add(buf, action, state)               # after every env.step
    batch = her.sample(buf, key, 256, env.compute_reward)           # once can_sample(buf)

Storage. Fetch episodes are exactly T = 50 steps and a fetchjax env's `num_envs` envs are episode-aligned (they
start together and auto-reset together), so the buffer is a ring of WHOLE episodes, filled a block of `num_envs`
episodes at a time:
  obs[key]      [C, T+1, *shape]      every observation key but desired_goal, o_0..o_T (o_T = the transition's own
                                      `info["final_obs"]`, never the reset observation of the next episode); the
                                      key set, shapes and dtypes are the env's (`obs_spec`): e.g. float32
                                      `observation` and `achieved_goal`, or uint8 `pixels` beside float32
                                      `proprioception` and `achieved_goal`
  desired_goal  [C, goal_dim]         one per episode: fetchjax keeps the goal constant within an episode
                                      (`FetchEnv.step` only replaces it on the auto-reset step)
  action        [C, T, act_dim], reward [C, T]  (the env's reward, returned for real samples as SB3 does)
Observations are stored once per time index (T+1 per episode), never duplicated per transition as SB3's
obs/next_obs arrays do, so a pixel pipeline stores each uint8 frame once; each key keeps the dtype of its
`obs_spec` entry and `start`/`add` refuse observations of another dtype (no silent casts; goals are float32).
Run `add` inside the jitted training loop (a lax.scan carry) or jit it with donate_argnums=0: its writes are
then in place (~50 us per step for a 1M-transition Push buffer on 2 CPU cores); a standalone jit without
donation copies the whole ring on every call.

The episodes in progress are written straight into their ring slots [pos, pos + num_envs) as they are
collected; only `last_obs` (the observation the next action is applied to, SB3's `_last_obs`) is staged. Why:
under vmap over seeds a `lax.cond` on the traced "episode ended" flag becomes a select over both branches, so
committing a staged episode block would copy the whole ring on every step; here each `add` writes O(num_envs)
elements. Sampling only reads complete episodes:
  - `size` counts complete episodes (capped at C); `pos` is the first slot of the block being written;
  - while a block is being overwritten (t > 0) its old episodes are already invalid, as SB3 sets
    `ep_length = 0` for an episode as soon as its first transition is overwritten; between episodes (t == 0)
    the oldest block is still valid, as in SB3 before its next `add`. So a full ring samples C - num_envs
    episodes during an episode and C at its boundary: exactly SB3's valid set when its per-env row count is a
    multiple of T.

Sampling (`sample`), line by line as SB3 2.x `HerReplayBuffer.sample`:
  - B transitions uniformly with replacement from the complete episodes (uniform episode, uniform t: the same
    as SB3's uniform draw over valid (row, env) pairs, since every episode has T transitions);
  - n_virtual = int(her_ratio * B), her_ratio = 1 - 1/(n_sampled_goal + 1) (204 of 256 for k = 4); the batch
    is real samples first, then the n_virtual virtual ones (SB3 splits its draws virtual-first but concatenates
    real-first; draws are i.i.d., so only the output order matters);
  - virtual goals: future: t' ~ U{t..T-1} -> ag_{t'+1} (inclusive: ag_{t+1}, the transition's own next achieved
    goal, can be drawn); final: ag_T; episode: t' ~ U{0..T-1} -> ag_{t'+1}. The new goal replaces
    `desired_goal` in both obs and next_obs; reward = compute_reward(next_achieved_goal, new_goal, None) (SB3
    passes `infos = {}` per sample unless copy_info_dict; Fetch ignores it);
  - real samples keep their goal and the STORED reward (SB3 `_get_real_samples`). For Fetch the stored reward
    is `compute_reward(final_obs["achieved_goal"], desired_goal)` (FetchEnv.step), i.e. exactly what relabelling
    to the own goal recomputes;
  - done = 0 for every sample: SB3 returns done * (1 - timeout), and Fetch episodes end only by the time limit
    (handle_timeout_termination=True), so the critic always bootstraps from next_obs. This buffer has no
    terminal flags at all: it is for fixed-length, truncation-only episodes.
  - `her=False`: all samples real (plain uniform replay, SAC without HER).

Frame stacks (`frame_stack=k`, `stack_keys`, book ch9's 4-frame `PixelObservationWrapper`). The buffer stores ONE
frame per time index (e.g. `pixels` [C, T+1, 84, 84, 3]); `sample` rebuilds the stack of o_t from o_{t-k+1}..o_t
on the last (channel) axis, oldest first, indexes below 0 clipped to 0: copies of the episode's first frame, as
the wrapper fills its deque with the reset frame. next_obs is the stack of o_{t+1}, so both are rebuilt from the
same T+1 frames. `stacked_spec` is the spec the networks see; `acting_obs` the stacked observation of the
episodes in progress (what the policy acts on). frame_stack=1 is plain indexing (no stacking code runs).

Memory, book ch9 (84x84x3 uint8 frames, T = 50, frame stack 4, proprioception 10 and goals 3+3 float32, action
4 float32): per episode (T+1) x 21,168 B of frames + 51 x (40 + 12) B of proprioception and achieved goal + 12 B
desired goal + 50 x (16 + 4) B of action and reward = 1,083,232 B, i.e. 21,665 B per transition (21,591 of
them pixels). SB3's DictReplayBuffer (the book's runs) stores the 12-channel stack twice per transition:
169,344 B of pixels (+ ~300 B of float64 vectors, actions, flags): 7.8x more. Largest buffers per seed (whole
runner state resident once, i.e. the runner donated to the jitted `run`; without donation its input and output
both live and the numbers halve; GB = 1e9 B): 141 GB of GPU memory (XLA_PYTHON_CLIENT_MEM_FRACTION raised from
JAX's default .75 to ~.95) less ~10 GB for XLA workspace, networks, optimiser states, sample batches and env
state -> ~6.0M transitions (the book's 500K = 10.8 GB: ~12 seeds of 500K vmapped on one H200); 24 GB of host
memory less ~4 GB for the process (Python, XLA, MuJoCo, the renderer) -> ~920K transitions (SB3/book: ~118K;
its 500K needs 85 GB).

Contract where SB3 raises ("Unable to sample before the end of the first episode"): `sample` on a buffer with
no complete episode does not crash under jit; it returns a well-formed batch of finite filler (the zero /
partially written slot C-1). Callers must only train when `can_sample(buf)`: with SB3's rule that gradient
steps start once num_timesteps > learning_starts, any learning_starts >= T * num_envs (400 for 8 envs)
guarantees it. `create` keeps at least two blocks of episodes so that this stays true once the ring is full.
"""
from __future__ import annotations

from typing import Callable

import fetchjax  # noqa: F401  (XLA flags before JAX initialises)
import flax.struct
import jax
import jax.numpy as jnp

STRATEGIES = ("future", "final", "episode")


GOAL_KEYS = ("achieved_goal", "desired_goal")


@flax.struct.dataclass
class EpisodeBuffer:
  obs: dict                 # {key: [C, T+1, *shape]} every observation key but desired_goal, in its spec dtype
  desired_goal: jax.Array   # [C, goal_dim] float32
  action: jax.Array         # [C, T, act_dim] float32
  reward: jax.Array         # [C, T] float32, as the env returned it
  last_obs: dict            # staging: the observation dict of the episodes in progress at step t, [num_envs, ...]
  t: jax.Array              # int32: step index within the current episodes (0..T-1)
  size: jax.Array           # int32: complete episodes stored (<= C)
  pos: jax.Array            # int32: first slot of the block being written (a multiple of num_envs)
  num_envs: int = flax.struct.field(pytree_node=False, default=1)

  # Shapes, not fields, so they stay right inside vmap (negative axes skip a leading seed axis).
  @property
  def capacity_episodes(self) -> int:
    return self.action.shape[-3]

  @property
  def episode_length(self) -> int:
    return self.action.shape[-2]

  @property
  def achieved_goal(self) -> jax.Array:
    return self.obs["achieved_goal"]


@flax.struct.dataclass
class Batch:
  obs: dict        # the observation dict (every key of the spec, desired_goal relabelled), [B, ...]
  action: jax.Array   # [B, act_dim]
  reward: jax.Array   # [B] float32
  next_obs: dict
  done: jax.Array     # [B] float32, always 0 (see module docstring)


def capacity_episodes(capacity_transitions: int, num_envs: int, T: int = 50) -> int:
  """SB3 buffer_size (transitions) -> ring slots: whole blocks of `num_envs` episodes, rounded down, at least
  two blocks (with one block a full ring would have nothing to sample while its only block is rewritten)."""
  blocks = (capacity_transitions // T) // num_envs
  return max(2, blocks) * num_envs


def spec_of(obs: dict) -> dict:
  """The `obs_spec` of a batched observation dict (leading env axis dropped): {key: ShapeDtypeStruct}."""
  return {k: jax.ShapeDtypeStruct(tuple(v.shape[1:]), v.dtype) for k, v in obs.items()}


def state_spec(obs_dim: int, goal_dim: int = 3) -> dict:
  """The `obs_spec` of a state-based goal env: float32 observation [obs_dim] and goals [goal_dim]."""
  f32 = jnp.float32
  return {"observation": jax.ShapeDtypeStruct((obs_dim,), f32),
          "achieved_goal": jax.ShapeDtypeStruct((goal_dim,), f32),
          "desired_goal": jax.ShapeDtypeStruct((goal_dim,), f32)}


def _storage_dtype(key: str, dtype):
  return jnp.float32 if key in GOAL_KEYS else dtype


def create(capacity_transitions: int, num_envs: int, obs_spec: dict, T: int = 50,
           act_dim: int = 4) -> EpisodeBuffer:
  """Empty buffer. `capacity_transitions` is SB3's buffer_size; `obs_spec` {key: ShapeDtypeStruct (or anything
  with .shape and .dtype) of ONE env's observation}: the goal dict's keys with their shapes and storage dtypes
  (`spec_of(env_state.obs)`, `state_spec(obs_dim)`); goals are stored as float32."""
  for name, v in (("capacity_transitions", capacity_transitions), ("num_envs", num_envs), ("T", T),
                  ("act_dim", act_dim)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be a positive integer, got {v!r}")
  missing = [k for k in GOAL_KEYS if k not in obs_spec]
  if missing:
    raise ValueError(f"obs_spec lacks the goal key(s) {missing}: a HER buffer stores goal-conditioned observations")
  c = capacity_episodes(capacity_transitions, num_envs, T)
  f32 = jnp.float32
  spec = {k: (tuple(v.shape), _storage_dtype(k, v.dtype)) for k, v in obs_spec.items()}
  return EpisodeBuffer(
      obs={k: jnp.zeros((c, T + 1, *shape), dtype) for k, (shape, dtype) in spec.items() if k != "desired_goal"},
      desired_goal=jnp.zeros((c, *spec["desired_goal"][0]), f32),
      action=jnp.zeros((c, T, act_dim), f32),
      reward=jnp.zeros((c, T), f32),
      last_obs={k: jnp.zeros((num_envs, *shape), dtype) for k, (shape, dtype) in spec.items()},
      t=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32), pos=jnp.zeros((), jnp.int32),
      num_envs=num_envs)


def _check_obs(buf: EpisodeBuffer, obs: dict) -> dict:
  """`obs` in the buffer's storage dtypes: goals cast to float32, any other key must already match (checked at
  trace time: a uint8 frame must not become float silently, nor a float become uint8)."""
  if set(obs) != set(buf.last_obs):
    raise ValueError(f"observation keys {sorted(obs)} != the buffer's {sorted(buf.last_obs)}")
  out = {}
  for k, v in obs.items():
    want = buf.last_obs[k].dtype
    if k not in GOAL_KEYS and v.dtype != want:
      raise ValueError(f"observation {k!r} dtype {v.dtype} != buffer storage dtype {want} (create(obs_spec=...))")
    out[k] = v.astype(want)
  return out


def start(buf: EpisodeBuffer, obs: dict) -> EpisodeBuffer:
  """First observation of the episodes in progress (after env.reset). Called mid-episode (t > 0), it discards
  the partly written block at `pos` and, in a full ring, the older episodes it had partly overwritten."""
  c, n = buf.capacity_episodes, buf.num_envs
  size = jnp.where(buf.t > 0, jnp.minimum(buf.size, c - n), buf.size)
  return buf.replace(last_obs=_check_obs(buf, obs), t=jnp.zeros_like(buf.t), size=size.astype(jnp.int32))


def add(buf: EpisodeBuffer, action: jax.Array, env_state) -> EpisodeBuffer:
  """Stores a_t, r_t and o_{t+1} = env_state.info["final_obs"] after `env_state = env.step(state, action)`.
  After the T-th step the block of `num_envs` episodes becomes sampleable (overwriting the oldest block) and
  the next episodes start from env_state.obs (already the reset observation). Episode ends are counted here
  (t reaches T), not read from env_state.done: fetchjax envs are aligned and truncate at T."""
  n, c, T = buf.num_envs, buf.capacity_episodes, buf.episode_length
  nxt = _check_obs(buf, env_state.info["final_obs"])
  last = buf.last_obs
  pos, t = buf.pos, buf.t
  upd = jax.lax.dynamic_update_slice
  zero = jnp.zeros((), jnp.int32)

  def write(stored, key):  # o_t (rewritten with the same value from step t-1, except at t = 0) and o_{t+1}
    pair = jnp.stack([last[key], nxt[key]], axis=1)
    return upd(stored, pair, (pos, t) + (zero,) * (pair.ndim - 2))

  buf = buf.replace(
      obs={k: write(v, k) for k, v in buf.obs.items()},
      desired_goal=upd(buf.desired_goal, last["desired_goal"], (pos, zero)),
      action=upd(buf.action, action.astype(jnp.float32)[:, None], (pos, t, zero)),
      reward=upd(buf.reward, env_state.reward.astype(jnp.float32)[:, None], (pos, t)))
  ended = t + 1 >= T
  return buf.replace(
      last_obs=_check_obs(buf, env_state.obs),
      t=jnp.where(ended, 0, t + 1).astype(jnp.int32),
      size=jnp.where(ended, jnp.minimum(buf.size + n, c), buf.size).astype(jnp.int32),
      pos=jnp.where(ended, (pos + n) % c, pos).astype(jnp.int32))


def num_sampleable(buf: EpisodeBuffer) -> jax.Array:
  """Complete episodes `sample` draws from: all stored ones, minus the block being overwritten (t > 0)."""
  c, n = buf.capacity_episodes, buf.num_envs
  return jnp.where(buf.t == 0, buf.size, jnp.minimum(buf.size, c - n))


def can_sample(buf: EpisodeBuffer) -> jax.Array:
  """True once at least one episode is complete (SB3 raises in `sample` before that)."""
  return num_sampleable(buf) > 0


def her_ratio(n_sampled_goal: int) -> float:
  return 1 - (1.0 / (n_sampled_goal + 1))  # SB3's expression, so int(her_ratio * B) rounds identically


def num_virtual(batch_size: int, n_sampled_goal: int = 4, her: bool = True) -> int:
  return int(her_ratio(n_sampled_goal) * batch_size) if her else 0


def _check_stack(frame_stack: int, stack_keys, keys) -> tuple[str, ...]:
  """The keys to stack (none when frame_stack == 1); ValueError for a bad k or a key the buffer lacks."""
  if isinstance(frame_stack, bool) or not isinstance(frame_stack, int) or frame_stack < 1:
    raise ValueError(f"frame_stack must be a positive integer, got {frame_stack!r}")
  stack_keys = (stack_keys,) if isinstance(stack_keys, str) else tuple(stack_keys)
  if frame_stack == 1:
    return ()
  bad = [k for k in stack_keys if k not in keys or k in GOAL_KEYS]
  if bad:
    raise ValueError(f"cannot stack {bad}: stack_keys must be non-goal observation keys of {sorted(keys)}")
  return stack_keys


def stack_frames(frames: jax.Array, ep: jax.Array, t: jax.Array, k: int) -> jax.Array:
  """The k-frame stacks of o_t: frames [C, T+1, ..., c] (one frame per time index), ep, t [B] -> [B, ..., k*c],
  frames t-k+1..t on the last axis, oldest first, times below 0 clipped to 0 (copies of the first frame)."""
  idx = jnp.maximum(t[:, None] + jnp.arange(1 - k, 1), 0)         # [B, k]
  g = jnp.moveaxis(frames[ep[:, None], idx], 1, -2)                  # [B, ..., k, c]
  return g.reshape(*g.shape[:-2], k * g.shape[-1])


def stacked_spec(obs_spec: dict, frame_stack: int = 1, stack_keys=("pixels",)) -> dict:
  """The observation spec the networks see: `stack_keys` with frame_stack times the channels of one frame."""
  keys = _check_stack(frame_stack, stack_keys, obs_spec)
  return {k: jax.ShapeDtypeStruct((*v.shape[:-1], frame_stack * v.shape[-1]), v.dtype) if k in keys else v
          for k, v in obs_spec.items()}


def acting_obs(buf: EpisodeBuffer, frame_stack: int = 1, stack_keys=("pixels",)) -> dict:
  """`last_obs` (o_t of the episodes in progress, [num_envs, ...]) with `stack_keys` stacked as `sample` stacks
  them: o_{t-k+1}..o_{t-1} read from the episodes' ring slots (written by `add`), o_t itself from `last_obs`
  (at t = 0 the slots still hold the overwritten episode, so every frame is o_0). What the policy acts on."""
  keys = _check_stack(frame_stack, stack_keys, buf.last_obs)
  out = dict(buf.last_obs)
  n, t = buf.num_envs, buf.t
  times = jnp.maximum(t + jnp.arange(1 - frame_stack, 1), 0)          # [k]
  for key in keys:
    slots = jax.lax.dynamic_slice_in_dim(buf.obs[key], buf.pos, n, axis=0)   # [n, T+1, ..., c]
    g = jnp.where((times == t).reshape(1, -1, *(1,) * (slots.ndim - 2)), buf.last_obs[key][:, None],
                  slots[:, times])                                    # [n, k, ..., c]
    g = jnp.moveaxis(g, 1, -2)
    out[key] = g.reshape(*g.shape[:-2], frame_stack * g.shape[-1])
  return out


def sample(buf: EpisodeBuffer, key: jax.Array, batch_size: int, compute_reward: Callable,
           n_sampled_goal: int = 4, strategy: str = "future", her: bool = True,
           future_inclusive: bool = True, frame_stack: int = 1, stack_keys=("pixels",)) -> Batch:
  """A batch of B transitions, rows [0, B - n_virtual) real and [B - n_virtual, B) relabelled (module
  docstring). `batch_size`, `n_sampled_goal`, `strategy`, `her`, `future_inclusive`, `frame_stack`,
  `stack_keys` and `compute_reward` (the env's pure, batched `compute_reward(achieved, desired, info)`) are
  static: close over them before jit. `future_inclusive=False` is the book lab's convention (t' > t:
  ag_{t+2}..ag_T, ag_T at the last step). `frame_stack` k > 1: obs[key] / next_obs[key] of every `stack_keys`
  key are the k-frame stacks of o_t / o_{t+1} (module docstring, "Frame stacks")."""
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown goal selection strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
  stack = _check_stack(frame_stack, stack_keys, buf.obs)
  c, T = buf.capacity_episodes, buf.episode_length
  k_ep, k_t, k_goal = jax.random.split(key, 3)
  n_valid = num_sampleable(buf)
  # Valid episodes are the n_valid slots before `pos` (cyclically); max(.., 1) keeps an empty buffer finite.
  offset = jax.random.randint(k_ep, (batch_size,), 0, jnp.maximum(n_valid, 1))
  ep = (buf.pos - jnp.maximum(n_valid, 1) + offset) % c
  t = jax.random.randint(k_t, (batch_size,), 0, T)

  def at(k, v, t):
    return stack_frames(v, ep, t, frame_stack) if k in stack else v[ep, t]

  obs = {**{k: at(k, v, t) for k, v in buf.obs.items()}, "desired_goal": buf.desired_goal[ep]}
  next_obs = {**{k: at(k, v, t + 1) for k, v in buf.obs.items()}, "desired_goal": buf.desired_goal[ep]}
  reward = buf.reward[ep, t]

  if her and not isinstance(n_sampled_goal, int):  # k traced by fetchjax.sweep: a relabel count in a fixed batch
    return _sample_traced_k(buf, k_goal, batch_size, compute_reward, n_sampled_goal, strategy, future_inclusive,
                            ep, t, obs, next_obs, reward)
  n_virtual = num_virtual(batch_size, n_sampled_goal, her)
  if n_virtual > 0:
    v = slice(batch_size - n_virtual, batch_size)
    ep_v, t_v = ep[v], t[v]
    t_goal = _goal_times(k_goal, t_v, T, strategy, future_inclusive)
    new_goal = buf.achieved_goal[ep_v, t_goal + 1]  # SB3: next_observations["achieved_goal"][t']
    new_reward = jnp.asarray(compute_reward(next_obs["achieved_goal"][v], new_goal, None), jnp.float32)
    goal = obs["desired_goal"].at[v].set(new_goal)
    obs = {**obs, "desired_goal": goal}
    next_obs = {**next_obs, "desired_goal": goal}
    reward = reward.at[v].set(new_reward)

  return Batch(obs=obs, action=buf.action[ep, t], reward=reward, next_obs=next_obs,
               done=jnp.zeros((batch_size,), jnp.float32))


def _goal_times(key, t, T: int, strategy: str, future_inclusive: bool):
  """The time indices t' whose achieved goal relabels transitions at times `t` (SB3's goal selection strategies)."""
  if strategy == "final":
    return jnp.full_like(t, T - 1)
  if strategy == "episode":
    return jax.random.randint(key, t.shape, 0, T)
  lo = t if future_inclusive else jnp.minimum(t + 1, T - 1)  # future
  return jax.random.randint(key, t.shape, lo, T)


def num_virtual_traced(batch_size: int, n_sampled_goal):
  """floor(k B / (k + 1)) in integers: `num_virtual` for a traced k (fetchjax.sweep checks, per swept k, that it
  equals SB3's float expression)."""
  return (n_sampled_goal * batch_size) // (n_sampled_goal + 1)


def _sample_traced_k(buf, k_goal, batch_size, compute_reward, n_sampled_goal, strategy, future_inclusive, ep, t,
                     obs, next_obs, reward) -> Batch:
  """`sample`'s relabelling for a traced k: every row's relabelled goal is computed and the last n_virtual rows
  take theirs (a select instead of a slice of traced length). The goal draws are made for all B rows, virtual row
  j (row B - n_virtual + j) taking draw j: with JAX's partitionable threefry (the default) the first n draws of a
  B-row draw are the n-row draw, so a point with k samples exactly the batch a run with that k samples."""
  T = buf.episode_length
  n_virtual = num_virtual_traced(batch_size, n_sampled_goal)
  start = batch_size - n_virtual
  rows = jnp.arange(batch_size)
  t_src = t[(rows + start) % batch_size]  # draw j belongs to row start + j
  t_goal = _goal_times(k_goal, t_src, T, strategy, future_inclusive)[(rows - start) % batch_size]
  new_goal = buf.achieved_goal[ep, t_goal + 1]
  new_reward = jnp.asarray(compute_reward(next_obs["achieved_goal"], new_goal, None), jnp.float32)
  virtual = rows >= start
  goal = jnp.where(virtual[:, None], new_goal, obs["desired_goal"])
  return Batch(obs={**obs, "desired_goal": goal}, action=buf.action[ep, t],
               reward=jnp.where(virtual, new_reward, reward), next_obs={**next_obs, "desired_goal": goal},
               done=jnp.zeros((batch_size,), jnp.float32))
