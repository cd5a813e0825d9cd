"""fetchjax.diagnostics SAC/TD3/HER rules on synthetic histories (no training): healthy runs shaped like the
book's trigger nothing at every prefix; each rule fires alone, at the right seed and iteration."""
import dataclasses

import numpy as np
import pytest

from fetchjax import agents, diagnostics as dg
from fetchjax.agents import sac, td3

SAC, TD3 = agents.get("sac"), agents.get("td3")

@dataclasses.dataclass(frozen=True)
class Run:
  """An algorithm config with the env it trains on (8 envs): what a history below is shaped like."""
  config: object
  env_id: str
  num_envs: int = 8

  def __getattr__(self, name):  # the config's fields
    return getattr(self.config, name)

  @property
  def rollout_size(self) -> int:
    return self.config.rollout_size(self.num_envs)

  @property
  def num_updates(self) -> int:
    return self.config.num_updates(self.num_envs)


REACH = Run(SAC.preset("book_her", total_timesteps=300_000), "FetchReach-v4")  # 400 steps per iteration, 750 its
PUSH = Run(SAC.preset("book_her_push"), "FetchPush-v4")                        # ent_coef 0.05, 2M steps, 5000 its
TD3_REACH = Run(TD3.preset("her", total_timesteps=200_000), "FetchReach-v4")


def healthy(config=REACH, n_seeds=3, seed=0, onset=None):
  """Metrics as `make_runner` logs them: warm-up iterations without gradient steps (NaN learner metrics), success
  0 -> ~1 (Reach: by ~30k steps; Push: the book's milestones 5-40% at 500k, 80-99% by 2M), returns to match,
  Q within the analytic bound, twin critics close, auto alpha 1 -> ~0.05 (fixed 0.05 for Push)."""
  rng = np.random.default_rng(seed)
  per = config.rollout_size
  steps = per * np.arange(1, config.num_updates + 1)
  shape = (n_seeds, len(steps))
  push = "Push" in config.env_id
  onset = onset or (700_000 if push else 15_000)
  width = 250_000 if push else 5_000
  succ = np.clip(1 / (1 + np.exp(-(steps - onset) / width)) + rng.normal(0, 0.03, shape), 0, 1)
  calls = np.where(steps > config.learning_starts, per // config.num_envs, 0) * np.ones(shape)
  n_updates = np.cumsum(calls * config.gradient_steps, axis=1)
  q = -(1 - succ) * 12 - 1.5 + rng.normal(0, 0.2, shape)
  alpha = np.full(shape, 0.05) if not isinstance(config.config, sac.SACConfig) or not config.auto_ent_coef else \
      np.maximum(np.exp(-3e-4 * n_updates), 0.03)
  h = dict(
      timesteps=np.broadcast_to(steps, shape).copy(),
      ep_rew_mean=-50 * (1 - succ) - 3 * succ + rng.normal(0, 1, shape),
      success_rate=succ, n_updates=n_updates, train_calls=calls,
      critic_loss=rng.uniform(0.05, 0.5, shape), actor_loss=-q,
      q1_mean=q + rng.normal(0, 0.1, shape), q2_mean=q + rng.normal(0, 0.1, shape), q_min_mean=q - 0.1,
      target_q_mean=q, reward_mean=rng.uniform(-0.8, -0.4, shape),
  )
  if isinstance(config.config, sac.SACConfig):
    h.update(ent_coef=alpha, log_prob_mean=rng.normal(2.0, 0.5, shape),
             ent_coef_loss=rng.normal(0, 0.1, shape) if config.auto_ent_coef else np.full(shape, np.nan))
  idle = calls == 0
  for k in ("critic_loss", "actor_loss", "q1_mean", "q2_mean", "q_min_mean", "target_q_mean", "reward_mean",
            "ent_coef", "log_prob_mean", "ent_coef_loss"):
    if k in h:
      h[k][idle] = np.nan
  return h, steps


def check(run, h, steps):
  return (dg.check_td3 if isinstance(run.config, td3.TD3Config) else dg.check_sac)(h, steps, run.config, run.env_id)


@pytest.mark.parametrize("config", [REACH, PUSH, TD3_REACH,
                                    Run(SAC.preset("book", total_timesteps=200_000), "FetchReachDense-v4")],
                         ids=["sac-her-reach", "sac-her-push", "td3-her-reach", "sac-dense-reach"])
def test_healthy_runs_trigger_nothing(config):
  if config.env_id.endswith("Dense-v4"):
    h, steps = healthy(config)
    h["ep_rew_mean"] = -10 * (1 - h["success_rate"]) - 0.5 * h["success_rate"]  # dense returns
  else:
    h, steps = healthy(config)
  assert check(config, h, steps) == []
  for n in (1, 3, 10, len(steps) // 3, len(steps) // 2):  # prefixes the CLI checks between chunks
    assert check(config, {k: v[:, :n] for k, v in h.items()}, steps[:n]) == []


def _first(steps, at_least):
  return int(np.searchsorted(steps, at_least))


def _break(h, steps, rule, config):
  """Make seed 1 trip exactly `rule`; returns the iteration index it must fire at."""
  s = 1
  trained = np.flatnonzero(h["train_calls"][s] > 0)
  if rule == "S1":  # |Q| far beyond (1 + alpha |log pi|) / (1 - gamma) = 20 + 2 alpha / 0.05 at gamma 0.95
    h["q_min_mean"][s, 100:] = -150.0
    return 104
  if rule == "S2":  # alpha collapse early (an lr far above 3e-4)
    h["ent_coef"][s, trained[10]:] = 0.005
    return int(trained[10])
  if rule == "S3":  # Reach stalls at 30% (H11 quiet: success >= 0.1; H4 quiet: returns above -49)
    h["success_rate"][s] = 0.3
    h["ep_rew_mean"][s] = -38.0
    return _first(steps, config.learning_starts + dg.S3_STEPS)
  if rule == "S5":
    h["q2_mean"][s, 200:] = h["q1_mean"][s, 200:] + 6.0
    return 204
  if rule == "S6":
    h["ep_rew_mean"][s] = -10.0 + np.random.default_rng(3).normal(0, 0.3, len(steps))
    return _first(steps, max(dg.FLAT_MIN_STEPS, dg.FLAT_MIN_FRAC * config.total_timesteps))
  if rule == "H4":  # HER off on Reach: -50 throughout, success 0 (S3 would fire later, at 201k)
    h["ep_rew_mean"][s] = -50.0
    h["success_rate"][s] = 0.0
    h["ent_coef"][s] = np.maximum(h["ent_coef"][s], 0.05)  # keep H11 quiet
    return _first(steps, max(dg.FLAT_MIN_STEPS, dg.FLAT_MIN_FRAC * config.total_timesteps))
  if rule in ("H1", "H2"):  # Push at the do-nothing 5% (returns ~-47.5, above H4's -49)
    h["success_rate"][s] = 0.05
    h["ep_rew_mean"][s] = -47.5
    if rule == "H1":
      h["ent_coef"][s] = np.where(np.isnan(h["ent_coef"][s]), np.nan, 0.3)
    return _first(steps, dg.PUSH_STUCK_STEPS)
  if rule == "H11":  # sparse Reach, auto alpha collapses before anything is learnt
    h["success_rate"][s, :400] = 0.0
    h["ent_coef"][s, 260:] = 0.005  # after S2's first 10k gradient steps
    return 260
  raise ValueError(rule)


SAC_DENSE = Run(SAC.preset("book"), "FetchReachDense-v4")
CASES = [("S1", REACH), ("S2", REACH), ("S3", REACH), ("S5", REACH), ("S6", SAC_DENSE),
         ("H4", Run(SAC.preset("book_her", total_timesteps=200_000), "FetchReach-v4")),
         ("H1", PUSH), ("H2", PUSH), ("H11", REACH), ("S1", TD3_REACH), ("S5", TD3_REACH)]


@pytest.mark.parametrize("rule,config", CASES, ids=[f"{r}-{c.env_id}-{type(c.config).__name__}" for r, c in CASES])
def test_each_rule_fires_alone(rule, config):
  h, steps = healthy(config)
  if config.env_id.endswith("Dense-v4"):
    h["ep_rew_mean"] = -10 * (1 - h["success_rate"]) - 0.5 * h["success_rate"]
  i = _break(h, steps, rule, config)
  found = check(config, h, steps)
  assert [(f.rule, f.seed, f.step) for f in found] == [(rule, 1, int(steps[i]))], found
  f = found[0]
  assert dg.RULES[rule].cause in f.message and dg.RULES[rule].fix in f.message
  assert check(config, {k: v[:, :i] for k, v in h.items()}, steps[:i]) == []


def test_warmup_nans_are_not_findings_but_later_nans_are():
  h, steps = healthy()
  assert np.isnan(h["critic_loss"][:, 0]).all()  # warm-up: no gradient step yet
  h["critic_loss"][2, 50] = np.nan
  found = check(REACH, h, steps)
  assert [(f.rule, f.severity, f.seed, f.step) for f in found] == [("NAN", "error", 2, int(steps[50]))]
  h, steps = healthy(PUSH, n_seeds=1)  # fixed alpha: ent_coef_loss is NaN throughout, legitimately
  assert np.isnan(h["ent_coef_loss"]).all() and check(PUSH, h, steps) == []


def _report(env_id, success, ret, p0=0.05, ret0=-47.5, n=100):
  return dict(env_id=env_id, checkpoint_steps=2_000_000, baseline_do_nothing=dict(success_rate=p0, return_mean=ret0),
              per_seed=[dict(seed=s, aggregate=dict(success_rate=sr, return_mean=r, n_episodes=n))
                        for s, (sr, r) in enumerate(zip(success, ret))])


def test_h10_trivial_baseline_on_eval():
  rep = _report("FetchPush-v4", [0.99, 0.05, 0.06, 0.20], [-13.2, -47.5, -40.0, -47.9])
  found = dg.check_eval(rep)
  assert [(f.rule, f.seed, f.step) for f in found] == [("H10", 1, 2_000_000), ("H10", 2, 2_000_000),
                                                       ("H10", 3, 2_000_000)]
  assert "p₀ 0.050" in found[0].message
  # dense tasks: only the success criterion (their returns are not on the -50 scale)
  dense = _report("FetchReachDense-v4", [1.0, 0.04, 0.5], [-0.45, -8.0, -10.2], p0=0.03, ret0=-10.0)
  assert [f.seed for f in dg.check_eval(dense)] == [1]
  assert dg.check_eval({"per_seed": []}) == []


def test_rule_lists_and_tables():
  for ids in (dg.SAC_RULE_IDS, dg.TD3_RULE_IDS):
    assert set(ids) <= set(dg.RULES)
    table = dg.rules_markdown(ids)
    assert len(table.splitlines()) == len(ids) + 2 and all(line.count("|") == 8 for line in table.splitlines())


def test_docs_table_is_current():
  from pathlib import Path

  doc = Path(__file__).parent.parent / "docs" / "DIAGNOSTICS.md"
  assert doc.read_text() == dg.docs_markdown(), "regenerate: python -m fetchjax.diagnostics > docs/DIAGNOSTICS.md"
