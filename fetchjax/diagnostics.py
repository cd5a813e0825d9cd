"""Training diagnostics: the book's "What can go wrong" tables (ch3 PPO, ch4 SAC, ch5 HER) as rules checked on the
per-update metrics a run logs, corrected where measured runs disagree with the book (each such threshold says
"corrected" and what the book has). Pure numpy, no JAX.

The training CLI calls `check_ppo` between chunks and at the end, prints `format_finding(f)` for
`new_findings(reported, found)` and finally writes `write_diagnostics`. Every rule looks only at a prefix of the
history: a finding is the *first* update at which the rule's condition holds, so re-checking a longer history of
the same run returns the same finding again (check_ppo is idempotent) and `new_findings` keeps one finding per
(rule, seed). Thresholds below are the implemented ones; `RULES` holds the text the docs are generated from.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import warnings
from typing import Callable

import numpy as np

SEVERITIES = ("error", "warning", "info")
_LABEL = {"error": "ERROR", "warning": "WARN", "info": "INFO"}

# Mean return of a random (or do-nothing) policy. P1's baseline is the larger of this and the run's first
# ep_rew_mean (the return of the freshly initialised Gaussian policy, sigma = exp(log_std_init)).
RANDOM_RETURN = {
    "FetchReachDense-v4": -9.91,  # mean over 1000 uniformly random episodes (measured; the book says -20)
    "FetchPush-v4": -47.5,        # do-nothing policy: -50 * (1 - p0), p0 = 0.05 its success rate (block at the goal)
}

WINDOW = 5                    # "consistently" = over the last 5 updates with a finite value (P4, P5, P11)
P1_MIN_STEPS, P1_MIN_FRAC, P1_MIN_UPDATES = 100_000, 0.2, 5
P1_MARGIN_ABS, P1_MARGIN_REL = 1.0, 0.1
P2_MIN_STEPS, P2_WINDOW_STEPS = 200_000, 50_000
P3_MAX, P3_EARLY_STEPS = 100.0, 50_000
P4_MAX = 0.05
# A converged PPO policy keeps sharpening (std falls), and its per-update KL rises past 0.05 with nothing wrong:
# the book's 500k FetchReachDense-v4 run (README default, 2026-11-30) stays at 0.005-0.04 while it learns, then
# reaches a median of 0.051 only after 30 updates at training success 1.00. P4 is about updates too large to learn
# from, so it is not reported while the training success rate is at or above this.
P4_CONVERGED = 0.95
P5_MIN = 0.8
P6_MAX, P6_UPDATES = 1e-3, 3
P7_RATIO, P7_EARLY_FRAC, P7_EARLY_STEPS = 0.1, 0.25, 250_000
P11_MAX, P11_WARMUP_FRAC = 0.0, 0.1
# Off-policy (SAC/TD3, HER): thresholds; "iterations" = one 50-step episode of every env.
R_MAX = 1.0                   # |reward| bound of every Fetch v4 task (sparse {-1, 0}; dense -distance, < 1 m)
S1_FACTOR = 1.5               # |Q| beyond 1.5 x the analytic bound in each of the last WINDOW iterations
S2_MAX, S2_UPDATES = 0.01, 10_000
S3_MAX, S3_STEPS = 0.5, 200_000
S5_REL, S5_ABS = 0.5, 1.0
FLAT_MIN_STEPS, FLAT_MIN_FRAC = 100_000, 0.2   # S6, H4: as P1
H4_MAX = -49.0
PUSH_STUCK_STEPS, PUSH_STUCK_WINDOW, PUSH_STUCK_MAX, H1_ALPHA = 500_000, 100_000, 0.10, 0.1
H10_SUCCESS_PP, H10_RETURN = 0.01, 1.0
H11_ALPHA, H11_SUCCESS = 0.01, 0.1
# Pixel runs (book ch9: SAC + HER on FetchPush from rendered frames; algorithms.md §5.5): a run whose encoder reads
# pixels. Success is averaged over a window of steps (250 iterations x 8 envs = 2000 episodes per 100k steps): one
# iteration's 8 episodes cannot tell the 3-7% plateau from 12%.
PIX_WINDOW = 100_000
PIX_FLAT = 0.10               # Phase 1 plateau 3-7%; Phase 2 ("10-90%") starts at 10%
PIX_PHASE3 = 0.90             # Phase 3 (book: 95%+); Step 2's pass criterion is >= 0.90 at 5M
PIX_P1_STEPS, PIX_P1_CRITIC, PIX_P1_FALL = 200_000, 0.10, 0.5
PIX_ONSET_BY, PIX_FINAL_MIN = 3_000_000, 0.80   # "no hockey-stick by 3M or final < 80% -> investigate"
PIX_DRQ_STEPS = 1_500_000     # Step 4 (DrQ on) was reported flat at 1.54M
PIX_ROUTING_STEPS = 2_000_000  # Steps 0/1 (SB3 routing, NatureCNN / ManipulationCNN) were flat over 2M
PIX_STATE_STEPS = 2_000_000   # the ch5 state Push run's budget: pixel cost = steps to Phase 3 / 2M (book 2.2x)
# NaN in these is legitimate (no episode ended in the rollout; Var(returns) == 0), so only +-inf is flagged.
NAN_OK = ("ep_rew_mean", "success_rate", "explained_variance")


@dataclasses.dataclass(frozen=True)
class Rule:
  id: str
  symptom: str
  metric: str
  threshold: str  # as implemented
  cause: str
  fix: str
  source: str     # where the rule comes from: the book's table (and "corrected" where the threshold differs)
  severity: str = "warning"


RULES: dict[str, Rule] = {r.id: r for r in [
    Rule("NAN", "NaN/inf in a training metric", "all logged metrics",
         f"any non-finite value (NaN allowed in {', '.join(NAN_OK)}: no episode ended / constant returns)",
         "numerical blow-up (simulator or losses)",
         "always an error: check observations for NaN (E9), lower the lr, check rewards",
         "book: env checks (E9), ch4 SAC table (S8)", "error"),
    Rule("P1", "ep_rew_mean flat at the random baseline", "rollout/ep_rew_mean",
         f"best median-of-3 ep_rew_mean < baseline + max({P1_MARGIN_ABS:g}, {P1_MARGIN_REL:g}·abs(baseline)) after "
         f"≥ max({P1_MIN_STEPS // 1000}k steps, {P1_MIN_FRAC:.0%} of total), ≥ {P1_MIN_UPDATES} finite updates; "
         "baseline = max(random return, the run's first ep_rew_mean); random return −9.91 FetchReachDense-v4, "
         "−47.5 FetchPush-v4, else unknown (corrected: book says −20)",
         "obs/action shapes wrong or goal not in the policy input",
         "policy input = [achieved_goal, desired_goal, observation], shapes (3,),(3,),(10,)",
         "book ch3 PPO table; corrected"),
    Rule("P2", "no success after 200k steps", "rollout/success_rate",
         f"success_rate = 0 in every update of the last {P2_WINDOW_STEPS // 1000}k steps, once ≥ "
         f"{P2_MIN_STEPS // 1000}k steps",
         "sparse env id used", "train PPO on FetchReachDense-v4: rewards should be continuous in [−1, 0]",
         "book ch3 PPO table"),
    Rule("P3", "value loss huge early", "train/value_loss",
         f"median value_loss so far > {P3_MAX:g} within the first {P3_EARLY_STEPS // 1000}k steps (or first update)",
         "reward scale or wrong GAE returns (returns should lie in ~[−50, 0])", "check the rewards and GAE/returns",
         "book ch3 PPO table"),
    Rule("P4", "KL too large", "train/approx_kl",
         f"median of the last {WINDOW} updates > {P4_MAX:g} (healthy < 0.03) while the median training success "
         f"rate of those updates is below {P4_CONVERGED:g} (a converged policy sharpening is not a finding)",
         "learning rate too high", "lr 3e-4 → 1e-4 or n_epochs 10 → 5", "book ch3 PPO table"),
    Rule("P5", "clipping saturated", "train/clip_fraction",
         f"> {P5_MIN:g} in each of the last {WINDOW} updates (book: ≈ 1.0 every update; healthy 0.1–0.3)",
         "updates too aggressive", "lower the lr, then clip_range 0.2 → 0.1; check advantage normalisation",
         "book ch3 PPO table"),
    Rule("P6", "not learning", "train/clip_fraction",
         f"< {P6_MAX:g} in every update after the first, checked from update {P6_UPDATES + 1} (book: always 0.0)",
         "lr too low or optimiser not attached", "the gradient norm must be ≠ 0; look for stopped gradients",
         "book ch3 PPO table"),
    Rule("P7", "policy collapse (corrected: std, not entropy_loss)", "train/std",
         f"std < {P7_RATIO:g} × exp(log_std_init) within the first min({P7_EARLY_FRAC:.0%} of total, "
         f"{P7_EARLY_STEPS // 1000}k) steps (a > 10× drop; healthy 1.0 → 0.1–0.3 over 500k)",
         "log_std → −∞", "ent_coef 0.01", "book ch3 PPO table; corrected"),
    Rule("P11", "critic not learning", "train/explained_variance",
         f"median of the last {WINDOW} updates ≤ {P11_MAX:g} after {P11_WARMUP_FRAC:.0%} of total steps "
         "(healthy 0.5–0.9)", "value targets or critic broken", "check the returns/targets of the value loss",
         "book ch3 (explained variance)"),
    Rule("S1", "Q overestimation (or underestimation) spiral", "replay/q_min_mean",
         f"abs(q_min_mean) > {S1_FACTOR:g} × the analytic bound (R + α·abs(log_prob_mean))/(1 − γ), "
         f"R = {R_MAX:g}, in each of the last {WINDOW} iterations with gradient steps (corrected: book says > 100 "
         "and rising)",
         "targets updating too fast or rewards out of range",
         "rewards in [−1, 0]; τ = 0.005 and Polyak running; lr → 1e-4", "book ch4 SAC table; corrected"),
    Rule("S2", "early entropy collapse", "train/ent_coef",
         f"ent_coef < {S2_MAX:g} within the first {S2_UPDATES:,} gradient steps (auto α only; corrected: counted "
         "from learning_starts)", "target entropy too low or small initial variance",
         "target_entropy −4 (auto); try ent_coef 0.2; α lr 1e-4", "book ch4 SAC table; corrected"),
    Rule("S3", "stall below 50% (Reach)", "rollout/success_rate",
         f"success_rate < {S3_MAX:g} in every iteration of the last {S3_STEPS // 1000}k steps after learning_starts "
         "(Reach tasks only: Push legitimately needs 1M+)", "too little exploration or buffer sampling",
         "check α early in training, learning_starts, batch 256", "book ch4 SAC table"),
    Rule("S5", "twin critics diverge", "replay/q1_mean vs replay/q2_mean",
         f"abs(q1 − q2) > max({S5_ABS:g}, {S5_REL:g}·abs(q̄)) in each of the last {WINDOW} iterations with "
         "gradient steps (corrected: book uses a ratio > 10×)", "one critic stuck or a wrong optimiser",
         "one critic optimiser over both Q losses", "book ch4 SAC table; corrected"),
    Rule("S6", "ep_rew_mean flat at the random baseline (dense)", "rollout/ep_rew_mean",
         f"as P1 (dense tasks): best median-of-3 ep_rew_mean within the margin of the random return after ≥ "
         f"max({FLAT_MIN_STEPS // 1000}k, {FLAT_MIN_FRAC:.0%} of total) steps",
         "sparse env or goal not in the policy input", "FetchReachDense-v4; policy input includes both goals",
         "book ch4 SAC table"),
    Rule("H1", "Push stuck at ~5% with a large entropy coefficient", "rollout/success_rate, train/ent_coef",
         f"mean success_rate ≤ {PUSH_STUCK_MAX:g} over the last {PUSH_STUCK_WINDOW // 1000}k steps after "
         f"{PUSH_STUCK_STEPS // 1000}k, with mean ent_coef > {H1_ALPHA:g} (book: milestones 5–40% by 500k; state "
         "runs: pixel runs plateau for ~2M steps, V1–V7)",
         "ent_coef auto or > 0.1", "fixed ent_coef 0.05 (--ent-coef 0.05, preset book_her_push); check her: true",
         "book ch5 HER table"),
    Rule("H2", "Push stuck at ~5% with a sane entropy coefficient", "rollout/success_rate",
         f"mean success_rate ≤ {PUSH_STUCK_MAX:g} over the last {PUSH_STUCK_WINDOW // 1000}k steps after "
         f"{PUSH_STUCK_STEPS // 1000}k, ent_coef ≤ {H1_ALPHA:g} (or TD3; state runs)",
         "γ = 0.99, HER off, or too few steps",
         "γ 0.95; --her; ≥ 2M steps with 8 envs", "book ch5 HER table"),
    Rule("H4", "return stuck at −50", "rollout/ep_rew_mean",
         f"best median-of-3 ep_rew_mean < {H4_MAX:g} after ≥ max({FLAT_MIN_STEPS // 1000}k, "
         f"{FLAT_MIN_FRAC:.0%} of total) steps (sparse tasks)", "HER off or the wrong env",
         "--her; FetchPush-v4 / FetchReach-v4 (sparse) with the HER buffer", "book ch5 HER table"),
    Rule("H10", "trivial-baseline policy (eval)", "eval success_rate, return",
         f"eval success within ±{H10_SUCCESS_PP * 100:g} pp of the do-nothing p₀ on the same tasks, or (sparse) "
         f"mean return within ±{H10_RETURN:g} of the do-nothing return", "the policy does nothing useful",
         "compare with p₀ (reported beside every result); train longer or check the rules above",
         "book ch5 (p₀ baseline); added"),
    Rule("H11", "auto-entropy collapse on a sparse task", "train/ent_coef",
         f"auto α < {H11_ALPHA:g} while success_rate (median of the last 3 iterations) < {H11_SUCCESS:g}",
         "the sparse reward flattens Q, so α is driven down before anything is learnt",
         "fixed ent_coef 0.05 (--ent-coef 0.05)", "book ch5 Push sweep; added"),
    # Book ch9 (pixels): the three-phase signature of its Step 2 run (info: where the run is, so a 2M-step plateau
    # is not mistaken for failure) and its failure rules. Pixel runs only; success is the mean over the last
    # PIX_WINDOW steps. The book's actor-loss levels (~0 in Phase 1, −0.2 to −0.7 in Phase 3) contradict its own
    # Q ≈ −18.5 under SB3's actor loss mean(α log π − min Q) (≈ +18.5 at that Q; ≥ ~0 with rewards ≤ 0), and its
    # Q is the all-failure value while the logged q_min_mean averages HER batches (8/9 relabelled, many of them
    # successes of a puck that never moved): both are reported, neither is a condition.
    Rule("V1", "pixels Phase 1: the critic memorises uniform failure", "rollout/success_rate, train/critic_loss",
         f"pixel run, ≥ {PIX_P1_STEPS // 1000}k steps: mean success_rate over the last {PIX_WINDOW // 1000}k steps "
         f"< {PIX_FLAT:g}, mean critic_loss over them ≤ {PIX_P1_CRITIC:g} and ≤ {PIX_P1_FALL:g} × its highest such "
         "mean so far; q_min_mean and actor_loss reported beside the all-failure Q −(1 − γ⁵⁰)/(1 − γ) (−18.46 at "
         "γ 0.95) (book Phase 1, 0–2.2M: success 3–7%, critic loss falling to 0.07, actor loss ~0, Q ≈ −18.5)",
         "the expected plateau of a pixel run: the encoder has not yet found the puck, every return is failure",
         "keep training: the book's Step 2 run stayed here until ~2.2M steps (pixel RL needs 2–4× the state budget)",
         "book ch9 three-phase signature (L5777–5782)", "info"),
    Rule("V2", "pixels Phase 2: the hockey-stick onset", "rollout/success_rate, train/critic_loss",
         f"pixel run: mean success_rate over the last {PIX_WINDOW // 1000}k steps ≥ {PIX_FLAT:g} after a window "
         f"below it (book Phase 2, 2.2–3.5M: success 10–90%, critic loss rising to 0.3+, actor loss to 1.0+)",
         "the encoder has found the task-relevant features: successes make the critic's targets informative again",
         "rising critic loss here is good news (book L5782); keep training",
         "book ch9 three-phase signature (L5777–5782)", "info"),
    Rule("V3", "pixels Phase 3: converged", "rollout/success_rate",
         f"pixel run: mean success_rate over the last {PIX_WINDOW // 1000}k steps ≥ {PIX_PHASE3:g}; pixel cost = "
         f"these steps / {PIX_STATE_STEPS // 1_000_000}M (the ch5 state run) (book: 95%+ from 3.5–4.4M, critic "
         "loss 0.15–0.35; Step 3: 4.4M / 2M = 2.2×)",
         "the pixel policy solves the task", "evaluate (python -m fetchjax.eval); the pass criterion is ≥ 0.90 at 5M",
         "book ch9 Steps 2–3 (L5703–5727, L5777–5780)", "info"),
    Rule("V4", "pixels: no hockey-stick by 3M", "rollout/success_rate",
         f"pixel run at ≥ {PIX_ONSET_BY // 1_000_000}M steps: mean success_rate over every {PIX_WINDOW // 1000}k-step "
         f"window so far < {PIX_FLAT:g}",
         "the encoder never found the puck (routing, DrQ, encoder or budget)",
         "investigate: the book's Step 2 settings (--preset book_pixels: --critic-encoder --no-drq, "
         "--encoder manipulation, --frame-stack 4, HER k 8); see V6, V7",
         "book ch9 reproduction tolerance (L5859–5918)"),
    Rule("V5", "pixels: final success below 80%", "rollout/success_rate",
         f"pixel run of ≥ {PIX_ONSET_BY // 1_000_000}M steps, at its last iteration: mean training success_rate "
         f"over the last {PIX_WINDOW // 1000}k steps < {PIX_FINAL_MIN:g} (the stochastic policy; eval.json "
         "scores the deterministic one)",
         "the run did not reproduce the book's 0.95 (tolerance ~10%)",
         "investigate: compare the curve with the three phases (V1–V3); extend with --resume --total-steps",
         "book ch9 reproduction tolerance (L5859–5918)"),
    Rule("V6", "pixels flat with DrQ + SpatialSoftmax", "rollout/success_rate",
         f"pixel run with drq and the manipulation encoder (SpatialSoftmax), at ≥ {PIX_DRQ_STEPS / 1e6:g}M steps: "
         f"mean success_rate over every {PIX_WINDOW // 1000}k-step window so far < {PIX_FLAT:g} (book Step 4: 3% "
         "at 1.54M)",
         "DrQ's ±4 px shift moves SpatialSoftmax's coordinates by ±0.10, independently for obs and next_obs: "
         "40–80% noise on a gripper–puck signal of 0.25–0.50 (book Step 4)",
         "--no-drq (book Step 2)", "book ch9 Step 4 (L5729–5747)"),
    Rule("V7", "pixels flat with the book's failing encoder setup", "rollout/success_rate",
         f"pixel run whose encoder is not trained by the critic alone (encoder_routing separate) or is NatureCNN, at "
         f"≥ {PIX_ROUTING_STEPS // 1_000_000}M steps: mean success_rate over every {PIX_WINDOW // 1000}k-step "
         f"window so far < {PIX_FLAT:g} (book Steps 0/1: 5–8% flat over 2M)",
         "an encoder trained by the policy gradient (SB3 routing), or NatureCNN's stride 4 that shrinks a 5-pixel "
         "puck to ~1 pixel, leaves the critic without the puck (book Steps 0/1)",
         "--critic-encoder and --encoder manipulation (book Step 2, --preset book_pixels)",
         "book ch9 Steps 0–1 (L5630–5661)"),
]}
PPO_RULE_IDS = ["NAN", "P1", "P2", "P3", "P4", "P5", "P6", "P7", "P11", "H10"]
PIXEL_RULE_IDS = ["V1", "V2", "V3", "V4", "V5", "V6", "V7"]
SAC_RULE_IDS = ["NAN", "S1", "S2", "S3", "S5", "S6", "H1", "H2", "H4", "H10", "H11", *PIXEL_RULE_IDS]
TD3_RULE_IDS = ["NAN", "S1", "S3", "S5", "S6", "H2", "H4", "H10", *PIXEL_RULE_IDS]


@dataclasses.dataclass(frozen=True)
class Finding:
  rule: str
  severity: str       # "error" | "warning" | "info"
  seed: int | None    # index into the vmapped seeds; None = all seeds
  step: int           # env steps (per seed) at the update where the rule first fired
  value: float        # measured value
  threshold: float
  message: str        # measurement — likely cause; fix

  @property
  def key(self) -> tuple[str, int | None]:
    return self.rule, self.seed


def new_findings(reported, found) -> list[Finding]:
  """The findings of `found` whose (rule, seed) is not already in `reported` (findings or keys), first one each."""
  seen = {f.key if isinstance(f, Finding) else tuple(f) for f in reported}
  out = []
  for f in found:
    if f.key not in seen:
      seen.add(f.key)
      out.append(f)
  return out


def format_finding(f: Finding) -> str:
  who = "all seeds" if f.seed is None else f"seed {f.seed}"
  return f"{_LABEL[f.severity]} {f.rule} {who} @ {f.step} steps: {f.message}"


def write_diagnostics(path, findings, rules_checked) -> dict:
  def num(x):
    return float(x) if x is not None and math.isfinite(x) else None  # strict JSON: NaN/inf -> null

  out = dict(rules_checked=list(rules_checked),
             findings=[dict(dataclasses.asdict(f), value=num(f.value), threshold=num(f.threshold)) for f in findings],
             n_warnings=sum(f.severity == "warning" for f in findings),
             n_errors=sum(f.severity == "error" for f in findings),
             created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as fh:
    json.dump(out, fh, indent=2)
  return out


def rules_markdown(ids=PPO_RULE_IDS) -> str:
  """The docs table for `ids`."""
  rows = ["| ID | Symptom | Metric | Threshold | Likely cause | Fix | Source |", "|---|---|---|---|---|---|---|"]
  rows += [f"| {r.id} | {r.symptom} | {r.metric} | {r.threshold} | {r.cause} | {r.fix} | {r.source} |"
           for r in (RULES[i] for i in ids)]
  return "\n".join(rows)


# ----------------------------------------------------------------------------------------------------------
# PPO
# ----------------------------------------------------------------------------------------------------------
def _last_k(x, k, fn):
  """r[i] = fn(the last k finite values of x[:i+1]); NaN until there are k (fn reduces along axis=-1)."""
  fin = np.isfinite(x)
  out = np.full(x.shape, np.nan)
  if fin.sum() >= k:
    win = fn(np.lib.stride_tricks.sliding_window_view(x[fin], k), axis=-1)
    j = np.cumsum(fin) - k  # the window that ends at the last finite value up to i
    out[j >= 0] = win[j[j >= 0]]
  return out


def _p1(x, steps, c):
  fin = np.isfinite(x)
  first = x[fin][0] if fin.any() else np.nan
  ref = max(RANDOM_RETURN.get(c["env_id"], first), first)
  thr = ref + max(P1_MARGIN_ABS, P1_MARGIN_REL * abs(ref))
  best = np.fmax.accumulate(_last_k(x, 3, np.median))
  cond = (steps >= max(P1_MIN_STEPS, P1_MIN_FRAC * c["total"])) & (np.cumsum(fin) >= P1_MIN_UPDATES) & (best < thr)
  return cond, best, thr, lambda v: f"ep_rew_mean never above {v:.2f} (best median of 3) < {thr:.2f} " \
                                    f"(baseline {ref:.2f} + margin)"


def _p2(x, steps, c):
  lo = np.searchsorted(steps, steps - P2_WINDOW_STEPS, side="right")  # window: updates lo[i]..i
  n_fin, n_pos = (np.concatenate([[0], np.cumsum(m)]) for m in (np.isfinite(x), np.isfinite(x) & (x != 0)))
  hi = np.arange(1, len(x) + 1)
  zero = (n_fin[hi] > n_fin[lo]) & (n_pos[hi] == n_pos[lo])  # >= 1 finite value, all of them 0
  val = np.where(zero, 0.0, np.nan)  # the window's max success_rate where it is 0
  return (steps >= P2_MIN_STEPS) & zero, val, 0.0, \
      lambda v: f"success_rate 0 in every update of the last {P2_WINDOW_STEPS // 1000}k steps (env {c['env_id']})"


def _p3(x, steps, c):
  early = steps <= max(P3_EARLY_STEPS, steps[0])
  val = np.full(x.shape, np.nan)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN prefix
    val[early] = [np.nanmedian(x[:i + 1]) for i in np.flatnonzero(early)]
  cond = early & (val > P3_MAX)
  return cond, val, P3_MAX, lambda v: f"value_loss {v:.4g} > {P3_MAX:g} (median so far, early in training)"


def _p4(x, success, steps, c):
  val = _last_k(x, WINDOW, np.median)
  converged = _last_k(success, WINDOW, np.nanmedian) >= P4_CONVERGED  # NaN (no episode ended yet): not converged
  return (val > P4_MAX) & ~converged, val, P4_MAX, lambda v: f"approx_kl {v:.3g} > {P4_MAX:g} (median of the last {WINDOW} " \
                                              f"updates; lr {c['lr']:g}, n_epochs {c['n_epochs']})"


def _p5(x, steps, c):
  val = _last_k(x, WINDOW, np.min)
  return val > P5_MIN, val, P5_MIN, lambda v: f"clip_fraction ≥ {v:.3g} > {P5_MIN:g} in each of the last {WINDOW} " \
                                              f"updates (lr {c['lr']:g}, clip_range {c['clip_range']:g})"


def _p6(x, steps, c):
  val = np.concatenate([[np.nan], np.maximum.accumulate(x[1:])])  # max after the first update; NaN propagates
  cond = (np.arange(len(x)) >= P6_UPDATES) & (val < P6_MAX)
  return cond, val, P6_MAX, lambda v: f"clip_fraction ≤ {v:.3g} < {P6_MAX:g} in every update after the first " \
                                      f"(lr {c['lr']:g})"


def _p7(x, steps, c):
  thr = P7_RATIO * math.exp(c["log_std_init"])
  cond = (steps <= min(P7_EARLY_FRAC * c["total"], P7_EARLY_STEPS)) & (x < thr)
  return cond, x, thr, lambda v: f"std {v:.3g} < {thr:.3g} (> {1 / P7_RATIO:g}× below its initial " \
                                 f"{math.exp(c['log_std_init']):.3g}) early in training (ent_coef {c['ent_coef']:g})"


def _p11(x, steps, c):
  val = _last_k(x, WINDOW, np.median)
  cond = (steps >= P11_WARMUP_FRAC * c["total"]) & (val <= P11_MAX)
  return cond, val, P11_MAX, lambda v: f"explained_variance {v:.3g} ≤ {P11_MAX:g} (median of the last {WINDOW} " \
                                       f"updates, after warm-up)"


_PPO_CHECKS: dict[str, tuple[str, Callable]] = {
    "P1": ("ep_rew_mean", _p1), "P2": ("success_rate", _p2), "P3": ("value_loss", _p3), "P4": ("approx_kl", _p4),
    "P5": ("clip_fraction", _p5), "P6": ("clip_fraction", _p6), "P7": ("std", _p7),
    "P11": ("explained_variance", _p11),
}


def _finding(rule_id, seed, step, value, threshold, measure) -> Finding:
  r = RULES[rule_id]
  return Finding(rule_id, r.severity, seed, int(step), float(value), float(threshold),
                 f"{measure} — {r.cause}; {r.fix}")


def _check_nan(h: dict, steps, seed, nan_ok) -> list[Finding]:
  """`nan_ok[name]`: where a NaN in that metric is legitimate (bool array or scalar)."""
  bad = {k: np.isinf(v) | (np.isnan(v) & ~np.asarray(nan_ok.get(k, False))) for k, v in h.items()}
  any_bad = np.any(list(bad.values()), axis=0)
  if not any_bad.any():
    return []
  i = int(np.argmax(any_bad))
  names = [k for k in h if bad[k][i]]
  what = ", ".join(f"{k} = {h[k][i]}" for k in names)
  return [_finding("NAN", seed, steps[i], h[names[0]][i], np.nan, f"non-finite {what}")]


def _per_seed(history: dict, steps, checks: dict, nan_ok: Callable, c: dict) -> list[Finding]:
  """Runs `checks` {rule: (metrics, fn(*series, steps, c) -> (cond, value, threshold, measure))} on every seed."""
  steps = np.asarray(steps, dtype=np.int64).reshape(-1)
  h = {k: np.atleast_2d(np.asarray(v, dtype=np.float64)) for k, v in history.items() if k != "timesteps"}
  n_seeds = next(iter(h.values())).shape[0] if h else 0
  for k, v in h.items():
    if v.ndim != 2 or v.shape != (n_seeds, len(steps)):
      raise ValueError(f"history[{k!r}] has shape {v.shape}; expected [{n_seeds}, {len(steps)}] = [seeds, updates]")
  if not len(steps) or not h:
    return []
  findings = []
  for seed in range(n_seeds):
    hs = {k: v[seed] for k, v in h.items()}
    findings += _check_nan(hs, steps, seed, nan_ok(hs))
    for rule_id, (metrics, check) in checks.items():
      if all(m in hs for m in metrics):
        with np.errstate(invalid="ignore", divide="ignore"):
          cond, val, thr, measure = check(*(hs[m] for m in metrics), steps, c)
        if cond.any():
          i = int(np.argmax(cond))
          findings.append(_finding(rule_id, seed, steps[i], val[i], thr, measure(val[i])))
  return findings


def check_ppo(history: dict, steps, config=None, env_id: str | None = None) -> list[Finding]:
  """Checks `PPO_RULE_IDS` on fetchjax PPO metrics.

  history[name]: [n_seeds, n_updates] (or [n_updates] for one seed), names as `ppo.make_runner` logs them;
  steps: [n_updates] env steps per seed after each update (ascending); config: the run's `PPOConfig` (its
  total_timesteps, learning_rate, n_epochs, clip_range, ent_coef, log_std_init; defaults if absent).
  Returns the first firing of each rule for each seed, ordered by seed, then rule.
  """
  c = dict(env_id=env_id or "",
           total=getattr(config, "total_timesteps", None) or int(np.max(steps, initial=0)),
           lr=getattr(config, "learning_rate", 3e-4), n_epochs=getattr(config, "n_epochs", 10),
           clip_range=getattr(config, "clip_range", 0.2), ent_coef=getattr(config, "ent_coef", 0.0),
           log_std_init=getattr(config, "log_std_init", 0.0))
  checks = {k: ((m,), fn) for k, (m, fn) in _PPO_CHECKS.items()}
  checks["P4"] = (("approx_kl", "success_rate"), _p4)
  return _per_seed(history, steps, checks, lambda h: {k: True for k in NAN_OK}, c)


# ----------------------------------------------------------------------------------------------------------
# SAC / TD3 (+ HER)
# ----------------------------------------------------------------------------------------------------------
def _trained_last_k(x, trained, k, fn):
  """`_last_k` over the iterations with gradient steps only (the others carry NaN learner metrics)."""
  return _last_k(np.where(trained, x, np.nan), k, fn)


def _s1(q, log_prob, alpha, calls, steps, c):
  alpha = np.nan_to_num(alpha, nan=0.0)  # the α each gradient step used (fixed or learnt)
  bound = (R_MAX + alpha * np.abs(np.nan_to_num(log_prob, nan=0.0))) / (1.0 - c["gamma"])
  ratio = _trained_last_k(np.abs(q) / bound, calls > 0, WINDOW, np.min)
  return ratio > S1_FACTOR, ratio, S1_FACTOR, \
      lambda v: f"|q_min_mean| ≥ {v:.3g} × the analytic bound (R + α|log π|)/(1 − γ) (γ {c['gamma']:g}) in " \
                f"each of " \
                f"the last {WINDOW} iterations"


def _s1_td3(q, calls, steps, c):
  return _s1(q, np.zeros_like(q), np.zeros_like(q), calls, steps, c)


def _s2(alpha, n_updates, steps, c):
  cond = c["auto"] & (n_updates <= S2_UPDATES) & (alpha < S2_MAX)
  return cond, alpha, S2_MAX, lambda v: f"ent_coef {v:.3g} < {S2_MAX:g} within the first {S2_UPDATES:,} " \
                                        "gradient steps"


def _s3(x, steps, c):
  if "Reach" not in c["env_id"]:
    return np.zeros(x.shape, bool), x, S3_MAX, None
  lo = np.searchsorted(steps, steps - S3_STEPS, side="right")
  best = np.array([np.nanmax(x[j:i + 1], initial=-np.inf) for i, j in enumerate(lo)])
  cond = (steps >= c["learning_starts"] + S3_STEPS) & (best < S3_MAX)
  return cond, best, S3_MAX, lambda v: f"success_rate ≤ {v:.2f} < {S3_MAX:g} in every iteration of the last " \
                                       f"{S3_STEPS // 1000}k steps"


def _s5(q1, q2, calls, steps, c):
  excess = np.abs(q1 - q2) / np.maximum(S5_ABS, S5_REL * np.abs(0.5 * (q1 + q2)))
  val = _trained_last_k(excess, calls > 0, WINDOW, np.min)
  return val > 1.0, val, 1.0, lambda v: f"|q1 − q2| ≥ {v:.3g} × max({S5_ABS:g}, {S5_REL:g}·|q̄|) in each of " \
                                        "the " \
                                        f"last {WINDOW} iterations"


def _flat(x, steps, c, baseline, margin):
  best = np.fmax.accumulate(_last_k(x, 3, np.median))
  thr = baseline + margin
  cond = (steps >= max(FLAT_MIN_STEPS, FLAT_MIN_FRAC * c["total"])) & (np.cumsum(np.isfinite(x)) >= 3) & (best < thr)
  return cond, best, thr, lambda v: f"ep_rew_mean never above {v:.2f} (best median of 3) < {thr:.2f}"


def _s6(x, steps, c):
  if c["env_id"] not in RANDOM_RETURN or not c["env_id"].endswith("Dense-v4"):
    return np.zeros(x.shape, bool), x, np.nan, None
  ref = RANDOM_RETURN[c["env_id"]]
  return _flat(x, steps, c, ref, max(P1_MARGIN_ABS, P1_MARGIN_REL * abs(ref)))


def _h4(x, steps, c):
  if c["env_id"].endswith("Dense-v4"):
    return np.zeros(x.shape, bool), x, np.nan, None
  return _flat(x, steps, c, H4_MAX, 0.0)


def _push_stuck(x, alpha, steps, c, large_alpha: bool):
  if "Push" not in c["env_id"] or c["pixels"]:  # pixel runs plateau for ~2M steps by design: V1-V7
    return np.zeros(x.shape, bool), x, PUSH_STUCK_MAX, None
  lo = np.searchsorted(steps, steps - PUSH_STUCK_WINDOW, side="right")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    sr = np.array([np.nanmean(x[j:i + 1]) for i, j in enumerate(lo)])
    a = np.array([np.nanmean(alpha[j:i + 1]) for i, j in enumerate(lo)])
  big = np.nan_to_num(a, nan=0.0) > H1_ALPHA
  cond = (steps >= PUSH_STUCK_STEPS) & (sr <= PUSH_STUCK_MAX) & (big if large_alpha else ~big)
  return cond, sr, PUSH_STUCK_MAX, lambda v: f"success_rate {v:.3f} ≤ {PUSH_STUCK_MAX:g} (mean over the last " \
      f"{PUSH_STUCK_WINDOW // 1000}k steps) with ent_coef ≈ {a[np.argmax(cond)]:.3g}, γ {c['gamma']:g}, " \
      f"HER {'on' if c['her'] else 'OFF'}"


def _h1(x, alpha, steps, c):
  return _push_stuck(x, alpha, steps, c, True)


def _h2(x, alpha, steps, c):
  return _push_stuck(x, alpha, steps, c, False)


def _h2_td3(x, steps, c):
  return _push_stuck(x, np.zeros_like(x), steps, c, False)


def _h11(alpha, x, steps, c):
  if not c["auto"] or c["env_id"].endswith("Dense-v4"):
    return np.zeros(x.shape, bool), alpha, H11_ALPHA, None
  sr = _last_k(x, 3, np.median)
  cond = (alpha < H11_ALPHA) & (sr < H11_SUCCESS)
  return cond, alpha, H11_ALPHA, lambda v: f"auto ent_coef {v:.3g} < {H11_ALPHA:g} while success_rate < " \
                                           f"{H11_SUCCESS:g}"


def _window_mean(x, steps, width):
  """r[i] = mean of the finite x over the iterations of the last `width` steps up to i; NaN until `width` steps
  have passed (or without a finite value)."""
  lo = np.searchsorted(steps, steps - width, side="right")
  fin = np.isfinite(x)
  cs = np.concatenate([[0.0], np.cumsum(np.where(fin, x, 0.0))])
  cn = np.concatenate([[0], np.cumsum(fin)])
  hi = np.arange(1, len(x) + 1)
  n = cn[hi] - cn[lo]
  mean = np.where(n > 0, (cs[hi] - cs[lo]) / np.maximum(n, 1), np.nan)
  return np.where(steps >= width, mean, np.nan)


def _pixel_success(x, steps, c):
  """(windowed success, best window so far); all-False conditions for state runs come from c["pixels"]."""
  sr = _window_mean(x, steps, PIX_WINDOW)
  return sr, np.fmax.accumulate(sr)


def _off(x):
  return np.zeros(np.shape(x), bool)


def q_all_failure(gamma: float, T: int = 50) -> float:
  """Q of a state that fails for the rest of a T-step episode with sparse reward −1: −(1 − γ^T)/(1 − γ)."""
  return -(1.0 - gamma ** T) / (1.0 - gamma)


def _v1(x, critic, actor, q, steps, c):
  if not c["pixels"]:
    return _off(x), x, PIX_P1_CRITIC, None
  sr, _ = _pixel_success(x, steps, c)
  cl = _window_mean(critic, steps, PIX_WINDOW)
  qw, aw = _window_mean(q, steps, PIX_WINDOW), _window_mean(actor, steps, PIX_WINDOW)
  q_fail = q_all_failure(c["gamma"])
  fell = cl <= PIX_P1_FALL * np.fmax.accumulate(cl)
  cond = (steps >= PIX_P1_STEPS) & (sr < PIX_FLAT) & (cl <= PIX_P1_CRITIC) & fell
  i = int(np.argmax(cond))
  return cond, cl, PIX_P1_CRITIC, lambda v: f"success {sr[i]:.3f} < {PIX_FLAT:g}, critic loss {v:.3g} (fell from " \
      f"{np.fmax.reduce(cl[:i + 1]):.3g}), q_min_mean {qw[i]:.2f} (all-failure value {q_fail:.2f} at γ " \
      f"{c['gamma']:g}), actor loss {aw[i]:.3g} (means over the last {PIX_WINDOW // 1000}k steps)"


def _v2(x, critic, actor, steps, c):
  if not c["pixels"]:
    return _off(x), x, PIX_FLAT, None
  sr, _ = _pixel_success(x, steps, c)
  cl, aw = _window_mean(critic, steps, PIX_WINDOW), _window_mean(actor, steps, PIX_WINDOW)
  was_flat = np.maximum.accumulate(np.nan_to_num(sr, nan=np.inf) < PIX_FLAT)
  cond = was_flat & (sr >= PIX_FLAT)
  i = int(np.argmax(cond))
  return cond, sr, PIX_FLAT, lambda v: f"success {v:.3f} ≥ {PIX_FLAT:g}: onset at {steps[i]:,} steps (book Step 2: " \
      f"~2.2M); critic loss {cl[i]:.3g} vs its minimum {np.fmin.reduce(cl[:i + 1]):.3g} so far (book: rising to " \
      f"0.3+), actor loss {aw[i]:.3g} (means over the last {PIX_WINDOW // 1000}k steps)"


def _v3(x, critic, steps, c):
  if not c["pixels"]:
    return _off(x), x, PIX_PHASE3, None
  sr, _ = _pixel_success(x, steps, c)
  cl = _window_mean(critic, steps, PIX_WINDOW)
  cond = sr >= PIX_PHASE3
  i = int(np.argmax(cond))
  return cond, sr, PIX_PHASE3, lambda v: f"success {v:.3f} ≥ {PIX_PHASE3:g} at {steps[i]:,} steps, critic loss " \
      f"{cl[i]:.3g} (book 0.15–0.35): pixel cost {steps[i] / PIX_STATE_STEPS:.2f}× the {PIX_STATE_STEPS // 10**6}M " \
      "of the ch5 state run (book: 4.4M / 2M = 2.2×)"


def _still_flat(x, steps, c, since: int, applies: bool, what: str):
  if not (c["pixels"] and applies):
    return _off(x), x, PIX_FLAT, None
  _, best = _pixel_success(x, steps, c)
  cond = (steps >= since) & (best < PIX_FLAT)
  return cond, best, PIX_FLAT, lambda v: f"success never above {v:.3f} (best mean over {PIX_WINDOW // 1000}k " \
      f"steps) < {PIX_FLAT:g} by {since / 1e6:g}M steps{what}"


def _v4(x, steps, c):
  return _still_flat(x, steps, c, PIX_ONSET_BY, True, "")


def _v5(x, steps, c):
  if not c["pixels"] or c["total"] < PIX_ONSET_BY:
    return _off(x), x, PIX_FINAL_MIN, None
  sr, _ = _pixel_success(x, steps, c)
  cond = (steps >= c["total"]) & (sr < PIX_FINAL_MIN)
  return cond, sr, PIX_FINAL_MIN, lambda v: f"final success {v:.3f} < {PIX_FINAL_MIN:g} (mean over the last " \
      f"{PIX_WINDOW // 1000}k of {c['total']:,} steps; book Step 2: 0.95)"


def _v6(x, steps, c):
  return _still_flat(x, steps, c, PIX_DRQ_STEPS, c["drq"] and c["encoder"] == "manipulation",
                     " with drq on and SpatialSoftmax")


def _v7(x, steps, c):
  what = [w for w, on in ((f"encoder_routing {c['routing']}", c["routing"] != "critic"),
                          ("NatureCNN", c["encoder"] == "nature")) if on]
  return _still_flat(x, steps, c, PIX_ROUTING_STEPS, bool(what), " with " + " and ".join(what))


_PIXEL_CHECKS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "V1": (("success_rate", "critic_loss", "actor_loss", "q_min_mean"), _v1),
    "V2": (("success_rate", "critic_loss", "actor_loss"), _v2),
    "V3": (("success_rate", "critic_loss"), _v3),
    "V4": (("success_rate",), _v4), "V5": (("success_rate",), _v5), "V6": (("success_rate",), _v6),
    "V7": (("success_rate",), _v7),
}


_SAC_CHECKS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "S1": (("q_min_mean", "log_prob_mean", "ent_coef", "train_calls"), _s1),
    "S2": (("ent_coef", "n_updates"), _s2),
    "S3": (("success_rate",), _s3),
    "S5": (("q1_mean", "q2_mean", "train_calls"), _s5),
    "S6": (("ep_rew_mean",), _s6),
    "H1": (("success_rate", "ent_coef"), _h1),
    "H2": (("success_rate", "ent_coef"), _h2),
    "H4": (("ep_rew_mean",), _h4),
    "H11": (("ent_coef", "success_rate"), _h11),
    **_PIXEL_CHECKS,
}
_TD3_CHECKS = {**{k: _SAC_CHECKS[k] for k in ("S3", "S5", "S6", "H4")},
               "S1": (("q_min_mean", "train_calls"), _s1_td3), "H2": (("success_rate",), _h2_td3), **_PIXEL_CHECKS}


def _offpolicy_context(config, env_id, steps) -> dict:
  from fetchjax.agents.configs import parse_ent_coef  # ent_coef "auto" / "auto_0.1" / 0.05

  auto, alpha = parse_ent_coef(getattr(config, "ent_coef", 0.0))
  return dict(env_id=env_id or "",
              total=getattr(config, "total_timesteps", None) or int(np.max(steps, initial=0)),
              gamma=getattr(config, "gamma", 0.99), learning_starts=getattr(config, "learning_starts", 0),
              her=getattr(config, "her", False), auto=auto, alpha=alpha,
              # a pixel run: its encoder reads rendered frames (every encoder but "flat" does)
              pixels=getattr(config, "encoder", "flat") != "flat", encoder=getattr(config, "encoder", "flat"),
              routing=getattr(config, "encoder_routing", "separate"), drq=getattr(config, "drq", False))


def _offpolicy_nan_ok(h: dict) -> dict:
  """Learner metrics are NaN in iterations without gradient steps (warm-up); ent_coef_loss when α is fixed."""
  idle = h.get("train_calls", np.zeros(1)) == 0
  ok = {k: idle for k in h if k not in ("timesteps", "n_updates", "train_calls")}
  ok.update({k: True for k in NAN_OK}, ent_coef_loss=True)
  return ok


def check_sac(history: dict, steps, config=None, env_id: str | None = None) -> list[Finding]:
  """Checks `SAC_RULE_IDS` (but H10, an eval rule: `check_eval`) on fetchjax SAC metrics (`sac.make_runner`);
  arguments as `check_ppo`, config a `SACConfig`."""
  return _per_seed(history, steps, _SAC_CHECKS, _offpolicy_nan_ok, _offpolicy_context(config, env_id, steps))


def check_td3(history: dict, steps, config=None, env_id: str | None = None) -> list[Finding]:
  """Checks `TD3_RULE_IDS` (but H10) on fetchjax TD3 metrics (`td3.make_runner`); config a `TD3Config`."""
  return _per_seed(history, steps, _TD3_CHECKS, _offpolicy_nan_ok, _offpolicy_context(config, env_id, steps))


def check_eval(report: dict) -> list[Finding]:
  """H10 on an eval.json report: per training seed, deterministic success within ±1 pp of the do-nothing p₀ on
  the same tasks, or (sparse tasks) mean return within ±1 of the do-nothing return."""
  base = report.get("baseline_do_nothing")
  if not base:
    return []
  sparse = not report.get("env_id", "").endswith("Dense-v4")
  step = int(report.get("checkpoint_steps") or 0)
  out = []
  for i, s in enumerate(report.get("per_seed", [])):
    agg = s["aggregate"]
    d_sr = abs(agg["success_rate"] - base["success_rate"])
    d_ret = abs(agg["return_mean"] - base["return_mean"])
    if d_sr <= H10_SUCCESS_PP + 1e-9 or (sparse and d_ret <= H10_RETURN):
      out.append(_finding("H10", i, step, agg["success_rate"], base["success_rate"],
                          f"eval success {agg['success_rate']:.3f}, return {agg['return_mean']:.2f} vs do-nothing "
                          f"p₀ {base['success_rate']:.3f}, return {base['return_mean']:.2f} on the same "
                          f"{agg['n_episodes']} tasks"))
  return out


__all__ = ["Finding", "Rule", "RULES", "PPO_RULE_IDS", "SAC_RULE_IDS", "TD3_RULE_IDS", "PIXEL_RULE_IDS",
           "RANDOM_RETURN", "q_all_failure", "check_ppo",
           "check_sac", "check_td3", "check_eval", "new_findings", "format_finding",
           "write_diagnostics", "rules_markdown"]


def docs_markdown() -> str:
  """docs/DIAGNOSTICS.md (regenerate with `python -m fetchjax.diagnostics > docs/DIAGNOSTICS.md`)."""
  parts = ["# Training diagnostics",
           "",
           "`python -m fetchjax.train` checks these rules on the metrics of every chunk (and H10 on the final "
           "evaluation), prints each finding once per seed as a `WARN`/`ERROR` line and writes them all to "
           "`diagnostics.json`. They are the book's \"What can go wrong\" tables (ch3 PPO, ch4 SAC, ch5 HER), "
           "corrected where measured runs disagree with the book (\"corrected\": the threshold says what the book "
           "has) and with two rules added (H10, H11), plus the book's ch9 three-phase signature and failure rules "
           "for pixel runs (V1–V7: V1–V3 are info findings that say where a pixel run is); thresholds are the "
           "implemented ones. Generated by "
           "`python -m fetchjax.diagnostics`.",
           ""]
  for name, ids in (("PPO", PPO_RULE_IDS), ("SAC (+HER)", SAC_RULE_IDS), ("TD3 (+HER)", TD3_RULE_IDS)):
    parts += [f"## {name}", "", rules_markdown(ids), ""]
  return "\n".join(parts)


if __name__ == "__main__":
  print(docs_markdown(), end="")
