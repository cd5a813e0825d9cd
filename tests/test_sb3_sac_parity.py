"""SAC / TD3 parity against the real stable-baselines3 package (the `parity` extra: SB3 + CPU torch).

Skipped when SB3 / torch are not installed. An SB3 `SAC("MultiInputPolicy")` (and `TD3`) is built on the CPU
gymnasium-robotics FetchReachDense-v4; its freshly initialised torch weights are copied into fetchjax's networks
(`sac.make_learner` / `td3.make_learner`, the exact gradient step `make_runner` trains with). Both sides then see
the same batches (real FetchReachDense transitions; SB3's `replay_buffer.sample` is monkeypatched to return them)
and the same noise (SB3's `DiagGaussianDistribution.sample` and, for TD3, `Tensor.normal_` are monkeypatched to
return given standard-normal draws), and we compare:
  - forward passes (mean, clipped log_std, Q1/Q2) and SB3's squashed-Gaussian log-prob (incl. the
    `log(1 - tanh(u)^2 + 1e-6)` correction);
  - the losses SB3's real `SAC.train()` / `TD3.train()` logs (critic, actor, ent_coef, ent_coef_loss);
  - all parameters after 1 and after 3 gradient steps: actor, critics, target critics (Polyak), log alpha (and
    for TD3 the target actor, with policy_delay 2).
Adam's first steps move every weight by ~lr, so updates are compared relative to lr. Run with `-s` to see the
measured errors. float32 on both sides.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

sb3 = pytest.importorskip("stable_baselines3")
th = pytest.importorskip("torch")

import fetchjax  # noqa: E402,F401  (XLA flags before JAX initialises)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from stable_baselines3.common.distributions import DiagGaussianDistribution  # noqa: E402
from stable_baselines3.common.logger import configure  # noqa: E402
from stable_baselines3.common.type_aliases import DictReplayBufferSamples  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from measured import Recorder, max_abs, rel  # noqa: E402

from fetchjax.agents import her, offpolicy, sac, td3  # noqa: E402
from fetchjax.encoders import OBS_KEYS  # noqa: E402

ENV_ID = "FetchReachDense-v4"
B = 64            # batch size
LR = 3e-4
N_BATCHES = 3
record = Recorder("sb3-sac-parity")  # measured errors, printed with `pytest -s`


def _tree_max_abs(a, b):
  return max(jax.tree.leaves(jax.tree.map(max_abs, a, b)))


def _adam_update_errors(ref_after, ref_before, fj_after, fj_before, opt_states, lr):
  """Parameter updates of SB3 vs fetchjax, in units of lr: (max error where Adam is well conditioned, max error
  everywhere, number of ill-conditioned elements). Adam moves each weight by lr * m_hat / (sqrt(v_hat) + 1e-8):
  where sqrt(v_hat) is ~1e-8 (a gradient that is ~0, e.g. 1e-9, known only up to the float32 rounding of the
  backward pass's sums, ~1e-6 of the layer's largest gradient) the update is an arbitrary fraction of lr on
  BOTH sides, and stays in the weight. Well conditioned = sqrt(v_hat) >= 1e-6 (eps < 1% of the denominator)
  after EVERY step so far (`opt_states`: fetchjax's Adam state after each step)."""
  ok_trees = []
  for st in opt_states:
    adam = st[0]
    scale = 1.0 / (1.0 - 0.999 ** float(adam.count))
    ok_trees.append([np.sqrt(np.asarray(nu, np.float64) * scale) >= 1e-6 for nu in jax.tree.leaves(adam.nu)])
  errs, errs_ok, n_ill = [], [], 0
  leaves = [jax.tree.leaves(t) for t in (ref_after, ref_before, fj_after, fj_before)]
  for i, (ra, rb, fa, fb) in enumerate(zip(*leaves, strict=True)):
    e = np.abs((np.asarray(ra, np.float64) - rb) - (np.asarray(fa, np.float64) - fb)) / lr
    ok = np.logical_and.reduce([t[i] for t in ok_trees])
    errs.append(e.max())
    errs_ok.append(e[ok].max() if ok.any() else 0.0)
    n_ill += int((~ok).sum())
  return max(errs_ok), max(errs), n_ill


# ----------------------------------------------------------------------------------------------------------
# torch <-> flax
# ----------------------------------------------------------------------------------------------------------
def _dense(sd, prefix):
  return {"kernel": jnp.asarray(sd[f"{prefix}.weight"].numpy().T), "bias": jnp.asarray(sd[f"{prefix}.bias"].numpy())}


def _mlp(sd, prefix, n_layers):
  """SB3 create_mlp Sequential (Linear at even indices) -> fetchjax MLP dense_i."""
  return {f"dense_{i}": _dense(sd, f"{prefix}.{2 * i}") for i in range(n_layers)}


def sac_actor_params(sd):
  return {"params": {"latent_pi": _mlp(sd, "actor.latent_pi", 2), "mu": _dense(sd, "actor.mu"),
                     "log_std": _dense(sd, "actor.log_std")}}


def critic_params(sd, which="critic"):
  return {"params": {f"qf{i}": _mlp(sd, f"{which}.qf{i}", 3) for i in range(2)}}


def td3_actor_params(sd, which="actor"):
  return {"params": _mlp(sd, f"{which}.mu", 3)}


def _sd(model):
  return {k: v.detach().clone() for k, v in model.policy.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------
# data: real FetchReachDense transitions
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gym_env():
  from fetchjax.gymnasium_reference import gymnasium_make

  return lambda: gymnasium_make(ENV_ID)


@pytest.fixture(scope="module")
def batches(gym_env):
  """N_BATCHES batches of B real transitions (random actions, episodes restarted every 50 steps)."""
  env = gym_env()
  rng = np.random.default_rng(0)
  obs, _ = env.reset(seed=0)
  rows = []
  for i in range(N_BATCHES * B):
    a = rng.uniform(-1, 1, 4).astype(np.float32)
    nxt, r, term, trunc, _ = env.step(a)
    rows.append((obs, a, np.float32(r), nxt))
    obs = nxt
    if term or trunc:
      obs, _ = env.reset(seed=i + 1)
  env.close()
  order = rng.permutation(len(rows))  # a replay batch is not a trajectory
  out = []
  for b in range(N_BATCHES):
    sel = [rows[j] for j in order[b * B:(b + 1) * B]]
    o = {k: np.stack([s[0][k] for s in sel]).astype(np.float32) for k in OBS_KEYS}
    n = {k: np.stack([s[3][k] for s in sel]).astype(np.float32) for k in OBS_KEYS}
    out.append(types.SimpleNamespace(obs=o, next_obs=n, action=np.stack([s[1] for s in sel]),
                                     reward=np.array([s[2] for s in sel], np.float32)))
  return out


def _torch_samples(b):
  t = lambda d: {k: th.as_tensor(v) for k, v in d.items()}  # noqa: E731
  return DictReplayBufferSamples(observations=t(b.obs), actions=th.as_tensor(b.action),
                                 next_observations=t(b.next_obs), dones=th.zeros(B, 1),
                                 rewards=th.as_tensor(b.reward)[:, None])


def _jax_batch(b):
  return offpolicy.Batch({k: jnp.asarray(v) for k, v in b.obs.items()}, jnp.asarray(b.action),
                         jnp.asarray(b.reward), {k: jnp.asarray(v) for k, v in b.next_obs.items()}, jnp.zeros(B))


def _noise(n, seed):
  g = np.random.default_rng(seed)
  return [g.standard_normal((B, 4)).astype(np.float32) for _ in range(n)]


# ----------------------------------------------------------------------------------------------------------
# SAC
# ----------------------------------------------------------------------------------------------------------
def _sb3_sac(gym_env, ent_coef):
  env = DummyVecEnv([gym_env])
  assert list(env.observation_space.spaces) == list(OBS_KEYS), "CombinedExtractor order != flatten_obs"
  model = sb3.SAC("MultiInputPolicy", env, learning_rate=LR, batch_size=B, gamma=0.95, tau=0.005,
                  ent_coef=ent_coef, learning_starts=10**9, seed=0, device="cpu", verbose=0)
  model.set_logger(configure(None, [""]))
  return model


def _sac_train(model, monkeypatch, bs, noises):
  """SB3 `SAC.train(gradient_steps=len(bs))` on the given batches; per step the actor's Gaussian draws are
  noises[2i] (actions on s) then noises[2i+1] (on s'), as `train()` calls `action_log_prob` in that order."""
  it_b, it_n = iter(bs), iter(noises)
  monkeypatch.setattr(model.replay_buffer, "sample", lambda batch_size, env=None: _torch_samples(next(it_b)))

  def sample(self):
    return self.distribution.loc + self.distribution.scale * th.as_tensor(next(it_n))

  monkeypatch.setattr(DiagGaussianDistribution, "sample", sample)
  model.train(gradient_steps=len(bs), batch_size=B)
  monkeypatch.undo()
  return dict(model.logger.name_to_value)


def _sac_fetchjax(model, ent_coef):
  cfg = sac.SACConfig(learning_rate=LR, batch_size=B, gamma=0.95, tau=0.005, ent_coef=ent_coef)
  learner = sac.make_learner(cfg, her.state_spec(10), 4)
  sd = _sd(model)
  ts = learner.init(jax.random.PRNGKey(0))
  a, c, t = sac_actor_params(sd), critic_params(sd), critic_params(sd, "critic_target")
  assert jax.tree.structure(a) == jax.tree.structure(ts.actor_params)
  assert jax.tree.map(jnp.shape, a) == jax.tree.map(jnp.shape, ts.actor_params)
  assert jax.tree.map(jnp.shape, c) == jax.tree.map(jnp.shape, ts.critic_params)
  log_alpha = jnp.asarray(model.log_ent_coef.detach().numpy()) if model.log_ent_coef is not None else ts.log_ent_coef
  ts = ts.replace(actor_params=a, critic_params=c, target_critic_params=t, log_ent_coef=log_alpha,
                  actor_opt_state=learner.actor_tx.init(a), critic_opt_state=learner.critic_tx.init(c),
                  ent_opt_state=learner.ent_tx.init(log_alpha))
  return learner, ts, sd


def test_sac_param_layout_and_init(gym_env):
  """Every SB3 parameter maps onto fetchjax's tree; fetchjax's own init has PyTorch's Linear ranges."""
  model = _sb3_sac(gym_env, "auto")
  learner, ts, sd = _sac_fetchjax(model, "auto")
  used = {k for k in sd}
  mapped = ({f"actor.latent_pi.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
            | {f"actor.{h}.{w}" for h in ("mu", "log_std") for w in ("weight", "bias")}
            | {f"{c}.qf{q}.{i}.{w}" for c in ("critic", "critic_target") for q in (0, 1) for i in (0, 2, 4)
               for w in ("weight", "bias")})
  assert used == mapped
  own = learner.init(jax.random.PRNGKey(1))

  def layers(tree):  # every {"kernel", "bias"} dict
    if "kernel" in tree:
      return [tree]
    return [layer for v in tree.values() for layer in layers(v)]

  for tree_sb3, tree_fj in ((sac_actor_params(sd), own.actor_params), (critic_params(sd), own.critic_params)):
    for l_sb3, l_fj in zip(layers(tree_sb3), layers(tree_fj), strict=True):
      bound = 1 / np.sqrt(l_sb3["kernel"].shape[0])  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), weights and biases
      for x_sb3, x_fj in ((l_sb3["kernel"], l_fj["kernel"]), (l_sb3["bias"], l_fj["bias"])):
        assert x_sb3.shape == x_fj.shape
        for x in (x_sb3, x_fj):
          assert float(jnp.max(jnp.abs(x))) <= bound
          if x.size >= 256:  # the range is filled, mean ~0 and std bound/sqrt(3), on both sides
            assert float(jnp.max(jnp.abs(x))) >= 0.95 * bound
            assert abs(float(jnp.std(x)) - bound / np.sqrt(3)) < 0.1 * bound
  # target critics start as copies of the critics, as SB3 (critic_target.load_state_dict(critic.state_dict()))
  assert _tree_max_abs(own.critic_params, own.target_critic_params) == 0.0


def test_sac_forward_and_log_prob(gym_env, batches):
  model = _sb3_sac(gym_env, "auto")
  learner, ts, _ = _sac_fetchjax(model, "auto")
  b = batches[0]
  with th.no_grad():
    mean_t, log_std_t, _ = model.actor.get_action_dist_params(_torch_samples(b).observations)
    q_t = model.critic(_torch_samples(b).observations, th.as_tensor(b.action))
  jb = _jax_batch(b)
  mean, log_std = learner.actor.apply(ts.actor_params, jb.obs)
  q = learner.critic.apply(ts.critic_params, jb.obs, jb.action)
  record("sac forward mean max abs", max_abs(mean, mean_t.numpy()), 1e-6)
  record("sac forward log_std max abs", max_abs(log_std, log_std_t.numpy()), 1e-6)
  record("sac forward Q max abs", max(max_abs(q[i], q_t[i].numpy().ravel()) for i in range(2)), 1e-6)

  # Squashed-Gaussian log-prob on the same pre-squash samples u (SB3's `gaussian_actions`): the policy's own
  # (mean, log_std) and noise, and a wide synthetic range that reaches deep tanh saturation. Also against the
  # formula in float64: Normal(mean, std).log_prob(u) - sum log(1 - tanh(u)^2 + 1e-6).
  rng = np.random.default_rng(1)
  n = 50_000
  cases = {"policy": (mean_t.numpy(), log_std_t.numpy(), _noise(1, 2)[0]),
           "synthetic": (rng.normal(0, 1.5, (n, 4)).astype(np.float32), rng.uniform(-5, 1, (n, 4)).astype(np.float32),
                         rng.standard_normal((n, 4)).astype(np.float32))}
  for name, (m, ls, eps) in cases.items():
    mt, lst = th.as_tensor(m), th.as_tensor(ls)
    u_t = mt + th.exp(lst) * th.as_tensor(eps)
    dist = model.actor.action_dist.proba_distribution(mt, lst)
    want = dist.log_prob(th.tanh(u_t), u_t).numpy().astype(np.float64)
    u = u_t.numpy()
    lp = np.asarray(sac.squashed_log_prob(jnp.asarray(u), jnp.asarray(m), jnp.asarray(ls)), np.float64)
    u64, m64, s64 = u.astype(np.float64), m.astype(np.float64), np.exp(ls.astype(np.float64))
    exact = (np.sum(-0.5 * ((u64 - m64) / s64) ** 2 - np.log(s64) - 0.5 * np.log(2 * np.pi), -1)
             - np.sum(np.log(1 - np.tanh(u64) ** 2 + 1e-6), -1))
    umax = np.abs(u).max(-1)
    record(f"sac squashed log_prob ({name}) vs float64 formula max abs", np.abs(lp - exact).max(), 1e-5)
    if name == "policy":
      assert umax.max() < 3
      record("sac squashed log_prob (policy) vs SB3 max abs", np.abs(lp - want).max(), 1e-5)
      a, lp2 = sac.sample_squashed(jnp.asarray(m), jnp.asarray(ls), jnp.asarray(eps))
      record("sac sample_squashed action vs torch tanh max abs", max_abs(a, th.tanh(u_t).numpy()), 1e-6)
      record("sac sample_squashed log_prob vs SB3 max abs", max_abs(lp2, want), 1e-5)
    else:
      sat = umax >= 2
      record("sac squashed log_prob (synthetic, |u| < 2) vs SB3 max abs", np.abs(lp - want)[~sat].max(), 1e-5)
      # Beyond, SB3's float32 `1 - tanh(u)^2` cancels (error up to ~0.06 nats at |u| > 6); fetchjax evaluates the
      # same function as sech^2 and stays within 1e-5 of float64, so the gap is SB3's own rounding error.
      gap = np.abs(lp - want) - np.abs(want - exact)
      record("sac squashed log_prob (synthetic, |u| >= 2) |fj - SB3| - |SB3 - float64| max", gap[sat].max(), 1e-5)
      print(f"[sb3-sac-parity] (info) SB3 float32 log_prob vs float64 at |u| >= 2: max abs "
            f"{np.abs(want - exact)[sat].max():.3g}")


def _adam_from_torch(tx, params, opt, module, prefix, to_tree):
  """torch.optim.Adam state of `module`'s parameters -> optax.adam state with the tree layout of `params`
  (exp_avg -> mu, exp_avg_sq -> nu, step -> count); a fresh state before the optimiser's first step."""
  state = tx.init(params)
  named = dict(module.named_parameters())
  if not named or named[next(iter(named))] not in opt.state:
    return state
  st = {f"{prefix}.{n}": opt.state[p] for n, p in named.items()}
  counts = {int(v["step"]) for v in st.values()}
  assert len(counts) == 1
  mu = to_tree({k: v["exp_avg"] for k, v in st.items()})
  nu = to_tree({k: v["exp_avg_sq"] for k, v in st.items()})
  return (state[0]._replace(count=jnp.asarray(counts.pop(), jnp.int32), mu=mu, nu=nu),) + tuple(state[1:])


def _sac_state_from_sb3(model, learner, ts):
  """The full SB3 SAC training state (weights, target critics, log alpha, the three Adam states) as fetchjax's."""
  sd = _sd(model)
  a, c = sac_actor_params(sd), critic_params(sd)
  ts = ts.replace(actor_params=a, critic_params=c, target_critic_params=critic_params(sd, "critic_target"),
                  actor_opt_state=_adam_from_torch(learner.actor_tx, a, model.actor.optimizer, model.actor, "actor",
                                                   sac_actor_params),
                  critic_opt_state=_adam_from_torch(learner.critic_tx, c, model.critic.optimizer, model.critic,
                                                    "critic", critic_params),
                  n_updates=jnp.asarray(model._n_updates, jnp.int32))
  if model.log_ent_coef is not None:
    la = jnp.asarray(model.log_ent_coef.detach().numpy())
    ent_state = learner.ent_tx.init(la)
    if model.log_ent_coef in model.ent_coef_optimizer.state:
      st = model.ent_coef_optimizer.state[model.log_ent_coef]
      ent_state = (ent_state[0]._replace(count=jnp.asarray(int(st["step"]), jnp.int32),
                                         mu=jnp.asarray(st["exp_avg"].numpy()),
                                         nu=jnp.asarray(st["exp_avg_sq"].numpy())),) + tuple(ent_state[1:])
    ts = ts.replace(log_ent_coef=la, ent_opt_state=ent_state)
  return ts


def _grads(module_params, to_tree, prefix):
  """The .grad SB3 leaves on a module's parameters after `train()`, as a fetchjax tree."""
  return to_tree({f"{prefix}.{n}": p.grad for n, p in module_params})


@pytest.mark.parametrize("ent_coef", ["auto", 0.05])
def test_sac_train_matches_sb3(gym_env, batches, monkeypatch, ent_coef):
  """SB3's real `SAC.train(gradient_steps=1)`, 3 times on 3 batches with 3 noise pairs, vs
  `learner.update_with_noise`. Each step starts fetchjax from SB3's full state before that step (weights,
  targets, log alpha, Adam moments): logged losses, the actor gradient (SB3's .grad), all parameter updates,
  target critics and log alpha must agree. A free-running fetchjax copy (never reset to SB3's state) is
  compared after the 3 steps as well."""
  tag = f"[ent_coef={ent_coef}]"
  noises = _noise(2 * N_BATCHES, 3)
  model = _sb3_sac(gym_env, ent_coef)
  learner, ts_free, sd0 = _sac_fetchjax(model, ent_coef)
  step = jax.jit(learner.update_with_noise)
  free_states = []
  for i in range(N_BATCHES):
    ts = _sac_state_from_sb3(model, learner, ts_free)
    sd_before = _sd(model)
    n_pi, n_next = jnp.asarray(noises[2 * i]), jnp.asarray(noises[2 * i + 1])
    logs = _sac_train(model, monkeypatch, [batches[i]], noises[2 * i:2 * i + 2])
    sd = _sd(model)
    jb = _jax_batch(batches[i])
    new, info = step(ts, jb, n_pi, n_next, 0)
    ts_free, _ = step(ts_free, jb, n_pi, n_next, 0)
    free_states.append(ts_free)
    k = f"step {i + 1} {tag}"
    record(f"sac train() critic_loss rel, {k}", rel(info["critic_loss"], logs["train/critic_loss"]), 1e-5)
    record(f"sac train() actor_loss rel, {k}", rel(info["actor_loss"], logs["train/actor_loss"]), 1e-5)
    record(f"sac train() ent_coef rel, {k}", rel(info["ent_coef"], logs["train/ent_coef"]), 1e-6)
    if ent_coef == "auto":
      record(f"sac train() ent_coef_loss abs, {k}", abs(float(info["ent_coef_loss"]) - logs["train/ent_coef_loss"]),
              1e-5 * max(1.0, abs(logs["train/ent_coef_loss"])))
      record(f"sac log_alpha after the step abs, {k}", max_abs(new.log_ent_coef, model.log_ent_coef.detach().numpy()),
              1e-7)
    else:
      assert "train/ent_coef_loss" not in logs and np.isnan(float(info["ent_coef_loss"]))

    # actor gradient: SB3's actor loss uses the UPDATED critics and this step's actions; .grad is left in place
    def actor_loss(actor_params):
      mean, log_std = learner.actor.apply(actor_params, jb.obs)
      a, lp = sac.sample_squashed(mean, log_std, n_pi)
      q1, q2 = learner.critic.apply(new.critic_params, jb.obs, a)
      return jnp.mean(info["ent_coef"] * lp - jnp.minimum(q1, q2))

    g_ref = _grads(model.actor.named_parameters(), sac_actor_params, "actor")
    g_fj = jax.grad(actor_loss)(ts.actor_params)
    record(f"sac actor gradient worst-leaf rel, {k}", max(jax.tree.leaves(jax.tree.map(rel, g_ref, g_fj))), 1e-5)
    for name, get_sb3, get_fj, opt in (("actor", sac_actor_params, lambda t: t.actor_params, new.actor_opt_state),
                                       ("critic", critic_params, lambda t: t.critic_params, new.critic_opt_state)):
      ok, every, n_ill = _adam_update_errors(get_sb3(sd), get_sb3(sd_before), get_fj(new), get_fj(ts), [opt], LR)
      record(f"sac {name} update max abs / lr, {k}", ok, 1e-3)
      record(f"sac {name} update max abs / lr incl. {n_ill} ill-conditioned, {k}", every, 0.25)
    record(f"sac target critics abs, {k}", _tree_max_abs(critic_params(sd, "critic_target"), new.target_critic_params),
            1e-7 + 0.005 * _tree_max_abs(critic_params(sd), new.critic_params))
  # free-running: 3 fetchjax steps from the same initial weights, never re-synchronised
  for name, get_sb3, get_fj, get_opt in (
      ("actor", sac_actor_params, lambda t: t.actor_params, lambda t: t.actor_opt_state),
      ("critic", critic_params, lambda t: t.critic_params, lambda t: t.critic_opt_state)):
    ok, every, n_ill = _adam_update_errors(get_sb3(sd), get_sb3(sd0), get_fj(ts_free), get_sb3(sd0),
                                           [get_opt(t) for t in free_states], LR)
    record(f"sac free-running {name} after 3 steps max abs / lr {tag}", ok, 5e-3)
    print(f"[sb3-sac-parity] (info) sac free-running {name} after 3 steps incl. {n_ill} ill-conditioned: "
          f"{every:.3g} lr")


# ----------------------------------------------------------------------------------------------------------
# TD3
# ----------------------------------------------------------------------------------------------------------
TD3_LR = 1e-3


def _td3_state_from_sb3(model, learner, ts):
  sd = _sd(model)
  a, c = td3_actor_params(sd), critic_params(sd)
  return ts.replace(actor_params=a, critic_params=c, target_actor_params=td3_actor_params(sd, "actor_target"),
                    target_critic_params=critic_params(sd, "critic_target"),
                    actor_opt_state=_adam_from_torch(learner.actor_tx, a, model.actor.optimizer, model.actor,
                                                     "actor", td3_actor_params),
                    critic_opt_state=_adam_from_torch(learner.critic_tx, c, model.critic.optimizer, model.critic,
                                                      "critic", critic_params),
                    n_updates=jnp.asarray(model._n_updates, jnp.int32))


def test_td3_train_matches_sb3(gym_env, batches, monkeypatch):
  """SB3's real `TD3.train(gradient_steps=1)` x 3 (critic every step; actor and both targets when n_updates hits
  policy_delay = 2) vs `td3.make_learner(...).update_with_noise`, each step from SB3's full state."""
  env = DummyVecEnv([gym_env])
  model = sb3.TD3("MultiInputPolicy", env, learning_rate=TD3_LR, batch_size=B, gamma=0.95, learning_starts=10**9,
                  seed=0, device="cpu", verbose=0)
  model.set_logger(configure(None, [""]))
  cfg = td3.TD3Config(learning_rate=TD3_LR, batch_size=B, gamma=0.95)
  learner = td3.make_learner(cfg, her.state_spec(10), 4)
  sd0 = _sd(model)
  assert {k for k in sd0} == ({f"{a}.mu.{i}.{w}" for a in ("actor", "actor_target") for i in (0, 2, 4)
                               for w in ("weight", "bias")}
                              | {f"{c}.qf{q}.{i}.{w}" for c in ("critic", "critic_target") for q in (0, 1)
                                 for i in (0, 2, 4) for w in ("weight", "bias")})
  ts0 = learner.init(jax.random.PRNGKey(0))
  assert jax.tree.map(jnp.shape, td3_actor_params(sd0)) == jax.tree.map(jnp.shape, ts0.actor_params)
  assert jax.tree.map(jnp.shape, critic_params(sd0)) == jax.tree.map(jnp.shape, ts0.critic_params)
  assert _tree_max_abs(ts0.actor_params, ts0.target_actor_params) == 0.0
  b = batches[0]
  with th.no_grad():
    act_t = model.actor(_torch_samples(b).observations).numpy()
  record("td3 forward action max abs", max_abs(learner.actor.apply(td3_actor_params(sd0), _jax_batch(b).obs), act_t),
          1e-6)

  noises = _noise(N_BATCHES, 5)
  it_b, it_n = iter(batches), iter(noises)
  monkeypatch.setattr(model.replay_buffer, "sample", lambda batch_size, env=None: _torch_samples(next(it_b)))
  real_normal = th.Tensor.normal_

  def normal_(self, mean=0.0, std=1.0, **kw):  # `replay_data.actions.clone().data.normal_(0, 0.2)`
    return self.copy_(mean + std * th.as_tensor(next(it_n)))

  step = jax.jit(learner.update_with_noise)
  for i in range(N_BATCHES):
    ts = _td3_state_from_sb3(model, learner, ts0)
    sd_before = _sd(model)
    monkeypatch.setattr(th.Tensor, "normal_", normal_)
    model.train(gradient_steps=1, batch_size=B)
    monkeypatch.setattr(th.Tensor, "normal_", real_normal)
    logs = dict(model.logger.name_to_value)
    model.logger.name_to_value.clear()
    sd = _sd(model)
    jb = _jax_batch(batches[i])
    new, info = step(ts, jb, jnp.asarray(noises[i]), 0)
    k = f"step {i + 1}"
    assert int(new.n_updates) == model._n_updates == i + 1
    record(f"td3 critic_loss rel, {k}", rel(info["critic_loss"], logs["train/critic_loss"]), 1e-5)
    delayed = (i + 1) % 2 == 0
    assert float(info["actor_updated"]) == float(delayed)
    if delayed:
      record(f"td3 actor_loss rel, {k}", rel(info["actor_loss"], logs["train/actor_loss"]), 1e-5)

      def actor_loss(actor_params):
        q1, _ = learner.critic.apply(new.critic_params, jb.obs, learner.actor.apply(actor_params, jb.obs))
        return -jnp.mean(q1)

      g_ref = _grads(model.actor.named_parameters(), td3_actor_params, "actor")
      record(f"td3 actor gradient worst-leaf rel, {k}",
              max(jax.tree.leaves(jax.tree.map(rel, g_ref, jax.grad(actor_loss)(ts.actor_params)))), 1e-5)
      ok, every, n_ill = _adam_update_errors(td3_actor_params(sd), td3_actor_params(sd_before), new.actor_params,
                                             ts.actor_params, [new.actor_opt_state], TD3_LR)
      record(f"td3 actor update max abs / lr, {k}", ok, 1e-3)
      record(f"td3 actor update max abs / lr incl. {n_ill} ill-conditioned, {k}", every, 0.25)
    else:
      assert "train/actor_loss" not in logs
      record(f"td3 actor unchanged, {k}", _tree_max_abs(td3_actor_params(sd), new.actor_params), 0.0)
    ok, every, n_ill = _adam_update_errors(critic_params(sd), critic_params(sd_before), new.critic_params,
                                           ts.critic_params, [new.critic_opt_state], TD3_LR)
    record(f"td3 critic update max abs / lr, {k}", ok, 1e-3)
    record(f"td3 critic update max abs / lr incl. {n_ill} ill-conditioned, {k}", every, 0.25)
    # targets = 0.995 old + 0.005 online: rounding plus tau times the online weights' difference
    record(f"td3 target critic abs, {k}", _tree_max_abs(critic_params(sd, "critic_target"), new.target_critic_params),
            1e-7 + 0.005 * _tree_max_abs(critic_params(sd), new.critic_params))
    record(f"td3 target actor abs, {k}", _tree_max_abs(td3_actor_params(sd, "actor_target"), new.target_actor_params),
            1e-7 + 0.005 * _tree_max_abs(td3_actor_params(sd), new.actor_params))
