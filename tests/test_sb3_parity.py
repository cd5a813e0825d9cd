"""PPO parity against the real stable-baselines3 package (the `parity` extra: stable-baselines3 + CPU torch).

Skipped when SB3 / torch are not installed. Checks, all float32 on both sides:
  a. `compute_gae` vs SB3 `RolloutBuffer.compute_returns_and_advantage` on random data (episode_starts mapped
     to fetchjax's `dones` convention);
  b. an SB3 `PPO("MultiInputPolicy")` on FetchReachDense-v4 collects one real rollout through `learn()`; its
     torch weights are copied into fetchjax's `ActorCritic`, then
     - the rollout post-processing (stored values / log-probs of the unclipped actions, truncation bootstrap,
       GAE on the real buffer) is reproduced by fetchjax;
     - the policy forward pass (mean, value, log-prob, entropy) matches `evaluate_actions`;
     - the loss terms and their gradients, transcribed from SB3 `PPO.train()`, match fetchjax's pieces and the
       `loss_fn` that training optimises (`make_learner`);
     - SB3's real `PPO.train()` (1 epoch, 1 minibatch) logs the same numbers and lands on the same weights as
       fetchjax's `loss_fn` + `tx` (global-norm clipping + Adam eps 1e-5).
  c. the observation normaliser (`RunningMeanStd`, normalize + clip) vs SB3 RunningMeanStd / VecNormalize;
  d. fetchjax's own rollout collection (`make_collector`, what `make_runner` trains on) vs SB3's
     `collect_rollouts` on the same fetchjax env (behind a VecEnv), weights and exploration noise: two rollouts
     with truncations inside and at the end, raw and normalised observations.
Before `train()` the policy is perturbed so that ratios != 1 (non-trivial clipping / KL). Run with `-s` to see
every measured error. Line citations refer to stable-baselines3 2.9.2.
"""
from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

sb3 = pytest.importorskip("stable_baselines3")
th = pytest.importorskip("torch")

import fetchjax  # noqa: E402,F401  (XLA flags before JAX initialises)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from gymnasium import spaces  # noqa: E402
from stable_baselines3.common.buffers import RolloutBuffer  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.logger import configure  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv  # noqa: E402

from measured import Recorder, max_abs, rel  # noqa: E402

from fetchjax.agents import ppo  # noqa: E402
from fetchjax.agents.nets import gaussian_entropy, gaussian_log_prob  # noqa: E402
from fetchjax.encoders import OBS_KEYS, flatten_obs  # noqa: E402

ENV_ID = "FetchReachDense-v4"
N_ENVS, N_STEPS = 2, 64          # 128 transitions; Fetch episodes are 50 steps -> one truncation per env
GAMMA, LAM = 0.99, 0.95
CLIP, ENT_COEF, VF_COEF, MAX_GRAD_NORM, LR = 0.2, 0.01, 0.5, 0.5, 3e-4  # ent_coef != 0 to exercise that term

ONE = 1.0 / (N_ENVS * N_STEPS) + 1e-9  # clip_fraction: allow one ratio on the other side of 1 +- clip_range
record = Recorder("sb3-parity")  # measured errors, printed with `pytest -s`


# ----------------------------------------------------------------------------------------------------------
# a. GAE vs SB3 RolloutBuffer
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_gae_matches_sb3_rollout_buffer(seed):
  rng = np.random.default_rng(seed)
  T, N = 64, 4
  buf = RolloutBuffer(T, spaces.Box(-1, 1, (3,), np.float32), spaces.Box(-1, 1, (2,), np.float32), device="cpu",
                      gae_lambda=LAM, gamma=GAMMA, n_envs=N)
  rewards = rng.normal(size=(T, N)).astype(np.float32)
  values = rng.normal(size=(T, N)).astype(np.float32)
  # SB3 episode_starts[t] = done flag of the step *before* t (so [0] comes from the previous rollout).
  starts = (rng.random((T, N)) < 0.1).astype(np.float32)
  starts[:, 0] = 0.0
  starts[[5, 6, 7, 30, 63], 0] = 1.0       # consecutive ends (1-step episodes), an end feeding the last step
  starts[:, 1] = 0.0                        # env 1: no end inside the rollout
  starts[::16, 2] = 1.0                     # env 2: periodic ends incl. episode_starts[0]
  starts[0, 3] = 1.0                        # env 3: previous rollout ended (must not matter)
  last_values = rng.normal(size=N).astype(np.float32)
  last_dones = np.array([0, 0, 1, 1], np.float32)  # done flags of the rollout's last step
  for t in range(T):
    buf.add(rng.normal(size=(N, 3)), rng.normal(size=(N, 2)), rewards[t], starts[t],
            th.as_tensor(values[t]), th.as_tensor(rng.normal(size=N).astype(np.float32)))
  buf.compute_returns_and_advantage(th.as_tensor(last_values), last_dones)

  # fetchjax dones[t] = done of the step taken at t = SB3 episode_starts[t + 1]; dones[T - 1] = last dones.
  dones = np.concatenate([starts[1:], last_dones[None]], axis=0)
  assert dones[:, 0].sum() >= 5 and dones[:, 2].sum() >= 4 and dones[:, 1].sum() == 0
  adv, ret = ppo.compute_gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(dones),
                             jnp.asarray(last_values), GAMMA, LAM)
  # float32 on both sides: 1 ulp at |x| in [8, 16) is 9.5e-7, so the bound is 1e-6 x max(1, |x|max) (~8 ulp)
  record(f"gae_advantages[seed={seed}] max abs", max_abs(adv, buf.advantages),
          1e-6 * max(1.0, np.abs(buf.advantages).max()))
  record(f"gae_returns[seed={seed}] max abs", max_abs(ret, buf.returns), 1e-6 * max(1.0, np.abs(buf.returns).max()))
  # episode_starts[0] is irrelevant to SB3's GAE (sanity check of the mapping above)
  adv2, _ = ppo.compute_gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(starts),
                            jnp.asarray(last_values), GAMMA, LAM)
  assert max_abs(adv2, buf.advantages) > 1e-2, "naive episode_starts-as-dones should NOT match"


def test_running_mean_std_matches_sb3_vecnormalize():
  """Observation normaliser (normalize_obs=True): SB3 RunningMeanStd (float64) + VecNormalize._normalize_obs."""
  from stable_baselines3.common.running_mean_std import RunningMeanStd as SB3RMS
  from stable_baselines3.common.vec_env import VecNormalize

  rng = np.random.default_rng(0)
  d, n = 16, 8
  loc, scale = rng.uniform(-1.5, 1.5, d), rng.uniform(0.01, 2.0, d)  # Fetch-like offsets / spreads
  ref, rms = SB3RMS(shape=(d,)), ppo.RunningMeanStd.create(d)
  update = jax.jit(lambda r, x: r.update(x))
  for _ in range(60):
    x = (loc + scale * rng.normal(size=(n, d))).astype(np.float32)
    ref.update(x)
    rms = update(rms, jnp.asarray(x))
  record("obs rms mean rel", rel(ref.mean, rms.mean), 1e-5)
  record("obs rms var rel", rel(ref.var, rms.var), 1e-4)
  record("obs rms count abs", abs(ref.count - float(rms.count)), 1e-3)
  x = (loc + scale * rng.normal(size=(n, d)) * np.where(rng.random((n, d)) < 0.1, 30.0, 1.0)).astype(np.float32)
  vn = types.SimpleNamespace(epsilon=1e-8, clip_obs=10.0)  # VecNormalize defaults
  want = VecNormalize._normalize_obs(vn, x, ref)
  assert np.abs(want).max() == 10.0  # the clip is exercised
  record("normalized obs max abs", max_abs(rms.normalize(jnp.asarray(x), 10.0), want), 1e-4)


# ----------------------------------------------------------------------------------------------------------
# b. A real SB3 PPO on FetchReachDense-v4
# ----------------------------------------------------------------------------------------------------------
def torch_to_flax(sd: dict) -> dict:
  """SB3 MultiInputActorCriticPolicy (net_arch pi=vf=[64, 64]) -> fetchjax ActorCritic params.
  torch Linear weight is [out, in], flax Dense kernel is [in, out]."""
  sd = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, np.float32) for k, v in sd.items()}
  dense = lambda p: {"kernel": jnp.asarray(sd[p + ".weight"].T), "bias": jnp.asarray(sd[p + ".bias"])}  # noqa
  return {"params": {
      "actor": {"Dense_0": dense("mlp_extractor.policy_net.0"), "Dense_1": dense("mlp_extractor.policy_net.2"),
                "Dense_2": dense("action_net")},
      "critic": {"Dense_0": dense("mlp_extractor.value_net.0"), "Dense_1": dense("mlp_extractor.value_net.2"),
                 "Dense_2": dense("value_net")},
      "log_std": jnp.asarray(sd["log_std"]),
  }}


def _tree_rel(a, b):
  """Per-leaf max|a - b| / max|a| (a = reference), worst leaf."""
  errs = jax.tree.map(lambda x, y: rel(x, y, floor=1e-12), a, b)
  return max(jax.tree.leaves(errs))


class _Recorder(BaseCallback):
  """Records raw step data inside `collect_rollouts` and, at rollout end, snapshots the buffer and the
  weights that collected it, then perturbs the policy (so `train()` sees ratios != 1)."""

  def __init__(self):
    super().__init__()
    self.raw_rewards, self.dones, self.truncated, self.terminal_obs = [], [], [], []

  def _on_step(self):
    loc = self.locals  # called right after env.step, before SB3 adds the truncation bootstrap in place
    self.raw_rewards.append(np.array(loc["rewards"], np.float32))
    self.dones.append(np.array(loc["dones"], np.float32))
    self.truncated.append(np.array([i.get("TimeLimit.truncated", False) for i in loc["infos"]], np.float32))
    self.terminal_obs.append([i.get("terminal_observation") for i in loc["infos"]])
    return True

  def _on_rollout_end(self):
    buf = self.model.rollout_buffer
    self.buffer = {k: np.copy(getattr(buf, k)) for k in
                   ("actions", "rewards", "episode_starts", "values", "log_probs", "advantages", "returns")}
    self.buffer["observations"] = {k: np.copy(v) for k, v in buf.observations.items()}
    self.last_values = self.locals["values"].detach().numpy().flatten().copy()
    self.last_dones = np.array(self.locals["dones"], np.float32)
    pol = self.model.policy
    self.collect_sd = {k: v.detach().clone() for k, v in pol.state_dict().items()}
    g = th.Generator().manual_seed(123)
    with th.no_grad():
      for name, p in pol.named_parameters():
        scale = 0.1 if name.startswith("action_net") or name == "log_std" else 0.02
        p.add_(scale * th.randn(p.shape, generator=g))
    self.train_sd = {k: v.detach().clone() for k, v in pol.state_dict().items()}


@pytest.fixture(scope="module")
def sb3_run():
  from fetchjax.gymnasium_reference import gymnasium_make

  env = DummyVecEnv([lambda: gymnasium_make(ENV_ID)] * N_ENVS)
  assert list(env.observation_space.spaces) == list(OBS_KEYS), "CombinedExtractor order != flatten_obs"
  model = sb3.PPO("MultiInputPolicy", env, n_steps=N_STEPS, batch_size=N_ENVS * N_STEPS, n_epochs=1,
                  learning_rate=LR, gamma=GAMMA, gae_lambda=LAM, clip_range=CLIP, ent_coef=ENT_COEF,
                  vf_coef=VF_COEF, max_grad_norm=MAX_GRAD_NORM, seed=0, device="cpu", verbose=0)
  model.set_logger(configure(None, [""]))
  rec = _Recorder()
  model.learn(N_ENVS * N_STEPS, callback=rec, log_interval=None)  # one rollout + one train() call
  env.close()

  # fetchjax's own network, loss and optimiser: the ones make_runner trains with.
  cfg = ppo.PPOConfig(n_steps=N_STEPS, batch_size=N_ENVS * N_STEPS, n_epochs=1,
                      learning_rate=LR, gamma=GAMMA, gae_lambda=LAM, clip_range=CLIP, ent_coef=ENT_COEF,
                      vf_coef=VF_COEF, max_grad_norm=MAX_GRAD_NORM)
  net, tx, loss_fn = ppo.make_learner(cfg, 4)

  flat = lambda x: x.reshape((N_ENVS * N_STEPS,) + x.shape[2:])  # noqa: E731  [T, N, ...] -> [T * N, ...]
  obs = {k: flat(v) for k, v in rec.buffer["observations"].items()}
  return types.SimpleNamespace(
      model=model, rec=rec, cfg=cfg, net=net, loss_fn=loss_fn, tx=tx, logs=dict(model.logger.name_to_value),
      after_sd={k: v.detach().clone() for k, v in model.policy.state_dict().items()},
      obs=obs, x=np.asarray(flatten_obs(obs)), actions=flat(rec.buffer["actions"]),
      old_log_prob=flat(rec.buffer["log_probs"]), adv=flat(rec.buffer["advantages"]),
      ret=flat(rec.buffer["returns"]), values=flat(rec.buffer["values"]))


def _torch_obs(run):
  return {k: th.as_tensor(v) for k, v in run.obs.items()}


def test_param_layout(sb3_run):
  run = sb3_run
  ref = run.net.init(jax.random.PRNGKey(0), jnp.zeros((1, run.x.shape[-1])))
  conv = torch_to_flax(run.rec.train_sd)
  assert jax.tree.structure(ref) == jax.tree.structure(conv)
  assert jax.tree.map(jnp.shape, ref) == jax.tree.map(jnp.shape, conv)
  used = {"log_std"} | {f"{m}.{w}" for m in ("mlp_extractor.policy_net.0", "mlp_extractor.policy_net.2",
                                             "action_net", "mlp_extractor.value_net.0",
                                             "mlp_extractor.value_net.2", "value_net") for w in ("weight", "bias")}
  assert {n for n, _ in run.model.policy.named_parameters()} == used
  # policy input order: CombinedExtractor(obs) == flatten_obs(obs)
  with th.no_grad():
    feats = run.model.policy.extract_features(_torch_obs(run))
  feats = feats[0] if isinstance(feats, tuple) else feats
  record("features max abs", max_abs(feats.numpy(), run.x), 0.0)


def test_rollout_postprocessing_matches_sb3(sb3_run):
  """Weights that collected the rollout: stored values / log-probs (of the *unclipped* actions), the truncation
  bootstrap and GAE on the real buffer."""
  run, rec = sb3_run, sb3_run.rec
  params = torch_to_flax(rec.collect_sd)
  mean, log_std, value = run.net.apply(params, run.x)
  record("stored values max abs", max_abs(value, run.values), 1e-5)
  record("stored log_probs max abs", max_abs(gaussian_log_prob(run.actions, mean, log_std), run.old_log_prob),
          1e-5)
  assert np.abs(run.actions).max() > 1.0, "some stored actions should lie outside [-1, 1] (unclipped)"

  # truncation bootstrap: r += gamma * V(terminal_obs) on time-limit ends
  raw, dones, trunc = np.stack(rec.raw_rewards), np.stack(rec.dones), np.stack(rec.truncated)
  assert trunc.sum() == N_ENVS and np.array_equal(trunc, dones)  # Fetch: every end is a time limit
  final_x = np.zeros(raw.shape + (run.x.shape[-1],), np.float32)
  for t, row in enumerate(rec.terminal_obs):
    for i, o in enumerate(row):
      if o is not None:
        final_x[t, i] = np.asarray(flatten_obs({k: np.asarray(v, np.float32) for k, v in o.items()}))
  final_v = run.net.apply(params, final_x, method=ppo.ActorCritic.value)
  rewards = ppo.bootstrap_truncation(jnp.asarray(raw), jnp.asarray(trunc), final_v, GAMMA)
  record("bootstrapped rewards max abs", max_abs(rewards, rec.buffer["rewards"]), 1e-6)

  # GAE on the real buffer with fetchjax's dones convention (the env's done flags of each step)
  assert np.array_equal(rec.buffer["episode_starts"][1:], dones[:-1]) and np.array_equal(rec.last_dones, dones[-1])
  adv, ret = ppo.compute_gae(jnp.asarray(rec.buffer["rewards"]), jnp.asarray(rec.buffer["values"]),
                             jnp.asarray(dones), jnp.asarray(rec.last_values), GAMMA, LAM)
  record("rollout GAE advantages max abs", max_abs(adv, rec.buffer["advantages"]),
          1e-6 * max(1.0, np.abs(rec.buffer["advantages"]).max()))
  record("rollout GAE returns max abs", max_abs(ret, rec.buffer["returns"]),
          1e-6 * max(1.0, np.abs(rec.buffer["returns"]).max()))


def test_policy_forward_matches_sb3(sb3_run):
  run = sb3_run
  pol = run.model.policy
  pol.load_state_dict(run.rec.train_sd)
  obs, act = _torch_obs(run), th.as_tensor(run.actions)
  with th.no_grad():
    values, log_prob, entropy = pol.evaluate_actions(obs, act)
    dist = pol.get_distribution(obs).distribution
  mean, log_std, value = run.net.apply(torch_to_flax(run.rec.train_sd), run.x)
  record("forward mean max abs", max_abs(mean, dist.mean.numpy()), 1e-5)
  record("forward std max abs", max_abs(jnp.exp(log_std), dist.stddev.numpy()), 1e-6)
  record("forward value max abs", max_abs(value, values.numpy().ravel()), 1e-5)
  record("forward log_prob max abs", max_abs(gaussian_log_prob(run.actions, mean, log_std), log_prob.numpy()),
          1e-5)
  record("forward entropy max abs", max_abs(gaussian_entropy(log_std), entropy.numpy()), 1e-5)


def _sb3_loss_terms(policy, obs, actions, old_log_prob, advantages, returns):
  """Transcribed from stable_baselines3/ppo/ppo.py `PPO.train()` (v2.9.2, lines 213-264), clip_range_vf=None,
  normalize_advantage=True, minibatch of >1 element."""
  values, log_prob, entropy = policy.evaluate_actions(obs, actions)
  values = values.flatten()
  advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
  ratio = th.exp(log_prob - old_log_prob)
  policy_loss_1 = advantages * ratio
  policy_loss_2 = advantages * th.clamp(ratio, 1 - CLIP, 1 + CLIP)
  policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()
  clip_fraction = th.mean((th.abs(ratio - 1) > CLIP).float()).item()
  values_pred = values
  value_loss = F.mse_loss(returns, values_pred)
  entropy_loss = -th.mean(entropy)
  loss = policy_loss + ENT_COEF * entropy_loss + VF_COEF * value_loss
  with th.no_grad():
    log_ratio = log_prob - old_log_prob
    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
  return loss, dict(policy_gradient_loss=policy_loss.item(), value_loss=value_loss.item(),
                    entropy_loss=entropy_loss.item(), clip_fraction=clip_fraction, approx_kl=float(approx_kl_div),
                    loss=loss.item(), advantages=advantages.detach().numpy(), ratio=ratio.detach().numpy())


def _fetchjax_transition(run):
  """A minibatch as make_learner's loss_fn takes it (fields it does not read are zeros)."""
  z = jnp.zeros(run.x.shape[0])
  fields = {f.name: z for f in dataclasses.fields(ppo.Transition)}
  fields.update(obs=jnp.asarray(run.x), action=jnp.asarray(run.actions), log_prob=jnp.asarray(run.old_log_prob))
  return ppo.Transition(**fields)


def test_loss_terms_and_gradients_match_sb3(sb3_run):
  run = sb3_run
  pol = run.model.policy
  pol.load_state_dict(run.rec.train_sd)
  pol.zero_grad()
  loss, ref = _sb3_loss_terms(pol, _torch_obs(run), th.as_tensor(run.actions), th.as_tensor(run.old_log_prob),
                              th.as_tensor(run.adv), th.as_tensor(run.ret))
  loss.backward()
  g_ref = torch_to_flax({n: p.grad for n, p in pol.named_parameters()})
  assert 0.05 < ref["clip_fraction"] < 0.95, ref["clip_fraction"]  # the perturbation makes clipping matter

  # the individual fetchjax pieces, composed like make_learner's loss_fn
  params = torch_to_flax(run.rec.train_sd)

  def pieces_loss(params):
    mean, log_std, value = run.net.apply(params, run.x)
    log_prob = gaussian_log_prob(run.actions, mean, log_std)
    adv = ppo.normalize_advantages(jnp.asarray(run.adv))
    pg, clip_frac, approx_kl = ppo.clipped_surrogate(log_prob, run.old_log_prob, adv, CLIP)
    v_loss = ppo.value_loss(value, run.ret)
    entropy = jnp.mean(gaussian_entropy(log_std))
    loss = pg - ENT_COEF * entropy + VF_COEF * v_loss
    return loss, dict(policy_gradient_loss=pg, value_loss=v_loss, entropy_loss=-entropy, clip_fraction=clip_frac,
                      approx_kl=approx_kl, loss=loss, advantages=adv, ratio=jnp.exp(log_prob - run.old_log_prob))

  g, out = jax.grad(pieces_loss, has_aux=True)(params)
  record("normalized advantages max abs", max_abs(out["advantages"], ref["advantages"]), 1e-6)
  record("ratio max abs", max_abs(out["ratio"], ref["ratio"]), 1e-5)
  for k in ("policy_gradient_loss", "value_loss", "entropy_loss", "approx_kl", "loss"):
    record(f"{k} rel", rel(out[k], ref[k]), 1e-5)
  record("clip_fraction abs", abs(float(out["clip_fraction"]) - ref["clip_fraction"]), ONE)
  record("grad (pieces) worst-leaf rel", _tree_rel(g_ref, g), 1e-5)

  # the loss_fn that training optimises (make_learner)
  g2, info = jax.grad(run.loss_fn, has_aux=True)(params, _fetchjax_transition(run), jnp.asarray(run.adv),
                                                 jnp.asarray(run.ret))
  for k in ("policy_gradient_loss", "value_loss", "approx_kl", "loss"):
    record(f"loss_fn {k} rel", rel(info[k], ref[k]), 1e-5)
  record("loss_fn entropy rel", rel(-info["entropy"], ref["entropy_loss"]), 1e-5)
  record("loss_fn clip_fraction abs", abs(float(info["clip_fraction"]) - ref["clip_fraction"]), ONE)
  record("grad (loss_fn) worst-leaf rel", _tree_rel(g_ref, g2), 1e-5)


def test_train_step_matches_sb3(sb3_run):
  """SB3's real `PPO.train()` (1 epoch x 1 minibatch = the whole buffer, so its shuffle only reorders sums) vs one
  fetchjax SGD step: grad of make_learner's `loss_fn`, then its `tx` (clip_by_global_norm + Adam eps=1e-5)."""
  run = sb3_run
  params = torch_to_flax(run.rec.train_sd)
  grads, info = jax.grad(run.loss_fn, has_aux=True)(params, _fetchjax_transition(run), jnp.asarray(run.adv),
                                                    jnp.asarray(run.ret))
  assert float(optax.tree.norm(grads)) > MAX_GRAD_NORM, "gradient clipping should be active in this check"
  updates, _ = run.tx.update(grads, run.tx.init(params), params)
  new = optax.apply_updates(params, updates)

  logs = run.logs
  for k in ("policy_gradient_loss", "value_loss", "approx_kl", "loss"):
    record(f"train() log {k} rel", rel(info[k], logs[f"train/{k}"]), 1e-5)
  record("train() log entropy_loss rel", rel(-info["entropy"], logs["train/entropy_loss"]), 1e-5)
  record("train() log clip_fraction abs", abs(float(info["clip_fraction"]) - logs["train/clip_fraction"]), ONE)
  record("train() log explained_variance abs",
          abs(float(ppo.explained_variance(jnp.asarray(run.values), jnp.asarray(run.ret)))
              - logs["train/explained_variance"]), 1e-5)
  record("train() log std abs", abs(float(jnp.exp(new["params"]["log_std"]).mean()) - logs["train/std"]), 1e-6)

  # weights after one step: compare the updates (~lr per element) relative to lr
  before, after = torch_to_flax(run.rec.train_sd), torch_to_flax(run.after_sd)
  d_ref = jax.tree.map(lambda a, b: a - b, after, before)
  d_fj = jax.tree.map(lambda a, b: a - b, new, before)
  err = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), d_ref, d_fj)))
  record("train() step update max abs / lr", err / LR, 1e-3)


# ----------------------------------------------------------------------------------------------------------
# d. fetchjax's own rollout collection (make_collector, what make_runner trains on) vs SB3 collect_rollouts
# ----------------------------------------------------------------------------------------------------------
class FetchjaxVecEnv(VecEnv):
  """A fetchjax env (cpu backend) behind SB3's VecEnv interface, with DummyVecEnv + TimeLimit semantics: the
  observation after a truncation is the next episode's first one, `terminal_observation` and
  `TimeLimit.truncated` are in that env's info. Starts from a given fetchjax state (the runner's)."""

  render_mode = None

  def __init__(self, env, state):
    obs_space = spaces.Dict({k: spaces.Box(-np.inf, np.inf, (env.observation_size[k],), np.float32)
                             for k in OBS_KEYS})
    super().__init__(env.num_envs, obs_space, spaces.Box(-1.0, 1.0, (env.action_size,), np.float32))
    self._env, self._state0, self._step = env, state, jax.jit(env.step)
    self.raw_rewards = []  # the env's own rewards, before SB3 adds the truncation bootstrap

  @staticmethod
  def _np(obs):
    return {k: np.array(obs[k], np.float32) for k in OBS_KEYS}

  def reset(self):
    self.state = self._state0
    return self._np(self.state.obs)

  def step_async(self, actions):
    self._actions = np.asarray(actions, np.float32)

  def step_wait(self):
    self.state = self._step(self.state, jnp.asarray(self._actions))
    obs, final = self._np(self.state.obs), self._np(self.state.info["final_obs"])
    dones = np.asarray(self.state.done) > 0
    infos = []
    for i in range(self.num_envs):
      info = {"is_success": float(self.state.info["is_success"][i])}
      if dones[i]:
        info.update({"terminal_observation": {k: v[i] for k, v in final.items()}, "TimeLimit.truncated": True})
      infos.append(info)
    self.raw_rewards.append(np.array(self.state.reward, np.float32))
    return obs, np.array(self.state.reward, np.float32), dones, infos

  def close(self):
    pass

  def get_attr(self, attr_name, indices=None):
    return [getattr(self, attr_name)] * self.num_envs

  def set_attr(self, attr_name, value, indices=None):
    setattr(self, attr_name, value)

  def env_method(self, method_name, *args, indices=None, **kwargs):
    raise NotImplementedError(method_name)

  def env_is_wrapped(self, wrapper_class, indices=None):
    return [False] * self.num_envs


class _BufferSnapshots(BaseCallback):
  """Copies the rollout buffer and the bootstrap values at the end of every `collect_rollouts`."""

  def __init__(self):
    super().__init__()
    self.rollouts = []

  def _on_step(self):
    return True

  def _on_rollout_end(self):
    buf = self.model.rollout_buffer
    snap = {k: np.copy(getattr(buf, k)) for k in
            ("actions", "rewards", "episode_starts", "values", "log_probs", "advantages", "returns")}
    snap["observations"] = {k: np.copy(v) for k, v in buf.observations.items()}
    snap["last_values"] = self.locals["values"].detach().numpy().flatten().copy()
    snap["last_dones"] = np.array(self.locals["dones"], np.float32)
    self.rollouts.append(snap)


ROLL_ENVS, ROLL_STEPS = 4, 75  # two rollouts of 75 steps: truncations at steps 50, 100 and 150 (the very last)


@pytest.fixture(scope="module", params=[False, True], ids=["raw_obs", "normalize_obs"])
def collected(request):
  """Two consecutive rollouts collected by fetchjax's `make_collector` and by SB3's `collect_rollouts` from the
  same env state, with the same weights (SB3's initial policy) and the same standard normal exploration noise
  (SB3's `Normal.rsample` fed from the array fetchjax gets); with normalize_obs, SB3 runs behind VecNormalize."""
  from stable_baselines3.common.vec_env import VecNormalize

  from fetchjax import envs

  norm = request.param
  cfg = ppo.PPOConfig(n_steps=ROLL_STEPS, batch_size=ROLL_ENVS * ROLL_STEPS, n_epochs=1, gamma=GAMMA,
                      gae_lambda=LAM, normalize_obs=norm)
  env = envs.make(ENV_ID, num_envs=ROLL_ENVS, backend="cpu")
  init, _ = ppo.make_runner(cfg, env)
  runner = jax.jit(init)(jax.random.PRNGKey(0))
  vec = raw_env = FetchjaxVecEnv(envs.make(ENV_ID, num_envs=ROLL_ENVS, backend="cpu"), runner.env_state)
  if norm:
    vec = VecNormalize(vec, norm_obs=True, norm_reward=False, clip_obs=cfg.clip_obs, gamma=GAMMA)
  model = sb3.PPO("MultiInputPolicy", vec, n_steps=ROLL_STEPS, batch_size=ROLL_ENVS * ROLL_STEPS, n_epochs=1,
                  gamma=GAMMA, gae_lambda=LAM, seed=0, device="cpu", verbose=0)
  model.set_logger(configure(None, [""]))
  runner = runner.replace(train_state=runner.train_state.replace(params=torch_to_flax(model.policy.state_dict())))
  noise = np.random.default_rng(7).standard_normal((2, ROLL_STEPS, ROLL_ENVS, 4)).astype(np.float32)

  collect = jax.jit(ppo.make_collector(cfg, env))
  ours, r = [], runner
  for k in range(2):
    r, ro = collect(r, jnp.asarray(noise[k]))
    ours.append(jax.tree.map(np.asarray, ro))

  queue = iter(noise.reshape(-1, ROLL_ENVS, 4))

  def rsample(self, sample_shape=th.Size()):  # torch Normal.rsample = loc + eps * scale, eps given
    eps = th.as_tensor(next(queue))
    assert tuple(eps.shape) == tuple(self.loc.shape) and not sample_shape
    return self.loc + eps * self.scale

  rec = _BufferSnapshots()
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(th.distributions.Normal, "rsample", rsample)
    _, callback = model._setup_learn(2 * ROLL_ENVS * ROLL_STEPS, rec)
    callback.on_training_start(locals(), globals())
    for _ in range(2):
      assert model.collect_rollouts(model.env, callback, model.rollout_buffer, ROLL_STEPS)
  assert next(queue, None) is None, "SB3 drew exactly the noise fetchjax used"
  return types.SimpleNamespace(ours=ours, theirs=rec.rollouts, norm=norm, raw_rewards=np.stack(raw_env.raw_rewards))


def test_collected_rollout_matches_sb3(collected):
  """fetchjax's collected rollout buffer vs SB3's on identical weights, observations and noise: observations
  (normalised where configured), stored actions (the UNCLIPPED Gaussian samples), their log-probs, values,
  rewards with the truncation bootstrap r += gamma * V(final_obs), episode starts, and the advantages / returns
  of GAE with the last values. Float32 on both sides; the observations of both runs come from C MuJoCo envs
  driven by actions that agree to ~1e-7, so everything agrees to float32 noise. With normalize_obs the running
  statistics are float64 in SB3 and float32 here; near-constant components (blocked fingers) amplify that in the
  normalised inputs, hence 1e-4 there (as test_running_mean_std_matches_sb3_vecnormalize)."""
  record = Recorder(f"sb3 collect_rollouts ({'normalize_obs' if collected.norm else 'raw obs'})")
  tol = 1e-4 if collected.norm else 1e-5
  for k, (ours, theirs) in enumerate(zip(collected.ours, collected.theirs)):
    tr = ours.traj
    x_ref = np.asarray(flatten_obs(theirs["observations"]))  # [T, N, 16]
    record(f"rollout {k}: observations max abs", max_abs(tr.obs, x_ref), tol)
    record(f"rollout {k}: stored actions max abs", max_abs(tr.action, theirs["actions"]), 1e-5)
    assert np.abs(theirs["actions"]).max() > 1.0 and np.abs(tr.action).max() > 1.0, "unclipped actions stored"
    record(f"rollout {k}: stored log_probs max abs", max_abs(tr.log_prob, theirs["log_probs"]), 1e-4)
    record(f"rollout {k}: stored values max abs", max_abs(tr.value, theirs["values"]), tol)
    record(f"rollout {k}: rewards (incl. truncation bootstrap) max abs", max_abs(tr.reward, theirs["rewards"]), tol)
    # SB3 episode_starts[t] = done of the step before t; [0] = the previous rollout's last done (1 at the start)
    prev = np.ones(ROLL_ENVS) if k == 0 else collected.ours[k - 1].traj.done[-1]
    np.testing.assert_array_equal(theirs["episode_starts"], np.concatenate([prev[None], tr.done[:-1]]))
    np.testing.assert_array_equal(theirs["last_dones"], tr.done[-1])
    record(f"rollout {k}: bootstrap value V(last obs) max abs", max_abs(ours.last_value, theirs["last_values"]), tol)
    scale = max(1.0, np.abs(theirs["returns"]).max())
    record(f"rollout {k}: advantages max abs", max_abs(ours.advantages, theirs["advantages"]), tol * scale)
    record(f"rollout {k}: returns max abs", max_abs(ours.returns, theirs["returns"]), tol * scale)
  # what the rollouts contain: truncations inside a rollout and at its last step, each bootstrapped
  dones = np.concatenate([o.traj.done for o in collected.ours])  # [150, N]
  np.testing.assert_array_equal(np.nonzero(dones[:, 0])[0], [49, 99, 149])
  assert dones[[49, 99, 149]].all() and dones.sum() == 3 * ROLL_ENVS
  boot = np.concatenate([o.traj.reward for o in collected.ours]) - collected.raw_rewards  # SB3's env rewards
  record("reward - env reward where not truncated, max abs", np.abs(boot[dones == 0]).max(), 1e-6)
  record("smallest truncation bootstrap |gamma * V(final_obs)| (must not be negligible)",
         np.abs(boot[dones > 0]).min(), 1e-2, at_least=True)
