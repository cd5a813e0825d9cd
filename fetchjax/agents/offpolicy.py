"""The off-policy loop shared by SAC and TD3: SB3's `OffPolicyAlgorithm.learn` (warm-up, action noise, env steps,
the HER episode buffer, `train_freq` / `gradient_steps`) around any `Learner`, as one jitted program that vmaps
over seeds. The replay buffer (`her.py`, whole 50-step episodes) lives inside `RunnerState`, so a checkpoint of
it resumes a run bit-exactly. One iteration of `run` = one 50-step episode of every env
(`rollout_size = 50 * num_envs` transitions) with the gradient steps interleaved exactly as SB3's
`OffPolicyAlgorithm.learn` does (train_freq counted in vectorised steps).

An algorithm module (sac.py, td3.py) supplies its config (with `EpisodeIterations`, validated by
`check_offpolicy`), its `TrainState` and a `Learner`: networks, optimisers, `init`, the gradient step `update`
(on a `Batch` of observation dicts) and `explore`. Pieces of the update both use are here too: `critic_step`, `polyak`.

SB3 details kept on purpose (they change results):
- warm-up: uniform actions while `num_timesteps < learning_starts` (num_timesteps = transitions of all envs);
  gradient steps after a vectorised step only when `num_timesteps > learning_starts` (and, here, once the buffer
  holds a complete episode);
- Fetch episodes end only by truncation, which SB3 (`handle_timeout_termination`) never treats as terminal: the
  buffer's `done` is 0 and the target always bootstraps from `final_obs`.

Deliberate differences from SB3 (documented, small):
- transitions become sampleable only when their episode completes (all envs are episode-aligned, so at the end
  of every 50 vectorised steps). SB3's HER buffer does the same; SB3's plain `DictReplayBuffer` (SAC without
  HER) samples every stored transition. So without HER the episodes in progress (< 50 * num_envs transitions,
  each sampleable at most 49 vectorised steps later than in SB3) are left out: with the book's learning_starts
  10,000 and 8 envs that is < 4% of the buffer at the first gradient step and < 0.4% after 100k steps;
- `learn()` stops at the first vectorised step with num_timesteps >= total; here whole iterations run:
  `num_updates = ceil(total_timesteps / rollout_size)` (500k with 8 envs -> 1250 iterations, exactly 500k);
- `ep_rew_mean` / `success_rate` are over the episodes that ended in the iteration (num_envs of them), not
  SB3's 100-episode window (same as fetchjax PPO).

Pixels (book ch9), both off by default and then without effect on a single bit: `frame_stack` k > 1 stacks the
k most recent frames of the env's single-frame `pixels` on the channel axis (the buffer keeps one frame per time
index; `her.sample` rebuilds the stacks of obs and next_obs, `her.acting_obs` the one the policy acts on, and
the networks are built on `network_spec`); `drq` shifts the sampled obs and next_obs pixels after HER relabelling
(`drq.augment`, independent shifts, goals untouched).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import fetchjax  # noqa: F401  (XLA flags before JAX initialises)
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from fetchjax import encoders
from fetchjax.agents import configs, drq, frames, her, nets

EPISODE_STEPS = 50                      # every Fetch v4 task


# ----------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------
class EpisodeIterations:
  """Off-policy configs: one iteration of `run` = one 50-step episode of every env."""

  def rollout_size(self, num_envs: int) -> int:
    """Env transitions per seed per iteration (one episode of every env)."""
    return EPISODE_STEPS * num_envs

  def num_updates(self, num_envs: int) -> int:
    """Iterations of `run` for `total_timesteps` (whole episodes)."""
    return -(-self.total_timesteps // self.rollout_size(num_envs))

  def check_env(self, num_envs: int) -> None:
    """What the config requires of the env it trains on (ValueError)."""
    if self.buffer_size < EPISODE_STEPS * num_envs:
      raise ValueError(f"buffer_size {self.buffer_size} must hold at least one episode per env "
                       f"({EPISODE_STEPS * num_envs})")


def check_offpolicy(config, positive: tuple[str, ...] = ()) -> None:
  """Validation shared by the off-policy configs (SACConfig, TD3Config), raising ValueError; `positive`: the
  algorithm's own fields that must be positive integers."""
  configs.check_ints(config, positive=("total_timesteps", "buffer_size", "batch_size", "train_freq", "frame_stack",
                                       *positive),
                     non_negative=("learning_starts", "gradient_steps", "n_sampled_goal"))
  if config.goal_selection_strategy not in ("future", "final", "episode"):
    raise ValueError(f"goal_selection_strategy must be future, final or episode, got "
                     f"{config.goal_selection_strategy!r}")
  object.__setattr__(config, "hidden_sizes", configs.layer_sizes(config.hidden_sizes))
  if config.encoder not in encoders.ENCODERS:
    raise ValueError(f"unknown encoder {config.encoder!r}; available: {', '.join(encoders.ENCODERS)}")
  nets.check_routing(config.encoder_routing)
  if not isinstance(config.drq, bool):
    raise ValueError(f"drq must be true or false, got {config.drq!r}")
  if not isinstance(config.hide_achieved_goal, bool):
    raise ValueError(f"hide_achieved_goal must be true or false, got {config.hide_achieved_goal!r}")
  if config.hide_achieved_goal and config.encoder == "flat":
    raise ValueError("hide_achieved_goal (strict pixels) needs a pixel encoder (manipulation or nature); "
                     "encoder 'flat' reads the whole goal dict")


STACK_KEYS = frames.STACK_KEYS          # what frame_stack stacks: the pixels, as the book's wrapper


def acting_frames(config) -> int:
  """Frames the policy of `config` acts on (`frames.reset` / `frames.push` rebuild them outside training)."""
  return config.frame_stack


def pixel_needs(config) -> list[str]:
  """What in `config` reads the env's rendered frames (obs["pixels"]): [] for a state config."""
  from fetchjax.encoders import cnn

  return ([f"encoder {config.encoder!r}"] if config.encoder in cnn.ENCODERS else []) + \
      ([f"frame_stack {config.frame_stack}"] if config.frame_stack > 1 else []) + (["drq"] if config.drq else [])


def network_spec(config, obs_spec: dict) -> dict:
  """The observation spec the networks of `config` read, from the env's `obs_spec`: its single-frame `pixels`
  with `frame_stack` times the channels (ValueError when frame_stack > 1 or drq is asked of an env without
  pixels)."""
  if config.drq and drq.IMAGE_KEY not in obs_spec:
    raise ValueError(f"drq augments obs[{drq.IMAGE_KEY!r}]; this env's observation has {sorted(obs_spec)}")
  return her.stacked_spec(obs_spec, config.frame_stack, STACK_KEYS)


# ----------------------------------------------------------------------------------------------------------
# The learner interface and the update pieces SAC and TD3 share
# ----------------------------------------------------------------------------------------------------------
class Batch(NamedTuple):
  """What the losses read: observation dicts (the networks' encoders turn them into features). reward/done: [B]."""
  obs: dict
  action: jax.Array
  reward: jax.Array
  next_obs: dict
  done: jax.Array


def obs_zeros(obs_spec: dict, batch: int = 1) -> dict:
  """A zero observation dict of `batch` envs (network initialisation)."""
  return {k: jnp.zeros((batch, *s.shape), s.dtype) for k, s in obs_spec.items()}


def polyak(target, online, tau):
  """SB3 `polyak_update`: target <- (1 - tau) * target + tau * online."""
  return jax.tree.map(lambda t, p: t * (1.0 - tau) + p * tau, target, online)


def critic_step(critic, tx, loss_fn, params, opt_state, batch, target_q):
  """One optimiser step of the twin critics towards `target_q`: (loss, (q1, q2) before the step, params,
  opt_state)."""
  def loss(params):
    qs = critic.apply(params, batch.obs, batch.action)
    return loss_fn(qs, target_q), qs

  (value, qs), g = jax.value_and_grad(loss, has_aux=True)(params)
  upd, opt_state = tx.update(g, opt_state, params)
  return value, qs, optax.apply_updates(params, upd), opt_state


@dataclasses.dataclass(frozen=True)
class Learner:
  """Networks, optimisers and the pure update of one off-policy algorithm (`sac.make_learner`,
  `td3.make_learner`): what `make_offpolicy_runner` drives."""
  actor: nn.Module
  critic: nn.Module
  actor_tx: optax.GradientTransformation
  critic_tx: optax.GradientTransformation
  ent_tx: optax.GradientTransformation
  init: Callable            # init(key) -> TrainState (key, step, ... zero)
  update: Callable          # update(ts, batch: Batch, key, grad_step: int array) -> (ts, info)
  update_with_noise: Callable  # the same step with its noise given explicitly (SB3 parity tests)
  explore: Callable         # explore(ts, obs dict, key) -> action in [-1, 1] (after warm-up)
  info_names: tuple         # keys of `info` reported as metrics
  weights: dict = dataclasses.field(default_factory=dict)  # metric -> 0/1 info key it is averaged over


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------
@flax.struct.dataclass
class RunnerState:
  """Everything a run carries between iterations: a checkpoint of it resumes the run exactly."""
  train_state: Any        # the learner's TrainState
  env_state: Any
  buffer: Any            # her.EpisodeBuffer
  ep_ret: jax.Array      # running raw return of each env's current episode


TB_NAMES = {  # metric -> SB3 logger key of what every off-policy learner reports (replay/* as the book's
               # SACDiagnosticsCallback); an algorithm adds its own
    "ep_rew_mean": "rollout/ep_rew_mean", "success_rate": "rollout/success_rate",
    "critic_loss": "train/critic_loss", "actor_loss": "train/actor_loss", "n_updates": "train/n_updates",
    "q1_mean": "replay/q1_mean", "q2_mean": "replay/q2_mean", "q_min_mean": "replay/q_min_mean",
    "target_q_mean": "replay/target_q_mean", "reward_mean": "replay/reward_mean",
}


def _batch_from(sample: her.Batch) -> Batch:
  return Batch(sample.obs, sample.action, sample.reward.reshape(-1), sample.next_obs,
               sample.done.reshape(-1).astype(jnp.float32))


def make_offpolicy_runner(config, env, learner: Learner, action_noise_sigma: float = 0.0):
  """`(init, run)` of SB3's `OffPolicyAlgorithm.learn` for any `Learner` (SAC, TD3).

  Per vectorised step: action (uniform in [-1, 1] while num_timesteps < learning_starts, else
  `learner.explore`), plus clipped Gaussian action noise when `action_noise_sigma` > 0 (SB3 NormalActionNoise,
  added in warm-up too, as `_sample_action`); env.step; buffer add; num_timesteps += num_envs; then, every
  `train_freq` vectorised steps with num_timesteps > learning_starts and a complete episode stored,
  `gradient_steps` updates (grad_step index 0..G-1, as one SB3 `train()` call).
  """
  c = config
  c.check_env(env.num_envs)
  network_spec(c, env.observation_spec)  # frame_stack / drq need the env's pixels
  hidden = tuple(getattr(env, "hidden_keys", ()))  # optional env attribute: FetchEnv with strict pixels
  if tuple(sorted(hidden)) != nets.hidden_keys(c):
    raise ValueError(f"the env hides {list(hidden)} from the networks (strict pixels) but the config's networks "
                     f"hide {list(nets.hidden_keys(c))}: set hide_achieved_goal={bool(hidden)}")
  num_envs = env.num_envs
  act_size = env.action_size
  steps = env.max_episode_steps
  if steps != EPISODE_STEPS:
    raise ValueError(f"episodes of {steps} steps; the off-policy loop assumes {EPISODE_STEPS}")

  def init(key: jax.Array) -> RunnerState:
    key, k_learn, k_env = jax.random.split(key, 3)
    ts = learner.init(k_learn).replace(key=key)
    env_state = env.reset(k_env)
    buf = her.create(c.buffer_size, num_envs, her.spec_of(env_state.obs), T=steps, act_dim=act_size)
    buf = her.start(buf, env_state.obs)
    return RunnerState(ts, env_state, buf, jnp.zeros(num_envs, jnp.float32))

  weight_keys = sorted(set(learner.weights.values()))

  def train_steps(ts, buf, key):
    def one(ts, xs):
      k, i = xs
      k_sample, k_update = jax.random.split(k)
      if c.drq:  # its own key, split off only here: with drq off the key stream is the one it always was
        k_sample, k_aug = jax.random.split(k_sample)
      sample = her.sample(buf, k_sample, c.batch_size, env.compute_reward, n_sampled_goal=c.n_sampled_goal,
                          strategy=c.goal_selection_strategy, her=c.her, frame_stack=c.frame_stack,
                          stack_keys=STACK_KEYS)
      if c.drq:
        sample = drq.augment(sample, k_aug)
      return learner.update(ts, _batch_from(sample), k_update, i)

    ts, info = jax.lax.scan(one, ts, (jax.random.split(key, c.gradient_steps), jnp.arange(c.gradient_steps)))
    # sums over the call's gradient steps (weighted metrics: over the steps where their weight is 1)
    sums = {k: jnp.sum(info[k] * info[learner.weights[k]] if k in learner.weights else info[k])
            for k in learner.info_names}
    sums.update({w: jnp.sum(info[w]) for w in weight_keys})
    return ts, sums

  def no_train(ts, buf, key):
    return ts, {k: jnp.zeros((), jnp.float32) for k in (*learner.info_names, *weight_keys)}

  def env_step(carry, _):
    ts, env_state, buf, ep_ret = carry
    key, k_rand, k_pol, k_noise, k_train = jax.random.split(ts.key, 5)
    shape = (num_envs, act_size)
    warm = ts.num_timesteps < c.learning_starts
    obs = env_state.obs if c.frame_stack == 1 else her.acting_obs(buf, c.frame_stack, STACK_KEYS)
    policy_action = learner.explore(ts, obs, k_pol)
    action = jnp.where(warm, jax.random.uniform(k_rand, shape, minval=-1.0, maxval=1.0), policy_action)
    if action_noise_sigma > 0:
      action = jnp.clip(action + action_noise_sigma * jax.random.normal(k_noise, shape), -1.0, 1.0)
    env_state = env.step(env_state, action)
    buf = her.add(buf, action, env_state)
    num_timesteps = ts.num_timesteps + num_envs
    vec_steps = num_timesteps // num_envs
    ts = ts.replace(key=key, num_timesteps=num_timesteps)
    do_train = (num_timesteps > c.learning_starts) & her.can_sample(buf) & (vec_steps % c.train_freq == 0)
    if c.gradient_steps > 0:
      ts, info = jax.lax.cond(do_train, train_steps, no_train, ts, buf, k_train)
    else:
      ts, info = no_train(ts, buf, k_train)
      do_train = jnp.zeros((), bool)
    done = env_state.done
    ep_ret = ep_ret + env_state.reward
    out = dict(trained=do_train, info=info, n_done=done.sum(), ret=(ep_ret * done).sum(),
               succ=(env_state.info["is_success"] * done).sum())
    return (ts, env_state, buf, ep_ret * (1.0 - done)), out

  def iteration(carry, _):
    carry, out = jax.lax.scan(env_step, carry, None, steps)
    ts = carry[0]
    n_tr = out["trained"].astype(jnp.float32).sum()
    n_done = out["n_done"].sum()
    tot = {k: jnp.where(out["trained"], v, 0.0).sum() for k, v in out["info"].items()}
    metrics = {}
    for k in learner.info_names:  # mean over the iteration's gradient steps (= mean of SB3's per-call means)
      n = tot[learner.weights[k]] if k in learner.weights else n_tr * c.gradient_steps
      metrics[k] = jnp.where(n > 0, tot[k] / jnp.maximum(n, 1.0), jnp.nan)
    metrics.update(
        timesteps=ts.num_timesteps,
        ep_rew_mean=jnp.where(n_done > 0, out["ret"].sum() / jnp.maximum(n_done, 1), jnp.nan),
        success_rate=jnp.where(n_done > 0, out["succ"].sum() / jnp.maximum(n_done, 1), jnp.nan),
        n_updates=ts.n_updates,
        train_calls=n_tr,
    )
    return (ts.replace(step=ts.step + 1),) + carry[1:], metrics

  def run(runner: RunnerState, n: int) -> tuple[RunnerState, dict]:
    carry = (runner.train_state, runner.env_state, runner.buffer, runner.ep_ret)
    carry, metrics = jax.lax.scan(iteration, carry, None, n)
    return RunnerState(*carry), metrics

  return init, run


def whole_run(init, run, num_updates: int):
  """`train(key) -> (TrainState, metrics)`: a runner's whole run (`num_updates` iterations) as one program."""

  def train(key):
    runner, metrics = run(init(key), num_updates)
    return runner.train_state, metrics

  return train


def tb_constants(config) -> dict[str, float]:
  """Scalars SB3 logs every iteration that are constant here."""
  return {"train/learning_rate": config.learning_rate}


def drop_buffer(runner: RunnerState) -> RunnerState:
  """The runner without its replay buffer (what a checkpoint without the buffer stores)."""
  return runner.replace(buffer=None)


def fresh_buffer(runner: RunnerState, initial: RunnerState) -> RunnerState:
  """`runner` (restored without its buffer) with the empty buffer of `initial` (a runner from `init`), started
  from the env's current observations. Checkpoints are taken between iterations, i.e. at episode starts, so
  the next episodes are stored whole; sampling waits for the first of them (`her.can_sample`)."""
  return runner.replace(buffer=her.start(initial.buffer, runner.env_state.obs))


def policy_of(config, runner) -> dict:
  """What acting needs from a (possibly vmapped, possibly raw-restored dict) RunnerState: the actor's
  parameters and, when the critic owns the encoder (and it has parameters), the critic encoder's."""
  ts = runner["train_state"] if isinstance(runner, dict) else runner.train_state
  get = (lambda k: ts[k]) if isinstance(ts, dict) else (lambda k: getattr(ts, k))
  policy = {"actor_params": get("actor_params")}
  if not nets.actor_owns_encoder(config.encoder_routing):
    enc = nets.encoder_params_of(get("critic_params"))
    if enc is not None:
      policy["critic_encoder"] = enc
  return policy


def acting_input(config, critic, policy: dict, obs: dict):
  """What the actor module reads when acting with `policy` (from `policy_of`) on `obs`."""
  return nets.actor_input(critic, config.encoder_routing)(policy.get("critic_encoder", {"params": {}}), obs)


__all__ = ["EPISODE_STEPS", "EpisodeIterations", "check_offpolicy", "network_spec", "STACK_KEYS", "acting_frames",
           "pixel_needs", "Batch", "polyak",
           "critic_step", "Learner", "RunnerState", "TB_NAMES", "make_offpolicy_runner", "whole_run", "tb_constants",
           "policy_of", "acting_input", "obs_zeros", "drop_buffer", "fresh_buffer"]
