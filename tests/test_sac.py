"""SAC / TD3 (fetchjax.agents.sac, td3): configs, networks and init, the squashed-Gaussian log-prob, the update
(finite losses, Polyak, alpha), a short SAC+HER learning run on sparse FetchReach-v4 and a TD3 smoke run. The
loop they share is tested in test_offpolicy.py.
Weight-level parity with SB3's SAC.train() / TD3.train() is in test_sb3_sac_parity.py."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

import fetchjax  # noqa: F401
import jax
import jax.numpy as jnp

import fetchjax.envs as envs
from fetchjax import agents
from fetchjax.agents import configs, her, offpolicy, sac, td3

SAC, TD3 = agents.get("sac"), agents.get("td3")

SMALL = dict(buffer_size=2_000, batch_size=32, hidden_sizes=(16, 16))  # on reach2


@pytest.fixture(scope="module")
def reach2():
  return envs.make("FetchReach-v4", num_envs=2, backend="cpu")


SPEC = her.state_spec(10)  # FetchReach's goal dict: 16 values flattened


def _obs(key, n):
  """A random Reach goal dict of n envs."""
  ks = jax.random.split(key, 3)
  return {k: jax.random.normal(kk, (n, s.shape[0])) for kk, (k, s) in zip(ks, sorted(SPEC.items()))}


def _batch(key, n=64):
  k = jax.random.split(key, 4)
  return offpolicy.Batch(_obs(k[0], n), jax.random.uniform(k[1], (n, 4), minval=-1, maxval=1),
                         -(jax.random.uniform(k[2], (n,)) > 0.3).astype(jnp.float32), _obs(k[3], n), jnp.zeros(n))


# ----------------------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------------------
def test_presets_and_config():
  book = SAC.preset("book")
  assert SAC.env_preset("book") == envs.EnvConfig("FetchReachDense-v4", num_envs=8)
  assert (book.buffer_size, book.batch_size, book.learning_starts) == (1_000_000, 256, 10_000)
  assert (book.learning_rate, book.gamma, book.tau, book.ent_coef, book.train_freq, book.gradient_steps) == (
      3e-4, 0.99, 0.005, "auto", 1, 1)
  assert book.hidden_sizes == (256, 256) and not book.her and book.auto_ent_coef
  assert book.rollout_size(8) == 400 and book.num_updates(8) == 2500
  assert SAC.preset("book", total_timesteps=500_000).num_updates(8) == 1250
  her_cfg = SAC.preset("book_her")
  assert (SAC.env_preset("book_her").env_id, her_cfg.gamma, her_cfg.learning_starts, her_cfg.her, her_cfg.n_sampled_goal,
          her_cfg.goal_selection_strategy, her_cfg.ent_coef) == ("FetchReach-v4", 0.95, 1000, True, 4, "future", "auto")
  push = SAC.preset("book_her_push")
  assert (SAC.env_preset("book_her_push").env_id, push.ent_coef, push.gamma) == ("FetchPush-v4", 0.05, 0.95)
  assert not push.auto_ent_coef
  assert SAC.env_preset("gpu").backend == "auto" and SAC.preset("gpu").gradient_steps > 1
  assert SAC.env_preset("gpu").num_envs == TD3.env_preset("gpu").num_envs == 512
  assert set(sac.ENV_PRESETS) == set(sac.PRESETS) and set(td3.ENV_PRESETS) == set(td3.PRESETS)
  # meta.json round trip, as the CLI stores and reloads configs
  for name in sac.PRESETS:
    cfg = sac.PRESETS[name]
    assert SAC.config_from_dict(json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
  for name in td3.PRESETS:
    cfg = td3.PRESETS[name]
    assert TD3.config_from_dict(json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
  t = TD3.preset("book")
  assert (t.hidden_sizes, t.learning_rate, t.policy_delay, t.target_policy_noise, t.target_noise_clip,
          t.action_noise_sigma) == ((400, 300), 1e-3, 2, 0.2, 0.5, 0.0)
  with pytest.raises(ValueError, match="unknown SAC preset"):
    SAC.preset("nope")
  with pytest.raises(ValueError, match="unknown SACConfig field"):
    SAC.preset("book", n_steps=3)
  for bad in (dict(ent_coef="autox"), dict(ent_coef=-1.0), dict(ent_coef="auto_0"), dict(batch_size=0),
              dict(goal_selection_strategy="random"), dict(hidden_sizes=("[32", "32]")), dict(num_envs=8)):
    with pytest.raises(ValueError):
      SAC.preset("book", **bad)
  with pytest.raises(ValueError, match="buffer_size 100 must hold at least one episode per env"):
    SAC.preset("book", buffer_size=100).check_env(8)
  assert configs.parse_ent_coef("auto_0.1") == (True, 0.1) and configs.parse_ent_coef("0.2") == (False, 0.2)


# ----------------------------------------------------------------------------------------------------------
# networks, log-prob, update
# ----------------------------------------------------------------------------------------------------------
def test_networks_shapes_and_torch_init():
  cfg = sac.SACConfig()
  learner = sac.make_learner(cfg, SPEC, 4)
  ts = jax.jit(learner.init)(jax.random.PRNGKey(0))
  p = ts.actor_params["params"]
  assert p["latent_pi"]["dense_0"]["kernel"].shape == (16, 256)
  assert p["latent_pi"]["dense_1"]["kernel"].shape == (256, 256)
  assert p["mu"]["kernel"].shape == (256, 4) and p["log_std"]["kernel"].shape == (256, 4)
  q = ts.critic_params["params"]
  assert set(q) == {"qf0", "qf1"} and q["qf0"]["dense_0"]["kernel"].shape == (20, 256)
  assert q["qf1"]["dense_2"]["kernel"].shape == (256, 1)
  # PyTorch nn.Linear default init: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  k = np.asarray(p["latent_pi"]["dense_1"]["kernel"])
  assert np.abs(k).max() <= 1 / 16 and np.abs(k).max() > 0.99 / 16 and abs(k.std() - 1 / 16 / math.sqrt(3)) < 1e-3
  b = np.asarray(q["qf0"]["dense_0"]["bias"])
  assert np.abs(b).max() <= 1 / math.sqrt(20) and np.abs(b).max() > 0.9 / math.sqrt(20)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), ts.critic_params, ts.target_critic_params))
  assert float(ts.log_ent_coef[0]) == 0.0  # alpha = 1
  zeros = offpolicy.obs_zeros(SPEC, 5)
  mean, log_std = jax.jit(learner.actor.apply)(ts.actor_params, zeros)
  q1, q2 = jax.jit(learner.critic.apply)(ts.critic_params, zeros, jnp.zeros((5, 4)))
  assert mean.shape == log_std.shape == (5, 4) and q1.shape == q2.shape == (5,)
  # log_std head clipped to [-20, 2]
  big = jax.tree.map(lambda x: x * 1e3, ts.actor_params)
  _, ls = jax.jit(learner.actor.apply)(big, _obs(jax.random.PRNGKey(1), 64))
  assert float(ls.max()) == 2.0 and float(ls.min()) == -20.0
  t = jax.jit(td3.make_learner(td3.TD3Config(), SPEC, 4).init)(jax.random.PRNGKey(0))
  assert t.actor_params["params"]["dense_0"]["kernel"].shape == (16, 400)
  assert t.actor_params["params"]["dense_2"]["kernel"].shape == (300, 4)
  assert t.critic_params["params"]["qf0"]["dense_1"]["kernel"].shape == (400, 300)


def test_squashed_log_prob_formula_and_deterministic_action():
  rng = np.random.default_rng(0)
  mean = rng.normal(0, 1, (1000, 4)).astype(np.float32)
  log_std = rng.uniform(-3, 1, (1000, 4)).astype(np.float32)
  eps = rng.standard_normal((1000, 4)).astype(np.float32)
  a, lp = sac.sample_squashed(jnp.asarray(mean), jnp.asarray(log_std), jnp.asarray(eps))
  m, s, e = (x.astype(np.float64) for x in (mean, log_std, eps))
  u = m + np.exp(s) * e
  gauss = np.sum(-0.5 * ((u - m) / np.exp(s)) ** 2 - s - 0.5 * np.log(2 * np.pi), -1)
  want = gauss - np.sum(np.log(1 - np.tanh(u) ** 2 + 1e-6), -1)
  np.testing.assert_allclose(np.asarray(a), np.tanh(u), atol=1e-6)
  np.testing.assert_allclose(np.asarray(lp), want, atol=2e-5)
  # saturated |u|: the correction bottoms out at log(1e-6) per dimension, never -inf
  big = sac.squashed_log_prob(jnp.full((1, 4), 60.0), jnp.zeros((1, 4)), jnp.zeros((1, 4)))
  assert np.isfinite(float(big[0]))
  np.testing.assert_allclose(float(sac.log1m_tanh_sq(jnp.asarray(60.0))), math.log(1e-6), rtol=1e-6)
  # deterministic action = tanh(mean); sampled actions stay in (-1, 1)
  cfg = sac.SACConfig(hidden_sizes=(32, 32))
  learner = sac.make_learner(cfg, SPEC, 4)
  ts = learner.init(jax.random.PRNGKey(3))
  obs = {"achieved_goal": jnp.ones((7, 3)), "desired_goal": jnp.zeros((7, 3)), "observation": jnp.ones((7, 10))}
  mu, _ = learner.actor.apply(ts.actor_params, obs)
  act = sac.make_act(cfg)
  pol = offpolicy.policy_of(cfg, offpolicy.RunnerState(ts, None, None, None))
  np.testing.assert_array_equal(np.asarray(act(pol, obs)), np.asarray(jnp.tanh(mu)))
  sampled = np.asarray(act(pol, obs, jax.random.PRNGKey(0)))
  assert np.all(np.abs(sampled) <= 1) and not np.allclose(sampled, np.asarray(jnp.tanh(mu)))
  assert offpolicy.policy_of(cfg, {"train_state": {"actor_params": 1}}) == {"actor_params": 1}


@pytest.mark.parametrize("ent_coef", ["auto", 0.1])
def test_update_losses_alpha_and_polyak(ent_coef):
  cfg = sac.SACConfig(hidden_sizes=(32, 32), ent_coef=ent_coef, tau=0.005, target_update_interval=2)
  learner = sac.make_learner(cfg, SPEC, 4)
  ts = learner.init(jax.random.PRNGKey(0))
  # move the targets away from the critics so that the Polyak average is visible
  ts = ts.replace(target_critic_params=jax.tree.map(lambda x: x + 0.1, ts.target_critic_params))
  batch = _batch(jax.random.PRNGKey(1))
  upd = jax.jit(learner.update)
  new, info = upd(ts, batch, jax.random.PRNGKey(2), 0)
  for k in ("critic_loss", "actor_loss", "ent_coef", "q1_mean", "q2_mean", "q_min_mean", "log_prob_mean"):
    assert np.isfinite(float(info[k])), k
  # the replay/q*_mean diagnostics are the current critics on the sampled (s, a), before the critic step
  q1, q2 = learner.critic.apply(ts.critic_params, batch.obs, batch.action)
  np.testing.assert_allclose([float(info[k]) for k in ("q1_mean", "q2_mean", "q_min_mean")],
                             [float(q1.mean()), float(q2.mean()), float(jnp.minimum(q1, q2).mean())], rtol=1e-5)
  assert float(jnp.minimum(q1, q2).mean()) < min(float(q1.mean()), float(q2.mean())) - 1e-4  # min per sample
  assert int(new.n_updates) == 1
  # Polyak: target' = (1 - tau) target + tau critic' (with the critic AFTER its step), every 2nd gradient step
  want = jax.tree.map(lambda t, c: 0.995 * t + 0.005 * c, ts.target_critic_params, new.critic_params)
  err = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), want,
                                         new.target_critic_params)))
  assert err < 1e-7
  skipped, _ = upd(ts, batch, jax.random.PRNGKey(2), 1)  # grad_step 1 % 2 != 0: no target update
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), skipped.target_critic_params,
                                   ts.target_critic_params))
  assert all(not jnp.allclose(a, b) for a, b in zip(jax.tree.leaves(new.actor_params),
                                                    jax.tree.leaves(ts.actor_params)))
  if ent_coef == "auto":
    assert float(info["ent_coef"]) == 1.0  # alpha from BEFORE the step
    # Adam's first step moves log alpha by lr against the sign of the loss gradient -mean(log_pi + target)
    grad = -(float(info["log_prob_mean"]) - 4.0)
    assert float(new.log_ent_coef[0]) == pytest.approx(-cfg.learning_rate * np.sign(grad), rel=1e-3)
    loss = sac.ent_coef_loss_fn(jnp.zeros(1), jnp.full((8,), -2.0), -4.0)  # log pi + target < 0 -> alpha down
    assert float(jax.grad(sac.ent_coef_loss_fn)(jnp.zeros(1), jnp.full((8,), -2.0), -4.0)[0]) > 0 and float(loss) == 0
  else:
    assert float(info["ent_coef"]) == pytest.approx(0.1) and np.isnan(float(info["ent_coef_loss"]))
    assert float(new.log_ent_coef[0]) == float(ts.log_ent_coef[0])
  # the critic loss is SB3's 0.5 * sum of the two MSEs
  qs = (jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0]))
  assert float(sac.critic_loss_fn(qs, jnp.array([1.0, 1.0]))) == pytest.approx(0.5 * (0.5 + 5.0))
  assert float(td3.critic_loss_fn(qs, jnp.array([1.0, 1.0]))) == pytest.approx(0.5 + 5.0)


# SAC+HER on sparse FetchReach-v4, shrunk to a CPU test: book_her (gamma 0.95, future k=4) with 1 env (UTD 1),
# 64-64 nets, ent_coef 0.05, lr 1e-3, learning_starts 500, 12k steps (240 episodes).
SAC_LEARN = dict(buffer_size=20_000, hidden_sizes=(64, 64), learning_rate=1e-3, ent_coef=0.05,
                 learning_starts=500, total_timesteps=12_000)  # on 1 env of FetchReach-v4


def reach1():
  return envs.make("FetchReach-v4", num_envs=1, backend="cpu")


def test_sac_her_learns_sparse_reach():
  """~25 s (+ the negative control) on 2 cores. The bar, last-40-episode training success >= 0.6, is anchored
  outside this code's run:
  - SB3 2.9.2 SAC + HerReplayBuffer with the same settings (1 env, CPU torch), measured on a 2-core CPU:
    last-40 success 0.95-1.00 over 8 seeds (mean 0.99); fetchjax over 8 other seeds: 0.80-1.00 (mean 0.96);
  - negative control, run here: the same agent WITHOUT HER reaches 0.175 (seed 2; the book's no-HER sparse-Reach
    runs need ~1M steps), so the bar measures what HER adds, and a success metric or env that made sparse Reach
    trivial would fail it;
  - the first 40 episodes (random warm-up, then the first updates) stay near 0 (a uniformly random policy
    succeeds in ~1% of FetchReach-v4 episodes).
  At 8k steps both SB3 (0.13-0.80 over 10 seeds) and fetchjax (0.05-0.95 over 12) are still mid-ramp: one seed's
  value there depends on the platform's float rounding, so the budget is 12k, where every seed has learned."""
  out = {}
  for use_her in (True, False):
    cfg = SAC.preset("book_her", her=use_her, **SAC_LEARN)
    init, run = sac.make_runner(cfg, reach1())
    runner, m = jax.jit(run, static_argnums=1)(init(jax.random.PRNGKey(2)), cfg.num_updates(1))
    s = np.asarray(m["success_rate"])
    out[use_her] = (float(s[:40].mean()), float(s[-40:].mean()))
    assert int(m["n_updates"][-1]) == 12_000 - 500
  print(f"SAC sparse Reach, success first/last 40 episodes: HER {out[True]}, no HER {out[False]}")
  (first, last), (_, last_no_her) = out[True], out[False]
  assert first <= 0.15 and last >= 0.6
  assert last_no_her < 0.6, "negative control: without HER this budget must not reach the bar"


@pytest.mark.slow
def test_sac_her_sparse_reach_across_seeds_vs_sb3():
  """The learning check over 16 vmapped fetchjax seeds beside 6 seeds of SB3 2.9.2's SAC + HerReplayBuffer with
  the same settings (~9 min on 2 cores): fetchjax's mean last-40 success within 0.1 of SB3's, no seed below
  the CI bar. Why 16 seeds: one seed's outcome moves with any bit of the physics or the float rounding, so a
  new mujoco (or jax, or CPU) draws new seeds. Measured (2026-12-01, 2 cores), fetchjax over batches of seeds:
  mujoco 3.11: 8 seeds mean 0.959, 16 seeds 0.955; mujoco 3.17: 8 seeds 0.866 (0.725-1.00, the batch that
  failed with 8 seeds), 16 seeds 0.964 and 0.939; over all 40 seeds on 3.17 mean 0.934 (sd 0.077), on 3.11
  0.956 over 24 (sd 0.048): no significant difference (Welch p 0.17); SB3 0.992 on both. Resampling the 40
  seeds measured on 3.17, a batch falls below the bar (SB3 - 0.1 = 0.89) 6.9% of the time with 8 seeds, 1.8%
  with 16. fetchjax sits ~0.04 below SB3 on both versions, with a heavier low tail: the first 16-seed run (key
  100, 2026-12-01) FAILED with mean 0.889, one seed at 0.125 (README Known issues; open)."""
  sb3 = pytest.importorskip("stable_baselines3")
  from stable_baselines3.common.callbacks import BaseCallback

  from fetchjax.gymnasium_reference import gymnasium_make

  cfg = SAC.preset("book_her", **SAC_LEARN)
  init, run = sac.make_runner(cfg, reach1())
  _, m = jax.jit(jax.vmap(lambda k: run(init(k), cfg.num_updates(1))))(jax.random.split(jax.random.PRNGKey(100), 16))
  ours = np.asarray(m["success_rate"])[:, -40:].mean(1)

  class Success(BaseCallback):
    def __init__(self):
      super().__init__()
      self.success = []

    def _on_step(self):
      self.success += [float(i["is_success"]) for d, i in zip(self.locals["dones"], self.locals["infos"]) if d]
      return True

  theirs = []
  for seed in range(6):
    model = sb3.SAC("MultiInputPolicy", gymnasium_make("FetchReach-v4"), replay_buffer_class=sb3.HerReplayBuffer,
                    replay_buffer_kwargs=dict(n_sampled_goal=4, goal_selection_strategy="future"),
                    buffer_size=cfg.buffer_size, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                    ent_coef=cfg.ent_coef, learning_starts=cfg.learning_starts, gamma=cfg.gamma, tau=cfg.tau,
                    policy_kwargs=dict(net_arch=list(cfg.hidden_sizes)), seed=seed, device="cpu", verbose=0)
    cb = Success()
    model.learn(cfg.total_timesteps, callback=cb)
    theirs.append(np.mean(cb.success[-40:]))
  theirs = np.array(theirs)
  print(f"last-40 success: fetchjax {np.round(ours, 3)} (mean {ours.mean():.3f}); "
        f"SB3 {np.round(theirs, 3)} (mean {theirs.mean():.3f})")
  assert ours.mean() >= theirs.mean() - 0.1 and ours.min() >= 0.6


def test_td3_smoke(reach2):
  cfg = td3.TD3Config(**{**SMALL, "hidden_sizes": (16, 16)}, learning_starts=60, her=True, action_noise_sigma=0.1)
  init, run = td3.make_runner(cfg, reach2)
  r0 = init(jax.random.PRNGKey(0))
  r, m = jax.jit(run, static_argnums=1)(r0, 2)
  # updates at k = 50..100 with num_timesteps = 2k > 60 -> k >= 31 and an episode complete -> k >= 50
  np.testing.assert_array_equal(np.asarray(m["n_updates"]), [1, 51])
  assert np.isnan(float(m["actor_loss"][0]))  # one update (n_updates = 1): no delayed actor step yet
  for k in ("critic_loss", "actor_loss", "q1_mean", "q_min_mean"):
    assert np.isfinite(float(m[k][1])), k
  ts = r.train_state
  moved = lambda a, b: not jnp.allclose(a["params"]["dense_2"]["kernel"], b["params"]["dense_2"]["kernel"])  # noqa
  assert moved(ts.actor_params, r0.train_state.actor_params)
  assert moved(ts.target_actor_params, r0.train_state.target_actor_params)
  act = td3.make_act(cfg)
  obs = jax.tree.map(lambda x: x[:2], r.env_state.obs)
  a = act(offpolicy.policy_of(cfg, r), obs)
  assert a.shape == (2, 4) and bool(jnp.all(jnp.abs(a) <= 1))
  assert not jnp.allclose(act(offpolicy.policy_of(cfg, r), obs, jax.random.PRNGKey(1)), a)
  assert set(td3.TB_NAMES) <= set(m) | {"n_updates"}
  assert set(sac.TB_NAMES) - {"ent_coef", "ent_coef_loss", "log_prob_mean"} == set(td3.TB_NAMES)
