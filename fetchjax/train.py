"""Train an agent on a Fetch task, N seeds vmapped in one program, into a run directory.

    python -m fetchjax.train                                  # PPO, FetchReachDense-v4, seed 0, preset for this device
    python -m fetchjax.train --algo ppo --env FetchReachDense-v4 --seeds 0-4 --total-steps 500000 --run-dir runs/x
    python -m fetchjax.train --resume runs/x [--total-steps 1000000]

The run directory (fetchjax/runs.py) gets meta.json, full-state orbax checkpoints, TensorBoard logs with SB3's
metric names, metrics.npz, eval.json (100 deterministic episodes per seed on the book's eval tasks),
learning_curve.png, an MP4 of evaluation episodes and diagnostics.json. `--set key=value` overrides any field of
the algorithm's config (e.g. `--set learning_rate=1e-4 --set normalize_obs=true`).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import fetchjax  # noqa: F401  (XLA flags before JAX starts)
import jax
import numpy as np

from fetchjax import agents, envs, runs

DEFAULT_ENV = "FetchReachDense-v4"


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, not the usage block
    print(f"fetchjax.train: error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def _parse_value(text: str):
  low = text.lower()
  if low in ("true", "false"):
    return low == "true"
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  if "," in text:
    return tuple(_parse_value(t) for t in text.split(","))
  return text


def parse_overrides(items: list[str]) -> dict:
  out = {}
  for item in items or []:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--set expects key=value, got {item!r}")
    out[key.strip().replace("-", "_")] = _parse_value(value.strip())
  return out


def default_preset(algo: str = "ppo", env_id: str = DEFAULT_ENV, her: bool = False) -> str:
  """The book's settings on CPU (for off-policy + HER: the ch5 Reach or Push ones), `gpu` on an accelerator."""
  if jax.default_backend() != "cpu":
    return "gpu"
  if algo == "ppo" or not her:
    return "book"
  return "book_her_push" if "Push" in env_id and algo == "sac" else "book_her"


def chunk_updates(num_updates: int, done: int = 0, target_chunks: int = 25) -> int:
  """Updates per jitted call: the largest divisor of num_updates giving >= target_chunks calls (one compile,
  regular progress). Resuming recomputes the same value, so chunk boundaries do not move; a run extended with a
  larger --total-steps gets the largest such size that divides what is left, so it ends exactly at the total."""
  cap = max(1, num_updates // target_chunks)
  chunk = max(d for d in range(1, cap + 1) if num_updates % d == 0)
  if (num_updates - done) % chunk:
    chunk = max(d for d in range(1, cap + 1) if (num_updates - done) % d == 0)
  return chunk


# ----------------------------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------------------------
class TensorBoard:
  """One tensorboardX writer per seed, in RUN_DIR/tb/seed<N> (one run per directory)."""

  def __init__(self, rd: runs.RunDir, seeds: list[int], names: dict[str, str]):
    from tensorboardX import SummaryWriter

    self.names = names  # the algorithm's metric -> SB3 tag map
    self.writers = [SummaryWriter(str(rd.tb_dir(s))) for s in seeds]

  def log(self, steps, metrics: dict[str, np.ndarray], constants: dict[str, float], first_iteration: int):
    for i, w in enumerate(self.writers):
      for u, step in enumerate(steps):
        for name, tag in self.names.items():
          if name in metrics and np.isfinite(metrics[name][i, u]):
            w.add_scalar(tag, float(metrics[name][i, u]), int(step))
        w.add_scalar("time/iterations", first_iteration + u + 1, int(step))
        w.add_scalar("time/total_timesteps", int(step), int(step))
        for tag, value in constants.items():
          w.add_scalar(tag, value, int(step))
      w.flush()

  def close(self):
    for w in self.writers:
      w.close()


class Progress:
  """One status line: rewritten in place on a terminal, printed every ~10% otherwise (log files, CI)."""

  def __init__(self, total: int, start: int, stream=sys.stderr):
    self.total, self.stream, self.tty = total, stream, stream.isatty()
    self.t0, self.s0, self.next_pct = time.time(), start, 0

  def update(self, step: int, success: float, ret: float):
    elapsed = time.time() - self.t0
    rate = (step - self.s0) / max(elapsed, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    pct = 100.0 * step / self.total
    bar = "#" * int(pct / 5) + "-" * (20 - int(pct / 5))
    line = (f"[{bar}] {step:>{len(str(self.total))},}/{self.total:,} steps {pct:5.1f}%  {rate:,.0f} steps/s  "
            f"success {success:.2f}  return {ret:.2f}  eta {_fmt_time(eta)}")
    if self.tty:
      print("\r" + line, end="", file=self.stream, flush=True)
    elif pct >= self.next_pct or step >= self.total:
      print(line, file=self.stream, flush=True)
      self.next_pct = pct + 10

  def close(self):
    if self.tty:
      print(file=self.stream, flush=True)


def _fmt_time(s: float) -> str:
  if not math.isfinite(s):
    return "?"
  s = int(round(s))
  return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _nanmean(x) -> float:
  x = np.asarray(x, np.float64)
  return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
  """What to train, from the flags or from a run being resumed."""

  algo: str
  env_id: str
  seeds: list[int]
  config: object
  preset: str
  checkpoint_every: int
  eval_episodes: int
  video_episodes: int
  pause_at: int | None = None


def build_plan(a) -> tuple[runs.RunDir, Plan, dict | None]:
  if a.resume:
    rd = runs.RunDir(a.resume)
    meta = rd.read_meta()
    algo = agents.get(meta["algo"])
    config = algo.config_from_dict(meta["config"])
    if a.total_steps is not None:
      if a.total_steps < meta["total_steps"]:
        raise ValueError(f"--total-steps {a.total_steps:,} is below the run's {meta['total_steps']:,}; "
                         "a resumed run can only be extended")
      config = dataclasses.replace(config, total_timesteps=a.total_steps)
    plan = Plan(meta["algo"], meta["env_id"], meta["seeds"], config, meta.get("preset", "?"),
                a.checkpoint_every or meta.get("checkpoint_every", 0), a.eval_episodes, a.video_episodes,
                a.pause_at)
    return rd, plan, meta
  algo = agents.get(a.algo)
  if a.env not in envs.list_envs():
    raise ValueError(f"unknown env id {a.env!r}; available: {', '.join(envs.list_envs())}")
  seeds = runs.parse_seeds(a.seeds if a.seeds is not None else str(a.seed))
  her_flags = {"her": a.her or None, "n_sampled_goal": a.her_n_sampled_goal,
               "goal_selection_strategy": a.her_strategy, "ent_coef": a.ent_coef, "gamma": a.gamma}
  given = {k: v for k, v in her_flags.items() if v is not None}
  fields = {f.name for f in dataclasses.fields(algo.preset("book"))}
  unsupported = [k for k in given if k not in fields]
  if unsupported:
    flags = {"her": "--her", "n_sampled_goal": "--her-n-sampled-goal", "goal_selection_strategy": "--her-strategy",
             "ent_coef": "--ent-coef", "gamma": "--gamma"}
    raise ValueError(f"{', '.join(flags[k] for k in unsupported)} do(es) not apply to --algo {a.algo}"
                     + (" (HER needs an off-policy algorithm: sac or td3)" if "her" in unsupported else ""))
  if (a.her_n_sampled_goal is not None or a.her_strategy) and not a.her:
    raise ValueError("--her-n-sampled-goal / --her-strategy need --her")
  preset = a.preset or default_preset(a.algo, a.env, bool(a.her))
  if preset not in algo.PRESETS:
    raise ValueError(f"unknown {a.algo} preset {preset!r}; available: {', '.join(sorted(algo.PRESETS))}")
  overrides = {**given, **parse_overrides(a.set)}
  if "ent_coef" in overrides:
    overrides["ent_coef"] = _parse_value(str(overrides["ent_coef"]))
  overrides["env_id"] = a.env
  if a.total_steps is not None:
    overrides["total_timesteps"] = a.total_steps
  if a.n_envs is not None:
    overrides["num_envs"] = a.n_envs
  if a.backend is not None:
    overrides["backend"] = a.backend
  config = algo.preset(preset, **overrides)
  run_dir = a.run_dir or f"runs/{a.algo}_{a.env}_{time.strftime('%Y%m%d-%H%M%S')}"
  return runs.RunDir(run_dir), Plan(a.algo, a.env, seeds, config, preset, a.checkpoint_every or 0,
                                    a.eval_episodes, a.video_episodes, a.pause_at), None


def train(rd: runs.RunDir, plan: Plan, meta: dict | None, quiet: bool = False) -> int:
  algo = agents.get(plan.algo)
  cfg = plan.config
  say = (lambda *x: None) if quiet else (lambda *x: print(*x, file=sys.stderr, flush=True))
  n_seeds, per_update = len(plan.seeds), cfg.rollout_size
  num_updates = cfg.num_updates
  ckpt_every = plan.checkpoint_every or max(per_update, cfg.total_timesteps // 10)

  init, run = algo.make_runner(cfg)
  keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in plan.seeds])
  v_init = jax.jit(jax.vmap(init))
  done_updates, history, steps_hist = 0, {}, np.zeros(0, np.int64)
  if meta is None:  # fresh run
    backend = envs.default_backend() if cfg.backend == "auto" else cfg.backend
    rd.create()
    meta = dict(algo=plan.algo, env_id=plan.env_id, seeds=plan.seeds, total_steps=cfg.total_timesteps,
                n_envs=cfg.num_envs, preset=plan.preset, config=dataclasses.asdict(cfg),
                checkpoint_every=ckpt_every, backend=backend,
                physics="C MuJoCo, stock gymnasium-robotics model (float64)" if backend == "cpu"
                else "MJX-JAX, edited model, float32",
                device=runs.device_info(), versions=runs.versions(), git_commit=runs.git_commit(),
                command=" ".join(sys.argv), created_at=runs.now(), status="running")
    rd.write_meta(meta)
    runner = v_init(keys)
    say(f"run directory {rd.path}: {plan.algo} on {plan.env_id}, seeds {plan.seeds}, {cfg.total_timesteps:,} "
        f"steps each, {cfg.num_envs} envs, preset {plan.preset}, backend {meta['backend']}, "
        f"device {meta['device']['kind']}")
  else:
    target = jax.eval_shape(v_init, keys)
    ckpt_step, restored = rd.restore_checkpoint({"runner": target})
    runner = restored["runner"]
    done_updates = int(np.asarray(runner.train_state.step).reshape(-1)[0])
    if done_updates * per_update != ckpt_step:
      raise runs.RunError(f"checkpoint {ckpt_step} holds {done_updates} updates, not {ckpt_step // per_update}")
    steps_hist, history = rd.load_metrics()
    steps_hist = steps_hist[:done_updates]
    history = {k: v[:, :done_updates] for k, v in history.items()}
    meta = rd.update_meta(total_steps=cfg.total_timesteps, config=dataclasses.asdict(cfg), status="running",
                          resumed_at=meta.get("resumed_at", []) + [dict(step=ckpt_step, at=runs.now())])
    say(f"resuming {rd.path} at {ckpt_step:,} / {cfg.total_timesteps:,} steps per seed")
    if done_updates >= num_updates:
      say("nothing to train: the run is complete (pass a larger --total-steps to extend it)")

  chunk = chunk_updates(num_updates, done_updates)
  t_compile = time.time()
  v_run = jax.jit(jax.vmap(lambda r: run(r, chunk)))
  compiled = v_run.lower(runner).compile()
  compile_s = time.time() - t_compile
  say(f"compiled {chunk} update(s) per call in {compile_s:.1f} s")

  from fetchjax import diagnostics
  tb = TensorBoard(rd, plan.seeds, algo.TB_NAMES)
  check = getattr(diagnostics, f"check_{plan.algo}", None)
  progress = None if quiet else Progress(num_updates * per_update, done_updates * per_update)
  findings_all: list = []
  t0, start_updates = time.time(), done_updates
  last_ckpt = done_updates * per_update
  saved_runner = runner

  def checkpoint(r, n_upd):
    rd.save_checkpoint(n_upd * per_update, {"runner": r})
    rd.save_metrics(steps_hist, history)

  stop_updates = num_updates if plan.pause_at is None else min(num_updates, -(-plan.pause_at // per_update))
  try:
    while done_updates < stop_updates:
      runner, metrics = compiled(runner)
      metrics = {k: np.asarray(v) for k, v in metrics.items()}  # [seeds, chunk]; the only host sync per chunk
      steps = (done_updates + 1 + np.arange(chunk)) * per_update
      first = done_updates
      done_updates += chunk
      steps_hist = np.concatenate([steps_hist, steps])
      history = {k: np.concatenate([history[k], v], 1) if k in history else v for k, v in metrics.items()}
      elapsed = time.time() - t0
      tb.log(steps, metrics, {
          "time/fps": (done_updates - start_updates) * per_update * n_seeds / max(elapsed, 1e-9),
          "time/time_elapsed": elapsed, "rollout/ep_len_mean": 50.0, **algo.tb_constants(cfg)}, first)
      found = check(history, steps_hist, cfg, plan.env_id) if check else []
      for f in diagnostics.new_findings(findings_all, found):
        findings_all.append(f)
        if progress and progress.tty:
          print(file=sys.stderr)
        say(diagnostics.format_finding(f))
      if progress:
        progress.update(int(steps[-1]), _nanmean(metrics["success_rate"][:, -1]),
                        _nanmean(metrics["ep_rew_mean"][:, -1]))
      saved_runner = runner
      if done_updates * per_update - last_ckpt >= ckpt_every or done_updates >= stop_updates:
        checkpoint(runner, done_updates)
        last_ckpt = done_updates * per_update
  except KeyboardInterrupt:
    if progress:
      progress.close()
    checkpoint(saved_runner, int(np.asarray(saved_runner.train_state.step).reshape(-1)[0]))
    rd.update_meta(status="interrupted")
    print(f"interrupted: checkpoint saved at {int(steps_hist[-1]) if len(steps_hist) else 0:,} steps; continue "
          f"with: python -m fetchjax.train --resume {rd.path}", file=sys.stderr)
    tb.close()
    return 130
  finally:
    tb.close()
  if progress:
    progress.close()
  train_s = time.time() - t0
  if done_updates < num_updates:  # --pause-at
    rd.update_meta(status="paused")
    say(f"paused at {done_updates * per_update:,} steps (checkpoint saved); continue with: "
        f"python -m fetchjax.train --resume {rd.path}")
    return 0
  trained_steps = (done_updates - start_updates) * per_update  # by this process
  meta = rd.update_meta(status="trained", trained_steps=int(done_updates * per_update),
                        training_time_sec=train_s, compile_time_sec=compile_s,
                        steps_per_sec=trained_steps * n_seeds / max(train_s, 1e-9),
                        steps_per_sec_per_seed=trained_steps / max(train_s, 1e-9))
  say(f"trained {done_updates * per_update:,} steps x {n_seeds} seed(s) in {train_s:.1f} s "
      f"(+{compile_s:.1f} s compile): {meta['steps_per_sec']:,.0f} env-steps/s")

  finish(rd, plan, cfg, algo, runner, steps_hist, history, findings_all, say)
  return 0


def finish(rd, plan, cfg, algo, runner, steps_hist, history, findings, say) -> None:
  """Evaluation, eval.json, learning curve, video and diagnostics.json once training is done."""
  from fetchjax import diagnostics, eval as fj_eval

  report, meta = None, rd.read_meta()
  if plan.eval_episodes > 0:
    record = plan.video_episodes
    report, out = fj_eval.evaluate(plan.env_id, algo.make_act(cfg), algo.policy_of(runner), plan.seeds,
                                   plan.eval_episodes, 0, True, cfg.backend, record=min(record, plan.eval_episodes))
    report = fj_eval.with_run_info(report, rd.path, int(steps_hist[-1]), meta)
    runs.write_json(rd.path / "eval.json", report)
    say("eval: " + fj_eval.summary_line(report))
    for f in diagnostics.new_findings(findings, diagnostics.check_eval(report)):
      findings.append(f)
      say(diagnostics.format_finding(f))
    if record > 0:
      _video(rd, plan, out, say)
  try:
    from fetchjax import render

    render.plot_learning_curve(steps_hist, {k: history[k] for k in ("success_rate", "ep_rew_mean")},
                               str(rd.path / "learning_curve.png"), f"{plan.algo} {plan.env_id}")
  except Exception as e:  # a missing plotting backend must not lose the run
    say(f"WARN learning curve not written: {type(e).__name__}: {e}")
  diagnostics.write_diagnostics(str(rd.path / "diagnostics.json"), findings,
                                getattr(diagnostics, f"{plan.algo.upper()}_RULE_IDS", []))
  rd.update_meta(status="finished", finished_at=runs.now(),
                 eval_success_rate=report["aggregate"]["success_rate"] if report else None)
  say(f"done: {rd.path}")


def _video(rd, plan, out, say) -> None:
  try:
    from fetchjax import render

    phys = out["physics"][0]  # first training seed: [T, record, ...]
    goals = np.asarray(out["final_dg"][0])
    frames = []
    for e in range(phys.shape[1]):
      traj, mocap = phys[:, e], {}
      if traj.dtype == np.uint32:  # cpu backend: float64 mjSTATE_INTEGRATION bits (with the mocap target)
        states = np.ascontiguousarray(traj).view(np.float64)
        traj = render.qpos_from_physics_state(plan.env_id, states)
        mocap = dict(zip(("mocap_pos", "mocap_quat"), render.mocap_from_physics_state(plan.env_id, states)))
      frames.append(render.render_frames(plan.env_id, np.asarray(traj, np.float64), goals[e], **mocap))
    path = rd.video_path(plan.algo, plan.env_id, plan.seeds[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    render.write_video(np.concatenate(frames), str(path), fps=25)
    say(f"video: {path}")
  except Exception as e:  # no GL backend etc.: warn, keep everything else
    say(f"WARN video not written ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")


def main(argv=None) -> int:
  p = _Parser(prog="python -m fetchjax.train", description=__doc__,
              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--algo", default="ppo", help=f"one of {', '.join(agents.IMPLEMENTED)} (default ppo)")
  p.add_argument("--env", default=DEFAULT_ENV, help=f"default {DEFAULT_ENV}; one of {', '.join(envs.list_envs())}")
  s = p.add_mutually_exclusive_group()
  s.add_argument("--seed", type=int, default=0, help="one training seed (default 0)")
  s.add_argument("--seeds", default=None, help="seeds trained together in one vmapped program: 0-4 or 0,3,7")
  p.add_argument("--total-steps", type=int, default=None, help="env steps per seed (default: the preset's)")
  p.add_argument("--n-envs", type=int, default=None, help="parallel envs per seed (default: the preset's)")
  p.add_argument("--preset", default=None, help="config preset (default: book on CPU, gpu on an accelerator)")
  p.add_argument("--backend", choices=envs.BACKENDS, default=None, help="env physics (default: auto)")
  p.add_argument("--her", action="store_true", default=None, help="Hindsight Experience Replay (sac, td3)")
  p.add_argument("--her-n-sampled-goal", "--n-sampled-goal", type=int, default=None, metavar="K",
                 help="HER relabelled goals per real one (default 4)")
  p.add_argument("--her-strategy", "--goal-selection-strategy", choices=("future", "final", "episode"),
                 default=None, help="HER goal selection (default future)")
  p.add_argument("--ent-coef", default=None, help="SAC entropy coefficient: auto, auto_<init> or a float")
  p.add_argument("--gamma", type=float, default=None, help="discount factor (default: the preset's)")
  p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
  p.add_argument("--run-dir", default=None, help="output directory (default runs/<algo>_<env>_<time>)")
  p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its newest checkpoint")
  p.add_argument("--checkpoint-every", type=int, default=None, help="env steps per seed between checkpoints")
  p.add_argument("--eval-episodes", type=int, default=100, help="deterministic eval episodes per seed (0: skip)")
  p.add_argument("--video-episodes", type=int, default=2, help="eval episodes in the MP4 (0: no video)")
  p.add_argument("--pause-at", type=int, default=None, metavar="STEPS",
                 help="checkpoint and stop once this many steps per seed are done (continue with --resume)")
  p.add_argument("--quiet", action="store_true", help="no progress output")
  a = p.parse_args(argv)
  if a.resume and (a.run_dir or a.set or a.seeds or a.n_envs or a.preset or a.backend or a.algo != "ppo"
                   or a.env != DEFAULT_ENV or a.seed != 0 or a.her or a.her_n_sampled_goal is not None
                   or a.her_strategy or a.ent_coef is not None or a.gamma is not None):
    p.error("--resume takes its settings from the run; only --total-steps, --checkpoint-every, --pause-at, "
            "--eval-episodes, --video-episodes and --quiet may be given with it")
  for name in ("total_steps", "n_envs", "checkpoint_every", "pause_at"):
    v = getattr(a, name)
    if v is not None and v < 1:
      p.error(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
  if a.seed < 0 or a.eval_episodes < 0 or a.video_episodes < 0:
    p.error("--seed, --eval-episodes and --video-episodes must be >= 0")
  try:
    rd, plan, meta = build_plan(a)
  except (runs.RunError, ValueError, TypeError) as e:  # bad flags / --set values / run directory
    print(f"fetchjax.train: error: {e}", file=sys.stderr)
    return 2
  try:
    return train(rd, plan, meta, quiet=a.quiet)
  except runs.RunError as e:
    print(f"fetchjax.train: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
