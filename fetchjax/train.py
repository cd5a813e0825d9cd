"""Train an agent on a Fetch task, N seeds vmapped in one program, into a run directory.

    python -m fetchjax.train                                  # PPO, FetchReachDense-v4, seed 0, preset for this device
    python -m fetchjax.train --algo ppo --env FetchReachDense-v4 --seeds 0-4 --total-steps 500000 --run-dir runs/x
    python -m fetchjax.train --resume runs/x [--total-steps 1000000]
    python -m fetchjax.train --grid learning_rate=1e-4,3e-4 ...   # a sweep: the same as python -m fetchjax.sweep

The run directory (fetchjax/runs.py) gets meta.json, full-state orbax checkpoints, TensorBoard logs with SB3's
metric names, metrics.npz, eval.json (100 deterministic episodes per seed on the book's eval tasks),
learning_curve.png, an MP4 of evaluation episodes and diagnostics.json. `--set key=value` overrides any field of
the algorithm's config (e.g. `--set learning_rate=1e-4 --set normalize_obs=true`); the env's settings (--env,
--n-envs, --backend, --physics, --no-jdotv, --threads) form its own EnvConfig, recorded beside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import time
from pathlib import Path

import fetchjax  # noqa: F401  (XLA flags before JAX starts)
import jax
import numpy as np

from fetchjax import agents, checkpoints, compile_cache, devices, encoders, envs, interrupts, runs
from fetchjax.agents.frames import STACK_KEYS as FRAME_KEYS

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


def default_preset(algo: str = "ppo", env_id: str = DEFAULT_ENV, her: bool = False, pixels: bool = False) -> str:
  """The book's settings on CPU (for off-policy + HER: the ch5 Reach ones, or its Push ones for SAC on a task with
  an object: Push, PickAndPlace, Slide), `gpu` on an accelerator; SAC on rendered frames: the book's ch9 Step 2
  (`book_pixels`, on any device: no GPU pixel preset yet)."""
  if pixels and algo == "sac":
    return "book_pixels"
  if jax.default_backend() != "cpu":
    return "gpu"
  if algo == "ppo" or not her:
    return "book"
  task = envs.TASKS.get(env_id)  # (an unknown id gets its error line where the env is configured)
  return "book_her_push" if algo == "sac" and task is not None and task.has_object else "book_her"


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
  """One tensorboardX writer per seed, in RUN_DIR/tb/seed<N> (one run per directory).

  `resume_step`: the checkpoint a resumed run continues from; events logged after it by the process that was
  stopped are dropped first, so every step has one value, as in the checkpointed history."""

  def __init__(self, rd: runs.RunDir, seeds: list[int], names: dict[str, str], resume_step: int | None = None):
    from tensorboardX import SummaryWriter

    if resume_step is not None:
      for s in seeds:
        truncate_events(rd.tb_dir(s), resume_step)
    self.names = names  # the algorithm's metric -> SB3 tag map
    # tensorboardX names files by the second and opens them with "wb": a writer started in the same second as an
    # earlier one (a quick resume) would truncate that run's events. A per-writer suffix keeps every file.
    suffix = f".{os.getpid()}.{time.time_ns()}"
    self.writers = [SummaryWriter(str(rd.tb_dir(s)), filename_suffix=suffix) for s in seeds]

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


def read_events(path: Path) -> list[bytes]:
  """The serialized Event records of a TensorBoard event file; a record cut off at the end (a killed writer)
  is dropped."""
  import struct

  data, out, pos = path.read_bytes(), [], 0
  while pos + 12 <= len(data):  # TFRecord framing: length u64, crc u32, payload, crc u32
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    if pos + 12 + n + 4 > len(data):
      break
    out.append(data[pos + 12:pos + 12 + n])
    pos += 12 + n + 4
  return out


def truncate_events(seed_dir: Path, last_step: int) -> None:
  """Rewrites the event files in `seed_dir` without the summaries logged after `last_step`."""
  from tensorboardX.proto import event_pb2
  from tensorboardX.record_writer import RecordWriter

  for path in sorted(Path(seed_dir).glob("events.*")):
    records = read_events(path)
    keep = [r for r in records if not (event_pb2.Event.FromString(r).HasField("summary")
                                       and event_pb2.Event.FromString(r).step > last_step)]
    if len(keep) == len(records) and path.stat().st_size == sum(len(r) + 16 for r in records):
      continue
    tmp = path.with_name(path.name + ".tmp")
    w = RecordWriter(str(tmp))
    for r in keep:
      w.write(r)
    w.flush()
    w.close()
    os.replace(tmp, path)


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


def nanmean(x) -> float:
  x = np.asarray(x, np.float64)
  return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
  """What to train, from the flags or from a run being resumed."""

  algo: str
  env: envs.EnvConfig
  seeds: list[int]
  config: object
  preset: str
  checkpoint_every: int
  eval_episodes: int
  video_episodes: int
  pause_at: int | None = None
  checkpoint_buffer: bool = True  # the replay buffer in checkpoints (exact resume) or not (smaller checkpoints)
  devices: int | None = None      # local devices to shard the seeds over (None: as many as divide the seeds)

  @property
  def env_id(self) -> str:
    return self.env.env_id

  @property
  def per_update(self) -> int:
    """Env transitions per seed per update (iteration)."""
    return self.config.rollout_size(self.env.num_envs)

  @property
  def num_updates(self) -> int:
    return self.config.num_updates(self.env.num_envs)

  @property
  def stop_updates(self) -> int:
    """The updates this session trains up to: all of them, or the first at or past --pause-at."""
    return self.num_updates if self.pause_at is None else min(self.num_updates, -(-self.pause_at // self.per_update))

  @property
  def checkpoint_interval(self) -> int:
    """Env steps per seed between checkpoints (--checkpoint-every; default a tenth of the run)."""
    return self.checkpoint_every or max(self.per_update, self.config.total_timesteps // 10)


def build_plan(a) -> tuple[runs.RunDir, Plan, dict | None]:
  if a.resume:
    rd = runs.RunDir(a.resume)
    meta = rd.read_meta()
    algo = agents.get(meta["algo"])
    config = algo.config_from_dict(meta["config"])
    env = agents.env_config_from_meta(meta)
    if meta.get("backend") in envs.BACKENDS:  # the backend "auto" chose then: the checkpoints hold its state
      env = dataclasses.replace(env, backend=meta["backend"])
    if a.total_steps is not None:
      if a.total_steps < meta["total_steps"]:
        raise ValueError(f"--total-steps {a.total_steps:,} is below the run's {meta['total_steps']:,}; "
                         "a resumed run can only be extended")
      config = dataclasses.replace(config, total_timesteps=a.total_steps)
    devices.plan_devices(len(meta["seeds"]), jax.local_device_count(), a.devices)  # one-line errors, here
    plan = Plan(meta["algo"], env, meta["seeds"], config, meta.get("preset", "?"),
                a.checkpoint_every or meta.get("checkpoint_every", 0), a.eval_episodes, a.video_episodes,
                a.pause_at, meta.get("checkpoint_buffer", True), a.devices)
    return rd, plan, meta
  algo = agents.get(a.algo)
  if a.env not in envs.list_envs():
    raise ValueError(f"unknown env id {a.env!r}; available: {', '.join(envs.list_envs())}")
  seeds = runs.parse_seeds(a.seeds if a.seeds is not None else str(a.seed))
  her_flags = {"her": a.her or None, "n_sampled_goal": a.her_n_sampled_goal,
               "goal_selection_strategy": a.her_strategy, "ent_coef": a.ent_coef, "gamma": a.gamma,
               "encoder": a.encoder, "encoder_routing": "critic" if a.critic_encoder else None, "drq": a.drq,
               "frame_stack": a.frame_stack}
  given = {k: v for k, v in her_flags.items() if v is not None}
  fields = {f.name for f in dataclasses.fields(algo.config_cls)}
  unsupported = [k for k in given if k not in fields]
  if unsupported:
    flags = {"her": "--her", "n_sampled_goal": "--her-n-sampled-goal", "goal_selection_strategy": "--her-strategy",
             "ent_coef": "--ent-coef", "gamma": "--gamma", "encoder": "--encoder",
             "encoder_routing": "--critic-encoder", "drq": "--drq/--no-drq", "frame_stack": "--frame-stack"}
    pixel = [k for k in unsupported if k in PIXEL_FIELDS]
    raise ValueError(f"{', '.join(flags[k] for k in unsupported)} do(es) not apply to --algo {a.algo}"
                     + (" (HER needs an off-policy algorithm: sac or td3)" if "her" in unsupported else "")
                     + (" (encoders and frame stacks for pixels are sac/td3 settings)" if pixel else ""))
  if (a.her_n_sampled_goal is not None or a.her_strategy) and not a.her:
    raise ValueError("--her-n-sampled-goal / --her-strategy need --her")
  preset = a.preset or default_preset(a.algo, a.env, bool(a.her), bool(a.pixels or a.strict_pixels))
  if preset not in algo.presets:
    raise ValueError(f"unknown {a.algo} preset {preset!r}; available: {', '.join(sorted(algo.presets))}")
  set_values = parse_overrides(a.set)
  own_flags = {"env_id": "--env", "total_timesteps": "--total-steps", "num_envs": "--n-envs", "backend": "--backend",
               "physics": "--physics", "jdotv": "--no-jdotv", "threads": "--threads", "pixels": "--pixels",
               "strict_pixels": "--strict-pixels", "image_size": "--image-size", "render_mode": "--render-mode"}
  for key, flag in own_flags.items():
    if key in set_values:
      raise ValueError(f"{key} has its own flag: use {flag} instead of --set {key}=...")
  pixels = a.pixels or a.strict_pixels or algo.env_preset(preset).pixels  # book_pixels renders frames itself
  if not pixels and (a.image_size is not None or a.render_mode):
    raise ValueError("--image-size / --render-mode need --pixels")
  if pixels and "hide_achieved_goal" not in fields:
    raise ValueError(f"--pixels needs an off-policy algorithm with a pixel encoder (sac or td3), not --algo {a.algo}")
  if a.strict_pixels:
    if set_values.get("hide_achieved_goal") is False:
      raise ValueError("--strict-pixels hides achieved_goal from the networks: drop --set hide_achieved_goal=false")
    set_values["hide_achieved_goal"] = True
  overrides = {**given, **set_values}
  if "ent_coef" in overrides:
    overrides["ent_coef"] = _parse_value(str(overrides["ent_coef"]))
  if a.total_steps is not None:
    overrides["total_timesteps"] = a.total_steps
  config = algo.preset(preset, **overrides)
  env_flags = {"num_envs": a.n_envs, "backend": a.backend, "physics": a.physics, "threads": a.threads,
               "jdotv": False if a.no_jdotv else None, "pixels": pixels or None,
               "strict_pixels": a.strict_pixels or None, "image_size": a.image_size, "render_mode": a.render_mode}
  env = algo.env_preset(preset, env_id=a.env, **{k: v for k, v in env_flags.items() if v is not None})
  config.check_env(env.num_envs)
  run_dir = a.run_dir or f"runs/{a.algo}_{a.env}_{time.strftime('%Y%m%d-%H%M%S')}"
  devices.plan_devices(len(seeds), jax.local_device_count(), a.devices)  # one-line errors, here
  keep_buffer = a.checkpoint_buffer != "off"
  if not keep_buffer and algo.drop_buffer is None:
    raise ValueError(f"--checkpoint-buffer off: --algo {a.algo} has no replay buffer")
  plan = Plan(a.algo, env, seeds, config, preset, a.checkpoint_every or 0, a.eval_episodes, a.video_episodes,
              a.pause_at, keep_buffer, a.devices)
  if env.pixels:  # e.g. the default 'flat' encoder on pixels: the error line before the env is built
    from fetchjax.envs.pixels import OBS_KEYS as PIXEL_KEYS

    check_env_fits(plan, dict.fromkeys(PIXEL_KEYS))
  return runs.RunDir(run_dir), plan, None


PIXEL_FIELDS = ("encoder", "encoder_routing", "drq", "frame_stack")  # the off-policy configs' pixel settings


def check_env_fits(plan: Plan, obs_spec: dict) -> None:
  """One-line errors (RunError) for a config that cannot read the env's observations, found from the keys of the
  env's observation_spec as the learners find them (before anything is created): pixel settings on an env without
  rendered frames (they need --pixels), a state encoder on a pixel env. `build_plan` asks it first with the pixel
  env's declared keys (no env built yet), the CLIs again with the env they made.

  A pixel env with the default "flat" encoder is an error, not a silent switch to a pixel encoder: every partial
  default (ManipulationExtractor alone, without the critic routing and frame stack) is one of the book's failing
  ch9 configurations (Steps 0/1), so the user picks the working one by name (--preset book_pixels)."""
  algo = agents.get(plan.algo)
  needs = algo.pixel_needs(plan.config)
  image = FRAME_KEYS[0]
  have = ", ".join(sorted(obs_spec))
  if needs and image not in obs_spec:
    what = f"the env's rendered frames (obs[{image!r}]), which this env does not provide (its observation has {have})"
    if plan.preset in algo.presets and algo.pixel_needs(algo.presets[plan.preset]):
      raise runs.RunError(f"--preset {plan.preset} needs --pixels: its {', '.join(needs)} read {what}")
    raise runs.RunError(f"{', '.join(needs)} need(s) --pixels: {what}")
  encoder = getattr(plan.config, "encoder", "flat")
  missing = [k for k in encoders.required_keys(encoder) if k not in obs_spec]
  if missing and image in obs_spec:
    if not hasattr(plan.config, "encoder"):
      raise runs.RunError(f"--algo {plan.algo} reads state vectors only; a pixel env ({have}) needs --algo sac or "
                          "td3 (the book's ch9 run: --algo sac --her --preset book_pixels)")
    raise runs.RunError(f"encoder {encoder!r} reads the state vector(s) {missing}, which a pixel env ({have}) does "
                        "not provide: use --preset book_pixels (book ch9 Step 2) or --encoder manipulation|nature")
  if missing:
    raise runs.RunError(f"encoder {encoder!r} reads the observation key(s) {missing}, which this env does not "
                        f"provide (it has {have})")


@dataclasses.dataclass
class Trained:
  """What belongs together: a runner state (a run's [seeds, ...], a sweep's [points, seeds, ...]), the updates
  it holds, their env steps per seed and the metrics history up to it ([..., updates] per metric)."""

  runner: object
  updates: int
  steps: np.ndarray
  history: dict


def train_chunks(compiled, trained: Trained, *, per_update: int, stop_updates: int, ckpt_every: int, stop,
                 on_chunk, checkpoint, line: Progress | None) -> tuple[str, float]:
  """The chunk loop of the train and sweep CLIs: calls `compiled(runner) -> (runner, metrics)` until
  `stop_updates` updates or a stop request. After each chunk, `on_chunk(trained, first, metrics, elapsed)` gets
  the new `Trained` (to keep: a stop request or an interrupt checkpoints it), the chunk's first update and metrics
  ([..., chunk]) and the seconds trained (TensorBoard, diagnostics); then the progress line moves and
  `checkpoint()` runs every `ckpt_every` steps, at the end and on a stop request. Returns ("trained" or
  "interrupted", seconds trained)."""
  t0 = time.time()
  last_ckpt = trained.updates * per_update
  while trained.updates < stop_updates:
    runner, metrics = compiled(trained.runner)
    metrics = {k: np.asarray(v) for k, v in metrics.items()}  # the only host sync per chunk
    first, chunk = trained.updates, next(iter(metrics.values())).shape[-1]
    steps = (first + 1 + np.arange(chunk)) * per_update
    history = {k: np.concatenate([trained.history[k], v], -1) if k in trained.history else v
               for k, v in metrics.items()}
    trained = Trained(runner, first + chunk, np.concatenate([trained.steps, steps]), history)
    on_chunk(trained, first, metrics, time.time() - t0)
    if line:
      line.update(int(steps[-1]), nanmean(metrics["success_rate"][..., -1]),
                  nanmean(metrics["ep_rew_mean"][..., -1]))
    if trained.updates * per_update - last_ckpt >= ckpt_every or trained.updates >= stop_updates or stop.requested:
      with stop.critical():
        checkpoint()
      last_ckpt = trained.updates * per_update
    if stop.requested:
      return "interrupted", time.time() - t0
  return "trained", time.time() - t0


class _Session:
  """One `train` call: the run directory, what this process created in it, and the newest progress (which a
  stop request or an interrupt checkpoints)."""

  def __init__(self, rd: runs.RunDir, plan: Plan, fresh: bool, quiet: bool):
    self.rd, self.plan, self.fresh, self.quiet = rd, plan, fresh, quiet
    self.created = False       # this process made the run directory
    self.started = False       # it made or resumed the run (meta.json says "running")
    self.progress: Trained | None = None
    self.per_update = plan.per_update

  def say(self, *x) -> None:
    if not self.quiet:
      print(*x, file=sys.stderr, flush=True)

  def checkpoint(self) -> None:
    p = self.progress
    algo = agents.get(self.plan.algo)
    runner = p.runner if self.plan.checkpoint_buffer else algo.drop_buffer(p.runner)
    self.rd.save_checkpoint(p.updates * self.per_update, {"runner": runner}, p.steps, p.history,
                            policy=algo.policy_of(self.plan.config, p.runner))
    self.rd.save_metrics(p.steps, p.history)

  def set_status(self, status: str) -> None:
    try:
      self.rd.update_meta(status=status)
    except (OSError, runs.RunError):  # e.g. the full disk that failed the run: the error line says why
      pass

  def remove_if_untrained(self) -> bool:
    """A new run stopped before anything was trained leaves no directory behind (True if removed)."""
    untrained = self.progress is None or self.progress.updates == 0
    if self.fresh and self.created and untrained and not self.rd.checkpoint_steps():
      self.rd.remove_new()
      return True
    return False


def train(rd: runs.RunDir, plan: Plan, meta: dict | None, quiet: bool = False, command: str = "",
          compile_cache: dict | None = None, resume_step: int | None = None) -> int:
  """Trains (fresh when `meta` is None, else resumes from the newest or the `resume_step` checkpoint), then
  evaluates. Returns the exit status: 0, or 130 when stopped by Ctrl-C or SIGTERM. The first signal stops at the
  end of the current chunk with a checkpoint; a second stops at once, checkpointing the last finished chunk."""
  session = _Session(rd, plan, fresh=meta is None, quiet=quiet)
  stop = interrupts.StopRequests(lambda: print(
      "\nstop requested: finishing the current chunk, then checkpoint and exit (press Ctrl-C again to stop at "
      "once)", file=sys.stderr, flush=True))
  with stop:
    try:
      status, findings = _train_loop(session, meta, stop, command, compile_cache, resume_step)
    except KeyboardInterrupt:
      status = "interrupted"
    except BaseException:
      with stop.critical():
        if session.started and not session.remove_if_untrained():
          session.set_status("failed")  # only a run this process made or resumed (a refused resume changes nothing)
      raise
    if status == "interrupted":
      with stop.critical():
        return _interrupted(session)
  if status == "paused":
    return 0
  p = session.progress
  try:
    finish(rd, plan, plan.config, agents.get(plan.algo), p.runner, p.steps, p.history, findings, session.say)
  except KeyboardInterrupt:
    print(f"\ninterrupted during evaluation: training is complete and checkpointed; evaluate with: "
          f"python -m fetchjax.eval --run-dir {shlex.quote(str(rd.path))}", file=sys.stderr)
    return 130
  return 0


def _interrupted(session: _Session) -> int:
  rd = session.rd
  if session.remove_if_untrained():
    print(f"interrupted before training started: removed the new run directory {rd.path}", file=sys.stderr)
    return 130
  if session.progress is not None:
    session.checkpoint()  # a no-op when this chunk was already checkpointed
  session.set_status("interrupted")
  steps = rd.checkpoint_steps()
  print(f"interrupted: checkpoint at {steps[-1] if steps else 0:,} steps; continue with: "
        f"python -m fetchjax.train --resume {shlex.quote(str(rd.path))}", file=sys.stderr)
  return 130


def obs_spec_meta(obs_spec: dict) -> dict:
  """The env's single-frame observation spec as meta.json records it (`load_policy` reads the keys it needs)."""
  return {k: dict(shape=list(v.shape), dtype=str(v.dtype)) for k, v in obs_spec.items()}


def run_meta(plan: Plan, ckpt_every: int, n_devices: int, command: str, compile_cache: dict | None,
             obs_spec: dict) -> dict:
  """meta.json of a new run directory (status "running"); `obs_spec`: the env's `observation_spec`."""
  cfg = plan.config
  backend = envs.default_backend() if plan.env.backend == "auto" else plan.env.backend
  return dict(algo=plan.algo, env_id=plan.env_id, seeds=plan.seeds, total_steps=cfg.total_timesteps,
              n_envs=plan.env.num_envs, preset=plan.preset, config=dataclasses.asdict(cfg),
              env_config=dataclasses.asdict(plan.env), obs_spec=obs_spec_meta(obs_spec),
              checkpoint_every=ckpt_every, checkpoint_buffer=plan.checkpoint_buffer, backend=backend,
              devices=n_devices,
              physics=PHYSICS_DESCRIPTION.get(backend, backend),
              device=runs.device_info(), versions=runs.versions(), git_commit=runs.git_commit(),
              command=command, compile_cache=compile_cache, created_at=runs.now(), status="running")


def _train_loop(session: _Session, meta, stop, command, compile_cache, resume_step) -> tuple[str, list]:
  """Trains until done ("trained"), --pause-at ("paused") or a stop request ("interrupted"); returns that and
  the diagnostics findings. `session.progress` always holds the newest finished chunk."""
  rd, plan, say = session.rd, session.plan, session.say
  algo = agents.get(plan.algo)
  cfg = plan.config
  n_seeds, per_update = len(plan.seeds), plan.per_update
  num_updates = plan.num_updates
  ckpt_every = plan.checkpoint_interval

  env = plan.env.make()
  check_env_fits(plan, env.observation_spec)
  init, run = algo.make_runner(cfg, env)
  keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in plan.seeds])
  v_init = jax.jit(jax.vmap(init))
  n_devices = devices.plan_devices(n_seeds, jax.local_device_count(), plan.devices)
  sharding = devices.seed_sharding(n_devices)  # None on one device
  resumed_from = None
  if meta is None:  # fresh run
    meta = run_meta(plan, ckpt_every, n_devices, command, compile_cache, env.observation_spec)
    with stop.critical():
      rd.create(meta)
      session.created = session.started = True
    if num_updates * per_update != cfg.total_timesteps:
      say(f"note: {cfg.total_timesteps:,} steps is not a whole number of {per_update:,}-step iterations "
          f"({plan.env.num_envs} envs x {per_update // plan.env.num_envs} steps); training {num_updates * per_update:,} "
          "steps per seed")
    session.progress = Trained(devices.shard_seeds(v_init(keys), sharding), 0, np.zeros(0, np.int64), {})
    say(f"run directory {rd.path}: {plan.algo} on {plan.env_id}, seeds {plan.seeds}, {cfg.total_timesteps:,} "
        f"steps each, {plan.env.num_envs} envs, preset {plan.preset}, backend {meta['backend']}, "
        f"device {meta['device']['kind']}" + (f" x {n_devices} (seeds sharded)" if n_devices > 1 else ""))
  else:
    target = jax.eval_shape(v_init, keys)
    if not plan.checkpoint_buffer:
      target = algo.drop_buffer(target)
    with stop.critical():
      ckpt_step, restored, saved_metrics = rd.restore_checkpoint({"runner": target}, resume_step, writable=True)
    runner = restored["runner"]
    if not plan.checkpoint_buffer:  # an empty buffer, filled again from here: the run continues, not bit-exactly
      runner = jax.jit(jax.vmap(algo.fresh_buffer))(runner, v_init(keys))
      say("note: the run's checkpoints leave out the replay buffer (--checkpoint-buffer off): training resumes "
          "with an empty one, so this run no longer reproduces an uninterrupted one bit for bit")
    runner = devices.shard_seeds(runner, sharding)
    done = int(np.asarray(runner.train_state.step).reshape(-1)[0])
    if done * per_update != ckpt_step:
      raise runs.RunError(f"checkpoint {ckpt_step} holds {done} updates, not {ckpt_step // per_update}")
    steps_hist, history = saved_metrics if saved_metrics is not None else rd.load_metrics()  # None: 0.1 layout
    session.progress = Trained(runner, done, steps_hist[:done], {k: v[:, :done] for k, v in history.items()})
    with stop.critical():
      for moved in rd.checkpoints().set_aside_newer_than(ckpt_step):
        say(f"a checkpoint newer than step {ckpt_step:,} was moved to {moved}")
      rd.save_metrics(session.progress.steps, session.progress.history)  # as the checkpoint has it
      meta = rd.update_meta(total_steps=cfg.total_timesteps, config=dataclasses.asdict(cfg), status="running",
                            devices=n_devices,
                            compile_cache=compile_cache,
                            resumed_at=meta.get("resumed_at", []) + [dict(step=ckpt_step, at=runs.now())])
      session.started = True
    say(f"resuming {rd.path} at {ckpt_step:,} / {cfg.total_timesteps:,} steps per seed")
    if done >= num_updates:
      say("nothing to train: the run is complete (pass a larger --total-steps to extend it)")
    resumed_from = ckpt_step

  chunk = chunk_updates(num_updates, session.progress.updates)
  t_compile = time.time()
  v_run = jax.jit(jax.vmap(lambda r: run(r, chunk)))
  lowered = v_run.lower(session.progress.runner)
  lower_s = time.time() - t_compile
  compiled = lowered.compile()  # from the persistent cache when this program was compiled before
  compile_s = time.time() - t_compile
  say(f"compiled {chunk} update(s) per call in {compile_s:.1f} s (tracing {lower_s:.1f} s, XLA "
      f"{compile_s - lower_s:.1f} s)")
  if stop.requested:
    return "interrupted", []

  from fetchjax import diagnostics
  tb = TensorBoard(rd, plan.seeds, algo.tb_names, resume_step=resumed_from)
  start_updates = session.progress.updates
  line = None if session.quiet else Progress(num_updates * per_update, start_updates * per_update)
  findings: list = []

  def on_chunk(trained: Trained, first: int, metrics: dict, elapsed: float) -> None:
    session.progress = trained
    tb.log(trained.steps[first:], metrics, {
        "time/fps": (trained.updates - start_updates) * per_update * n_seeds / max(elapsed, 1e-9),
        "time/time_elapsed": elapsed, "rollout/ep_len_mean": 50.0, **algo.tb_constants(cfg)}, first)
    for f in diagnostics.new_findings(findings, algo.check(trained.history, trained.steps, cfg, plan.env_id)):
      findings.append(f)
      if line and line.tty:
        print(file=sys.stderr)
      say(diagnostics.format_finding(f))

  try:
    status, train_s = train_chunks(compiled, session.progress, per_update=per_update,
                                   stop_updates=plan.stop_updates, ckpt_every=ckpt_every, stop=stop,
                                   on_chunk=on_chunk, checkpoint=session.checkpoint, line=line)
  finally:
    tb.close()
    if line:
      line.close()
  if status == "interrupted":
    return "interrupted", findings
  done = session.progress.updates
  if done < num_updates:  # --pause-at
    with stop.critical():
      rd.update_meta(status="paused")
    say(f"paused at {done * per_update:,} steps (checkpoint saved); continue with: "
        f"python -m fetchjax.train --resume {shlex.quote(str(rd.path))}")
    return "paused", findings
  trained_steps = (done - start_updates) * per_update  # by this process
  with stop.critical():
    meta = rd.update_meta(status="trained", trained_steps=int(done * per_update),
                          training_time_sec=train_s, compile_time_sec=compile_s, trace_time_sec=lower_s,
                          steps_per_sec=trained_steps * n_seeds / max(train_s, 1e-9),
                          steps_per_sec_per_seed=trained_steps / max(train_s, 1e-9))
  say(f"trained {done * per_update:,} steps x {n_seeds} seed(s) in {train_s:.1f} s "
      f"(+{compile_s:.1f} s compile): {meta['steps_per_sec']:,.0f} env-steps/s")
  return "trained", findings


def finish(rd, plan, cfg, algo, runner, steps_hist, history, findings, say, report: dict | None = None) -> None:
  """Evaluation, eval.json, learning curve, video and diagnostics.json once training is done. `report`: the
  run's evaluation made elsewhere (a sweep scores all its points in one program; no video then)."""
  from fetchjax import diagnostics, eval as fj_eval

  meta, record = rd.read_meta(), 0
  if report is None and plan.eval_episodes > 0:
    record = plan.video_episodes
    policies = jax.tree.map(np.asarray, algo.policy_of(cfg, runner))  # gathered: eval runs on one device
    report, out = fj_eval.evaluate(plan.env_id, algo.make_act(cfg), policies, plan.seeds,
                                   plan.eval_episodes, 0, True, plan.env.backend,
                                   record=min(record, plan.eval_episodes), frame_stack=algo.frame_stack(cfg),
                                   env_config=plan.env)
  if report is not None:
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
  diagnostics.write_diagnostics(str(rd.path / "diagnostics.json"), findings, algo.rule_ids)
  rd.update_meta(status="finished", finished_at=runs.now(),
                 eval_success_rate=report["aggregate"]["success_rate"] if report else None)
  say(f"done: {rd.path}")


PHYSICS_DESCRIPTION = {"cpu": "C MuJoCo, stock gymnasium-robotics model (float64)",
                       "mjx": "MJX-JAX, edited model, float32",
                       "warp": "MJX-Warp, stock gymnasium-robotics model, float32"}


def _video(rd, plan, out, say) -> None:
  try:
    from fetchjax import render

    replay = out["replay"]  # [seeds, T, record, ...]: the first training seed's
    goals = np.asarray(out["final_dg"][0])
    frames = []
    for e in range(replay.qpos.shape[2]):
      mocap = {} if replay.mocap_pos is None else dict(mocap_pos=replay.mocap_pos[0, :, e],
                                                         mocap_quat=replay.mocap_quat[0, :, e])
      camera = render.render_frames(plan.env_id, replay.qpos[0, :, e], goals[e], **mocap)
      if "pixels" in out:  # what the agent saw (its pixel observations), scaled up beside the 480 camera
        camera = render.side_by_side(out["pixels"][0, :, e], camera)
      frames.append(camera)
    path = rd.video_path(plan.algo, plan.env_id, plan.seeds[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    render.write_video(np.concatenate(frames), str(path), fps=25)
    say(f"video: {path}")
  except Exception as e:  # no GL backend etc.: warn, keep everything else
    say(f"WARN video not written ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")


def add_run_args(p: argparse.ArgumentParser) -> None:
  """The flags that define what is trained (shared with `python -m fetchjax.sweep`)."""
  p.add_argument("--algo", default="ppo", help=f"one of {', '.join(agents.ALGORITHMS)} (default ppo)")
  p.add_argument("--env", default=DEFAULT_ENV, help=f"default {DEFAULT_ENV}; one of {', '.join(envs.list_envs())}")
  s = p.add_mutually_exclusive_group()
  s.add_argument("--seed", type=int, default=0, help="one training seed (default 0)")
  s.add_argument("--seeds", default=None, help="seeds trained together in one vmapped program: 0-4 or 0,3,7")
  p.add_argument("--total-steps", type=int, default=None, help="env steps per seed (default: the preset's)")
  p.add_argument("--n-envs", type=int, default=None, help="parallel envs per seed (default: the preset's)")
  p.add_argument("--preset", default=None, help="config preset (default: book on CPU, gpu on an accelerator)")
  p.add_argument("--backend", choices=envs.BACKENDS, default=None, help="env physics (default: auto)")
  p.add_argument("--physics", choices=envs.config.PHYSICS, default=None,
                 help="mjx/warp solver settings: fast (capped Newton, default) or exact (the XML's)")
  p.add_argument("--no-jdotv", action="store_true", help="mjx: leave out the J̇·v weld term (to measure its effect)")
  p.add_argument("--threads", type=int, default=None, help="cpu backend: worker threads (default: every core)")
  p.add_argument("--pixels", action="store_true", help="book ch9 observations: a rendered frame per step, "
                 "proprioception and the goals (sac/td3 with a pixel encoder; backend cpu or warp)")
  p.add_argument("--strict-pixels", action="store_true",
                 help="--pixels, and the networks never read achieved_goal (HER still recomputes rewards with it)")
  p.add_argument("--image-size", type=int, default=None, help="--pixels: frame size (default 84)")
  p.add_argument("--render-mode", choices=envs.config.RENDER_MODES, default=None,
                 help="--pixels: native (render at the frame size, default) or resize (480, antialiased resize)")
  p.add_argument("--her", action="store_true", default=None, help="Hindsight Experience Replay (sac, td3)")
  p.add_argument("--her-n-sampled-goal", "--n-sampled-goal", type=int, default=None, metavar="K",
                 help="HER relabelled goals per real one (default 4)")
  p.add_argument("--her-strategy", "--goal-selection-strategy", choices=("future", "final", "episode"),
                 default=None, help="HER goal selection (default future)")
  p.add_argument("--ent-coef", default=None, help="SAC entropy coefficient: auto, auto_<init> or a float")
  p.add_argument("--gamma", type=float, default=None, help="discount factor (default: the preset's)")
  p.add_argument("--encoder", choices=encoders.ENCODERS, default=None,
                 help="sac/td3 observation encoder: flat (state vectors, default), manipulation (book ch9 "
                      "ManipulationCNN + SpatialSoftmax) or nature (NatureCNN); the pixel ones need --pixels")
  p.add_argument("--critic-encoder", action="store_true", default=None,
                 help="sac/td3: one encoder in the critic, trained by the critic loss only (book ch9 Step 2)")
  d = p.add_mutually_exclusive_group()
  d.add_argument("--drq", dest="drq", action="store_true", default=None,
                 help="sac/td3: DrQ random shift of sampled pixels (the book's ch9 script default)")
  d.add_argument("--no-drq", dest="drq", action="store_false", help="sac/td3: no DrQ (book ch9 Step 2)")
  p.add_argument("--frame-stack", type=int, default=None, metavar="K",
                 help="sac/td3: act and learn on stacks of the K newest rendered frames (book ch9: 4)")
  p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")


def add_session_args(p: argparse.ArgumentParser) -> None:
  """The flags that say how a training session runs (shared with `python -m fetchjax.sweep`)."""
  p.add_argument("--compile-cache", default=None, metavar="DIR|off",
                 help=f"JAX persistent compilation cache (default ${compile_cache.ENV_VAR} or "
                      "~/.cache/fetchjax/jax; off: none)")
  p.add_argument("--checkpoint-every", type=int, default=None, help="env steps per seed between checkpoints")
  p.add_argument("--devices", type=int, default=None, metavar="N",
                 help="local devices to shard the seeds over (default: all that divide the number of seeds)")
  p.add_argument("--checkpoint-buffer", choices=("on", "off"), default=None,
                 help="store the replay buffer in checkpoints (default on: resume is exact; off: much smaller "
                      "checkpoints, resume refills the buffer)")
  p.add_argument("--eval-episodes", type=int, default=100, help="deterministic eval episodes per seed (0: skip)")


def check_numbers(a, error) -> None:
  """`error(message)` for a count flag below its minimum."""
  for name in ("total_steps", "n_envs", "checkpoint_every", "pause_at", "threads", "devices", "frame_stack"):
    v = getattr(a, name, None)
    if v is not None and v < 1:
      error(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
  if a.seed < 0 or a.eval_episodes < 0 or getattr(a, "video_episodes", 0) < 0:
    error("--seed, --eval-episodes and --video-episodes must be >= 0")


def main(argv=None) -> int:
  args = sys.argv[1:] if argv is None else list(argv)
  if any(x.split("=")[0] in ("--grid", "--sweep") for x in args):  # a sweep: python -m fetchjax.sweep's flags
    from fetchjax import sweep

    return sweep.main(args)
  p = _Parser(prog="python -m fetchjax.train", description=__doc__,
              formatter_class=argparse.RawDescriptionHelpFormatter)
  add_run_args(p)
  p.add_argument("--run-dir", default=None, help="output directory (default runs/<algo>_<env>_<time>)")
  p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its newest intact checkpoint")
  p.add_argument("--step", type=int, default=None, metavar="STEPS",
                 help="with --resume: continue from this checkpoint (newer ones are moved aside, not deleted)")
  add_session_args(p)
  p.add_argument("--video-episodes", type=int, default=2, help="eval episodes in the MP4 (0: no video)")
  p.add_argument("--pause-at", type=int, default=None, metavar="STEPS",
                 help="checkpoint and stop once this many steps per seed are done (continue with --resume)")
  p.add_argument("--quiet", action="store_true", help="no progress output")
  a = p.parse_args(argv)
  if a.step is not None and not a.resume:
    p.error("--step picks the checkpoint to resume from: it needs --resume RUN_DIR")
  if a.resume and (a.run_dir or a.set or a.seeds or a.n_envs or a.preset or a.backend or a.algo != "ppo"
                   or a.physics or a.no_jdotv or a.threads is not None or a.pixels or a.strict_pixels
                   or a.image_size is not None or a.render_mode
                   or a.env != DEFAULT_ENV or a.seed != 0 or a.her or a.her_n_sampled_goal is not None
                   or a.her_strategy or a.ent_coef is not None or a.gamma is not None
                   or a.encoder or a.critic_encoder or a.drq is not None or a.frame_stack is not None
                   or a.checkpoint_buffer is not None):
    p.error("--resume takes its settings from the run; only --step, --total-steps, --checkpoint-every, "
            "--pause-at, --devices, --eval-episodes, --video-episodes, --compile-cache and --quiet may be given "
            "with it")
  if a.step is not None and a.step < 0:
    p.error(f"--step must be >= 0, got {a.step}")
  check_numbers(a, p.error)
  command = "python -m fetchjax.train " + shlex.join(sys.argv[1:] if argv is None else list(argv))
  cache = compile_cache.enable(compile_cache.resolve(a.compile_cache))  # before anything compiles
  try:
    rd, plan, meta = build_plan(a)
  except (runs.RunError, ValueError, TypeError) as e:  # bad flags / --set values / run directory
    print(f"fetchjax.train: error: {e}", file=sys.stderr)
    return 2
  try:
    return train(rd, plan, meta, quiet=a.quiet, command=command.strip(), compile_cache=cache, resume_step=a.step)
  except runs.RunError as e:
    print(f"fetchjax.train: error: {e}{_resume_hint(rd)}", file=sys.stderr)
    return 2
  except OSError as e:  # a full disk, a directory that became unwritable, ...
    print(f"fetchjax.train: error: {checkpoints.io_error_message(e, 'cannot write')}{_resume_hint(rd)}",
          file=sys.stderr)
    return 1


def _resume_hint(rd: runs.RunDir) -> str:
  """For a run that failed while training: where its work is and how to continue."""
  try:
    if rd.read_meta().get("status") != "failed" or not rd.checkpoint_steps():
      return ""
    step = rd.checkpoint_steps()[-1]
  except (OSError, runs.RunError):
    return ""
  return (f"; the checkpoint at {step:,} steps is intact: fix the cause, then continue with: "
          f"python -m fetchjax.train --resume {shlex.quote(str(rd.path))}")


if __name__ == "__main__":
  try:
    sys.exit(main())
  except KeyboardInterrupt:  # before a run exists (training handles its own interrupts)
    print("fetchjax.train: interrupted", file=sys.stderr)
    sys.exit(130)
