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


# --- pixel runs (book ch9): the three-phase signature and its failure rules --------------------------------------
PIXELS = Run(SAC.preset("book_pixels"), "FetchPush-v4")   # 5M steps, 8 envs: 12,500 iterations of 400 steps
M = 1_000_000
# The book's Step 2 curve (L5663-5719): flat ~5% to 2.2M, 25-34% at 2.5M, >70% at 3.5M, 95% at 4.4M, 0.95-0.97.
STEP2 = ([0, 2.2 * M, 2.5 * M, 3.5 * M, 4.4 * M, 5 * M], [0.05, 0.05, 0.30, 0.75, 0.95, 0.97])


def pixel_history(run=PIXELS, curve=STEP2, n_seeds=2, seed=0, upto=None):
  """A pixel run's metrics shaped like the book's Step 2 (L5777-5780): per-iteration success of 8 episodes drawn
  from the curve; critic loss falling to 0.07 (Phase 1), rising to 0.35 (Phase 2), 0.25 (Phase 3); actor loss
  ~0 -> 1.0 -> -0.4 as the book writes it; Q from the all-failure -18.5 towards -2. `upto`: the history so far."""
  h, steps = healthy(run, n_seeds, seed)
  rng = np.random.default_rng(seed + 1)
  shape = h["success_rate"].shape
  p = np.interp(steps, *curve)
  succ = rng.binomial(8, np.broadcast_to(p, shape)) / 8.0
  phase2 = np.interp(steps, [0, 2.2 * M, 5 * M], [0, 0, 1]) * (curve[1][-1] > 0.5)
  critic = np.interp(steps, [0, M, 2.2 * M, 3 * M, 3.5 * M, 5 * M], [0.4, 0.07, 0.07, 0.35, 0.35, 0.25])
  critic = np.where(phase2 > 0, critic, np.interp(steps, [0, M, 5 * M], [0.4, 0.07, 0.07]))
  actor = np.interp(steps, [0, 2.2 * M, 3 * M, 3.5 * M, 4 * M], [0, 0, 1.0, 1.0, -0.4]) * (phase2 > 0)
  q = -18.5 * (1 - p) - 2 * p
  trained = ~np.isnan(h["critic_loss"])
  h.update(success_rate=succ, ep_rew_mean=-50 * (1 - succ) - 13 * succ + rng.normal(0, 1, shape))
  for k, v in dict(critic_loss=critic * rng.uniform(0.9, 1.1, shape), actor_loss=actor + rng.normal(0, 0.05, shape),
                   q1_mean=q + rng.normal(0, 0.1, shape), q2_mean=q + rng.normal(0, 0.1, shape), q_min_mean=q - 0.1,
                   target_q_mean=q + 0.0 * succ).items():
    h[k] = np.where(trained, v, np.nan)
  if upto is not None:
    n = int(np.searchsorted(steps, upto, side="right"))
    h, steps = {k: v[:, :n] for k, v in h.items()}, steps[:n]
  return h, steps


def _rules(found, seed=0):
  return [(f.rule, f.severity) for f in found if f.seed == seed]


def test_the_books_step2_run_reads_as_its_three_phases_and_nothing_else():
  h, steps = pixel_history()
  found = dg.check_sac(h, steps, PIXELS.config, PIXELS.env_id)
  for s in (0, 1):
    got = {f.rule: f for f in found if f.seed == s}
    assert sorted(got) == ["V1", "V2", "V3"] and {f.severity for f in got.values()} == {"info"}, found
    assert 0.8 * M <= got["V1"].step <= 1.2 * M          # critic loss at ~0.07, success ~5%
    assert 2.2 * M <= got["V2"].step <= 2.6 * M          # the hockey-stick (book: upturn at 2.2M)
    assert 4.0 * M <= got["V3"].step <= 4.6 * M          # >= 0.90 (book: 95% at 4.4M)
    assert "pixel cost 2." in got["V3"].message and "all-failure value -18.46" in got["V1"].message.replace("−", "-")
  # idempotent on the prefixes the CLI checks: at 2M only Phase 1; the warnings' times have not come
  h2, s2 = pixel_history(upto=2 * M)
  assert [f.rule for f in dg.check_sac(h2, s2, PIXELS.config, PIXELS.env_id)] == ["V1", "V1"]


def test_a_flat_pixel_run_warns_at_3m_and_at_its_end_not_with_the_state_push_rule():
  flat = ([0, 5 * M], [0.05, 0.05])
  h, steps = pixel_history(curve=flat)
  found = dg.check_sac(h, steps, PIXELS.config, PIXELS.env_id)
  by = {f.rule: f for f in found if f.seed == 1}
  assert sorted(by) == ["V1", "V4", "V5"], found                      # not H2: pixel runs plateau by design
  assert by["V4"].step == steps[np.searchsorted(steps, 3 * M)] and by["V4"].severity == "warning"
  assert by["V5"].step == steps[-1] and by["V5"].value < 0.1
  assert dg.RULES["V4"].fix in by["V4"].message
  # before 3M only the Phase-1 info; a state Push run with the same curve gets H2 at 500k instead
  h3, s3 = pixel_history(curve=flat, upto=3 * M - 400)
  assert {f.rule for f in dg.check_sac(h3, s3, PIXELS.config, PIXELS.env_id)} == {"V1"}
  state = dataclasses.replace(PIXELS.config, encoder="flat", frame_stack=1)
  assert {f.rule for f in dg.check_sac(h3, s3, state, PIXELS.env_id)} == {"H2"}


def test_final_success_below_80_percent_warns_only_at_the_end():
  short = ([0, 2.2 * M, 2.5 * M, 3.5 * M, 5 * M], [0.05, 0.05, 0.30, 0.70, 0.70])
  h, steps = pixel_history(curve=short)
  found = dg.check_sac(h, steps, PIXELS.config, PIXELS.env_id)
  assert _rules(found) == [("V1", "info"), ("V2", "info"), ("V5", "warning")]
  v5 = [f for f in found if f.rule == "V5"][0]
  assert v5.step == steps[-1] and 0.6 < v5.value < 0.8
  assert "V5" not in {f.rule for f in dg.check_sac({k: v[:, :-1] for k, v in h.items()}, steps[:-1],
                                                   PIXELS.config, PIXELS.env_id)}


@pytest.mark.parametrize("change, rule, at, says", [
    (dict(drq=True), "V6", 1.5 * M, "drq on and SpatialSoftmax"),                     # book Step 4
    (dict(encoder_routing="separate"), "V7", 2 * M, "encoder_routing separate"),      # book Step 1
    (dict(encoder="nature", encoder_routing="separate"), "V7", 2 * M, "encoder_routing separate and NatureCNN"),
], ids=["drq-step4", "sb3-routing-step1", "nature-step0"])
def test_the_books_failing_pixel_setups_are_named_when_flat(change, rule, at, says):
  cfg = dataclasses.replace(PIXELS.config, **change)
  flat = ([0, 5 * M], [0.05, 0.05])
  h, steps = pixel_history(curve=flat, upto=2.5 * M)
  found = dg.check_sac(h, steps, cfg, PIXELS.env_id)
  f = [f for f in found if f.rule == rule and f.seed == 0]
  assert _rules(found) == [("V1", "info"), (rule, "warning")], found
  assert f[0].step == steps[np.searchsorted(steps, at)] and says in f[0].message and dg.RULES[rule].fix in f[0].message
  # the same setup is not named once it learns before that time (here: up from 1M); nor is Step 2's own config
  # when flat (its plateau lasts to ~2.2M)
  h, steps = pixel_history(curve=([0, M, 1.4 * M, 5 * M], [0.05, 0.05, 0.3, 0.97]), upto=2.5 * M)
  assert rule not in {f.rule for f in dg.check_sac(h, steps, cfg, PIXELS.env_id)}
  h, steps = pixel_history(curve=flat, upto=2.5 * M)
  assert {f.rule for f in dg.check_sac(h, steps, PIXELS.config, PIXELS.env_id)} == {"V1"}


def test_pixel_rules_apply_to_td3_and_never_to_state_runs():
  h, steps = pixel_history(curve=([0, 5 * M], [0.05, 0.05]), upto=3.2 * M)
  td3_pix = td3.TD3Config(her=True, gamma=0.95, encoder="manipulation", encoder_routing="critic", frame_stack=4,
                          total_timesteps=5 * M)
  h_td3 = {k: v for k, v in h.items() if k not in ("ent_coef", "log_prob_mean", "ent_coef_loss")}
  assert {f.rule for f in dg.check_td3(h_td3, steps, td3_pix, "FetchPush-v4")} == {"V1", "V4"}
  state = dataclasses.replace(td3_pix, encoder="flat", frame_stack=1)
  assert not {f.rule for f in dg.check_td3(h_td3, steps, state, "FetchPush-v4")} & set(dg.PIXEL_RULE_IDS)
  assert dg.q_all_failure(0.95) == pytest.approx(-18.46, abs=0.01)        # the book's "Q = -18.5"
