"""PPO with Stable-Baselines3 (2.9.2) semantics as one jitted JAX program.

Structure after purejaxrl: `make_train(config, env)` returns a pure `train(key)` whose whole loop (rollout
`lax.scan`, GAE, epochs x shuffled minibatches, Adam with global-norm clipping) jits as one program and vmaps
over seeds: `jax.jit(jax.vmap(make_train(cfg, env)))(jax.random.split(key, n_seeds))`, with
`env = EnvConfig(...).make()` (the env's settings are not part of the algorithm's config).

SB3 PPO details kept on purpose (they change results):
- policy input = `[achieved_goal, desired_goal, observation]` (MultiInputPolicy, sorted Dict keys);
- separate actor / critic MLPs, orthogonal init (gains sqrt2 / 0.01 / 1), zero biases, state-independent log-std;
- unbounded Gaussian; the unclipped sample and its log-prob are stored, only the env sees `clip(a, -1, 1)`;
- truncation bootstrap: `r += gamma * V(final_obs)` on every time-limit step (the only kind of end in Fetch);
- GAE with the `episode_starts` convention (see `compute_gae`);
- advantages normalised per minibatch with ddof=1 std; value loss = MSE without 1/2; Adam eps 1e-5;
- `learn()` collects whole rollouts until `total_timesteps` is reached (500k -> 62 updates for the book).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import fetchjax  # noqa: F401  (XLA flags before JAX initialises)
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from fetchjax.agents import configs, nets
from fetchjax.agents.nets import gaussian_entropy, gaussian_log_prob
from fetchjax.encoders import flatten_obs
from fetchjax.envs.config import EnvConfig

_ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu}


# ----------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PPOConfig:
  """SB3 `PPO` arguments (defaults = the book's ch3 FetchReachDense-v4 run with its 8 envs). Step counts are env
  transitions summed over the parallel envs. `batch_size` must divide `num_envs * n_steps` (SB3 would allow a
  short last minibatch; a jitted loop needs equal ones): `check_env`."""

  n_steps: int = 1024                 # per env per rollout
  batch_size: int = 256               # minibatch size
  n_epochs: int = 10
  learning_rate: float = 3e-4         # constant
  gamma: float = 0.99
  gae_lambda: float = 0.95
  clip_range: float = 0.2
  ent_coef: float = 0.0
  vf_coef: float = 0.5
  max_grad_norm: float = 0.5
  total_timesteps: int = 500_000
  hidden_sizes: tuple[int, ...] = (64, 64)
  activation: str = "tanh"            # "tanh" (SB3 default) or "relu"
  log_std_init: float = 0.0
  adam_eps: float = 1e-5              # SB3 PPO passes eps=1e-5 to Adam
  normalize_advantage: bool = True    # per minibatch
  normalize_obs: bool = False         # VecNormalize(norm_obs=True, norm_reward=False); off in every book run
  clip_obs: float = 10.0              # VecNormalize default

  def __post_init__(self):
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
    configs.check_ints(self, positive=("n_steps", "batch_size", "n_epochs", "total_timesteps"))
    object.__setattr__(self, "hidden_sizes", configs.layer_sizes(self.hidden_sizes))

  def check_env(self, num_envs: int) -> None:
    """What the config requires of the env it trains on (ValueError)."""
    if self.rollout_size(num_envs) % self.batch_size:
      raise ValueError(f"batch_size {self.batch_size} must divide num_envs * n_steps = {self.rollout_size(num_envs)}")

  def rollout_size(self, num_envs: int) -> int:
    """Env transitions per seed per update."""
    return num_envs * self.n_steps

  def num_minibatches(self, num_envs: int) -> int:
    return self.rollout_size(num_envs) // self.batch_size

  def num_updates(self, num_envs: int) -> int:
    """SB3 `learn` collects whole rollouts while `num_timesteps < total_timesteps`."""
    return -(-self.total_timesteps // self.rollout_size(num_envs))


PRESETS: dict[str, PPOConfig] = {
    # Book ch3: 8 envs x 1024 steps, minibatch 256, 10 epochs; fast path 500k steps.
    "book": PPOConfig(),
    # Many MJX envs on an accelerator: same per-update data budget per gradient step scaled up (NOT tuned).
    "gpu": PPOConfig(n_steps=64, batch_size=4096, total_timesteps=2_000_000),
}
ENV_PRESETS: dict[str, EnvConfig] = {  # the envs each preset was made for (the CLI's --env picks the task)
    "book": EnvConfig("FetchReachDense-v4", num_envs=8),
    "gpu": EnvConfig("FetchReachDense-v4", num_envs=1024),
}


# ----------------------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------------------
class MLP(nn.Module):
  hidden_sizes: Sequence[int]
  out_size: int
  out_gain: float
  activation: Callable = nn.tanh

  @nn.compact
  def __call__(self, x):
    for h in self.hidden_sizes:  # SB3 ortho_init: gain sqrt(2) on hidden layers, zero biases
      x = self.activation(nn.Dense(h, kernel_init=nets.orthogonal(math.sqrt(2.0)))(x))
    return nn.Dense(self.out_size, kernel_init=nets.orthogonal(self.out_gain))(x)


class ActorCritic(nn.Module):
  """SB3 ActorCriticPolicy with net_arch=dict(pi=hidden, vf=hidden): separate trunks, no shared layers."""

  action_size: int
  hidden_sizes: Sequence[int] = (64, 64)
  activation: str = "tanh"
  log_std_init: float = 0.0

  def setup(self):
    act = _ACTIVATIONS[self.activation]
    self.actor = MLP(self.hidden_sizes, self.action_size, 0.01, act)
    self.critic = MLP(self.hidden_sizes, 1, 1.0, act)
    self.log_std = self.param("log_std", nn.initializers.constant(self.log_std_init), (self.action_size,))

  def __call__(self, x):
    """-> (action mean, log_std [broadcast], value)."""
    mean = self.actor(x)
    return mean, jnp.broadcast_to(self.log_std, mean.shape), self.critic(x)[..., 0]

  def value(self, x):
    return self.critic(x)[..., 0]


# ----------------------------------------------------------------------------------------------------------
# Observation normaliser (SB3 RunningMeanStd / VecNormalize, observations only)
# ----------------------------------------------------------------------------------------------------------
@flax.struct.dataclass
class RunningMeanStd:
  mean: jax.Array
  var: jax.Array
  count: jax.Array

  @classmethod
  def create(cls, size: int) -> "RunningMeanStd":
    return cls(jnp.zeros(size), jnp.ones(size), jnp.asarray(1e-4))  # SB3: epsilon=1e-4 initial count

  def update(self, x: jax.Array) -> "RunningMeanStd":
    """Chan et al. parallel update with a batch [n, d], as SB3 `RunningMeanStd.update` (ddof-0 batch var)."""
    b_mean, b_var, b_count = x.mean(0), x.var(0), x.shape[0]
    delta, tot = b_mean - self.mean, self.count + b_count
    m2 = self.var * self.count + b_var * b_count + jnp.square(delta) * self.count * b_count / tot
    return RunningMeanStd(self.mean + delta * b_count / tot, m2 / tot, tot)

  def normalize(self, x: jax.Array, clip: float) -> jax.Array:
    return jnp.clip((x - self.mean) / jnp.sqrt(self.var + 1e-8), -clip, clip)


# ----------------------------------------------------------------------------------------------------------
# Pure pieces of the algorithm
# ----------------------------------------------------------------------------------------------------------
def compute_gae(rewards, values, dones, last_value, gamma, lam):
  """GAE(lambda) advantages and returns, as SB3 `RolloutBuffer.compute_returns_and_advantage`.

  Arrays are time-major [T, ...]. `dones[t]` is the done flag returned by the env step taken at t (the step
  whose reward is `rewards[t]`). SB3 stores `episode_starts[t]` = the done flag of the *previous* step and uses
    next_non_terminal(t) = 1 - episode_starts[t + 1]   for t < T - 1,
                         = 1 - dones_last               for t = T - 1  (the `dones` passed after the rollout),
  so with `episode_starts[t + 1] == dones[t]` and `dones_last == dones[T - 1]` this is simply 1 - dones[t].
  `rewards` must already contain SB3's truncation bootstrap (r += gamma * V(final_obs) when truncated);
  `last_value` = V(obs after the last step).
  Returns (advantages, returns = advantages + values).
  """
  next_values = jnp.concatenate([values[1:], last_value[None]], axis=0)
  next_non_terminal = 1.0 - dones
  deltas = rewards + gamma * next_values * next_non_terminal - values

  def body(last_gae, xs):
    delta, nnt = xs
    last_gae = delta + gamma * lam * nnt * last_gae
    return last_gae, last_gae

  _, adv = jax.lax.scan(body, jnp.zeros_like(last_value), (deltas, next_non_terminal), reverse=True)
  return adv, adv + values


def bootstrap_truncation(reward, truncation, final_value, gamma):
  """SB3 `collect_rollouts`: at a time-limit truncation add gamma * V(terminal_observation) to the reward,
  since GAE then treats the step as terminal (Fetch episodes only ever end this way)."""
  return reward + gamma * final_value * truncation


def clipped_surrogate(log_prob, old_log_prob, advantages, clip_range):
  """SB3 policy loss and diagnostics: (-mean(min(r A, clip(r) A)), clip_fraction, approx_kl)."""
  log_ratio = log_prob - old_log_prob
  ratio = jnp.exp(log_ratio)
  loss = -jnp.mean(jnp.minimum(advantages * ratio, advantages * jnp.clip(ratio, 1 - clip_range, 1 + clip_range)))
  clip_fraction = jnp.mean((jnp.abs(ratio - 1) > clip_range).astype(jnp.float32))
  approx_kl = jnp.mean((ratio - 1) - log_ratio)  # Schulman's k3 estimator, as SB3
  return loss, clip_fraction, approx_kl


def value_loss(values, returns):
  """SB3 `F.mse_loss(returns, values)`: no 1/2 (the book lab's 0.5 factor halves the critic weight)."""
  return jnp.mean(jnp.square(returns - values))


def normalize_advantages(adv):
  """Per-minibatch, torch `.std()` (ddof=1) + 1e-8; skipped for a single element (as SB3)."""
  if adv.shape[0] < 2:
    return adv
  return (adv - adv.mean()) / (jnp.std(adv, ddof=1) + 1e-8)


def explained_variance(y_pred, y_true):
  """SB3: 1 - Var(y - y_pred) / Var(y), ddof 0, NaN when Var(y) == 0."""
  var_y = jnp.var(y_true)
  return jnp.where(var_y == 0, jnp.nan, 1 - jnp.var(y_true - y_pred) / jnp.where(var_y == 0, 1.0, var_y))


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------
@flax.struct.dataclass
class TrainState:
  params: Any
  opt_state: Any
  obs_rms: RunningMeanStd
  key: jax.Array
  step: jax.Array  # completed updates; env steps = step * rollout_size


@flax.struct.dataclass
class RunnerState:
  """Everything a run carries between updates: a checkpoint of it resumes the run exactly."""
  train_state: TrainState
  env_state: Any
  ep_ret: jax.Array  # running raw return of each env's current episode


@flax.struct.dataclass
class Transition:
  obs: jax.Array        # normalised policy input the action was taken from
  action: jax.Array     # unclipped Gaussian sample
  log_prob: jax.Array
  value: jax.Array
  reward: jax.Array     # incl. the truncation bootstrap
  done: jax.Array
  ep_return: jax.Array  # raw return of the episode that ended at this step (0 otherwise)
  success: jax.Array    # is_success at an episode end (0 otherwise)


def make_learner(config: PPOConfig, action_size: int = 4):
  """(net, tx, loss_fn): the network, the optimiser (global-norm clip + Adam) and the minibatch loss
  `loss_fn(params, transitions, advantages, returns) -> (loss, info)` that training optimises (also what the SB3
  parity tests check)."""
  c = config
  net = ActorCritic(action_size, c.hidden_sizes, c.activation, c.log_std_init)
  tx = optax.chain(optax.clip_by_global_norm(c.max_grad_norm), optax.adam(c.learning_rate, eps=c.adam_eps))

  def loss_fn(params, mb: Transition, adv, ret):
    mean, log_std, value = net.apply(params, mb.obs)
    log_prob = gaussian_log_prob(mb.action, mean, log_std)
    if c.normalize_advantage:
      adv = normalize_advantages(adv)
    pg_loss, clip_frac, approx_kl = clipped_surrogate(log_prob, mb.log_prob, adv, c.clip_range)
    v_loss = value_loss(value, ret)
    entropy = jnp.mean(gaussian_entropy(log_std))
    loss = pg_loss - c.ent_coef * entropy + c.vf_coef * v_loss
    return loss, dict(policy_gradient_loss=pg_loss, value_loss=v_loss, entropy=entropy, clip_fraction=clip_frac,
                      approx_kl=approx_kl, loss=loss)

  return net, tx, loss_fn


def make_train(config: PPOConfig, env) -> Callable[[jax.Array], tuple[TrainState, dict]]:
  """`train(key) -> (TrainState, metrics)`, the whole run on `env` as one program; metrics as in `make_runner`."""
  init, run = make_runner(config, env)

  def train(key):
    runner, metrics = run(init(key), config.num_updates(env.num_envs))
    return runner.train_state, metrics

  return train


@flax.struct.dataclass
class Rollout:
  """One collected rollout, time-major [n_steps, num_envs], as `make_runner`'s update trains on it."""
  traj: Transition
  last_value: jax.Array  # [num_envs]: V(observation after the last step), GAE's bootstrap
  advantages: jax.Array
  returns: jax.Array


def make_collector(config: PPOConfig, env):
  """`collect(runner, noise=None) -> (runner, Rollout)`: the rollout collection `make_runner`'s update performs
  (SB3 `collect_rollouts` + `compute_returns_and_advantage`): `config.n_steps` env steps with the current
  parameters, truncation bootstrap, GAE. The Gaussian exploration noise is drawn from the runner's key, one split
  per step; `noise` [n_steps, num_envs, action_size] (standard normal) replaces those draws (the key still
  advances the same way), so a reference implementation can be fed the same noise (SB3 parity tests)."""
  c = config
  net, _, _ = make_learner(c, env.action_size)

  def prep(rms, obs_dict):
    x = flatten_obs(obs_dict)
    return rms.normalize(x, c.clip_obs) if c.normalize_obs else x

  def update_rms(rms, obs_dict):
    return rms.update(flatten_obs(obs_dict)) if c.normalize_obs else rms

  def env_step(carry, eps):
    ts, env_state, ep_ret = carry
    key, k_act = jax.random.split(ts.key)
    x = prep(ts.obs_rms, env_state.obs)
    mean, log_std, value = net.apply(ts.params, x)
    if eps is None:
      eps = jax.random.normal(k_act, mean.shape)
    action = mean + jnp.exp(log_std) * eps
    log_prob = gaussian_log_prob(action, mean, log_std)
    env_state = env.step(env_state, jnp.clip(action, -1.0, 1.0))
    # VecNormalize.step_wait: update the stats with the new obs, then normalise it and the terminal obs.
    rms = update_rms(ts.obs_rms, env_state.obs)
    done, trunc = env_state.done, env_state.info["truncation"]
    final_value = net.apply(ts.params, prep(rms, env_state.info["final_obs"]), method=ActorCritic.value)
    reward = bootstrap_truncation(env_state.reward, trunc, final_value, c.gamma)
    ep_ret = ep_ret + env_state.reward
    tr = Transition(x, action, log_prob, value, reward, done, ep_ret * done, env_state.info["is_success"] * done)
    return (ts.replace(key=key, obs_rms=rms), env_state, ep_ret * (1.0 - done)), tr

  def collect(runner: RunnerState, noise=None) -> tuple[RunnerState, Rollout]:
    carry = (runner.train_state, runner.env_state, runner.ep_ret)
    (ts, env_state, ep_ret), traj = jax.lax.scan(env_step, carry, noise, c.n_steps)
    last_value = net.apply(ts.params, prep(ts.obs_rms, env_state.obs), method=ActorCritic.value)
    adv, ret = compute_gae(traj.reward, traj.value, traj.done, last_value, c.gamma, c.gae_lambda)
    return RunnerState(ts, env_state, ep_ret), Rollout(traj, last_value, adv, ret)

  return collect


def make_runner(config: PPOConfig, env):
  """Returns `(init, run)`: `init(key) -> RunnerState` and `run(runner, n) -> (RunnerState, metrics)`, which does
  `n` (static) updates. Splitting a run into chunks gives the same bits as one `train` (the CLI logs,
  checkpoints and resumes between chunks); both are pure and vmap over seeds. Each update collects a rollout
  with `make_collector`, then runs the SGD epochs.

  `metrics[name]` has shape [n]; names and meanings follow SB3's logger:
    timesteps, ep_rew_mean (mean raw reward sum of the episodes completed in that rollout; NaN if none),
    success_rate (is_success at those episode ends), value_loss, policy_gradient_loss, entropy_loss (-mean H),
    entropy (mean H), approx_kl (last epoch's minibatches), clip_fraction (all epochs), loss (last minibatch),
    explained_variance, std (mean exp(log_std)).
  """
  c = config
  c.check_env(env.num_envs)
  rollout_size, num_minibatches = c.rollout_size(env.num_envs), c.num_minibatches(env.num_envs)
  obs_size = sum(spec.shape[-1] for spec in env.observation_spec.values())  # of flatten_obs
  net, tx, loss_fn = make_learner(c, env.action_size)
  collect = make_collector(c, env)

  def update_rms(rms, obs_dict):
    return rms.update(flatten_obs(obs_dict)) if c.normalize_obs else rms

  def init(key: jax.Array) -> RunnerState:
    key, k_init, k_env = jax.random.split(key, 3)
    params = net.init(k_init, jnp.zeros((1, obs_size)))
    env_state = env.reset(k_env)
    rms = update_rms(RunningMeanStd.create(obs_size), env_state.obs)  # VecNormalize.reset updates the stats
    ts = TrainState(params, tx.init(params), rms, key, jnp.zeros((), jnp.int32))
    return RunnerState(ts, env_state, jnp.zeros(env.num_envs))

  def sgd_epoch(carry, _):
    ts, batch = carry
    key, k_perm = jax.random.split(ts.key)
    perm = jax.random.permutation(k_perm, rollout_size)  # SB3 reshuffles the whole buffer every epoch
    mbs = jax.tree.map(lambda x: x[perm].reshape((num_minibatches, c.batch_size) + x.shape[1:]), batch)

    def sgd_step(ts, mb):
      tr, adv, ret = mb
      grads, info = jax.grad(loss_fn, has_aux=True)(ts.params, tr, adv, ret)
      updates, opt_state = tx.update(grads, ts.opt_state, ts.params)
      return ts.replace(params=optax.apply_updates(ts.params, updates), opt_state=opt_state), info

    ts, info = jax.lax.scan(sgd_step, ts.replace(key=key), mbs)
    return (ts, batch), info

  def update(carry, _):
    runner, ro = collect(RunnerState(*carry))
    ts, env_state, ep_ret, traj = runner.train_state, runner.env_state, runner.ep_ret, ro.traj
    flat = jax.tree.map(lambda x: x.reshape((rollout_size,) + x.shape[2:]), (traj, ro.advantages, ro.returns))
    (ts, _), info = jax.lax.scan(sgd_epoch, (ts, flat), None, c.n_epochs)  # info: [epochs, minibatches]

    n_done = traj.done.sum()
    log_std = ts.params["params"]["log_std"]
    metrics = {k: v.mean() for k, v in info.items() if k not in ("approx_kl", "loss")}
    metrics.update(
        timesteps=(ts.step + 1) * rollout_size,
        ep_rew_mean=jnp.where(n_done > 0, traj.ep_return.sum() / jnp.maximum(n_done, 1), jnp.nan),
        success_rate=jnp.where(n_done > 0, traj.success.sum() / jnp.maximum(n_done, 1), jnp.nan),
        entropy_loss=-info["entropy"].mean(),
        approx_kl=info["approx_kl"][-1].mean(),
        loss=info["loss"][-1, -1],
        explained_variance=explained_variance(traj.value.ravel(), ro.returns.ravel()),
        std=jnp.exp(log_std).mean(),
        n_updates=(ts.step + 1) * c.n_epochs,  # SB3 counts epochs
    )
    return (ts.replace(step=ts.step + 1), env_state, ep_ret), metrics

  def run(runner: RunnerState, n: int) -> tuple[RunnerState, dict]:
    carry = (runner.train_state, runner.env_state, runner.ep_ret)
    (ts, env_state, ep_ret), metrics = jax.lax.scan(update, carry, None, n)
    return RunnerState(ts, env_state, ep_ret), metrics

  return init, run


def policy_action(params, obs: dict, config: PPOConfig, obs_rms: RunningMeanStd | None = None, key=None):
  """Env action: the mean (deterministic, SB3 `predict(deterministic=True)`) or a sample, clipped to [-1, 1]."""
  x = flatten_obs(obs)
  if config.normalize_obs and obs_rms is not None:
    x = obs_rms.normalize(x, config.clip_obs)
  net = ActorCritic(4, config.hidden_sizes, config.activation, config.log_std_init)
  mean, log_std, _ = net.apply(params, x)
  a = mean if key is None else mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
  return jnp.clip(a, -1.0, 1.0)


TB_NAMES = {  # metric -> SB3 logger key
    "ep_rew_mean": "rollout/ep_rew_mean", "success_rate": "rollout/success_rate",
    "value_loss": "train/value_loss", "policy_gradient_loss": "train/policy_gradient_loss",
    "entropy_loss": "train/entropy_loss", "approx_kl": "train/approx_kl", "clip_fraction": "train/clip_fraction",
    "loss": "train/loss", "explained_variance": "train/explained_variance", "std": "train/std",
    "n_updates": "train/n_updates",
}


def tb_constants(config: PPOConfig) -> dict[str, float]:
  """Scalars SB3 logs every iteration that are constant here."""
  return {"train/learning_rate": config.learning_rate, "train/clip_range": config.clip_range}


def policy_of(config: PPOConfig, runner) -> dict:
  """What acting needs from a (possibly vmapped, possibly raw-restored dict) RunnerState."""
  ts = runner["train_state"] if isinstance(runner, dict) else runner.train_state
  params, rms = (ts["params"], ts["obs_rms"]) if isinstance(ts, dict) else (ts.params, ts.obs_rms)
  if isinstance(rms, dict):
    rms = RunningMeanStd(**rms)
  return {"params": params, "obs_rms": rms}


def make_act(config: PPOConfig):
  """`act(policy, obs, key=None) -> action` in [-1, 1]: deterministic (clipped mean) when key is None."""
  def act(policy, obs, key=None):
    rms = policy["obs_rms"]
    rms = RunningMeanStd(**rms) if isinstance(rms, dict) else rms  # a policy read back from a checkpoint
    return policy_action(policy["params"], obs, config, rms, key)

  return act


__all__ = ["PPOConfig", "PRESETS", "ENV_PRESETS", "TB_NAMES", "tb_constants", "policy_of", "make_act", "ActorCritic",
           "RunningMeanStd", "TrainState", "Transition", "Rollout", "RunnerState", "compute_gae",
           "bootstrap_truncation", "clipped_surrogate", "value_loss", "normalize_advantages", "explained_variance",
           "make_train", "make_learner", "make_runner", "make_collector", "policy_action"]
