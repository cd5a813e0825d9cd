"""TD3 (optionally with HER) with Stable-Baselines3 semantics, on device; the loop and buffer are
`offpolicy.make_offpolicy_runner` (shared with SAC), the twin critic and PyTorch default Linear init `nets.py`.

SB3 `TD3` 2.9.2 defaults, kept: actor MLP [400, 300] ReLU -> Linear -> tanh (deterministic), twin critics
[400, 300] on cat(obs, action), actor and critic targets; Adam lr 1e-3 (eps 1e-8) for both; per gradient step
(`TD3.train`): n_updates += 1 -> target action = clip(actor_target(s') + clip(N(0, 0.2), -0.5, 0.5), -1, 1) ->
y = r + gamma (1 - done) min_i Q'_i(s', a') -> critic loss sum_i MSE(Q_i, y) (no 1/2, unlike SAC) -> critic
step -> every `policy_delay` (2) updates, counted over the whole run: actor loss -mean Q_1(s, actor(s)) with the
updated critic -> actor step -> Polyak of critic and actor targets (tau 0.005). Exploration: the deterministic
actor plus optional `NormalActionNoise(0, action_noise_sigma)` clipped to [-1, 1] (SB3 default: no noise);
warm-up uniform actions while num_timesteps < learning_starts.

Presets: the book runs TD3 only through its companion `train.py --algo td3 [--her]`, which passes SB3 defaults
except batch 256, buffer 1M, learning_starts 10k, 8 envs and NO action noise ("book", "book_her"); "her" uses
the book's ch5 SAC+HER hyperparameters where they apply (gamma 0.95, learning_starts 1000) with the usual
NormalActionNoise(0.1) (rl-baselines3-zoo); "gpu" is untuned.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import fetchjax  # noqa: F401  (XLA flags before JAX initialises)
import flax.struct
import jax
import jax.numpy as jnp
import optax

from fetchjax import encoders
from fetchjax.envs.config import EnvConfig
from fetchjax.agents import nets
from fetchjax.agents.nets import MLP
from fetchjax.agents.offpolicy import (TB_NAMES, Batch, EpisodeIterations, Learner, acting_input, check_offpolicy,
                                       critic_step, make_offpolicy_runner, network_spec, obs_zeros, polyak,
                                       whole_run)


@dataclasses.dataclass(frozen=True)
class TD3Config(EpisodeIterations):
  """SB3 `TD3` arguments (defaults = the book's `train.py --algo td3` on FetchReachDense-v4)."""

  total_timesteps: int = 1_000_000
  buffer_size: int = 1_000_000
  batch_size: int = 256
  learning_starts: int = 10_000
  learning_rate: float = 1e-3         # SB3 TD3 default, actor and critic
  gamma: float = 0.99
  tau: float = 0.005
  train_freq: int = 1                 # vectorised env steps between train() calls
  gradient_steps: int = 1
  policy_delay: int = 2
  target_policy_noise: float = 0.2
  target_noise_clip: float = 0.5
  action_noise_sigma: float = 0.0     # NormalActionNoise std on the [-1, 1] action; 0 = none (SB3 default)
  hidden_sizes: tuple[int, ...] = (400, 300)  # SB3 TD3 default net_arch
  her: bool = False
  n_sampled_goal: int = 4
  goal_selection_strategy: str = "future"
  adam_eps: float = 1e-8
  encoder: str = "flat"               # fetchjax.encoders.make(name): what the networks read the goal dict through
  encoder_routing: str = "separate"   # nets.ROUTINGS: "separate" (SB3) or "critic" (book ch9)
  frame_stack: int = 1                # book ch9: 4 (pixels stacked at sample time from single stored frames)
  drq: bool = False                   # book ch9: DrQ random shift (pad 4) of sampled obs/next_obs pixels
  hide_achieved_goal: bool = False    # strict pixels: the networks never read achieved_goal (HER still does)

  def __post_init__(self):
    check_offpolicy(self, positive=("policy_delay",))
    for name in ("action_noise_sigma", "target_policy_noise", "target_noise_clip"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


PRESETS: dict[str, TD3Config] = {
    "book": TD3Config(),
    "book_her": TD3Config(her=True),
    "her": TD3Config(her=True, gamma=0.95, learning_starts=1_000, action_noise_sigma=0.1),
    "gpu": TD3Config(batch_size=1024, gradient_steps=8, gamma=0.95, her=True, action_noise_sigma=0.1,
                     total_timesteps=5_000_000),
}
ENV_PRESETS: dict[str, EnvConfig] = {  # the envs each preset was made for (the CLI's --env picks the task)
    "book": EnvConfig("FetchReachDense-v4", num_envs=8),
    "book_her": EnvConfig("FetchReach-v4", num_envs=8),
    "her": EnvConfig("FetchReach-v4", num_envs=8),
    "gpu": EnvConfig("FetchReach-v4", num_envs=512),
}


def Actor(action_size: int, hidden_sizes=(400, 300), encoder=None):
  """SB3 TD3 `Actor.mu`: [encoder ->] create_mlp(..., squash_output=True) = [Linear, ReLU]* -> Linear -> Tanh."""
  return MLP(tuple(hidden_sizes), action_size, squash=True, encoder=encoder)


def networks(config: TD3Config, action_size: int = 4):
  """The actor and twin critic of `config`, each with the encoder it owns under `config.encoder_routing`."""
  return nets.actor_and_critic(config, lambda enc: Actor(action_size, config.hidden_sizes, enc))


@flax.struct.dataclass
class TrainState:
  actor_params: Any
  critic_params: Any
  target_actor_params: Any
  target_critic_params: Any
  actor_opt_state: Any
  critic_opt_state: Any
  key: jax.Array
  step: jax.Array          # completed iterations
  n_updates: jax.Array     # gradient steps (SB3 `_n_updates`, drives policy_delay)
  num_timesteps: jax.Array


def critic_loss_fn(q_values, target_q):
  """SB3 TD3: sum_i mean((Q_i - y)^2) (no 1/2)."""
  return sum(jnp.mean(jnp.square(q - target_q)) for q in q_values)


def make_learner(config: TD3Config, obs_spec: dict, action_size: int = 4) -> Learner:
  """`update(ts, batch, key, grad_step)` = one gradient step of SB3 `TD3.train()`; `update_with_noise(ts, batch,
  noise, grad_step)` takes the standard normal target-smoothing noise [B, A] explicitly (parity tests).
  `obs_spec`: {key: shape/dtype of one env's observation}."""
  c = config
  encoders.check_inputs(c.encoder, obs_spec)
  actor, critic = networks(c, action_size)
  actor_in = nets.actor_input(critic, c.encoder_routing)
  adam = lambda: optax.adam(c.learning_rate, b1=0.9, b2=0.999, eps=c.adam_eps)  # noqa: E731
  actor_tx, critic_tx = adam(), adam()

  @jax.custom_batching.sequential_vmap  # under vmap over seeds: one seed at a time (same values, faster compile)
  def init(key):
    k_actor, k_critic = jax.random.split(key)
    obs = obs_zeros(obs_spec)
    critic_params = critic.init(k_critic, obs, jnp.zeros((1, action_size)))
    actor_params = actor.init(k_actor, actor_in(critic_params, obs))
    zero = jnp.zeros((), jnp.int32)
    return TrainState(actor_params, critic_params, actor_params, critic_params, actor_tx.init(actor_params),
                      critic_tx.init(critic_params), key, zero, zero, zero)

  def update_with_noise(ts: TrainState, batch: Batch, noise, grad_step=0):
    n_updates = ts.n_updates + 1
    smoothing = jnp.clip(c.target_policy_noise * noise, -c.target_noise_clip, c.target_noise_clip)
    next_in = actor_in(ts.critic_params, batch.next_obs)
    next_action = jnp.clip(actor.apply(ts.target_actor_params, next_in) + smoothing, -1.0, 1.0)
    nq1, nq2 = critic.apply(ts.target_critic_params, batch.next_obs, next_action)
    target_q = jax.lax.stop_gradient(batch.reward + (1.0 - batch.done) * c.gamma * jnp.minimum(nq1, nq2))

    critic_loss, (q1, q2), critic_params, critic_opt_state = critic_step(
        critic, critic_tx, critic_loss_fn, ts.critic_params, ts.critic_opt_state, batch, target_q)
    ts = ts.replace(critic_params=critic_params, critic_opt_state=critic_opt_state, n_updates=n_updates)

    def actor_step(ts):
      def a_loss(actor_params):
        a_pi = actor.apply(actor_params, actor_in(ts.critic_params, batch.obs))
        q1_pi, _ = critic.apply(ts.critic_params, batch.obs, a_pi)
        return -jnp.mean(q1_pi)

      loss, g = jax.value_and_grad(a_loss)(ts.actor_params)
      upd, opt_state = actor_tx.update(g, ts.actor_opt_state, ts.actor_params)
      actor_params = optax.apply_updates(ts.actor_params, upd)
      ts = ts.replace(actor_params=actor_params, actor_opt_state=opt_state,
                      target_critic_params=polyak(ts.target_critic_params, ts.critic_params, c.tau),
                      target_actor_params=polyak(ts.target_actor_params, actor_params, c.tau))
      return ts, loss

    delayed = n_updates % c.policy_delay == 0
    ts, actor_loss = jax.lax.cond(delayed, actor_step, lambda ts: (ts, jnp.zeros((), jnp.float32)), ts)
    info = dict(critic_loss=critic_loss, actor_loss=actor_loss, actor_updated=delayed.astype(jnp.float32),
                q1_mean=q1.mean(), q2_mean=q2.mean(), q_min_mean=jnp.minimum(q1, q2).mean(),
                target_q_mean=target_q.mean(), reward_mean=batch.reward.mean())
    return ts, info

  def update(ts, batch, key, grad_step=0):
    return update_with_noise(ts, batch, jax.random.normal(key, batch.action.shape), grad_step)

  def explore(ts, obs, key):
    return actor.apply(ts.actor_params, actor_in(ts.critic_params, obs))  # action noise, if any, is added by the loop

  names = ("critic_loss", "actor_loss", "q1_mean", "q2_mean", "q_min_mean", "target_q_mean", "reward_mean")
  return Learner(actor, critic, actor_tx, critic_tx, optax.identity(), init, update, update_with_noise, explore,
                 names, {"actor_loss": "actor_updated"})


def make_runner(config: TD3Config, env):
  """`(init, run)` as `sac.make_runner` (same RunnerState layout and metrics, minus the entropy ones; actor_loss
  is averaged over the delayed actor updates only)."""
  c = config
  learner = make_learner(c, network_spec(c, env.observation_spec), env.action_size)
  return make_offpolicy_runner(c, env, learner, c.action_noise_sigma)


def make_train(config: TD3Config, env):
  return whole_run(*make_runner(config, env), config.num_updates(env.num_envs))


def policy_action(policy: dict, obs: dict, config: TD3Config, key=None):
  """actor(obs) (deterministic), plus the config's clipped Gaussian exploration noise when a key is given;
  `policy` from `offpolicy.policy_of`."""
  actor, critic = networks(config)
  a = actor.apply(policy["actor_params"], acting_input(config, critic, policy, obs))
  if key is not None and config.action_noise_sigma > 0:
    a = jnp.clip(a + config.action_noise_sigma * jax.random.normal(key, a.shape), -1.0, 1.0)
  return a


def make_act(config: TD3Config):
  return lambda policy, obs, key=None: policy_action(policy, obs, config, key)


__all__ = ["TD3Config", "PRESETS", "ENV_PRESETS", "TB_NAMES", "make_runner", "make_train", "make_learner", "make_act",
           "policy_action", "networks", "TrainState", "Actor", "critic_loss_fn"]
