"""fetchjax.diagnostics on synthetic PPO histories (no training): healthy runs trigger nothing, each rule fires
alone, at the right seed and step, on a history built to trip it."""
import json
import math

import numpy as np
import pytest

from fetchjax import agents, diagnostics as dg
from fetchjax.agents.ppo import PPOConfig

PPO = agents.get("ppo")

REACH = "FetchReachDense-v4"
BOOK = PPOConfig()  # 8 x 1024 = 8192 steps per update, 500k -> 62 updates (on 8 envs)


def healthy(config=BOOK, n_seeds=3, std_end=0.15, seed=0, num_envs=8):
  """A healthy FetchReachDense-v4 PPO run shaped like the book's ch3 run: return -10 -> -0.4,
  success 0 -> 1 (milestones), approx_kl 0.005-0.02, clip_fraction 0.05-0.25, std 1 -> std_end, explained
  variance negative at the first update then 0.5-0.99, value_loss ~8 decaying."""
  rng = np.random.default_rng(seed)
  steps = config.rollout_size(num_envs) * np.arange(1, config.num_updates(num_envs) + 1)
  shape = (n_seeds, len(steps))
  succ = np.clip(1 / (1 + np.exp(-(steps - 90_000) / 25_000)) + rng.normal(0, 0.02, shape), 0, 1)
  std = np.broadcast_to(np.exp(np.log(std_end) * steps / config.total_timesteps), shape).copy()
  ev = np.clip(0.5 + 0.49 * (1 - np.exp(-steps / 100_000)) + rng.normal(0, 0.03, shape), -1, 0.99)
  ev[:, 0] = -0.3
  entropy = 4 * (0.5 + 0.5 * math.log(2 * math.pi) + np.log(std))
  h = dict(
      timesteps=np.broadcast_to(steps, shape).copy(),
      ep_rew_mean=-10 * (1 - succ) - 0.4 * succ + rng.normal(0, 0.3, shape),
      success_rate=succ,
      value_loss=(8 * np.exp(-steps / 50_000) + 0.05) * rng.lognormal(0, 0.3, shape),
      policy_gradient_loss=rng.normal(-0.01, 0.005, shape),
      entropy=entropy, entropy_loss=-entropy,
      approx_kl=rng.uniform(0.005, 0.02, shape),
      clip_fraction=rng.uniform(0.05, 0.25, shape),
      explained_variance=ev, std=std,
  )
  h["loss"] = h["policy_gradient_loss"] + 0.5 * h["value_loss"]
  return h, steps


@pytest.mark.parametrize("config,num_envs,std_end", [
    (BOOK, 8, 0.15),                                             # book fast path, 500k
    (PPOConfig(total_timesteps=1_000_000), 8, 0.08),             # book 3-seed run, 1M
    (PPO.preset("gpu"), 1024, 0.2),                              # 1024 envs x 64 steps, 2M (31 updates)
    (PPOConfig(n_steps=256, total_timesteps=1536), 2, 1.0),      # tiny sanity run, 3 updates
])
def test_healthy_runs_trigger_nothing(config, num_envs, std_end):
  h, steps = healthy(config, std_end=std_end, num_envs=num_envs)
  assert dg.check_ppo(h, steps, config, "FetchReachDense-v4") == []
  for n in (1, 5, len(steps) // 2):  # every prefix the CLI may check between chunks
    assert dg.check_ppo({k: v[:, :n] for k, v in h.items()}, steps[:n], config, "FetchReachDense-v4") == []


def test_healthy_with_rollouts_without_episode_ends():
  """Short rollouts (n_steps < 50) leave ep_rew_mean / success_rate NaN in some updates: not a finding."""
  cfg = PPOConfig(n_steps=32, total_timesteps=300_000)  # 256 steps per update, 1172 updates
  h, steps = healthy(cfg)
  for k in ("ep_rew_mean", "success_rate"):
    h[k][:, 1::3] = np.nan
  assert dg.check_ppo(h, steps, cfg, REACH) == []


def _break(h, rule):
  """Make seed 1 of a healthy book history trip exactly `rule`; returns the update index it must fire at."""
  s = 1
  if rule == "P1":  # flat at the random baseline (but some successes, so P2 stays quiet)
    h["ep_rew_mean"][s] = -10 + np.random.default_rng(1).normal(0, 0.5, h["ep_rew_mean"].shape[1])
    h["success_rate"][s] = 0.02
    return 12  # first update with >= 100k steps (13 * 8192 = 106496)
  if rule == "P2":
    h["success_rate"][s] = 0.0
    return 24  # 25 * 8192 = 204800 >= 200k
  if rule == "P3":
    h["value_loss"][s, :3] = 500.0
    return 0
  if rule == "P4":  # large steps while the policy has not converged (training success stuck at 0.6)
    h["approx_kl"][s, 20:] = 0.08
    h["success_rate"][s, 15:] = 0.6
    return 22  # third high value: the median of the last 5 exceeds 0.05
  if rule == "P5":
    h["clip_fraction"][s, 10:] = 0.97
    return 14  # fifth saturated update
  if rule == "P6":
    h["clip_fraction"][s, 1:] = 0.0  # the first update's clipping does not count
    return 3
  if rule == "P7":
    h["std"][s, 5:] = 0.05
    return 5
  if rule == "P11":
    h["explained_variance"][s] = -0.1
    return 6  # first update past 10% of 500k (7 * 8192 = 57344)
  raise ValueError(rule)


@pytest.mark.parametrize("rule", ["P1", "P2", "P3", "P4", "P5", "P6", "P7", "P11"])
def test_each_rule_fires_alone(rule):
  h, steps = healthy()
  i = _break(h, rule)
  found = dg.check_ppo(h, steps, BOOK, "FetchReachDense-v4")
  assert [(f.rule, f.seed, f.step) for f in found] == [(rule, 1, int(steps[i]))]
  f = found[0]
  assert f.severity == "warning" and dg.RULES[rule].cause in f.message and dg.RULES[rule].fix in f.message
  # The same history cut just before the firing update: nothing yet.
  assert dg.check_ppo({k: v[:, :i] for k, v in h.items()}, steps[:i], BOOK, "FetchReachDense-v4") == []


def test_p1_baseline_from_first_update_for_other_envs():
  cfg = PPOConfig()
  h, steps = healthy(cfg)
  h["ep_rew_mean"][:] = -7.0 + np.random.default_rng(2).normal(0, 0.2, h["ep_rew_mean"].shape)
  h["ep_rew_mean"][0] = np.minimum(-7 + 0.5 * np.arange(len(steps)), -3)  # seed 0 improves by 4 in 8 updates
  found = dg.check_ppo(h, steps, cfg, "FetchPushDense-v4")
  assert [(f.rule, f.seed) for f in found] == [("P1", 1), ("P1", 2)]
  assert found[0].threshold == pytest.approx(h["ep_rew_mean"][1, 0] + 1.0)


def test_values_and_thresholds():
  h, steps = healthy()
  h["approx_kl"][1, 20:] = 0.08
  h["success_rate"][1, 15:] = 0.6  # not converged: P4 applies
  h["std"][2, 3:] = 0.02
  f4, f7 = dg.check_ppo(h, steps, BOOK, REACH)
  assert (f4.value, f4.threshold) == (pytest.approx(0.08), 0.05)
  assert (f7.rule, f7.seed, f7.value, f7.threshold) == ("P7", 2, pytest.approx(0.02), pytest.approx(0.1))
  f7b, = [f for f in dg.check_ppo(h, steps, PPOConfig(log_std_init=-1.0)) if f.rule == "P7"]  # initial std
  assert f7b.threshold == pytest.approx(0.1 * math.exp(-1.0))


def test_nan_detection():
  h, steps = healthy()
  h["value_loss"][2, 30] = np.nan
  h["loss"][2, 30:] = np.nan
  h["ep_rew_mean"][0, 40] = -np.inf
  h["explained_variance"][1, 10] = np.nan  # Var(returns) == 0: allowed
  found = dg.check_ppo(h, steps, BOOK, REACH)
  assert [(f.rule, f.severity, f.seed, f.step) for f in found] == [
      ("NAN", "error", 0, int(steps[40])), ("NAN", "error", 2, int(steps[30]))]
  assert "value_loss = nan" in found[1].message and "loss = nan" in found[1].message
  assert math.isnan(found[1].value)


def test_all_nan_seed_is_one_error():
  h, steps = healthy()
  for k, v in h.items():
    if k != "timesteps":
      v[1, 3:] = np.nan
  found = dg.check_ppo(h, steps, BOOK, REACH)
  assert [(f.rule, f.seed, f.step) for f in found] == [("NAN", 1, int(steps[3]))]


def test_dedup_and_idempotence():
  h, steps = healthy()
  _break(h, "P4")
  _break(h, "P7")
  early = dg.check_ppo({k: v[:, :10] for k, v in h.items()}, steps[:10], BOOK)
  assert [f.rule for f in early] == ["P7"]
  full = dg.check_ppo(h, steps, BOOK, REACH)
  assert early[0] in full and [f.rule for f in full] == ["P4", "P7"]
  fresh = dg.new_findings(early, full)
  assert [f.rule for f in fresh] == ["P4"]
  assert dg.new_findings(early + fresh, dg.check_ppo(h, steps, BOOK, REACH)) == []
  assert dg.new_findings({("P4", 1)}, full) == [early[0]]  # keys work too
  assert dg.new_findings([], full + full) == full


def test_single_seed_and_bad_shapes():
  h, steps = healthy(n_seeds=1)
  assert dg.check_ppo({k: v[0] for k, v in h.items()}, steps, BOOK) == []
  with pytest.raises(ValueError, match="expected"):
    dg.check_ppo(h, steps[:-1], BOOK)
  assert dg.check_ppo({}, steps, BOOK) == []


def test_format_finding():
  f = dg.Finding("P4", "warning", 1, 245760, 0.0712, 0.05, "approx_kl 0.0712 > 0.05 — lr too high; lr 1e-4")
  assert dg.format_finding(f) == "WARN P4 seed 1 @ 245760 steps: approx_kl 0.0712 > 0.05 — lr too high; lr 1e-4"
  g = dg.Finding("NAN", "error", None, 8192, math.nan, math.nan, "non-finite loss")
  assert dg.format_finding(g).startswith("ERROR NAN all seeds @ 8192 steps:")
  h, steps = healthy()
  _break(h, "P4")
  line = dg.format_finding(dg.check_ppo(h, steps, BOOK, REACH)[0])
  assert line.startswith(f"WARN P4 seed 1 @ {steps[22]} steps: approx_kl 0.08 > 0.05") and "n_epochs 10" in line


def test_write_diagnostics(tmp_path):
  h, steps = healthy()
  _break(h, "P4")
  h["value_loss"][0, 50] = np.nan
  found = dg.check_ppo(h, steps, BOOK, REACH)
  path = tmp_path / "results" / "diag.json"
  dg.write_diagnostics(path, found, dg.PPO_RULE_IDS)
  d = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
  assert d["rules_checked"] == dg.PPO_RULE_IDS and (d["n_warnings"], d["n_errors"]) == (1, 1)
  assert {x["rule"] for x in d["findings"]} == {"P4", "NAN"}
  nan = next(x for x in d["findings"] if x["rule"] == "NAN")
  assert nan["value"] is None and nan["seed"] == 0 and nan["step"] == int(steps[50])
  assert set(d["findings"][0]) == {"rule", "severity", "seed", "step", "value", "threshold", "message"}
  assert d["created_at"].endswith("+00:00")


def test_rule_table():
  assert set(dg.PPO_RULE_IDS) <= set(dg.RULES)
  assert all(r.severity in dg.SEVERITIES and r.cause and r.fix and r.source for r in dg.RULES.values())
  table = dg.rules_markdown()
  assert all(f"| {i} |" in table for i in dg.PPO_RULE_IDS) and len(table.splitlines()) == len(dg.PPO_RULE_IDS) + 2
  assert all(line.count("|") == 8 for line in table.splitlines())  # 7 columns, no stray pipes


# The README's default run (book preset, 500k steps, cpu backend, seed 0; measured 2026-11-30): approx_kl and the
# training success rate of its 62 updates. Its KL passes 0.05 only after 30 updates at success 1.00.
DEFAULT_RUN_KL = [0.005, 0.007, 0.009, 0.011, 0.012, 0.014, 0.015, 0.014, 0.013, 0.012, 0.013, 0.013, 0.011, 0.016,
                  0.014, 0.011, 0.013, 0.013, 0.012, 0.016, 0.013, 0.016, 0.019, 0.02, 0.02, 0.017, 0.014, 0.019,
                  0.019, 0.02, 0.016, 0.017, 0.02, 0.036, 0.021, 0.02, 0.031, 0.03, 0.021, 0.038, 0.034, 0.031,
                  0.029, 0.026, 0.025, 0.026, 0.023, 0.028, 0.031, 0.041, 0.051, 0.051, 0.041, 0.028, 0.032, 0.047,
                  0.03, 0.072, 0.04, 0.051, 0.05, 0.063]
DEFAULT_RUN_SUCCESS = [0.0, 0.01, 0.01, 0.08, 0.05, 0.09, 0.11, 0.21, 0.35, 0.34, 0.41, 0.44, 0.53, 0.62, 0.54, 0.68,
                       0.74, 0.8, 0.82, 0.86, 0.92, 0.91, 0.95, 0.92, 0.93, 0.95, 0.96, 0.98, 0.98, 0.98, 0.99,
                       0.98] + [1.0] * 30


def test_p4_is_quiet_on_the_converged_default_run_and_fires_on_the_same_kl_while_learning():
  """Issue 14: the README's default run ended with `WARN P4 approx_kl 0.0514 > 0.05 - learning rate too high`
  although it had converged (success 1.00, eval 1.00): not true, not actionable."""
  steps = BOOK.rollout_size(8) * np.arange(1, 63)
  kl, succ = np.array([DEFAULT_RUN_KL]), np.array([DEFAULT_RUN_SUCCESS])
  assert np.median(kl[0, -5:]) > dg.P4_MAX  # the old rule fired here
  p4 = lambda h: [f for f in dg.check_ppo(h, steps, BOOK, REACH) if f.rule == "P4"]
  assert p4({"approx_kl": kl, "success_rate": succ}) == []
  # the same KL with a policy that is not succeeding (negative control): reported
  stuck = np.minimum(succ, 0.5)
  found = p4({"approx_kl": kl, "success_rate": stuck})
  assert len(found) == 1 and found[0].step == steps[-1]  # where the old rule fired on the default run
