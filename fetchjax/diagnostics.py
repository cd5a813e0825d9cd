"""Training diagnostics: the "What can go wrong" rules (shared/spec/experiment_contract.md §10, with the §11
corrections) checked from the per-update metrics a run logs. Pure numpy, no JAX.

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
    "FetchReachDense-v4": -9.91,  # 1000 random episodes (experiment_contract.md §7, §11.3)
    "FetchPush-v4": -47.5,        # do-nothing policy, -50 * (1 - p0), p0 = 0.05 (algorithms.md §3.4)
}

WINDOW = 5                    # "consistently" = over the last 5 updates with a finite value (P4, P5, P11)
P1_MIN_STEPS, P1_MIN_FRAC, P1_MIN_UPDATES = 100_000, 0.2, 5
P1_MARGIN_ABS, P1_MARGIN_REL = 1.0, 0.1
P2_MIN_STEPS, P2_WINDOW_STEPS = 200_000, 50_000
P3_MAX, P3_EARLY_STEPS = 100.0, 50_000
P4_MAX = 0.05
P5_MIN = 0.8
P6_MAX, P6_UPDATES = 1e-3, 3
P7_RATIO, P7_EARLY_FRAC, P7_EARLY_STEPS = 0.1, 0.25, 250_000
P11_MAX, P11_WARMUP_FRAC = 0.0, 0.1
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
  source: str     # book lines / spec section
  severity: str = "warning"


RULES: dict[str, Rule] = {r.id: r for r in [
    Rule("NAN", "NaN/inf in a training metric", "all logged metrics",
         f"any non-finite value (NaN allowed in {', '.join(NAN_OK)}: no episode ended / constant returns)",
         "numerical blow-up (simulator or losses)",
         "always an error: check observations for NaN (E9), lower the lr, check rewards",
         "L578 (E9), L3844–3848 (S8)", "error"),
    Rule("P1", "ep_rew_mean flat at the random baseline", "rollout/ep_rew_mean",
         f"best median-of-3 ep_rew_mean < baseline + max({P1_MARGIN_ABS:g}, {P1_MARGIN_REL:g}·abs(baseline)) after "
         f"≥ max({P1_MIN_STEPS // 1000}k steps, {P1_MIN_FRAC:.0%} of total), ≥ {P1_MIN_UPDATES} finite updates; "
         "baseline = max(random return, the run's first ep_rew_mean); random return −9.91 FetchReachDense-v4, "
         "−47.5 FetchPush-v4, else unknown (corrected: book says −20)",
         "obs/action shapes wrong or goal not in the policy input",
         "policy input = [achieved_goal, desired_goal, observation], shapes (3,),(3,),(10,)", "L2795–2806, §11.3"),
    Rule("P2", "no success after 200k steps", "rollout/success_rate",
         f"success_rate = 0 in every update of the last {P2_WINDOW_STEPS // 1000}k steps, once ≥ "
         f"{P2_MIN_STEPS // 1000}k steps",
         "sparse env id used", "train PPO on FetchReachDense-v4: rewards should be continuous in [−1, 0]",
         "L2808–2812"),
    Rule("P3", "value loss huge early", "train/value_loss",
         f"median value_loss so far > {P3_MAX:g} within the first {P3_EARLY_STEPS // 1000}k steps (or first update)",
         "reward scale or wrong GAE returns (returns should lie in ~[−50, 0])", "check the rewards and GAE/returns",
         "L2814–2818"),
    Rule("P4", "KL too large", "train/approx_kl",
         f"median of the last {WINDOW} updates > {P4_MAX:g} (healthy < 0.03)",
         "learning rate too high", "lr 3e-4 → 1e-4 or n_epochs 10 → 5", "L2820–2824, L2743"),
    Rule("P5", "clipping saturated", "train/clip_fraction",
         f"> {P5_MIN:g} in each of the last {WINDOW} updates (book: ≈ 1.0 every update; healthy 0.1–0.3)",
         "updates too aggressive", "lower the lr, then clip_range 0.2 → 0.1; check advantage normalisation",
         "L2826–2830, L2744"),
    Rule("P6", "not learning", "train/clip_fraction",
         f"< {P6_MAX:g} in every update after the first, checked from update {P6_UPDATES + 1} (book: always 0.0)",
         "lr too low or optimiser not attached", "the gradient norm must be ≠ 0; look for stopped gradients",
         "L2832–2836"),
    Rule("P7", "policy collapse (corrected: std, not entropy_loss)", "train/std",
         f"std < {P7_RATIO:g} × exp(log_std_init) within the first min({P7_EARLY_FRAC:.0%} of total, "
         f"{P7_EARLY_STEPS // 1000}k) steps (a > 10× drop; healthy 1.0 → 0.1–0.3 over 500k)",
         "log_std → −∞", "ent_coef 0.01", "L2838–2842, §11.1"),
    Rule("P11", "critic not learning", "train/explained_variance",
         f"median of the last {WINDOW} updates ≤ {P11_MAX:g} after {P11_WARMUP_FRAC:.0%} of total steps "
         "(healthy 0.5–0.9)", "value targets or critic broken", "check the returns/targets of the value loss",
         "L2441"),
]}
PPO_RULE_IDS = ["NAN", "P1", "P2", "P3", "P4", "P5", "P6", "P7", "P11"]


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


def _p4(x, steps, c):
  val = _last_k(x, WINDOW, np.median)
  return val > P4_MAX, val, P4_MAX, lambda v: f"approx_kl {v:.3g} > {P4_MAX:g} (median of the last {WINDOW} " \
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


def _check_nan(h: dict, steps, seed) -> list[Finding]:
  bad = {k: ~np.isfinite(v) if k not in NAN_OK else np.isinf(v) for k, v in h.items()}
  any_bad = np.any(list(bad.values()), axis=0)
  if not any_bad.any():
    return []
  i = int(np.argmax(any_bad))
  names = [k for k in h if bad[k][i]]
  what = ", ".join(f"{k} = {h[k][i]}" for k in names)
  return [_finding("NAN", seed, steps[i], h[names[0]][i], np.nan, f"non-finite {what}")]


def check_ppo(history: dict, steps, config=None, env_id: str | None = None) -> list[Finding]:
  """Checks `PPO_RULE_IDS` on fetchjax PPO metrics.

  history[name]: [n_seeds, n_updates] (or [n_updates] for one seed), names as `ppo.make_runner` logs them;
  steps: [n_updates] env steps per seed after each update (ascending); config: the run's `PPOConfig` (its
  total_timesteps, learning_rate, n_epochs, clip_range, ent_coef, log_std_init, env_id; defaults if absent).
  Returns the first firing of each rule for each seed, ordered by seed, then rule.
  """
  steps = np.asarray(steps, dtype=np.int64).reshape(-1)
  h = {k: np.atleast_2d(np.asarray(v, dtype=np.float64)) for k, v in history.items() if k != "timesteps"}
  n_seeds = next(iter(h.values())).shape[0] if h else 0
  for k, v in h.items():
    if v.ndim != 2 or v.shape != (n_seeds, len(steps)):
      raise ValueError(f"history[{k!r}] has shape {v.shape}; expected [{n_seeds}, {len(steps)}] = [seeds, updates]")
  if not len(steps) or not h:
    return []
  c = dict(env_id=env_id or getattr(config, "env_id", ""),
           total=getattr(config, "total_timesteps", None) or int(steps[-1]),
           lr=getattr(config, "learning_rate", 3e-4), n_epochs=getattr(config, "n_epochs", 10),
           clip_range=getattr(config, "clip_range", 0.2), ent_coef=getattr(config, "ent_coef", 0.0),
           log_std_init=getattr(config, "log_std_init", 0.0))
  findings = []
  for seed in range(n_seeds):
    hs = {k: v[seed] for k, v in h.items()}
    findings += _check_nan(hs, steps, seed)
    for rule_id, (metric, check) in _PPO_CHECKS.items():
      if metric in hs:
        with np.errstate(invalid="ignore"):
          cond, val, thr, measure = check(hs[metric], steps, c)
        if cond.any():
          i = int(np.argmax(cond))
          findings.append(_finding(rule_id, seed, steps[i], val[i], thr, measure(val[i])))
  return findings


__all__ = ["Finding", "Rule", "RULES", "PPO_RULE_IDS", "RANDOM_RETURN", "check_ppo", "new_findings", "format_finding",
           "write_diagnostics", "rules_markdown"]
