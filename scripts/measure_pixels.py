"""Pixel observations (book ch9): rendered env-steps/s vs num_envs, and the warp vs OpenGL parity of frames.

  python scripts/measure_pixels.py rate --backends cpu warp --num-envs 1,4,16 --out pixels_rate.json
  python scripts/measure_pixels.py parity --size 84 --png docs/pixel_parity.png --out pixels_parity.json

rate: the full env step with rendering (FetchPush-v4, random actions, `--steps` steps in one jitted lax.scan after
  a warm-up call, as scripts/bench_envs.py), beside the same env without pixels; per backend and num_envs.
parity: warp frames made inside the jitted step vs the OpenGL frames (C MuJoCo) of the same states (2 envs,
  `--steps` steps): mean per-pixel |diff| (max over RGB), share of pixels more than 32 grey levels off, and the
  same against another state's frames (what a stale or misplaced frame would score); `--png`: warp | OpenGL |
  |diff| x4 for each env at the last step.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import fetchjax  # noqa: F401  (XLA flags before JAX starts)
import jax
import jax.numpy as jnp
import numpy as np

from fetchjax import envs
from fetchjax.envs.pixels import MODES, PixelConfig, gl_frames
from fetchjax.profile import env_rollout

ENV_ID = "FetchPush-v4"


def _write(path, report):
  with open(path, "w") as f:
    json.dump(report, f, indent=1)


def _header():
  import mujoco

  return dict(date=datetime.date.today().isoformat(), device=str(jax.devices()[0]), jax=jax.__version__,
              mujoco=mujoco.__version__, python=platform.python_version(), cpu_count=os.cpu_count())


def rate(a) -> int:
  report = dict(_header(), env=ENV_ID, size=a.size, mode=a.mode, steps=a.steps, results=[])
  for backend in a.backends:
    for n in a.num_envs:
      for pixels in ((False, True) if a.baseline else (True,)):
        env = envs.make(ENV_ID, num_envs=n, backend=backend, pixels=PixelConfig(a.size, a.mode) if pixels else None)
        r = env_rollout(env, a.steps, a.repeats)
        row = dict(backend=backend, num_envs=n, pixels=pixels, env_steps_per_s=r["env_steps_per_s"],
                   compile_s=r["compile_s"])
        if backend == "cpu":
          row["threads"] = env.backend.host.threads
        report["results"].append(row)
        _write(a.out, report)  # after every row: an interrupted run keeps what it measured
        print(f"{backend:4s} num_envs={n:6d} pixels={'%dx%d' % (a.size, a.size) if pixels else 'off':7s} "
              f"{r['env_steps_per_s']:9.1f} env-steps/s  (compile {r['compile_s']:.1f} s)", flush=True)
  print(f"wrote {a.out}")
  return 0


def parity(a) -> int:
  cfg = PixelConfig(a.size, a.mode)
  env = envs.make(ENV_ID, num_envs=2, backend="warp", pixels=cfg)
  xy, goals = jax.vmap(env.sample_task)(jax.random.split(jax.random.PRNGKey(5), 2))
  s = env.reset_to(xy, goals)
  step = jax.jit(env.step)
  actions = jnp.array([[0.6, 0.8, -0.6, 1.0], [-0.8, -0.5, 0.3, -1.0]])
  warp, gl, t0 = [], [], time.time()
  for t in range(a.steps + 1):
    if t:
      s = step(s, actions)
    warp.append(np.asarray(s.obs["pixels"]))
    qpos = env.backend.replay(env.backend.snapshot(s.pipeline_state, 2)).qpos
    gl.append(gl_frames(env.task, cfg, qpos, s.obs["desired_goal"]))
  warp, gl = np.stack(warp).astype(int), np.stack(gl).astype(int)

  def stats(w, g):
    d = np.abs(w - g).max(-1)
    return dict(mean=float(d.mean()), far_32=float((d > 32).mean()), far_64=float((d > 64).mean()))

  report = dict(_header(), env=ENV_ID, size=a.size, mode=a.mode, steps=a.steps, same_state=stats(warp, gl),
                other_env=stats(warp[:, ::-1], gl), stale_reset_frame=stats(np.broadcast_to(warp[:1], warp.shape)[1:],
                                                                            gl[1:]),
                wall_s=time.time() - t0)
  _write(a.out, report)
  for k in ("same_state", "other_env", "stale_reset_frame"):
    r = report[k]
    print(f"{k:18s} mean |diff| {r['mean']:5.2f}   > 32: {100 * r['far_32']:5.2f}%   > 64: {100 * r['far_64']:5.2f}%")
  if a.png:
    from fetchjax.render import write_png

    rows = [np.concatenate([warp[-1, e], gl[-1, e], np.minimum(255, 4 * np.abs(warp[-1, e] - gl[-1, e]))], 1)
            for e in range(2)]
    write_png(np.concatenate(rows, 0).astype(np.uint8).repeat(2, 0).repeat(2, 1), a.png)
    print(f"wrote {a.png}")
  print(f"wrote {a.out}")
  return 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="cmd", required=True)
  r = sub.add_parser("rate")
  r.add_argument("--backends", nargs="+", default=["cpu", "warp"], choices=["cpu", "warp"])
  r.add_argument("--num-envs", default="1,4,16")
  r.add_argument("--steps", type=int, default=50)
  r.add_argument("--repeats", type=int, default=1)
  r.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the env without pixels")
  r.add_argument("--out", default="pixels_rate.json")
  q = sub.add_parser("parity")
  q.add_argument("--steps", type=int, default=3)
  q.add_argument("--png", default=None)
  q.add_argument("--out", default="pixels_parity.json")
  for x in (r, q):
    x.add_argument("--size", type=int, default=84)
    x.add_argument("--mode", default="native", choices=MODES)
  a = p.parse_args(argv)
  if a.cmd == "rate":
    try:
      a.num_envs = [int(x) for x in a.num_envs.split(",")]
    except ValueError:
      print(f"error: --num-envs must be a comma-separated list of integers, got '{a.num_envs}'", file=sys.stderr)
      return 2
    return rate(a)
  return parity(a)


if __name__ == "__main__":
  sys.exit(main())
