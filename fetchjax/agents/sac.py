"""SAC (optionally with HER) with Stable-Baselines3 semantics, on device: its config and presets, networks and
the gradient step (`make_learner`); the replay/update loop around it is `offpolicy.make_offpolicy_runner`
(`make_runner(config) -> (init, run)`, one iteration = one 50-step episode of every env).

SB3 details kept on purpose (they change results):
- policy input = the goal dict through the config's `encoder` (default "flat": `[achieved_goal, desired_goal,
  observation]`, MultiInputPolicy's sorted keys), owned by actor and critic each ("separate", SB3's default) or
  by the critic only ("critic", book ch9; `nets.ROUTINGS`);
- actor: MLP (ReLU after every hidden layer) -> `mu` and `log_std` heads, log_std clipped to [-20, 2]; tanh
  squashing with the log-prob correction `sum log(1 - tanh(u)^2 + 1e-6)`; deterministic action = tanh(mu);
- twin critics Q_i(concat(obs, action)) with their own trunks, target critics Polyak-averaged (tau) every
  `target_update_interval` gradient steps of one `train()` call;
- PyTorch default `nn.Linear` init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights AND biases (no orthogonal init,
  so no QR: safe to vmap on XLA:CPU); three Adams (actor, both critics, log alpha), eps 1e-8, no clipping;
- `SAC.train` order: sample -> actor actions/log-probs once -> alpha loss and step (alpha from BEFORE the step
  is used everywhere below) -> target with the current actor on s' and the target critics -> critic loss
  0.5 * sum_i MSE -> critic step -> actor loss with the UPDATED critics and the step-2 actions -> actor step ->
  Polyak;
- ent_coef "auto": log alpha initialised to log(1) = 0 ("auto_0.1" starts at 0.1), target entropy -dim(A) = -4,
  loss -mean(log_alpha * (log_pi + target).detach()).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import fetchjax  # noqa: F401  (XLA flags before JAX initialises)
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from fetchjax import encoders
from fetchjax.envs.config import EnvConfig
from fetchjax.agents import nets
from fetchjax.agents.configs import parse_ent_coef
from fetchjax.agents.nets import MLP, DoubleCritic, TorchDense, gaussian_log_prob
from fetchjax.agents.offpolicy import (Batch, EpisodeIterations, Learner, acting_input, check_offpolicy,
                                       critic_step, make_offpolicy_runner, network_spec, obs_zeros, polyak,
                                       whole_run)

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0   # SB3 sac/policies.py
SQUASH_EPS = 1e-6                       # SB3 SquashedDiagGaussianDistribution epsilon


# ----------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SACConfig(EpisodeIterations):
  """SB3 `SAC` arguments (defaults = the book's ch4 FetchReachDense-v4 run, companion repo `train.py`). Step
  counts are env transitions summed over the parallel envs; `train_freq` counts vectorised steps (SB3: with
  num_envs envs, one `env.step` of all envs then `gradient_steps` updates -> 1 update per 8 transitions)."""

  total_timesteps: int = 1_000_000
  buffer_size: int = 1_000_000        # transitions (rounded down to whole episodes by the buffer)
  batch_size: int = 256
  learning_starts: int = 10_000
  learning_rate: float = 3e-4         # all three optimisers, constant
  gamma: float = 0.99
  tau: float = 0.005
  ent_coef: Any = "auto"              # "auto" (alpha0 = 1), "auto_<alpha0>", or a fixed float
  target_entropy: Any = "auto"        # "auto" = -dim(A) = -4, or a float
  target_update_interval: int = 1     # gradient steps (index within one train() call, as SB3)
  train_freq: int = 1                 # vectorised env steps between train() calls
  gradient_steps: int = 1             # per train() call
  hidden_sizes: tuple[int, ...] = (256, 256)
  her: bool = False
  n_sampled_goal: int = 4             # HER k: her_ratio = 1 - 1/(k+1)
  goal_selection_strategy: str = "future"
  adam_eps: float = 1e-8              # torch.optim.Adam default
  encoder: str = "flat"               # fetchjax.encoders.make(name): what the networks read the goal dict through
  encoder_routing: str = "separate"   # nets.ROUTINGS: "separate" (SB3) or "critic" (book ch9)
  frame_stack: int = 1                # book ch9: 4 (pixels stacked at sample time from single stored frames)
  drq: bool = False                   # book ch9: DrQ random shift (pad 4) of sampled obs/next_obs pixels
  hide_achieved_goal: bool = False    # strict pixels: the networks never read achieved_goal (HER still does)

  def __post_init__(self):
    check_offpolicy(self, positive=("target_update_interval",))
    parse_ent_coef(self.ent_coef)
    if self.target_entropy != "auto" and not isinstance(self.target_entropy, (int, float)):
      raise ValueError(f"target_entropy must be 'auto' or a number, got {self.target_entropy!r}")

  @property
  def auto_ent_coef(self) -> bool:
    return parse_ent_coef(self.ent_coef)[0]


PRESETS: dict[str, SACConfig] = {
    # Book ch4: SB3 SAC MultiInputPolicy on FetchReachDense-v4, 8 envs, UTD 1/8, 1M steps.
    "book": SACConfig(),
    # Book ch5 SAC+HER on sparse Reach: gamma 0.95, learning_starts 1000, ent_coef auto, future k=4.
    "book_her": SACConfig(gamma=0.95, learning_starts=1_000, her=True),
    # Book ch5 SAC+HER on sparse Push (the sweep's winner): as book_her with ent_coef fixed at 0.05, 2M steps.
    "book_her_push": SACConfig(gamma=0.95, learning_starts=1_000, her=True, ent_coef=0.05, total_timesteps=2_000_000),
    # Book ch9 Step 2 (the run that learns Push from pixels, algorithms.md §5.5): ManipulationExtractor (CNN +
    # SpatialSoftmax) owned by the critic (--critic-encoder), 4-frame stacks, DrQ off (--no-drq), buffer 500k,
    # HER k = 8, 5M steps; what ch9 does not state is ch5's Push config (§5.5 "assume ch5's Push config"; §3.3):
    # gamma 0.95 (implied by its Q = -18.5), ent_coef 0.05 fixed (ch9 L5613 says "automatic tuning" [!]; auto
    # alpha collapses under the sparse reward, rule H11), learning_starts 1000, batch 256, lr 3e-4, [256, 256].
    # Its env preset renders frames (pixels=True): `--preset book_pixels` alone is the ch9 Step 2 setting.
    "book_pixels": SACConfig(gamma=0.95, learning_starts=1_000, her=True, ent_coef=0.05, n_sampled_goal=8,
                             buffer_size=500_000, total_timesteps=5_000_000, encoder="manipulation",
                             encoder_routing="critic", frame_stack=4, drq=False),
    # Many MJX envs on an accelerator (NOT tuned): 512 envs, 8 gradient steps of 1024 per vectorised step
    # (UTD 1/64, each transition replayed ~16 times vs ~32 in the book), SAC+HER on sparse Reach.
    "gpu": SACConfig(batch_size=1024, gradient_steps=8, gamma=0.95, learning_starts=10_000, her=True,
                     total_timesteps=5_000_000),
}
ENV_PRESETS: dict[str, EnvConfig] = {  # the envs each preset was made for (the CLI's --env picks the task)
    "book": EnvConfig("FetchReachDense-v4", num_envs=8),
    "book_her": EnvConfig("FetchReach-v4", num_envs=8),
    "book_her_push": EnvConfig("FetchPush-v4", num_envs=8),
    "book_pixels": EnvConfig("FetchPush-v4", num_envs=8, pixels=True),
    "gpu": EnvConfig("FetchReach-v4", num_envs=512),
}


# ----------------------------------------------------------------------------------------------------------
# Networks (SB3 SAC/TD3 policies, PyTorch default init)
# ----------------------------------------------------------------------------------------------------------
class Actor(nn.Module):
  """SB3 SAC `Actor`: [encoder ->] latent_pi MLP -> (mu, log_std clipped to [-20, 2]). `encoder` None: the input
  is features already (the critic routing)."""
  action_size: int
  hidden_sizes: Sequence[int] = (256, 256)
  encoder: nn.Module | None = None

  @nn.compact
  def __call__(self, x):
    if self.encoder is not None:
      x = self.encoder(x)
    latent = MLP(self.hidden_sizes, name="latent_pi")(x)
    mean = TorchDense(self.action_size, name="mu")(latent)
    log_std = TorchDense(self.action_size, name="log_std")(latent)
    return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


def log1m_tanh_sq(u):
  """log(1 - tanh(u)^2 + 1e-6), SB3's squash correction, with 1 - tanh(u)^2 evaluated as sech(u)^2 =
  4 e / (1 + e)^2, e = exp(-2|u|): the same function without the cancellation of 1 - tanh^2 in float32, whose
  error grows as tanh saturates (and XLA's tanh is a few ulps less accurate than torch's). Measured against a
  float64 evaluation, this is as accurate as SB3's torch float32 value for |u| < 2 and more accurate beyond
  (tests/test_sb3_sac_parity.py); at |u| > 44 both give log(1e-6)."""
  e = jnp.exp(-2.0 * jnp.abs(u))
  return jnp.log(4.0 * e / jnp.square(1.0 + e) + SQUASH_EPS)


def squashed_log_prob(u, mean, log_std):
  """SB3 `SquashedDiagGaussianDistribution.log_prob(tanh(u), u)`: Gaussian log-density of the pre-squash sample
  minus `sum log(1 - tanh(u)^2 + 1e-6)`."""
  return gaussian_log_prob(u, mean, log_std) - jnp.sum(log1m_tanh_sq(u), axis=-1)


def sample_squashed(mean, log_std, noise):
  """Reparameterised action and log-prob: u = mean + exp(log_std) * noise, a = tanh(u)."""
  u = mean + jnp.exp(log_std) * noise
  return jnp.tanh(u), squashed_log_prob(u, mean, log_std)


# ----------------------------------------------------------------------------------------------------------
# Learner: the gradient step SB3's SAC.train() performs
# ----------------------------------------------------------------------------------------------------------
@flax.struct.dataclass
class TrainState:
  """Everything the learner carries. `step` = completed iterations (episodes); `n_updates` = gradient steps."""
  actor_params: Any
  critic_params: Any
  target_critic_params: Any
  log_ent_coef: jax.Array     # shape (1,), as SB3's log_ent_coef (unused when ent_coef is fixed)
  actor_opt_state: Any
  critic_opt_state: Any
  ent_opt_state: Any
  key: jax.Array
  step: jax.Array
  n_updates: jax.Array
  num_timesteps: jax.Array


def critic_loss_fn(q_values, target_q):
  """SB3 SAC: 0.5 * sum_i mean((Q_i - y)^2)."""
  return 0.5 * sum(jnp.mean(jnp.square(q - target_q)) for q in q_values)


def ent_coef_loss_fn(log_ent_coef, log_prob, target_entropy):
  """SB3: -mean(log_alpha * (log_pi + target_entropy).detach()) (gradient w.r.t. log alpha)."""
  return -jnp.mean(log_ent_coef * jax.lax.stop_gradient(log_prob + target_entropy))


def networks(config: SACConfig, action_size: int = 4) -> tuple[Actor, DoubleCritic]:
  """The actor and twin critic of `config`, each with the encoder it owns under `config.encoder_routing`."""
  return nets.actor_and_critic(config, lambda enc: Actor(action_size, config.hidden_sizes, enc))


def make_learner(config: SACConfig, obs_spec: dict, action_size: int = 4) -> Learner:
  """The SAC learner. `learner.update(ts, batch, key, grad_step)` is exactly one gradient step of SB3's
  `SAC.train()` (grad_step = its index within the train() call, for target_update_interval);
  `learner.update_with_noise(ts, batch, noise_pi, noise_next, grad_step)` is the same step with the standard
  normal pre-squash noise for the actions on s and on s' given explicitly (what the SB3 parity tests drive).
  `obs_spec`: {key: shape/dtype of one env's observation} (`her.spec_of(env_state.obs)`)."""
  c = config
  encoders.check_inputs(c.encoder, obs_spec)
  actor, critic = networks(c, action_size)
  actor_in = nets.actor_input(critic, c.encoder_routing)
  adam = lambda: optax.adam(c.learning_rate, b1=0.9, b2=0.999, eps=c.adam_eps)  # noqa: E731
  actor_tx, critic_tx, ent_tx = adam(), adam(), adam()
  auto, alpha0 = parse_ent_coef(c.ent_coef)
  te = c.target_entropy  # "auto", a number, or an array traced by fetchjax.sweep
  target_entropy = -float(action_size) if isinstance(te, str) else te if hasattr(te, "dtype") else float(te)

  # ent_coef traced by fetchjax.sweep: per point learned or fixed (a traced flag), its initial/fixed alpha and
  # log alpha (computed on the host as a run computes it): both updates run, the flag selects one
  swept_alpha = isinstance(c.ent_coef, dict)
  traced_alpha = swept_alpha or not isinstance(alpha0, float)  # (a sweep of fixed values only: an array)

  @jax.custom_batching.sequential_vmap  # under vmap over seeds: one seed at a time (same values, faster compile)
  def init_one(key):  # closes over no traced value (sequential_vmap cannot batch one)
    k_actor, k_critic = jax.random.split(key)
    obs = obs_zeros(obs_spec)
    critic_params = critic.init(k_critic, obs, jnp.zeros((1, action_size)))
    actor_params = actor.init(k_actor, actor_in(critic_params, obs))
    log_ent_coef = jnp.full((1,), 0.0 if traced_alpha else math.log(alpha0), jnp.float32)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(actor_params, critic_params, critic_params, log_ent_coef, actor_tx.init(actor_params),
                      critic_tx.init(critic_params), ent_tx.init(log_ent_coef), key, zero, zero, zero)

  def init(key):
    ts = init_one(key)
    if traced_alpha:  # as a run with that value stores it (unused by the fixed-coefficient update)
      log0 = c.ent_coef["log_alpha0"] if swept_alpha else jnp.log(alpha0)
      ts = ts.replace(log_ent_coef=jnp.full((1,), log0, jnp.float32))
    return ts

  def update_with_noise(ts: TrainState, batch: Batch, noise_pi, noise_next, grad_step):
    # 1. actions and log-probs of the current actor on s (reused by the alpha and actor losses)
    def policy(actor_params, critic_params, obs, noise):
      mean, log_std = actor.apply(actor_params, actor_in(critic_params, obs))
      return sample_squashed(mean, log_std, noise)

    _, log_prob = policy(ts.actor_params, ts.critic_params, batch.obs, noise_pi)
    # 2. entropy coefficient: loss and step; alpha from BEFORE the step is used below
    if swept_alpha or auto:
      ent_coef = jnp.exp(ts.log_ent_coef[0])
      ent_loss, g = jax.value_and_grad(ent_coef_loss_fn)(ts.log_ent_coef, log_prob, target_entropy)
      upd, ent_opt_state = ent_tx.update(g, ts.ent_opt_state, ts.log_ent_coef)
      log_ent_coef = optax.apply_updates(ts.log_ent_coef, upd)
    if swept_alpha:
      keep = lambda new, old: jnp.where(auto, new, old)  # noqa: E731
      ent_coef, ent_loss = keep(ent_coef, jnp.asarray(alpha0, jnp.float32)), keep(ent_loss, jnp.float32(jnp.nan))
      ent_opt_state = jax.tree.map(keep, ent_opt_state, ts.ent_opt_state)
      log_ent_coef = keep(log_ent_coef, ts.log_ent_coef)
    elif not auto:
      ent_coef = jnp.asarray(alpha0, jnp.float32)
      ent_loss, ent_opt_state, log_ent_coef = jnp.asarray(jnp.nan, jnp.float32), ts.ent_opt_state, ts.log_ent_coef
    # 3. soft target from the current actor on s' and the target critics
    next_action, next_log_prob = policy(ts.actor_params, ts.critic_params, batch.next_obs, noise_next)
    nq1, nq2 = critic.apply(ts.target_critic_params, batch.next_obs, next_action)
    next_q = jnp.minimum(nq1, nq2) - ent_coef * next_log_prob
    target_q = jax.lax.stop_gradient(batch.reward + (1.0 - batch.done) * c.gamma * next_q)

    # 4. critic loss and step
    critic_loss, (q1, q2), critic_params, critic_opt_state = critic_step(
        critic, critic_tx, critic_loss_fn, ts.critic_params, ts.critic_opt_state, batch, target_q)

    # 5. actor loss with the UPDATED critics (same noise -> the same actions_pi / log_prob as step 1) and step;
    #    gradients w.r.t. the actor's own parameters only (a critic-owned encoder is not among them)
    def a_loss(actor_params):
      a_pi, lp = policy(actor_params, critic_params, batch.obs, noise_pi)
      q1_pi, q2_pi = critic.apply(critic_params, batch.obs, a_pi)
      return jnp.mean(ent_coef * lp - jnp.minimum(q1_pi, q2_pi))

    actor_loss, g = jax.value_and_grad(a_loss)(ts.actor_params)
    upd, actor_opt_state = actor_tx.update(g, ts.actor_opt_state, ts.actor_params)
    actor_params = optax.apply_updates(ts.actor_params, upd)

    # 6. Polyak every target_update_interval gradient steps (index within the train() call, as SB3)
    do_polyak = (grad_step % c.target_update_interval) == 0
    target = jax.tree.map(lambda new, old: jnp.where(do_polyak, new, old),
                          polyak(ts.target_critic_params, critic_params, c.tau), ts.target_critic_params)
    ts = ts.replace(actor_params=actor_params, critic_params=critic_params, target_critic_params=target,
                    log_ent_coef=log_ent_coef, actor_opt_state=actor_opt_state, critic_opt_state=critic_opt_state,
                    ent_opt_state=ent_opt_state, n_updates=ts.n_updates + 1)
    info = dict(critic_loss=critic_loss, actor_loss=actor_loss, ent_coef=ent_coef, ent_coef_loss=ent_loss,
                q1_mean=q1.mean(), q2_mean=q2.mean(), q_min_mean=jnp.minimum(q1, q2).mean(),
                log_prob_mean=log_prob.mean(), target_q_mean=target_q.mean(), reward_mean=batch.reward.mean())
    return ts, info

  def update(ts, batch, key, grad_step=0):
    k_pi, k_next = jax.random.split(key)
    shape = batch.action.shape
    return update_with_noise(ts, batch, jax.random.normal(k_pi, shape), jax.random.normal(k_next, shape),
                             grad_step)

  def explore(ts, obs, key):
    mean, log_std = actor.apply(ts.actor_params, actor_in(ts.critic_params, obs))
    return jnp.tanh(mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape))

  names = ("critic_loss", "actor_loss", "ent_coef", "ent_coef_loss", "q1_mean", "q2_mean", "q_min_mean",
           "log_prob_mean", "target_q_mean", "reward_mean")
  return Learner(actor, critic, actor_tx, critic_tx, ent_tx, init, update, update_with_noise, explore, names)


TB_NAMES = {  # fetchjax metric -> SB3 logger key (replay/* as the book's SACDiagnosticsCallback)
    "ep_rew_mean": "rollout/ep_rew_mean", "success_rate": "rollout/success_rate",
    "critic_loss": "train/critic_loss", "actor_loss": "train/actor_loss", "ent_coef": "train/ent_coef",
    "ent_coef_loss": "train/ent_coef_loss", "n_updates": "train/n_updates",
    "q1_mean": "replay/q1_mean", "q2_mean": "replay/q2_mean", "q_min_mean": "replay/q_min_mean",
    "log_prob_mean": "train/log_prob_mean", "target_q_mean": "replay/target_q_mean",
    "reward_mean": "replay/reward_mean",
}


def make_runner(config: SACConfig, env):
  """Returns `(init, run)`: `init(key) -> RunnerState`, `run(runner, n) -> (RunnerState, metrics)` doing `n`
  (static) iterations (= episodes of all envs, `config.rollout_size` transitions each) in one `lax.scan`. Both
  are pure and vmap over seeds; chunks give the same bits as one long run.

  `metrics[name]` has shape [n]: timesteps, ep_rew_mean and success_rate (of the num_envs episodes that ended
  in the iteration), and, averaged over the iteration's gradient steps (NaN if none): critic_loss, actor_loss,
  ent_coef (alpha used in the step), ent_coef_loss (NaN when fixed), q1_mean / q2_mean / q_min_mean (current
  critics on the sampled (s, a), before the critic step), log_prob_mean (of the fresh actions on s),
  target_q_mean, reward_mean (sampled, after relabelling); n_updates (cumulative gradient steps), train_calls.
  """
  c = config
  return make_offpolicy_runner(c, env, make_learner(c, network_spec(c, env.observation_spec), env.action_size))


def make_train(config: SACConfig, env):
  return whole_run(*make_runner(config, env), config.num_updates(env.num_envs))


# ----------------------------------------------------------------------------------------------------------
# Acting
# ----------------------------------------------------------------------------------------------------------
def policy_action(policy: dict, obs: dict, config: SACConfig, key=None):
  """tanh(mean) (SB3 `predict(deterministic=True)`) or a squashed-Gaussian sample; `policy` from
  `offpolicy.policy_of`."""
  actor, critic = networks(config)
  mean, log_std = actor.apply(policy["actor_params"], acting_input(config, critic, policy, obs))
  if key is None:
    return jnp.tanh(mean)
  return jnp.tanh(mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape))


def make_act(config: SACConfig):
  """`act(policy, obs, key=None) -> action` in [-1, 1]: deterministic tanh(mean) when key is None."""
  return lambda policy, obs, key=None: policy_action(policy, obs, config, key)


__all__ = ["SACConfig", "PRESETS", "ENV_PRESETS", "TB_NAMES", "make_runner", "make_train", "make_learner", "make_act",
           "policy_action", "networks", "TrainState", "Actor", "squashed_log_prob", "log1m_tanh_sq", "sample_squashed",
           "critic_loss_fn", "ent_coef_loss_fn"]
