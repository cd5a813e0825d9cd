"""Throughput profile of this machine: env stepping and end-to-end training, vs num_envs, in one run.

    python -m fetchjax.profile envs  [--envs FetchReach-v4,FetchPush-v4] [--num-envs 1,16,64] [--backends cpu]
    python -m fetchjax.profile train [--algos ppo,sac_her] [--num-envs 8,32] [--backends cpu]
    python -m fetchjax.profile all   --out DIR

envs:  env-steps/s of the full env step (20 physics substeps + observation + reward + auto-reset) and of the
       physics alone (mocap target + 20 substeps; `cpu`: C MuJoCo threaded as the backend does it, state in and
       out of one MjData per thread; `mjx`: the vmapped MJX substeps; `warp`: the Warp Data rebuilt from the
       compact state + 20 substeps, one batch of worlds), compile time and memory per size, beside one CPU
       gymnasium-robotics env. `--warp KEY=VALUE,...` sets warp knobs (contacts_per_env, njmax, graph_mode,
       fresh_jdotv); `--physics fast|exact` the MJX/Warp solver caps.
train: end-to-end training env-steps/s of PPO (FetchReachDense-v4) and SAC+HER (FetchReach-v4, sparse) with
       the device's preset (`book`/`book_her` on CPU, `gpu` on an accelerator) at each num_envs, compile time,
       and the env-vs-learning split: the same env stepped alone for the same number of steps, with random
       actions (env share = train rate / env-only rate; the rest is acting + replay + gradient steps).

Every program is compiled ahead of time (compile time reported), run once untimed, then timed `--repeats` times
(the fastest is reported). Writes DIR/profile.json (device, versions, command, date, settings, every number;
rewritten after each measurement) and DIR/profile.png (log-log throughput vs num_envs, gymnasium-robotics as
horizontal lines). Defaults fit the device: small sizes and the C MuJoCo backend on CPU (envs ~30 s, train
~1 min on 2 cores), 256..16384 MJX envs on an accelerator.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import math
import os
import shlex
import sys
import time
from pathlib import Path

import fetchjax  # noqa: F401  (XLA flags before JAX starts)
import jax
import jax.numpy as jnp
import numpy as np

from fetchjax import envs, runs
from fetchjax.envs.reference import import_gymnasium_robotics

SCHEMA = "fetchjax.profile/1"
MODES = ("envs", "train", "all")
PROFILE_BACKENDS = ("cpu", "mjx", "warp")
TRAIN_ALGOS = {"ppo": "FetchReachDense-v4", "sac_her": "FetchReach-v4"}  # the book's ch3 and ch5 Reach runs
DEFAULT_ENVS = ("FetchReach-v4", "FetchPush-v4")  # the dense variants share the physics
SAC_EPISODE = 50


class UsageError(ValueError):
  """A bad flag value: printed as one `error:` line, exit status 2."""


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, not the usage block
    print(f"fetchjax.profile: error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------------------------------------
# Measuring one program
# ----------------------------------------------------------------------------------------------------------
def memory_info(compiled=None) -> dict:
  """What JAX reports: the compiled program's buffers (arguments + outputs + temporaries, minus aliases) and
  the device allocator's counters (None where the backend has none, e.g. XLA:CPU; the peak is this process's
  so far, so it only grows over a run: read it per size in increasing order)."""
  program = None
  if compiled is not None:
    try:
      ma = compiled.memory_analysis()
      if ma is not None:
        program = int(ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
                      - ma.alias_size_in_bytes)
    except Exception:  # not every backend implements it
      program = None
  stats = jax.devices()[0].memory_stats() or {}
  return {"program_bytes": program, "device_bytes_in_use": stats.get("bytes_in_use"),
          "device_peak_bytes": stats.get("peak_bytes_in_use")}


def measure(program, carry, repeats: int = 1) -> dict:
  """`program(carry) -> (carry, aux)`: compiled AOT, one untimed warm-up call, then `repeats` timed calls, each
  continuing from the previous carry (so e.g. a replay buffer keeps filling). Returns compile_s, run_s (the
  fastest call), memory and the aux of the last call."""
  t0 = time.perf_counter()
  compiled = jax.jit(program).lower(carry).compile()
  compile_s = time.perf_counter() - t0
  carry, aux = jax.block_until_ready(compiled(carry))
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    carry, aux = jax.block_until_ready(compiled(carry))
    best = min(best, time.perf_counter() - t0)
  return {"compile_s": compile_s, "run_s": best, "memory": memory_info(compiled), "aux": aux}


# ----------------------------------------------------------------------------------------------------------
# Env stepping
# ----------------------------------------------------------------------------------------------------------
def gym_rate(env_id: str, steps: int) -> float:
  """Env-steps/s of one CPU gymnasium-robotics env (`gym.make`, Python loop, random actions, resets included)."""
  import gymnasium as gym

  import_gymnasium_robotics()
  e = gym.make(env_id)
  e.reset(seed=0)
  e.action_space.seed(0)
  t0 = time.perf_counter()
  for _ in range(steps):
    *_, terminated, truncated, _ = e.step(e.action_space.sample())
    if terminated or truncated:
      e.reset()
  rate = steps / (time.perf_counter() - t0)
  e.close()
  return rate


def env_rollout(env, steps: int, repeats: int = 1, seed: int = 0) -> dict:
  """The full env step with uniform random actions, `steps` of them in one jitted lax.scan."""
  n = env.num_envs

  def program(carry):
    state, key = carry
    key, sub = jax.random.split(key)

    def body(s, k):
      s = env.step(s, jax.random.uniform(k, (n, 4), minval=-1.0, maxval=1.0))
      return s, None

    state, _ = jax.lax.scan(body, state, jax.random.split(sub, steps))
    return (state, key), None

  state = jax.jit(env.reset)(jax.random.PRNGKey(seed))
  r = measure(program, (state, jax.random.PRNGKey(seed + 1)), repeats)
  return {"env_steps_per_s": n * steps / r["run_s"], "compile_s": r["compile_s"], "memory": r["memory"]}


def fetchjax_rate(env_id: str, backend: str, n: int, steps: int, physics: str = "fast", repeats: int = 1,
                  warp=None) -> dict:
  """Env-steps/s of `n` batched fetchjax envs (full env step), with the compile time of the rollout."""
  env = envs.make(env_id, num_envs=n, backend=backend, physics=physics, **({"warp": warp} if warp else {}))
  r = env_rollout(env, steps, repeats)
  return dict(env=env_id, backend=backend, physics=physics, num_envs=n, steps_per_env=steps, **r)


def _jax_physics(env, steps: int, repeats: int, seed: int = 0) -> dict:
  """mjx, warp: `steps` of the backend's `physics_step` (mocap target + substeps; no kinematics, observation,
  reward or resets) in one jitted scan."""
  be, n = env.backend, env.num_envs

  def program(carry):
    state, key = carry
    key, sub = jax.random.split(key)

    def body(state, k):
      return be.physics_step(state, jax.random.uniform(k, (n, 4), minval=-1.0, maxval=1.0)), None

    state, _ = jax.lax.scan(body, state, jax.random.split(sub, steps))
    return (state, key), None

  state0 = jax.jit(env.reset)(jax.random.PRNGKey(seed)).pipeline_state
  r = measure(program, (state0, jax.random.PRNGKey(seed + 1)), repeats)
  return {"physics_steps_per_s": n * steps / r["run_s"], "physics_compile_s": r["compile_s"]}


def _cpu_physics(env, steps: int, repeats: int, seed: int = 0) -> dict:
  """C MuJoCo as `_HostSim.step` drives it, minus everything but the physics: per env, mj_setState into the
  worker thread's MjData, mocap target from the gripper pose (mj_kinematics), mj_step(nstep=20), mj_getState;
  contiguous env ranges per worker thread. No observations, resets, callbacks or JAX."""
  import mujoco

  host, n = env.backend.host, env.num_envs
  m, gid, nsub = host.m, host.ids.gripper_body, env.task.n_substeps
  spec = mujoco.mjtState.mjSTATE_INTEGRATION
  threads = max(1, min(host.threads, n))
  datas = [mujoco.MjData(m) for _ in range(threads)]  # one hot MjData per thread, as the backend
  states = np.zeros((n, mujoco.mj_stateSize(m, spec)))
  object_xy = jax.vmap(env.sample_task)(jax.random.split(jax.random.PRNGKey(seed), n))[0]
  states[:] = env.backend.physics_state(env.backend.reset(object_xy)[0])  # the backend's own reset states
  actions = np.random.default_rng(seed).uniform(-1.0, 1.0, (steps, n, 4)).astype(np.float32)
  quat_delta = np.array([1.0, 0.0, 1.0, 0.0])
  bounds = np.linspace(0, n, threads + 1).astype(int)

  def work(t, k):
    d = datas[k]
    for i in range(bounds[k], bounds[k + 1]):
      mujoco.mj_setState(m, d, states[i], spec)
      mujoco.mj_kinematics(m, d)
      d.mocap_pos[0] = d.xpos[gid] + actions[t, i, :3] * 0.05
      d.mocap_quat[0] = d.xquat[gid] + quat_delta
      mujoco.mj_step(m, d, nstep=nsub)
      mujoco.mj_getState(m, d, states[i], spec)

  def run_once(pool) -> float:
    t0 = time.perf_counter()
    for t in range(steps):
      if pool is None:
        work(t, 0)
      else:
        for f in [pool.submit(work, t, k) for k in range(threads)]:
          f.result()
    return time.perf_counter() - t0

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    pool = pool if threads > 1 else None
    run_once(pool)  # warm-up, as for the jitted programs
    best = min(run_once(pool) for _ in range(repeats))
  return {"physics_steps_per_s": n * steps / best, "physics_compile_s": None}


def physics_rate(env, steps: int, repeats: int = 1) -> dict:
  fn = _cpu_physics if env.backend_name == "cpu" else _jax_physics
  return fn(env, steps, repeats)


def profile_env(env_id: str, backend: str, n: int, steps: int, physics: str, repeats: int, warp=None,
                env_step_only: bool = False) -> dict:
  env = envs.make(env_id, num_envs=n, backend=backend, physics=physics, **({"warp": warp} if warp else {}))
  row = dict(env=env_id, backend=backend, physics=physics if backend != "cpu" else "c-mujoco", num_envs=n,
             steps_per_env=steps)
  if backend == "warp":
    import dataclasses as _dc

    row["warp"] = {**_dc.asdict(env.backend.config), "contacts_per_env": env.backend.contacts_per_env,
                   "njmax": env.backend.njmax}
  row.update(env_rollout(env, steps, repeats))
  if backend == "warp":  # contacts / constraint rows of the last step vs the buffers
    st = jax.jit(lambda k: env.step(env.reset(k), jnp.zeros((n, 4))).pipeline_state)(jax.random.PRNGKey(0))
    row["warp_capacity"] = env.backend.capacity(st)
  if env_step_only:  # one program per size (e.g. to fit a GPU time budget: each compiles for ~1 min there)
    row.update(physics_steps_per_s=None, physics_compile_s=None, physics_share=None)
    return row
  row.update(physics_rate(env, steps, repeats))
  row["physics_share"] = row["env_steps_per_s"] / row["physics_steps_per_s"]  # of the full step's time
  return row


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------
def _largest_divisor_at_most(n: int, cap: int) -> int:
  return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def train_config(algo: str, backend: str, n: int, steps: int):
  """(agents.Algorithm, config, preset, iterations per call, env steps per env per call) for one profile point.

  PPO: the preset with n_steps = `steps` (minibatch size kept, or the largest divisor of the smaller rollout):
  per transition the learner does the same work as in the preset (n_epochs passes at that minibatch size).
  SAC+HER: the preset with learning_starts 0, so every timed vectorised step trains (`gradient_steps` updates);
  one iteration = one 50-step episode of every env; the buffer holds at least two episodes per env."""
  from fetchjax import agents
  from fetchjax.train import default_preset

  env_id = TRAIN_ALGOS[algo]
  if algo == "ppo":
    agent = agents.get("ppo")
    preset = default_preset("ppo", env_id)
    base = agent.preset(preset)
    batch = _largest_divisor_at_most(n * steps, base.batch_size)
    cfg = agent.preset(preset, n_steps=steps, batch_size=batch, total_timesteps=n * steps)
    return agent, cfg, preset, 1, steps
  agent = agents.get("sac")
  preset = default_preset("sac", env_id, her=True)
  base = agent.preset(preset)
  iters = max(1, round(steps / SAC_EPISODE))
  cfg = agent.preset(preset, her=True, learning_starts=0, buffer_size=max(base.buffer_size, 2 * SAC_EPISODE * n),
                     total_timesteps=SAC_EPISODE * n * iters)
  return agent, cfg, preset, iters, SAC_EPISODE * iters


def profile_train(algo: str, backend: str, n: int, steps: int, repeats: int, seed: int = 0) -> dict:
  agent, cfg, preset, iters, steps_per_env = train_config(algo, backend, n, steps)
  env = envs.make(TRAIN_ALGOS[algo], num_envs=n, backend=backend)
  init, run = agent.make_runner(cfg, env)
  runner = jax.jit(jax.vmap(init))(jax.random.PRNGKey(seed)[None])  # one seed, vmapped like the train CLI

  def program(r):
    return jax.vmap(lambda x: run(x, iters))(r)

  r = measure(program, runner, repeats)
  per_call = n * steps_per_env
  rate = per_call / r["run_s"]
  env_only = env_rollout(env, steps_per_env, repeats, seed)
  env_s = per_call / env_only["env_steps_per_s"]
  metrics = {k: np.asarray(v) for k, v in r["aux"].items()}
  if algo == "ppo":
    grad_steps = cfg.n_epochs * cfg.num_minibatches(n) * iters
  else:  # counted, not assumed: proves the timed call really trained
    grad_steps = int(metrics["train_calls"].sum()) * cfg.gradient_steps
  return dict(algo=algo, env=env.env_id, backend=backend, preset=preset, num_envs=n, steps_per_env=steps_per_env,
              env_steps_per_call=per_call, gradient_steps_per_call=grad_steps, env_steps_per_s=rate,
              compile_s=r["compile_s"], memory=r["memory"], env_only_steps_per_s=env_only["env_steps_per_s"],
              env_only_compile_s=env_only["compile_s"], env_s_per_call=env_s,
              learn_s_per_call=max(r["run_s"] - env_s, 0.0), env_share=min(env_s / r["run_s"], 1.0),
              config=dataclasses.asdict(cfg))


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------
def plot(report: dict, path: str) -> str:
  """One log-log panel per mode: env-steps/s vs num_envs; solid = full env step / training, dashed = physics
  only / env-only at the same size, dotted horizontal = one CPU gymnasium-robotics env."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import NullFormatter

  panels = [k for k in ("envs", "train") if report.get(k)]
  fig = Figure(figsize=(6.4 * max(1, len(panels)), 4.6), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
  colors = [f"C{i}" for i in range(10)]
  for ax, mode in zip(axes, panels):
    rows = [r for r in report[mode] if "error" not in r]
    key = "env" if mode == "envs" else "algo"
    label_of = lambda r, key=key: f"{r[key]} {r['backend']}"  # noqa: E731
    series = list(dict.fromkeys(label_of(r) for r in rows))
    env_color = {}
    for i, name in enumerate(series):
      pts = sorted((r for r in rows if label_of(r) == name), key=lambda r: r["num_envs"])
      x = [r["num_envs"] for r in pts]
      c = colors[i % len(colors)]
      env_color.setdefault(pts[0]["env"], c)
      if mode == "envs":
        ax.plot(x, [r["env_steps_per_s"] for r in pts], "o-", color=c, label=f"{name}: env step")
        if all(r.get("physics_steps_per_s") for r in pts):
          ax.plot(x, [r["physics_steps_per_s"] for r in pts], "x--", color=c, label=f"{name}: physics only")
      else:
        ax.plot(x, [r["env_steps_per_s"] for r in pts], "o-", color=c, label=f"{name}: training ({pts[0]['env']})")
        ax.plot(x, [r["env_only_steps_per_s"] for r in pts], "x--", color=c, label=f"{name}: env only, same size")
    for env_id, c in env_color.items():
      g = report.get("gymnasium", {}).get(env_id)
      if g:
        ax.axhline(g, color=c, ls=":", lw=1.5, label=f"gymnasium-robotics {env_id} (1 env, CPU)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({r["num_envs"] for r in rows})
    if sizes:  # ticks at the measured sizes, as plain numbers
      ax.set_xticks(sizes, [str(x) for x in sizes])
      ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("num_envs")
    ax.set_ylabel("env-steps/s")
    ax.set_title(f"{mode}: {report['device']['kind']} ({report['date'][:10]})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  return path


def _csv(items: list[str] | None) -> list[str]:
  return [t.strip() for item in items or [] for t in item.split(",") if t.strip()]


def _sizes(items: list[str] | None) -> list[int] | None:
  if not items:
    return None
  try:
    sizes = [int(t) for t in _csv(items)]
  except ValueError:
    raise UsageError(f"--num-envs must be positive integers like 1,16,64, got {' '.join(items)!r}") from None
  if not sizes or any(s < 1 for s in sizes):
    raise UsageError(f"--num-envs must be positive integers like 1,16,64, got {' '.join(items)!r}")
  return sorted(dict.fromkeys(sizes))


def _warp_options(items: list[str] | None) -> dict | None:
  """`contacts_per_env=48,njmax=128,graph_mode=WARP,fresh_jdotv=false` -> WarpConfig fields (validated)."""
  if not items:
    return None
  from fetchjax.envs.warp_backend import WarpConfig

  out = {}
  for item in _csv(items):
    key, sep, value = item.partition("=")
    if not sep:
      raise UsageError(f"--warp takes KEY=VALUE items, got {item!r}")
    if key == "tolerance":
      try:
        out[key] = float(value)
      except ValueError:
        raise UsageError(f"--warp tolerance must be a number, got {value!r}") from None
    elif key in ("contacts_per_env", "njmax", "iterations", "ls_iterations"):
      try:
        out[key] = int(value)
      except ValueError:
        raise UsageError(f"--warp {key} must be an integer, got {value!r}") from None
    elif key == "fresh_jdotv":
      if value.lower() not in ("true", "false", "1", "0"):
        raise UsageError(f"--warp fresh_jdotv must be true or false, got {value!r}")
      out[key] = value.lower() in ("true", "1")
    else:
      out[key] = value
  try:
    WarpConfig.of(out)
  except ValueError as e:
    raise UsageError(str(e)) from None
  return out


def defaults(accelerator: bool, nvidia_warp: bool = False) -> dict:
  """Per-device defaults: MJX (both implementations on an NVIDIA GPU with warp-lang) and thousands of envs on an
  accelerator; C MuJoCo and small sizes on CPU."""
  if accelerator:
    return {"backends": ["warp", "mjx"] if nvidia_warp else ["mjx"], "envs_sizes": [256, 1024, 4096, 16384],
            "train_sizes": [256, 1024, 4096, 16384]}
  return {"backends": ["cpu"], "envs_sizes": [1, 16, 64], "train_sizes": [8, 32]}


def parse(argv) -> argparse.Namespace:
  p = _Parser(prog="python -m fetchjax.profile", description=__doc__,
              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("mode", nargs="?", default="envs", choices=MODES, help="what to profile (default envs)")
  p.add_argument("--envs", nargs="+", default=None,
                 help=f"env ids for envs mode (default {','.join(DEFAULT_ENVS)}); one of {', '.join(envs.list_envs())}")
  p.add_argument("--algos", nargs="+", default=None, help=f"train mode (default {','.join(TRAIN_ALGOS)})")
  p.add_argument("--num-envs", nargs="+", default=None,
                 help="sizes, e.g. 1,16,64 (default: 1,16,64 envs / 8,32 train on CPU; 256,...,16384 elsewhere)")
  p.add_argument("--backends", nargs="+", default=None,
                 help="cpu, mjx and/or warp (default: cpu on CPU; warp,mjx on NVIDIA GPUs; mjx elsewhere)")
  p.add_argument("--warp", nargs="+", default=None, metavar="KEY=VALUE",
                 help="warp backend knobs: contacts_per_env=N, njmax=N, graph_mode=WARP|JAX|..., fresh_jdotv=true|false, "
                      "iterations=N, ls_iterations=N, tolerance=X")
  p.add_argument("--steps", type=int, default=None,
                 help="env steps per env per timed call (default 50 envs; train: 64 = PPO n_steps, SAC 1 episode)")
  p.add_argument("--repeats", type=int, default=1, help="timed calls per measurement, fastest kept (default 1)")
  p.add_argument("--physics", default="fast", choices=("fast", "exact"), help="MJX solver profile (default fast)")
  p.add_argument("--env-step-only", action="store_true",
                 help="envs mode: measure the full env step only, not also the physics alone (half the compiles)")
  p.add_argument("--gym-steps", type=int, default=2000,
                 help="steps of the gymnasium-robotics reference per env id (0: skip it)")
  p.add_argument("--out", default=None, help="output directory (default profile_<timestamp>/)")
  a = p.parse_args(argv)
  try:
    a.envs = _csv(a.envs) or list(DEFAULT_ENVS)
    unknown = [e for e in a.envs if e not in envs.TASKS]
    if unknown:
      raise UsageError(f"unknown env {unknown[0]!r}; available: {', '.join(envs.list_envs())}")
    a.algos = _csv(a.algos) or list(TRAIN_ALGOS)
    unknown = [x for x in a.algos if x not in TRAIN_ALGOS]
    if unknown:
      raise UsageError(f"unknown algo {unknown[0]!r}; available: {', '.join(TRAIN_ALGOS)}")
    a.backends = _csv(a.backends) or None
    unknown = [b for b in a.backends or [] if b not in PROFILE_BACKENDS]
    if unknown:
      raise UsageError(f"unknown backend {unknown[0]!r}; choose from {', '.join(PROFILE_BACKENDS)}")
    a.num_envs = _sizes(a.num_envs)
    a.warp = _warp_options(a.warp)
    for name in ("steps", "repeats"):
      v = getattr(a, name)
      if v is not None and v < 1:
        raise UsageError(f"--{name} must be a positive integer, got {v}")
    if a.gym_steps < 0:
      raise UsageError(f"--gym-steps must be >= 0, got {a.gym_steps}")
    a.out = Path(a.out or time.strftime("profile_%Y%m%d-%H%M%S"))
    if a.out.exists() and not a.out.is_dir():
      raise UsageError(f"--out {a.out} exists and is not a directory")
    if (a.out / "profile.json").exists():
      raise UsageError(f"{a.out} already holds a profile.json (never overwritten); choose another --out")
  except UsageError as e:
    p.error(str(e))
  return a


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  a = parse(argv)
  try:
    return run(a, argv)
  except KeyboardInterrupt:
    print(f"interrupted: the measurements so far are in {a.out / 'profile.json'}", file=sys.stderr)
    return 130


def run(a: argparse.Namespace, argv: list[str]) -> int:
  import_gymnasium_robotics()
  accelerator = jax.default_backend() != "cpu"
  dflt = defaults(accelerator, accelerator and envs.default_backend() == "warp")
  backends = a.backends or dflt["backends"]
  modes = ["envs", "train"] if a.mode == "all" else [a.mode]
  sizes = {m: a.num_envs or dflt[f"{m}_sizes"] for m in modes}
  steps = {m: a.steps or (50 if m == "envs" else 64) for m in modes}
  a.out.mkdir(parents=True, exist_ok=True)
  json_path, png_path = a.out / "profile.json", a.out / "profile.png"
  dev = jax.devices()[0]
  report = dict(schema=SCHEMA, mode=a.mode, command=shlex.join(["python", "-m", "fetchjax.profile", *argv]),
                date=runs.now(), device={**runs.device_info(), "name": str(dev)}, versions=runs.versions(),
                git_commit=runs.git_commit(), cpu_count=os.cpu_count(),
                settings=dict(modes=modes, envs=a.envs, algos=a.algos, backends=backends, num_envs=sizes,
                              steps=steps, repeats=a.repeats, physics=a.physics, gym_steps=a.gym_steps,
                              warp=a.warp),
                gymnasium={}, envs=[], train=[])
  say = lambda *x: print(*x, flush=True)  # noqa: E731
  say(f"fetchjax.profile {a.mode}: device {report['device']['kind']} ({dev.platform}), backends {backends}, "
      f"sizes {sizes} -> {a.out}")
  if "mjx" in backends and not accelerator:
    say("note: MJX-JAX on a CPU compiles for ~1 minute per program and steps far slower than C MuJoCo")
  if "warp" in backends and not accelerator:
    say("note: MJX-Warp on a CPU launches its kernels one by one: far slower than C MuJoCo (a correctness path)")
  failures = 0

  def attempt(what: str, fn):
    nonlocal failures
    try:
      return fn()
    except Exception as e:  # e.g. out of memory at the largest size: record it, measure the rest
      failures += 1
      msg = (str(e).strip().splitlines() or [""])[0][:300]
      say(f"{what}: FAILED ({type(e).__name__}: {msg})")
      return {"error": f"{type(e).__name__}: {msg}"}

  gym_ids = list(dict.fromkeys(([*a.envs] if "envs" in modes else [])
                               + ([TRAIN_ALGOS[x] for x in a.algos] if "train" in modes else [])))
  if a.gym_steps:
    for env_id in gym_ids:
      g = attempt(f"gymnasium-robotics {env_id}", lambda: gym_rate(env_id, a.gym_steps))
      report["gymnasium"][env_id] = None if isinstance(g, dict) else g
      if not isinstance(g, dict):
        say(f"{env_id:20s} gymnasium-robotics (1 env, 1 thread): {g:10,.0f} steps/s")
  runs.write_json(json_path, report)

  def vs_gym(env_id, rate):
    g = report["gymnasium"].get(env_id)
    return rate / g if g else None

  if "envs" in modes:
    for env_id in a.envs:
      for backend in backends:
        for n in sizes["envs"]:
          row = attempt(f"{env_id} {backend} num_envs={n}",
                        lambda: profile_env(env_id, backend, n, steps["envs"], a.physics, a.repeats, a.warp,
                                            a.env_step_only))
          row.update(mode="envs", env=env_id, backend=backend, num_envs=n)
          if "error" not in row:
            row["vs_gymnasium"] = vs_gym(env_id, row["env_steps_per_s"])
            pc = row["physics_compile_s"]
            phys = row["physics_steps_per_s"]
            say(f"{env_id:20s} {backend:4s} num_envs={n:6d}: env step {row['env_steps_per_s']:10,.0f} steps/s"
                + (f" ({row['vs_gymnasium']:.2f}x gymnasium)" if row["vs_gymnasium"] else "")
                + (f", physics only {phys:10,.0f} steps/s" if phys is not None else "")
                + f"; compile {row['compile_s']:.1f} s"
                + (f" (physics {pc:.1f} s)" if pc is not None else "") + _mem(row["memory"]))
          report["envs"].append(row)
          runs.write_json(json_path, report)  # after every row: an interrupted run keeps what it measured
  if "train" in modes:
    for algo in a.algos:
      for backend in backends:
        for n in sizes["train"]:
          row = attempt(f"train {algo} {backend} num_envs={n}",
                        lambda: profile_train(algo, backend, n, steps["train"], a.repeats))
          row.update(mode="train", algo=algo, backend=backend, num_envs=n)
          row.setdefault("env", TRAIN_ALGOS[algo])
          if "error" not in row:
            row["vs_gymnasium"] = vs_gym(row["env"], row["env_steps_per_s"])
            say(f"{algo:8s} {row['env']:20s} {backend:4s} num_envs={n:6d}: train {row['env_steps_per_s']:10,.0f} "
                f"env-steps/s, env alone {row['env_only_steps_per_s']:10,.0f} steps/s -> env "
                f"{100 * row['env_share']:.0f}% / learning {100 * (1 - row['env_share']):.0f}% of the time; "
                f"{row['gradient_steps_per_call']} gradient steps per {row['env_steps_per_call']} env steps; "
                f"compile {row['compile_s']:.1f} s" + _mem(row["memory"]))
          report["train"].append(row)
          runs.write_json(json_path, report)
  try:
    plot(report, str(png_path))
    report["files"] = {"json": json_path.name, "png": png_path.name}
  except Exception as e:  # a plotting problem must not lose the numbers
    failures += 1
    say(f"WARN profile.png not written: {type(e).__name__}: {e}")
    report["files"] = {"json": json_path.name, "png": None}
  report["failures"] = failures
  runs.write_json(json_path, report)
  say(f"wrote {json_path} and {png_path}" + (f" ({failures} measurement(s) failed)" if failures else ""))
  return 1 if failures else 0


def _bytes(n: int) -> str:
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:,.1f} {unit}"
  return f"{n} B"


def _mem(m: dict) -> str:
  parts = []
  if m.get("program_bytes") is not None:
    parts.append(f"program {_bytes(m['program_bytes'])}")
  if m.get("device_peak_bytes") is not None:
    parts.append(f"device peak {_bytes(m['device_peak_bytes'])}")
  return f"; memory: {', '.join(parts)}" if parts else ""


if __name__ == "__main__":
  sys.exit(main())
