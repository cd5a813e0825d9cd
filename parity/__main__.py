"""`python -m parity [--quick] [--envs ...] [--out DIR] [--runs RUN_DIR ...] [--skip sb3,transfer,mjx,warp]`

Runs every parity check of fetchjax against CPU gymnasium-robotics and Stable-Baselines3 and writes
`parity_report.json` and `parity_report.md` into --out. Exit 0 when every check passes, 1 when one fails, 2 on bad
input. `--quick` (CI, < 10 min on 2 CPU cores): fewer episodes, MJX only for the observation check on
FetchReach-v4 (no MJX trajectories or MJX scripted runs), warp (MJX-Warp, stock model) trajectories on
FetchReach-v4 and FetchPush-v4 with 2 episodes and its scripted push on `--warp-episodes` (default 200) episodes,
short training runs for the transfer checks.
Without --runs, the transfer checks train their own policies (Reach dense with PPO,
Reach sparse with SAC+HER); Push transfer needs a trained run (`--runs runs/push`), a CPU cannot train one in
the suite's time.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

GROUPS = ("rewards", "observations", "trajectories", "samplers", "scripted", "transfer", "sb3")


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, not the usage block
    print(f"python -m parity: error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def _args(argv):
  from parity import envs as penvs

  p = _Parser(prog="python -m parity", description=__doc__.split("\n\n")[1])
  p.add_argument("--quick", action="store_true", help="the CI subset (< 10 min on 2 CPU cores)")
  p.add_argument("--envs", nargs="+", default=list(penvs.ENV_IDS), metavar="ENV_ID",
                 help=f"tasks to check (default: {' '.join(penvs.ENV_IDS)})")
  p.add_argument("--out", default=None, help="report directory (default parity_<time>/)")
  p.add_argument("--runs", nargs="*", default=[], metavar="RUN_DIR",
                 help="trained fetchjax run directories for the transfer checks (instead of training)")
  p.add_argument("--only", default=None, help=f"comma-separated groups to run: {','.join(GROUPS)}")
  p.add_argument("--skip", default="", help="comma-separated groups or 'mjx' / 'warp' (a backend) to skip")
  p.add_argument("--episodes", type=int, default=None, help="scripted-controller episodes (default 200)")
  p.add_argument("--warp-episodes", type=int, default=None,
                 help="scripted-controller episodes on the warp backend (default: --episodes)")
  a = p.parse_args(argv)
  unknown = sorted(set(a.envs) - set(penvs.ENV_IDS))
  if unknown:
    p.error(f"unknown env id(s) {unknown}; parity covers {', '.join(penvs.ENV_IDS)}")
  names = {g for g in (a.only or ",".join(GROUPS)).split(",") if g} | {g for g in a.skip.split(",") if g}
  bad = sorted(names - set(GROUPS) - {"mjx", "warp"})
  if bad:
    p.error(f"unknown group(s) {bad}; groups: {', '.join(GROUPS)}, mjx, warp")
  for flag in ("episodes", "warp_episodes"):
    if getattr(a, flag) is not None and getattr(a, flag) < 1:
      p.error(f"--{flag.replace('_', '-')} must be >= 1")
  for r in a.runs:
    if not os.path.isfile(os.path.join(r, "meta.json")):
      p.error(f"no fetchjax run directory at {r} (meta.json missing)")
  return a


def main(argv=None) -> int:
  a = _args(argv)
  import fetchjax  # noqa: F401  (XLA flags before JAX starts)
  import jax

  from fetchjax import runs as fj_runs
  from parity import envs as penvs, report, sb3, transfer

  groups = [g for g in GROUPS if g in (a.only.split(",") if a.only else GROUPS) and g not in a.skip.split(",")]
  mjx = "mjx" not in a.skip.split(",")
  warp = "warp" not in a.skip.split(",")
  warp_missing = False
  if warp:
    from fetchjax.envs.warp_backend import warp_available

    warp_missing = not warp_available()
    warp = not warp_missing
  out_dir = a.out or time.strftime("parity_%Y%m%d-%H%M%S")
  episodes = a.episodes or 200
  warp_episodes = a.warp_episodes or episodes
  t_start = time.time()
  checks: list[report.Check] = []

  def say(msg):
    print(msg, flush=True)

  def mjx_refusal(env_id: str) -> str | None:
    """Why backend mjx refuses a task (Slide: no box-cylinder collider), from the backend's own check."""
    from fetchjax.envs import mjx_backend, tasks

    try:
      mjx_backend.check_supported(tasks.TASKS[env_id])
    except ValueError as e:
      return str(e)
    return None

  def run(label, fn, *args, **kw):
    t0 = time.time()
    say(f"[{time.time() - t_start:6.0f}s] {label}")
    try:
      res = fn(*args, **kw)
    except Exception as e:  # a crashing check is a failed check, the rest still runs and is reported
      res = [report.Check(label.split(":")[0], label, float("nan"), 0.0, ok=False,
                          detail=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])]
    for c in res:
      if not c.passed:
        say(f"    FAIL {c.env} {c.name}: {c.value:.3g} (tol {c.tol:g}) {c.detail}")
    checks.extend(res)
    say(f"    {sum(c.passed for c in res)}/{len(res)} passed ({time.time() - t0:.0f} s)")

  if warp_missing:
    checks.append(report.skipped("trajectories", "warp backend checks", "warp-lang is not importable "
                                 "(pip install 'mujoco-mjx[warp]')"))
  mjx_envs = [e for e in a.envs if not a.quick or e == "FetchReach-v4"]
  warp_envs = [e for e in a.envs if not a.quick or e in ("FetchReach-v4", "FetchPush-v4")]  # dense: same physics
  for env_id in a.envs:
    refused = mjx_refusal(env_id) if mjx else None
    if refused and (not a.quick or env_id in mjx_envs):  # what the mjx checks below would have run
      checks.append(report.skipped("trajectories", "mjx checks", refused, env_id))
    mjx_runs = mjx and refused is None
    if "rewards" in groups:
      run(f"rewards: {env_id}", penvs.rewards, env_id)
    if "observations" in groups and mjx_runs and env_id in mjx_envs:
      run(f"observations: {env_id} (mjx)", penvs.observation_assembly, env_id, 8 if a.quick else 20)
    if "observations" in groups and warp and env_id in warp_envs:
      run(f"observations: {env_id} (warp)", penvs.observation_assembly, env_id, 8 if a.quick else 20, 0, "warp")
    if "trajectories" in groups:
      run(f"trajectories: {env_id} (cpu)", penvs.trajectories, env_id, "cpu", 2 if a.quick else 5)
      if mjx_runs and not a.quick:  # MJX trajectories: full suite only (a 1-3 min compile per task on a CPU)
        run(f"trajectories: {env_id} (mjx)", penvs.trajectories, env_id, "mjx", 5)
      if warp and env_id in warp_envs:
        run(f"trajectories: {env_id} (warp)", penvs.trajectories, env_id, "warp", 2 if a.quick else 5)
    if "samplers" in groups and "Dense" not in env_id:  # dense: the same samplers
      run(f"samplers: {env_id}", penvs.samplers, env_id, 2000, 200 if a.quick else 400)
    if "scripted" in groups and env_id in ("FetchReach-v4", "FetchPush-v4"):
      run(f"scripted: {env_id} (cpu)", penvs.scripted_success, env_id, "cpu", episodes)
      if mjx and not a.quick:
        run(f"scripted: {env_id} (mjx)", penvs.scripted_success, env_id, "mjx", episodes)
      if warp and (not a.quick or env_id == "FetchPush-v4"):  # the check: scripted push within 3 pp
        run(f"scripted: {env_id} (warp)", penvs.scripted_success, env_id, "warp", warp_episodes)
  if "transfer" in groups:
    run_dirs = list(a.runs)
    given = {fj_runs.RunDir(r).read_meta()["env_id"] for r in run_dirs}
    for env_id in transfer.TRAIN:
      if env_id in a.envs and env_id not in given:
        d = os.path.join(out_dir, "train_" + env_id)
        if os.path.exists(os.path.join(d, "meta.json")):
          run_dirs.append(d)  # a previous suite run's policy
          continue
        try:
          run_dirs.append(transfer.train(env_id, d, a.quick, say))
        except Exception as e:
          checks.append(report.Check("transfer", "training the transfer policy", float("nan"), 0.0, env_id,
                                     ok=False, detail=f"{type(e).__name__}: {e}"[:300]))
    for r in run_dirs:
      run(f"transfer: {r}", transfer.transfer, r, 100)
    if "FetchPush-v4" in a.envs and "FetchPush-v4" not in given:
      checks.append(report.skipped("transfer", "Push policy transfer", "no trained Push run given (--runs DIR); "
                                   "training one takes hours on a CPU", "FetchPush-v4"))
  if "sb3" in groups:
    run("sb3: Stable-Baselines3 parity tests", sb3.run, say)
  dev = jax.devices()[0]
  meta = dict(quick=a.quick, envs=a.envs, groups=groups, mjx=mjx, warp=warp, wall_s=time.time() - t_start,
              device=f"{dev.platform} ({getattr(dev, 'device_kind', '')}, {os.cpu_count()} CPUs)",
              command="python -m parity " + " ".join(shlex.quote(x) for x in (argv if argv is not None
                                                                                else sys.argv[1:])))
  jpath, mpath = report.write(out_dir, checks, meta)
  n_fail = sum(not c.passed for c in checks)
  say(f"parity: {len(checks) - n_fail}/{len(checks)} checks passed in {time.time() - t_start:.0f} s; "
      f"report: {mpath}, {jpath}")
  return 1 if n_fail else 0


if __name__ == "__main__":
  sys.exit(main())
