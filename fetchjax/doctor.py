"""Proof of life: is this machine ready to train fetchjax? (the book's `ch00_proof_of_life.py all`, adapted)

    python -m fetchjax.doctor [--out DIR] [--quick] [--mjx] [--warp]

Steps (each prints OK / WARN / FAIL / SKIP with one detail line):
  device      JAX backend and device (WARN "CPU only" without an accelerator), x64 off (FAIL if on), versions
  envs        every fetchjax env id (also registered by gymnasium-robotics): make + reset + one jitted step with
              the default backend; observation shapes and finiteness, step reward == compute_reward,
              is_success == (distance < threshold)
  render      a headless smoke frame of the Fetch scene (DIR/smoke_frame.png; WARN without an OpenGL backend)
  ppo-smoke   a tiny PPO run through the real training CLI into DIR/ppo_smoke: checkpoint, meta.json (env id,
              versions), the saved policy loads and acts (skipped with --quick)
  parity      C MuJoCo backend vs CPU gymnasium-robotics on FetchReach-v4: same reset seed and actions ->
              same observations and rewards, physics state bit for bit
  mjx         (only with --mjx) one jitted MJX-JAX step; on a CPU it compiles for ~1 minute
  warp        (only with --warp) one jitted MJX-Warp step (stock model) from the state the C MuJoCo backend
              reaches: observation within 1e-4 of C's, contact/constraint buffers not overflowing; the default
              backend on NVIDIA GPUs (then `envs` covers it too)
Writes DIR/doctor.json (each step's status, detail, seconds). Exit status 0 if nothing FAILed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import fetchjax  # noqa: F401  (XLA flags before JAX starts)
import jax
import jax.numpy as jnp
import numpy as np

from fetchjax import envs, runs

SCHEMA = "fetchjax.doctor/1"
STATUSES = ("OK", "WARN", "FAIL", "SKIP")
# pyproject.toml: mujoco + mujoco-mjx 3.17.0 (with warp-lang 1.18.0, the version mujoco-mjx[warp] pins): the
# version the J̇·v term, the warp backend's parity and the gymnasium-robotics 1.4.2 shim are validated against.
PINNED_MUJOCO = "3.17.0"
PARITY_ENV, PARITY_STEPS, PARITY_SEED = "FetchReach-v4", 20, 0
PPO_SMOKE_ENV = "FetchReachDense-v4"


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, not the usage block
    print(f"fetchjax.doctor: error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


@dataclasses.dataclass(frozen=True)
class Result:
  name: str
  status: str
  detail: str
  seconds: float = 0.0
  data: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Context:
  out: Path
  quick: bool = False


def _one_line(e: BaseException) -> str:
  lines = [s.strip() for s in str(e).strip().splitlines() if s.strip()]
  return f"{type(e).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


# ----------------------------------------------------------------------------------------------------------
# Steps: each returns (status, detail, data) or raises (-> FAIL with the exception's first line)
# ----------------------------------------------------------------------------------------------------------
# The jax/jaxlib series fetchjax is tested with: 0.10 (CI: Python 3.11) and 0.11 (Python >= 3.12; 0.11.2 on a
# CPU here and in the H200 image). README "Versions" says what works where.
TESTED_JAX_SERIES = ((0, 10), (0, 11))


def version_notes(v: dict) -> list[str]:
  """Warnings about the installed versions (pure: tested with made-up version dicts)."""
  from fetchjax.xla_flags import parse_version

  notes = []
  jax_v, jaxlib_v = parse_version(v.get("jax")), parse_version(v.get("jaxlib"))
  if jax_v and jaxlib_v and jax_v[:2] != jaxlib_v[:2]:
    notes.append(f"jax {v['jax']} with jaxlib {v['jaxlib']}: install matching versions")
  if jaxlib_v and jaxlib_v[:2] not in TESTED_JAX_SERIES:
    tested = ", ".join(f"{a}.{b}" for a, b in TESTED_JAX_SERIES)
    notes.append(f"jaxlib {v['jaxlib']} is outside the tested series ({tested}.x)")
  if v.get("mujoco") != v.get("mujoco-mjx") or v.get("mujoco") != PINNED_MUJOCO:
    notes.append(f"mujoco {v.get('mujoco')} / mujoco-mjx {v.get('mujoco-mjx')} differ from the validated "
                 f"{PINNED_MUJOCO} (pip install -e . pins it)")
  return notes


def check_device(ctx: Context):
  import os

  d = jax.devices()[0]
  info = runs.device_info()
  v = runs.versions()
  names = ("python", "jax", "jaxlib", "mujoco", "mujoco-mjx", "gymnasium-robotics")  # all of them to doctor.json
  versions = ", ".join(f"{k} {v.get(k) or 'MISSING'}" for k in names)
  versions += f"; XLA_FLAGS {os.environ.get('XLA_FLAGS') or '(none)'}"
  data = {"platform": d.platform, "device": getattr(d, "device_kind", str(d)), "count": jax.device_count(),
          "x64": info["x64"], "versions": v}
  where = f"{d.platform} ({data['device']}, {data['count']} device(s))"
  if info["x64"]:
    return "FAIL", f"{where}: jax_enable_x64 is on; fetchjax's programs and checkpoints are float32 (unset " \
                   "JAX_ENABLE_X64); " + versions, data
  missing = [k for k in ("jax", "mujoco", "mujoco-mjx", "gymnasium-robotics") if not v.get(k)]
  if missing:
    return "FAIL", f"{', '.join(missing)} not installed ({versions})", data
  problems = version_notes(v)
  if d.platform == "cpu":
    problems.insert(0, "CPU only (JAX sees no accelerator; training uses C MuJoCo on host threads)")
  detail = f"{where}, x64 off; {versions}"
  return ("WARN", "; ".join(problems) + f": {detail}", data) if problems else ("OK", detail, data)


def check_envs(ctx: Context):
  import gymnasium as gym

  from fetchjax.envs.reference import import_gymnasium_robotics

  import_gymnasium_robotics()
  ids = envs.list_envs()
  unregistered = [e for e in ids if e not in gym.registry]
  backend = envs.default_backend()
  done, refused, data = [], [], {"env_ids": ids, "backend": backend, "per_env": {}}
  for env_id in ids:
    t0 = time.perf_counter()
    try:
      env = envs.make(env_id, num_envs=2)
    except ValueError as e:  # mjx refuses Slide (no box-cylinder collider): by design, not a broken install
      if backend != "mjx":
        raise
      data["per_env"][env_id] = {"refused": str(e)}
      refused.append(env_id)
      continue
    state = jax.jit(env.reset)(jax.random.PRNGKey(0))
    action = jax.random.uniform(jax.random.PRNGKey(1), (2, 4), minval=-1.0, maxval=1.0)
    nxt = jax.jit(env.step)(state, action)
    obs, last = nxt.obs, nxt.info["final_obs"]
    for name, size in env.observation_size.items():
      if obs[name].shape != (2, size):
        raise AssertionError(f"{env_id}: obs[{name!r}] has shape {obs[name].shape}, expected (2, {size})")
      if not np.isfinite(np.asarray(obs[name])).all():
        raise AssertionError(f"{env_id}: obs[{name!r}] is not finite")
    reward = np.asarray(env.compute_reward(last["achieved_goal"], last["desired_goal"], None))
    got = np.asarray(nxt.reward)
    # sparse: exact; dense (-distance): within 1 ulp. Exact on XLA:CPU since goal_distance keeps FMAs out
    # (docs/PHYSICS.md); the ulp allows for another device's sqrt or contraction
    ulp = np.spacing(np.abs(reward).astype(np.float32)) if env.task.reward_type == "dense" else 0.0
    if not np.all(np.abs(got - reward) <= ulp):
      raise AssertionError(f"{env_id}: step reward {got} != compute_reward {reward}")
    dist = np.linalg.norm(np.asarray(last["achieved_goal"]) - np.asarray(last["desired_goal"]), axis=-1)
    success = np.asarray(nxt.info["is_success"]).astype(bool)
    if not np.array_equal(success, dist < env.task.distance_threshold):
      raise AssertionError(f"{env_id}: is_success {success} disagrees with distance {dist} < "
                           f"{env.task.distance_threshold}")
    data["per_env"][env_id] = {"seconds": time.perf_counter() - t0, "obs_size": env.task.obs_size}
    done.append(env_id)
  detail = f"{len(done)} envs ({', '.join(done)}) make + reset + jitted step on backend {backend}: shapes, " \
           "finite obs, reward == compute_reward (dense: within 1 ulp), is_success == (d < 0.05)"
  if refused:
    detail += f"; refused on {backend} by design: {', '.join(refused)}"
  if unregistered:
    return "FAIL", f"not registered by gymnasium-robotics: {', '.join(unregistered)}; {detail}", data
  return "OK", detail, data


def check_render(ctx: Context):
  from fetchjax import render

  path = ctx.out / "smoke_frame.png"
  try:
    backend = render.gl_backend()
    mean = render.smoke_frame("FetchReachDense-v4", str(path))
  except RuntimeError as e:  # no usable GL stack (render's one-line errors): training works, videos do not
    return "WARN", f"no headless OpenGL, so no videos or frames ({_one_line(e)[:200]}); e.g. apt-get install " \
                   "libegl1 libosmesa6 (Debian/Ubuntu)", {}
  size = path.stat().st_size if path.exists() else 0
  data = {"gl_backend": backend, "path": str(path), "mean_pixel": mean, "bytes": size}
  if size == 0:
    return "FAIL", f"{path} was not written ({backend})", data
  if mean < 5.0:  # an all-black frame: the GL stack runs but draws nothing
    return "FAIL", f"{path} is black (mean pixel {mean:.1f}, GL backend {backend})", data
  return "OK", f"{path.name} ({size:,} bytes, mean pixel {mean:.0f}) rendered headless with {backend}", data


def ppo_smoke_args(run_dir: Path) -> list[str]:
  """A tiny PPO run: 4 envs x 64 steps, 2 updates, 1 epoch, 2 eval episodes, no video."""
  return ["--algo", "ppo", "--env", PPO_SMOKE_ENV, "--n-envs", "4", "--set", "n_steps=64", "--set", "batch_size=128",
          "--set", "n_epochs=1", "--total-steps", "512", "--eval-episodes", "2", "--video-episodes", "0",
          "--quiet", "--run-dir", str(run_dir)]


def check_ppo_smoke(ctx: Context):
  if ctx.quick:
    return "SKIP", "--quick", {}
  from fetchjax import train

  run_dir = ctx.out / "ppo_smoke"
  args = ppo_smoke_args(run_dir)
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err):
      rc = train.main(args)
  except SystemExit as e:  # the CLI's own flag errors
    rc = e.code
  data = {"command": shlex.join(["python", "-m", "fetchjax.train", *args]), "exit_code": rc, "run_dir": str(run_dir)}
  if rc != 0:
    last = [s for s in err.getvalue().splitlines() if s.strip()]
    return "FAIL", f"fetchjax.train exited {rc}: {last[-1] if last else 'no output'}", data
  rd = runs.RunDir(run_dir)
  meta = rd.read_meta()
  steps = rd.checkpoint_steps()
  if not steps:
    return "FAIL", f"no checkpoint in {run_dir}", data
  for key in ("env_id", "versions", "algo", "config", "steps_per_sec"):
    if key not in meta:
      return "FAIL", f"{rd.meta_path} lacks {key!r}", data
  if meta["env_id"] != PPO_SMOKE_ENV or not meta["versions"].get("jax") or not meta["versions"].get("mujoco"):
    return "FAIL", f"{rd.meta_path}: env_id {meta['env_id']!r}, versions {meta['versions']}", data
  policy = fetchjax.load_policy(run_dir)
  env = envs.make(PPO_SMOKE_ENV, num_envs=1, backend="cpu")
  obs = jax.tree.map(lambda x: np.asarray(x)[0], env.reset(jax.random.PRNGKey(0)).obs)
  action = policy(obs)
  if action.shape != (4,) or not np.isfinite(action).all():
    return "FAIL", f"the saved policy returned {action!r}", data
  data.update(checkpoint_step=steps[-1], steps_per_sec=meta["steps_per_sec"], backend=meta.get("backend"),
              eval_success_rate=meta.get("eval_success_rate"))
  return "OK", (f"trained {steps[-1]} steps ({meta['steps_per_sec']:,.0f} env-steps/s, backend {meta.get('backend')}) "
                f"into {run_dir.name}/: checkpoint, meta.json (env_id, versions), policy loads and acts"), data


def check_parity(ctx: Context):
  import gymnasium as gym

  from fetchjax.envs.reference import import_gymnasium_robotics

  import_gymnasium_robotics()
  ref = gym.make(PARITY_ENV).unwrapped
  ref.reset(seed=PARITY_SEED)
  env = envs.make(PARITY_ENV, num_envs=1, backend="cpu")
  state = env.reset_to(np.zeros((1, 2)), ref.goal.copy()[None])  # Reach has no object: the goal is the task
  step = jax.jit(env.step)
  rng = np.random.default_rng(PARITY_SEED)
  max_obs, reward_mismatch, success_mismatch = 0.0, 0, 0
  for _ in range(PARITY_STEPS):
    a = rng.uniform(-1.0, 1.0, 4).astype(np.float32)
    o, r, _, _, info = ref.step(a)
    state = step(state, jnp.asarray(a[None]))
    max_obs = max(max_obs, float(np.max(np.abs(np.asarray(state.obs["observation"][0], np.float64) -
                                               o["observation"]))))
    reward_mismatch += int(np.float32(r) != np.asarray(state.reward[0]))
    success_mismatch += int(bool(info["is_success"]) != bool(np.asarray(state.info["is_success"][0])))
  phys = env.backend.physics_state(state.pipeline_state)[0]
  nq, nv = ref.model.nq, ref.model.nv
  bit_exact = bool(np.array_equal(phys[1:1 + nq], ref.data.qpos) and
                   np.array_equal(phys[1 + nq:1 + nq + nv], ref.data.qvel))
  ref.close()
  data = {"env": PARITY_ENV, "steps": PARITY_STEPS, "seed": PARITY_SEED, "max_abs_obs_diff": max_obs,
          "reward_mismatches": reward_mismatch, "success_mismatches": success_mismatch,
          "physics_state_bit_exact": bit_exact}
  # observations are float32 roundings of the reference's float64 values (tests/test_parity_cpu.py)
  ok = max_obs <= 1e-6 and reward_mismatch == 0 and success_mismatch == 0 and bit_exact
  detail = (f"{PARITY_ENV}, reset seed {PARITY_SEED}, {PARITY_STEPS} random actions: max |obs diff| {max_obs:.1e} "
            f"(float32 rounding), {reward_mismatch} reward / {success_mismatch} success mismatches, physics state "
            f"{'bit-exact' if bit_exact else 'DIFFERS'} vs gymnasium-robotics")
  return ("OK" if ok else "FAIL"), detail, data


def check_mjx(ctx: Context):
  t0 = time.perf_counter()
  env = envs.make("FetchPush-v4", num_envs=2, backend="mjx")
  state = jax.jit(env.reset)(jax.random.PRNGKey(0))
  step = jax.jit(env.step)
  action = jnp.full((2, 4), 0.5)
  compiled = step.lower(state, action).compile()
  compile_s = time.perf_counter() - t0
  nxt = jax.block_until_ready(compiled(state, action))
  finite = all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(nxt.obs))
  data = {"compile_s": compile_s, "device": str(jax.devices()[0])}
  if not finite:
    return "FAIL", "the MJX step produced non-finite observations", data
  return "OK", f"FetchPush-v4 jitted MJX-JAX step on {jax.devices()[0].platform}, compiled in {compile_s:.1f} s", data


def check_warp(ctx: Context):
  from fetchjax.envs.warp_backend import warp_available

  if not warp_available():
    return "FAIL", "warp-lang is not importable (pip install 'mujoco-mjx[warp]'; fetchjax's install pins it)", {}
  t0 = time.perf_counter()
  env = envs.make("FetchPush-v4", num_envs=2, backend="warp")
  ref = envs.make("FetchPush-v4", num_envs=2, backend="cpu")
  key, action = jax.random.PRNGKey(0), jnp.array([[0.5, -0.5, 0.5, 0.0], [-0.5, 0.5, 0.3, 0.0]])
  step = jax.jit(lambda k: env.step(env.reset(k), action))
  compiled = step.lower(key).compile()
  compile_s = time.perf_counter() - t0
  nxt = jax.block_until_ready(compiled(key))
  want = jax.jit(lambda k: ref.step(ref.reset(k), action))(key)
  err = float(np.abs(np.asarray(nxt.obs["observation"]) - np.asarray(want.obs["observation"])).max())
  cap = env.backend.capacity(nxt.pipeline_state)
  data = {"compile_s": compile_s, "device": str(jax.devices()[0]), "obs_error_vs_c": err, "capacity": cap}
  if not np.isfinite(err) or err > 1e-4:
    return "FAIL", f"MJX-Warp step differs from C MuJoCo by {err:.1e} (> 1e-4) after one step", data
  if cap["overflow"]:
    return "WARN", f"MJX-Warp buffers overflow: {cap}", data
  return "OK", (f"FetchPush-v4 jitted MJX-Warp step on {jax.devices()[0].platform}, compiled in {compile_s:.1f} s; "
                f"one step from reset within {err:.1e} of C MuJoCo; {cap['nefc_max']}/{cap['njmax']} constraint rows, "
                f"{cap['nacon_max']}/{cap['naconmax_for_batch']} contacts"), data


def steps(mjx: bool = False, warp: bool = False) -> list[tuple[str, Callable]]:
  """The checks in order. Looked up when called, so tests can replace one."""
  this = sys.modules[__name__]
  names = [("device", "check_device"), ("envs", "check_envs"), ("render", "check_render"),
           ("ppo-smoke", "check_ppo_smoke"), ("parity", "check_parity")] + ([("mjx", "check_mjx")] if mjx else []) \
      + ([("warp", "check_warp")] if warp else [])
  return [(name, getattr(this, fn)) for name, fn in names]


# ----------------------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------------------
def run_step(name: str, fn: Callable, ctx: Context) -> Result:
  t0 = time.perf_counter()
  try:
    status, detail, data = fn(ctx)
    if status not in STATUSES:
      raise ValueError(f"step returned status {status!r}")
  except Exception as e:  # any failure is this step's FAIL; the other steps still run
    status, detail, data = "FAIL", _one_line(e), {}
  return Result(name, status, detail, time.perf_counter() - t0, data)


def run_steps(step_list, ctx: Context, say=print) -> list[Result]:
  results = []
  for name, fn in step_list:
    r = run_step(name, fn, ctx)
    say(f"{r.status:4s}  {r.name:9s} {r.seconds:6.1f}s  {r.detail}")
    results.append(r)
  return results


def exit_code(results: list[Result]) -> int:
  return 1 if any(r.status == "FAIL" for r in results) else 0


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  p = _Parser(prog="python -m fetchjax.doctor", description=__doc__,
              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default=None, help="output directory (default doctor_<timestamp>/)")
  p.add_argument("--quick", action="store_true", help="skip the PPO smoke run (the slowest step)")
  p.add_argument("--mjx", action="store_true", help="also compile and run one MJX-JAX step (~1 min on a CPU)")
  p.add_argument("--warp", action="store_true", help="also compile and run one MJX-Warp step, checked against C")
  a = p.parse_args(argv)
  out = Path(a.out or time.strftime("doctor_%Y%m%d-%H%M%S"))
  if out.exists() and not out.is_dir():
    p.error(f"--out {out} exists and is not a directory")
  if (out / "doctor.json").exists() or (out / "ppo_smoke").exists():
    p.error(f"{out} already holds a doctor run (never overwritten); choose another --out")
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  say = lambda line: print(line, flush=True)  # noqa: E731
  say(f"fetchjax.doctor -> {out}/")
  try:
    results = run_steps(steps(a.mjx, a.warp), Context(out, a.quick), say)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130
  rc = exit_code(results)
  counts = {s: sum(r.status == s for r in results) for s in STATUSES}
  seconds = time.perf_counter() - t0
  report = dict(schema=SCHEMA, command=shlex.join(["python", "-m", "fetchjax.doctor", *argv]), date=runs.now(),
                quick=a.quick, device=runs.device_info(), versions=runs.versions(), git_commit=runs.git_commit(),
                steps=[dataclasses.asdict(r) for r in results], summary=counts, exit_code=rc, seconds=seconds)
  runs.write_json(out / "doctor.json", report)
  verdict = "FAILED" if rc else ("ready, with warnings" if counts["WARN"] else "ready")
  say(f"doctor: {verdict}: {counts['OK']} OK, {counts['WARN']} WARN, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP "
      f"in {seconds:.0f} s -> {out / 'doctor.json'}")
  return rc


if __name__ == "__main__":
  sys.exit(main())
