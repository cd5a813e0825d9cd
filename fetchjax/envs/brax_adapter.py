"""brax interop: train a fetchjax Fetch env with `brax.training.agents.ppo.train` or `...sac.train`.

    from brax.training.agents.ppo import train as ppo
    from fetchjax.envs.brax_adapter import BraxFetchEnv, wrap_for_training

    env = BraxFetchEnv("FetchReachDense-v4", backend="cpu")
    make_policy, params, metrics = ppo.train(env, wrap_env_fn=wrap_for_training, episode_length=env.episode_length,
                                             num_timesteps=200_000, num_envs=16, ...)

`BraxFetchEnv` is a brax `Env` that is ALREADY batched and auto-resetting, so brax must not wrap it
(`wrap_env_fn=wrap_for_training` returns it as it is, after checking brax's arguments; `ppo.train` also takes
`wrap_env=False`): brax's own `AutoResetWrapper` would put every finished env back into the state it was first
reset to, i.e. replay the first episode's goal (and block position) forever. fetchjax's `FetchEnv.step` instead
starts each new episode with a fresh goal and object position drawn from the env's own PRNG key, and the adapter
keeps that. What brax's `EpisodeWrapper` would add, the adapter adds itself:

  obs                  the goal dict flattened in SB3's sorted-key order [achieved_goal, desired_goal,
                       observation] (`fetchjax.encoders.flatten_obs`): 16 floats for Reach, 31 for Push.
                       After an episode's last step it is the next episode's first observation (as in brax).
  done, info["truncation"], info["time_out"]
                       1.0 on the step that reaches the 50-step time limit, the only way a Fetch episode ends
                       (brax masks truncated transitions out of PPO's GAE and SAC's critic loss; `time_out`
                       serves PPO's `bootstrap_on_timeout=True`).
  info["steps"]        steps taken in the episode (1..50; 50 on the done step), float32 as brax's.
  info["episode_done"], info["episode_metrics"] {"sum_reward", "length", "is_success"}
                       brax's training-metrics bookkeeping (`ppo.train(..., log_training_metrics=True)`).
  metrics["is_success"] gymnasium's `is_success` of the episode: the success of its LAST step, reported on the
                       done step (0 elsewhere), so its per-episode sum in brax's evaluator
                       (`eval/episode_is_success`) is the success rate.
  info["is_success"]   the success of every transition; info["final_obs"]: the flat last observation of the
                       episode that just ended (the value to bootstrap from at truncation).
  pipeline_state       the fetchjax `State` underneath (goal dict, physics state, per-env PRNG keys).

Batch size: `reset(keys)` takes one PRNG key per env, `[B, 2]`, and returns B envs (brax passes `num_envs` keys
for training and `num_eval_envs` for its evaluator). Env i's first task is `FetchEnv.sample_task` of the second
half of `split(keys[i])`; the first half becomes its PRNG stream, from which every later episode's task is drawn
exactly as `FetchEnv.step` draws it.

jax >= 0.10 shim: brax 0.14.2 (the newest release) calls `jax.device_put_replicated` in ppo/sac/apg `train` and
`brax.training.pmap`, which jax 0.10 removed; brax's main branch in-lined a replacement after the release
(commit 303d89d, "[pmap] In-line definitions of `jax.device_put_sharded` and `jax.device_put_replicated`").
Importing this module gives `jax` that definition (on brax's pmap mesh axis name, see `_BRAX_PMAP_AXIS`) when,
and only when, jax lacks the function (`patch_jax_for_brax`); with a brax release that no longer calls it the shim
is unused.
"""
from __future__ import annotations

try:
  from brax.envs import base as _brax_base
except ImportError as e:  # pragma: no cover - exercised only without the extra
  raise ImportError("fetchjax.envs.brax_adapter needs brax: pip install 'fetchjax[brax]'") from e

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from fetchjax.encoders.state import flatten_obs


# brax's ppo/sac/apg `train` pmap over an axis named "i"; jax >= 0.10's pmap returns arrays sharded over a mesh
# with that axis name. The replicated training state must sit on the same mesh: brax unpmaps parameters from
# before training (replicated here) and after (pmap outputs) into one evaluator program, and jit rejects two
# meshes of different axis names in one program (brax main's in-lined version names its axis
# "_device_put_sharded" and fails so at the second evaluation).
_BRAX_PMAP_AXIS = "i"


def _device_put_replicated(x, devices):
  """`jax.device_put_replicated` as brax main in-lines it (commit 303d89d), on brax's pmap axis name: `x` stacked
  once per device along a new leading axis, that axis sharded over `devices` (what `jax.pmap` takes)."""
  devices = list(devices)
  mesh = jax.sharding.Mesh(np.array(devices), (_BRAX_PMAP_AXIS,))
  sharding = jax.NamedSharding(mesh, jax.P(_BRAX_PMAP_AXIS))

  def replicate(leaf):
    if isinstance(leaf, jax.Array):
      return jax.device_put(jnp.stack([leaf] * len(devices)), sharding)
    return jax.device_put(np.stack([leaf] * len(devices)), sharding)

  return jax.tree_util.tree_map(replicate, x)


def patch_jax_for_brax() -> bool:
  """Gives `jax` brax's replacement `device_put_replicated` if this jax has none (jax >= 0.10). True if it did."""
  with warnings.catch_warnings():  # jax < 0.10: present, with a DeprecationWarning on access
    warnings.simplefilter("ignore")
    try:
      jax.device_put_replicated  # noqa: B018
      return False
    except AttributeError:
      pass
  jax.device_put_replicated = _device_put_replicated
  return True


patch_jax_for_brax()

_WRAPPED_MSG = ("BraxFetchEnv.reset takes a batch of PRNG keys [num_envs, 2], got shape {shape}: the env is "
                "already batched and auto-resets with a fresh goal every episode, so brax must not wrap it: pass "
                "wrap_env_fn=fetchjax.envs.brax_adapter.wrap_for_training and episode_length={T} to brax's "
                "ppo.train / sac.train (brax's own wrappers would replay the first goal every episode)")


def wrap_for_training(env, episode_length: int | None = None, action_repeat: int = 1, randomization_fn=None):
  """brax's `wrap_env_fn` for a `BraxFetchEnv`: checks brax's wrapping arguments and returns the env itself.

  `ppo.train(env, wrap_env_fn=wrap_for_training, episode_length=50, ...)`, and the same for `sac.train`. brax
  calls it for the training env and again for its evaluator's env. The env already does what brax's
  `envs.training.wrap` would add (batching, the time limit, auto-reset, episode metrics), with a fresh task per
  episode where brax's AutoResetWrapper would replay the first one. (`ppo.train(..., wrap_env=False)` skips this
  function to the same effect; brax 0.14.2's `sac.train` fails with `wrap_env=False`, an unbound `rng`.)
  """
  if not isinstance(env, BraxFetchEnv):
    raise TypeError(f"wrap_for_training wraps a BraxFetchEnv, got {type(env).__name__}; for brax's own envs "
                    "leave wrap_env_fn unset")
  if episode_length != env.episode_length:
    raise ValueError(f"{env.env_id} episodes last {env.episode_length} steps (the gymnasium-robotics time limit): "
                     f"pass episode_length={env.episode_length} to brax's train, got {episode_length}")
  if action_repeat != 1:
    raise ValueError(f"action_repeat must be 1 for a fetchjax env (one Fetch step is already 20 physics "
                     f"substeps), got {action_repeat}")
  if randomization_fn is not None:
    raise ValueError("randomization_fn (brax domain randomization of a brax System) does not apply to a fetchjax "
                     "env; leave it None")
  return env


class BraxFetchEnv(_brax_base.Env):
  """A fetchjax Fetch env as a batched, self-resetting brax `Env` (module docstring: the fields it fills).

  env: an env id ("FetchReachDense-v4", ...), an `EnvConfig`, or a `FetchEnv`. The physics backend is built once
    (`envs.make(env_id, **make_kwargs)` for an id: backend, physics, jdotv, threads, warp) and shared by every
    batch size; an EnvConfig's or FetchEnv's `num_envs` is ignored (brax sets the batch by the keys it passes).
  """

  def __init__(self, env="FetchReachDense-v4", **make_kwargs):
    from fetchjax import envs
    from fetchjax.envs.config import EnvConfig
    from fetchjax.envs.fetch import FetchEnv

    if isinstance(env, str):
      env = envs.make(env, **make_kwargs)
    elif isinstance(env, EnvConfig):
      if make_kwargs:
        raise ValueError(f"pass either an EnvConfig or keyword arguments, not both (got {sorted(make_kwargs)})")
      env = env.make()
    elif not isinstance(env, FetchEnv):
      raise TypeError(f"env must be an env id, an EnvConfig or a FetchEnv, got {type(env).__name__}")
    elif make_kwargs:
      raise ValueError(f"keyword arguments {sorted(make_kwargs)} apply only to an env id")
    self._task = env.task
    self._physics = env.backend
    self._envs = {env.num_envs: env}

  # --- brax Env protocol --------------------------------------------------------------------------
  @property
  def observation_size(self) -> int:
    return 6 + self._task.obs_size

  @property
  def action_size(self) -> int:
    return 4

  @property
  def backend(self) -> str:
    """The physics backend's name: "cpu" (C MuJoCo), "mjx" or "warp"."""
    return self._physics.name

  # --- fetchjax extras ----------------------------------------------------------------------------
  @property
  def env_id(self) -> str:
    return self._task.env_id

  @property
  def episode_length(self) -> int:
    """The time limit (50): pass it as brax's `episode_length` (its evaluator unrolls that many steps)."""
    return self._task.max_episode_steps

  def fetch_env(self, num_envs: int):
    """The `FetchEnv` of `num_envs` envs that this adapter steps (one per batch size, all on one backend)."""
    if num_envs not in self._envs:
      from fetchjax.envs.fetch import FetchEnv

      with jax.ensure_compile_time_eval():  # first called inside brax's jit: keep FetchEnv's constants concrete
        self._envs[num_envs] = FetchEnv(self._task, num_envs, self._physics)
    return self._envs[num_envs]

  # --- reset / step -------------------------------------------------------------------------------
  def reset(self, rng: jax.Array) -> _brax_base.State:
    typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
    batch = rng.shape if typed else rng.shape[:-1]
    if len(batch) != 1:
      raise ValueError(_WRAPPED_MSG.format(shape=tuple(rng.shape), T=self.episode_length))
    if typed:
      rng = jax.random.key_data(rng)
    env = self.fetch_env(batch[0])
    split = jax.vmap(jax.random.split)(rng)  # [B, 2, 2]: the env's PRNG stream, its first task's key
    object_xy, goals = jax.vmap(env.sample_task)(split[:, 1])
    inner = env.reset_to(object_xy, goals, split[:, 0])
    zero = jnp.zeros(batch, jnp.float32)
    info = {
        "steps": zero, "truncation": zero, "time_out": zero, "episode_done": zero,
        "episode_metrics": {"sum_reward": zero, "length": zero, "is_success": zero},
        "is_success": inner.info["is_success"].astype(jnp.float32),
        "final_obs": flatten_obs(inner.info["final_obs"]),
    }
    return _brax_base.State(pipeline_state=inner, obs=flatten_obs(inner.obs), reward=zero, done=zero,
                            metrics={"is_success": zero}, info=info)

  def step(self, state: _brax_base.State, action: jax.Array) -> _brax_base.State:
    env = self.fetch_env(state.done.shape[0])
    inner = env.step(state.pipeline_state, action)
    done = inner.done.astype(jnp.float32)
    success = inner.info["is_success"].astype(jnp.float32)
    episode_success = success * done
    ongoing = 1.0 - state.info["episode_done"]  # brax's EpisodeWrapper: sums restart after a done step
    prev = state.info["episode_metrics"]
    episode_metrics = {"sum_reward": prev["sum_reward"] * ongoing + inner.reward,
                       "length": prev["length"] * ongoing + 1.0,
                       "is_success": prev["is_success"] * ongoing + episode_success}
    steps = jnp.where(inner.done > 0, float(env.max_episode_steps), inner.info["steps"].astype(jnp.float32))
    info = {
        **state.info,  # keys other wrappers keep in the state (the scan carry keeps its structure)
        "steps": steps, "truncation": inner.info["truncation"].astype(jnp.float32), "time_out": done,
        "episode_done": done, "episode_metrics": episode_metrics, "is_success": success,
        "final_obs": flatten_obs(inner.info["final_obs"]),
    }
    return _brax_base.State(pipeline_state=inner, obs=flatten_obs(inner.obs), reward=inner.reward, done=done,
                            metrics={**state.metrics, "is_success": episode_success}, info=info)


__all__ = ["BraxFetchEnv", "wrap_for_training", "patch_jax_for_brax"]
