"""Evaluate a run with the book's evaluation protocol (below) and write its eval JSON.

    python -m fetchjax.eval --run-dir DIR [--n-episodes 100] [--deterministic | --stochastic] [--seed 0]
                            [--json-out F]

Episode i starts from the object position and goal that CPU gymnasium-robotics samples on `reset(seed=base+i)`
(`base = --seed`), so every model and every training seed is scored on the same 100 tasks as an SB3 `eval.py`
run with `--seeds 0-99`. All training seeds of the run are evaluated in one vmapped program. Success is
`is_success` at the final (50th) step. The do-nothing policy on the same tasks is reported as the trivial
baseline p0 beside every result. The env is the run's own (its EnvConfig: e.g. rendered pixels), and a policy
trained on k-frame stacks acts on the same stacks here (`agents.frames`).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import fetchjax  # noqa: F401  (XLA flags before JAX starts)
import jax
import jax.numpy as jnp
import numpy as np

from fetchjax import agents, compile_cache, envs, runs
from fetchjax.agents import frames
from fetchjax.gymnasium_reference import book_tasks, gymnasium_make
from fetchjax.policy import load_policy, load_run


def rollout(env, act, policies, state0, keys=None, record: int = 0, frame_stack: int = 1):
  """One episode of every env for every policy (leading axis = training seed), in one jitted program.

  `frame_stack` k > 1: `act` reads the k-frame stacks of obs["pixels"] the policy was trained on, carried in the
  scan and rebuilt from the env's single frames as training does (`agents.frames`: first-frame copies at the
  episode start). Returns numpy arrays [seeds, T, n, ...]: reward, success, action, final achieved/desired goal
  [seeds, n, 3] and, if `record` > 0, "replay": the `envs.backend.Replay` of the first `record` envs' states
  [seeds, T, record, ...] (T states, the reset one first), and with pixel observations "pixels": the single
  frames seen [seeds, T, record, S, S, 3].
  """
  T = env.max_episode_steps
  stochastic = keys is not None

  def one_seed(policy, key, state0):
    def body(carry, t):
      s, k, stacked = carry
      k, k_act = jax.random.split(k)
      a = act(policy, s.obs if frame_stack == 1 else stacked, k_act if stochastic else None)
      nxt = env.step(s, a)
      out = dict(reward=nxt.reward, success=nxt.info["is_success"], action=a)
      if record:
        out["physics"] = env.backend.snapshot(s.pipeline_state, record)
        if "pixels" in s.obs:  # the frames seen (the newest of each stack acted on)
          out["pixels"] = s.obs["pixels"][:record]
      stacked = None if frame_stack == 1 else frames.push(stacked, nxt.obs, frame_stack, first=nxt.done > 0)
      return (nxt, k, stacked), out

    stacked0 = None if frame_stack == 1 else frames.reset(state0.obs, frame_stack)
    (last, _, _), out = jax.lax.scan(body, (state0, key, stacked0), jnp.arange(T))
    out["final_ag"] = last.info["final_obs"]["achieved_goal"]
    out["final_dg"] = last.info["final_obs"]["desired_goal"]
    return out

  n_seeds = jax.tree.leaves(policies)[0].shape[0]
  seed_keys = keys if stochastic else jnp.zeros((n_seeds, 2), jnp.uint32)
  # state0 is an argument, not a constant baked into the program: the same program serves any eval tasks
  out = jax.tree.map(np.asarray, jax.jit(jax.vmap(one_seed, in_axes=(0, 0, None)))(policies, seed_keys, state0))
  if record:
    out["replay"] = env.backend.replay(out.pop("physics"))
  return out


def episode_metrics(out: dict, seed_index: int) -> list[dict]:
  """Per-episode metrics (repo eval.py definitions) from one seed's rollout."""
  rew, suc, act = out["reward"][seed_index], out["success"][seed_index] > 0, out["action"][seed_index]
  dist = np.linalg.norm(out["final_ag"][seed_index].astype(np.float64) - out["final_dg"][seed_index], axis=-1)
  smooth = np.sum(np.sum(np.square(np.diff(act.astype(np.float64), axis=0)), axis=-1), axis=0)
  first = np.where(suc.any(0), suc.argmax(0) + 1, -1)
  return [dict(success=bool(suc[-1, i]), **{"return": float(rew[:, i].astype(np.float64).sum())},
               length=int(rew.shape[0]), final_distance=float(dist[i]),
               time_to_success=None if first[i] < 0 else int(first[i]), action_smoothness=float(smooth[i]),
               action_max_abs=float(np.abs(act[:, i]).max())) for i in range(rew.shape[1])]


def aggregate(episodes: list[dict]) -> dict:
  """The book's aggregate block; std with ddof=0 like the repo's eval.py."""
  col = lambda k: np.array([e[k] for e in episodes], np.float64)
  out = dict(n_episodes=len(episodes), success_rate=float(col("success").mean()))
  for k, name in (("return", "return"), ("final_distance", "final_distance"), ("length", "ep_len")):
    out[f"{name}_mean"], out[f"{name}_std"] = float(col(k).mean()), float(col(k).std())
  out["action_smoothness_mean"] = float(col("action_smoothness").mean())
  out["action_max_abs_mean"] = float(col("action_max_abs").mean())
  return out


def across_seeds(values: list[float]) -> dict:
  """mean, std (ddof 1), ci95 = 2 std / sqrt(n) and n across training seeds (the book's reporting convention)."""
  v = np.asarray(values, np.float64)
  std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
  return dict(mean=float(v.mean()), std=std, ci95=2.0 * std / np.sqrt(len(v)), n=len(v))


def scores(seeds: list[int], per_seed_episodes: list[list[dict]], baseline: list[dict]) -> dict:
  """The report's result blocks: pooled aggregate, across-seed statistics, do-nothing p0, per-seed entries."""
  per_seed = [dict(seed=seed, aggregate=aggregate(eps), per_episode=eps)
              for seed, eps in zip(seeds, per_seed_episodes)]
  base = aggregate(baseline)
  return dict(
      aggregate=aggregate([e for eps in per_seed_episodes for e in eps]),
      across_seeds={k: across_seeds([s["aggregate"][k] for s in per_seed])
                    for k in ("success_rate", "return_mean", "final_distance_mean")},
      baseline_do_nothing={k: base[k] for k in ("success_rate", "return_mean", "final_distance_mean")},
      per_seed=per_seed)


def split_report(report: dict, n_groups: int) -> list[dict]:
  """A report over `n_groups` x S policies (group-major, as a sweep's points x seeds) as one report per group,
  each what `evaluate` gives for that group's S policies alone (the do-nothing baseline is shared)."""
  per = report["per_seed"]
  s = len(per) // n_groups
  out = []
  for g in range(n_groups):
    mine = per[g * s:(g + 1) * s]
    out.append(dict(report, seeds=[e["seed"] for e in mine], per_seed=mine,
                    aggregate=aggregate([e for x in mine for e in x["per_episode"]]),
                    across_seeds={k: across_seeds([x["aggregate"][k] for x in mine])
                                  for k in ("success_rate", "return_mean", "final_distance_mean")}))
  return out


def with_run_info(report: dict, run_dir, ckpt_step: int, meta: dict) -> dict:
  """Prefixes a report with the checkpoint it scored and the run's training time and speed."""
  out = dict(checkpoint=str(runs.RunDir(run_dir).path / runs.CKPT_DIR / str(ckpt_step)),
             checkpoint_steps=ckpt_step, algo=meta["algo"], **report)
  out.update({f"train_{k}": meta[k] for k in ("training_time_sec", "steps_per_sec") if k in meta})
  return out


def evaluate(env_id: str, act, policies, seeds: list[int], n_episodes: int = 100, seed_base: int = 0,
             deterministic: bool = True, backend: str = "auto", record: int = 0, key=None, frame_stack: int = 1,
             env_config: envs.EnvConfig | None = None) -> tuple[dict, dict]:
  """Scores vmapped `policies` (one per training seed) on the book's tasks; returns (report, rollout).

  `env_config`: the run's EnvConfig (its observation settings, e.g. rendered pixels, and physics), made with
  `n_episodes` envs on `backend`; None: `envs.make(env_id)`'s defaults (a state env). `frame_stack`: the k-frame
  stacks the policies act on (`Algorithm.frame_stack(config)`)."""
  if env_config is None:
    env = envs.make(env_id, num_envs=n_episodes, backend=backend)
  else:
    env = dataclasses.replace(env_config, env_id=env_id, num_envs=n_episodes, backend=backend).make()
  xy, goals = book_tasks(env_id, n_episodes, seed_base)
  state0 = env.reset_to(xy, goals)
  keys = None if deterministic else jax.random.split(key if key is not None else jax.random.PRNGKey(seed_base),
                                                     len(seeds))
  t0 = time.time()
  out = rollout(env, act, policies, state0, keys, record, frame_stack)
  zero = lambda policy, obs, key=None: jnp.zeros(obs["desired_goal"].shape[:-1] + (4,))
  base = episode_metrics(rollout(env, zero, jnp.zeros((1,)), state0), 0)
  per_seed = [episode_metrics(out, i) for i in range(len(seeds))]
  report = dict(
      env_id=env_id, seeds=list(seeds), n_episodes=n_episodes, eval_seeds=f"{seed_base}-{seed_base + n_episodes - 1}",
      deterministic=deterministic, backend=env.backend_name, device=runs.device_info(), versions=runs.versions(),
      created_at=runs.now(), eval_wall_s=time.time() - t0, **scores(seeds, per_seed, base))
  return report, out


def gymnasium_episodes(policy, env_id: str, n_episodes: int = 100, seed_base: int = 0) -> list[dict]:
  """The same protocol in CPU gymnasium-robotics itself: episode i = `reset(seed=base+i)`, 50 steps of a numpy
  policy (e.g. `fetchjax.load_policy`). The reference for policy-transfer checks."""
  env = gymnasium_make(env_id)
  episodes = []
  for i in range(n_episodes):
    obs, _ = env.reset(seed=seed_base + i)
    rewards, success, actions, trunc = [], [], [], False
    while not trunc:
      a = policy(obs)
      obs, r, _, trunc, info = env.step(a)
      rewards.append(r), success.append(info["is_success"]), actions.append(a)
    out = dict(reward=np.array(rewards)[None, :, None], success=np.array(success, np.float32)[None, :, None],
               action=np.array(actions)[None, :, None], final_ag=obs["achieved_goal"][None, None],
               final_dg=obs["desired_goal"][None, None])
    episodes += episode_metrics(out, 0)
  env.close()
  return episodes


def evaluate_run(run_dir, n_episodes: int = 100, seed_base: int = 0, deterministic: bool = True,
                 backend: str | None = None, step: int | None = None) -> dict:
  meta, algo, config, policies, ckpt_step = load_run(run_dir, step)

  report, _ = evaluate(meta["env_id"], algo.make_act(config), policies, meta["seeds"], n_episodes, seed_base,
                       deterministic, backend or meta.get("backend", "auto"), frame_stack=algo.frame_stack(config),
                       env_config=agents.env_config_from_meta(meta))
  return with_run_info(report, run_dir, ckpt_step, meta)


def evaluate_run_gymnasium(run_dir, n_episodes: int = 100, seed_base: int = 0, step: int | None = None) -> dict:
  meta = runs.RunDir(run_dir).read_meta()
  algo = agents.get(meta["algo"])
  needs = algo.pixel_needs(algo.config_from_dict(meta["config"]))
  if needs or agents.env_config_from_meta(meta).pixels:
    raise runs.RunError(f"--sim gymnasium drives state policies; this run's policy reads rendered frames "
                        f"({', '.join(needs or ['pixels'])}): evaluate it in fetchjax, or wrap gymnasium-robotics "
                        "in a pixel observation wrapper and drive fetchjax.load_policy yourself (README, Pixels)")
  t0 = time.time()
  policies = [load_policy(run_dir, i, step) for i in range(len(meta["seeds"]))]
  per_seed = [gymnasium_episodes(pol, meta["env_id"], n_episodes, seed_base) for pol in policies]
  base = gymnasium_episodes(lambda o: np.zeros(4, np.float32), meta["env_id"], n_episodes, seed_base)
  report = dict(
      env_id=meta["env_id"], simulator="gymnasium-robotics (CPU)", seeds=meta["seeds"], n_episodes=n_episodes,
      eval_seeds=f"{seed_base}-{seed_base + n_episodes - 1}", deterministic=True, versions=runs.versions(),
      created_at=runs.now(), eval_wall_s=time.time() - t0, **scores(meta["seeds"], per_seed, base))
  return with_run_info(report, run_dir, policies[0].step, meta)


def summary_line(report: dict) -> str:
  a, b = report["aggregate"], report["baseline_do_nothing"]
  return (f"{report['env_id']}: success {a['success_rate']:.3f}  return {a['return_mean']:.2f}  final distance "
          f"{a['final_distance_mean']:.4f} m  over {a['n_episodes']} episodes ({len(report['seeds'])} seed(s), "
          f"{'deterministic' if report['deterministic'] else 'stochastic'}); do-nothing p0 {b['success_rate']:.3f}")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m fetchjax.eval", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--run-dir", required=True, help="a directory written by python -m fetchjax.train")
  p.add_argument("--n-episodes", type=int, default=100)
  g = p.add_mutually_exclusive_group()
  g.add_argument("--deterministic", dest="deterministic", action="store_true", default=True,
                 help="act with the policy mean (default)")
  g.add_argument("--stochastic", dest="deterministic", action="store_false", help="sample actions")
  p.add_argument("--seed", type=int, default=0, help="episode i resets with seed SEED + i (default 0)")
  p.add_argument("--backend", choices=envs.BACKENDS, default=None, help="env backend (default: the run's)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
  p.add_argument("--json-out", default=None, help="default: RUN_DIR/eval.json (fetchjax) or "
                 "RUN_DIR/eval_gymnasium.json (--sim gymnasium)")
  p.add_argument("--compile-cache", default=None, metavar="DIR|off",
                 help="JAX persistent compilation cache (as python -m fetchjax.train)")
  p.add_argument("--sim", choices=("fetchjax", "gymnasium"), default="fetchjax",
                 help="gymnasium: run the deterministic policies in CPU gymnasium-robotics instead (transfer check)")
  a = p.parse_args(argv)
  if a.n_episodes < 1 or a.seed < 0:
    print("fetchjax.eval: error: --n-episodes must be >= 1 and --seed >= 0", file=sys.stderr)
    return 2
  compile_cache.enable(compile_cache.resolve(a.compile_cache))
  if a.sim == "gymnasium" and not a.deterministic:
    print("fetchjax.eval: error: --sim gymnasium evaluates the deterministic policy only", file=sys.stderr)
    return 2
  try:
    if a.sim == "gymnasium":
      report = evaluate_run_gymnasium(a.run_dir, a.n_episodes, a.seed, a.step)
    else:
      report = evaluate_run(a.run_dir, a.n_episodes, a.seed, a.deterministic, a.backend, a.step)
  except (runs.RunError, ValueError) as e:
    print(f"fetchjax.eval: error: {e}", file=sys.stderr)
    return 2
  default = "eval.json" if a.sim == "fetchjax" else "eval_gymnasium.json"
  out = Path(a.json_out) if a.json_out else runs.RunDir(a.run_dir).path / default
  out.parent.mkdir(parents=True, exist_ok=True)
  runs.write_json(out, report)
  print(summary_line(report))
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except KeyboardInterrupt:  # before a run exists (training handles its own interrupts)
    print("fetchjax.eval: interrupted", file=sys.stderr)
    sys.exit(130)
