"""Hyperparameter sweeps in one program: every grid point x seed of a sweep trains inside ONE compiled, vmapped
program, the swept config fields traced (a leading [points] axis of values) instead of baked in as constants.

    python -m fetchjax.sweep --algo sac --her --env FetchPush-v4 --seeds 0-3 \\
        --grid ent_coef=0.01,0.05,0.1,auto --grid learning_rate=1e-4,3e-4 --sweep-dir sweeps/push
    python -m fetchjax.sweep --sweep book_push_120 --dry-run     # the book's 120-run sweep: plan and memory
    python -m fetchjax.sweep --resume sweeps/push                 # continue an interrupted or paused sweep

The sweep directory:
    sweep.json          grid, points, seeds, command, status, per-point statistics and marginals
    sweep.md            the same as tables: per point mean, std and 95% CI of eval success and return over seeds
    sweep.png           success vs steps per point, and final success per swept value with 95% CI bars
    points/<name>/      each point a normal run directory (meta.json, checkpoints, metrics.npz, tb/, eval.json,
                        learning_curve.png, diagnostics.json): `python -m fetchjax.eval --run-dir` and
                        `fetchjax.load_policy` take it; `python -m fetchjax.train --resume` continues it alone

Library:
    grid = {"learning_rate": [1e-4, 3e-4], "gamma": [0.95, 0.98]}
    pts = sweep.check_points(algo, config, sweep.points(grid))   # the 4 grid points, typed and validated
    init, run = sweep.make_sweep(algo, config, env, pts)         # algo = agents.get("sac"), env = EnvConfig(...).make()
    hp = sweep.stack(pts)                                        # {field: [4] values}
    runners = jax.jit(jax.vmap(jax.vmap(init, (None, 0)), (0, None)))(hp, seed_keys)   # [points, seeds, ...]
    runners, metrics = jax.jit(jax.vmap(jax.vmap(lambda h, r: run(h, r, n), (None, 0)), (0, 0)))(hp, runners)

Only fields that change no array shape and no Python-level branch of the program can be swept (`SWEEPABLE`); any
other field (network sizes, batch size, buffer size, ...) is a ValueError naming it. Every value is validated as
the config itself would validate it before anything is traced.

How: the algorithms build their programs from a frozen config by reading its fields; `make_sweep` builds them
inside the vmapped function from a copy of the config whose swept fields hold the traced values, so learning
rates reach optax, gamma/tau/entropy coefficients the losses, as arrays. Two fields are more than a number:
  - SAC `ent_coef` mixing "auto" (learned alpha) and fixed values: a traced flag per point; both alpha updates
    are computed and the flag selects one (the learned one costs one scalar gradient), so fixed and learned
    coefficients train in the same program;
  - HER `n_sampled_goal` k: a relabel count inside the fixed batch (the last floor(kB/(k+1)) rows relabelled,
    SB3's int((1 - 1/(k+1)) B), checked equal per swept k), with the goal draws made so that a point with k
    samples exactly the batch a run with k samples.
A point of a sweep computes what a run with that value computes, up to float rounding (a traced scalar where a
constant was folded into the program).

Several hosts: `--num-hosts N --host-id I --coordinator HOST:PORT` calls `jax.distributed.initialize`; the points
are split into N contiguous blocks (`host_points`), each host trains its block over its local devices and writes
those points' run directories; points never communicate, so the sharded program has no cross-host collective.
Host 0 waits for all (a barrier over JAX's runtime) and writes sweep.json/md/png; the sweep directory must be on a
file system all hosts share (or copy the points/ directories together and run `--summarize DIR`).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import math
import os
import shlex
import shutil
import sys
import time
import typing
from pathlib import Path

import numpy as np

FORMAT = "fetchjax.sweep/1"
SWEEP_JSON, SWEEP_MD, SWEEP_PNG, POINTS_DIR = "sweep.json", "sweep.md", "sweep.png", "points"

# Fields that are only arithmetic in the programs (never a shape, never a Python `if`), per algorithm.
SWEEPABLE = {
    "ppo": ("learning_rate", "gamma", "gae_lambda", "clip_range", "ent_coef", "vf_coef", "max_grad_norm",
            "adam_eps"),
    "sac": ("learning_rate", "gamma", "tau", "ent_coef", "target_entropy", "learning_starts", "adam_eps",
            "n_sampled_goal"),
    "td3": ("learning_rate", "gamma", "tau", "target_policy_noise", "target_noise_clip", "learning_starts",
            "adam_eps", "n_sampled_goal"),
}

# Named sweeps (`--sweep NAME`): the flags they stand for.
BOOK_SEEDS = "0,1,2,42,77"
PRESETS = {
    # The book's 120-run SAC+HER Push sweep (algorithms.md §3.3): 24 points x 5 seeds, 2M steps, 100-episode evals.
    "book_push_120": dict(algo="sac", her=True, env="FetchPush-v4", preset="book_her_push", seeds=BOOK_SEEDS,
                          total_steps=2_000_000, eval_episodes=100,
                          grid={"ent_coef": [0.05, 0.1, 0.2], "n_sampled_goal": [4, 8],
                                "learning_starts": [1000, 5000], "gamma": [0.95, 0.98]}),
}


# ----------------------------------------------------------------------------------------------------------
# Grid and points
# ----------------------------------------------------------------------------------------------------------
def parse_grid(items: list[str]) -> dict[str, list]:
  """`--grid field=v1,v2,...` flags as {field: [values]} (numbers parsed, words kept); ValueError for a bad one."""
  from fetchjax.train import _parse_value

  grid: dict[str, list] = {}
  for item in items or []:
    key, sep, text = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
      raise ValueError(f"--grid expects field=v1,v2,..., got {item!r}")
    values = [_parse_value(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
      raise ValueError(f"--grid {key} has no values")
    if key in grid:
      raise ValueError(f"--grid {key} is given twice")
    if len(set(map(repr, values))) != len(values):
      raise ValueError(f"--grid {key} repeats a value")
    grid[key] = values
  return grid


def points(grid: dict[str, list]) -> list[dict]:
  """The cartesian product of `grid` ({field: [values]}), the first field varying slowest."""
  if not grid:
    raise ValueError("a sweep needs at least one --grid field")
  for name, values in grid.items():
    if not values:
      raise ValueError(f"--grid {name} has no values")
  names = list(grid)
  return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def check_points(algo, config, pts: list[dict]) -> list[dict]:
  """`pts` with every value typed as its config field (e.g. gamma=1 -> 1.0); ValueError for a field that cannot
  vary inside one program (naming it), an unknown field, or a value the config rejects."""
  from fetchjax.agents import configs, her

  name = algo.name
  if not pts:
    raise ValueError("a sweep needs at least one grid point")
  for field in pts[0]:
    if field not in {f.name for f in dataclasses.fields(config)}:
      raise ValueError(f"unknown {algo.label} config field {field!r}")
    if field not in SWEEPABLE[name]:
      raise ValueError(f"{field} cannot vary inside one program (it changes array shapes or the program's "
                       f"structure); sweepable {name} fields: {', '.join(SWEEPABLE[name])}")
  if "n_sampled_goal" in pts[0]:
    import jax

    if not config.her:
      raise ValueError("n_sampled_goal is HER's k: sweeping it needs --her")
    if not jax.config.jax_threefry_partitionable:  # the traced-k sampler relies on prefix-consistent draws
      raise ValueError("sweeping n_sampled_goal needs jax_threefry_partitionable (JAX's default) on")
  kinds = typing.get_type_hints(type(config))
  out = []
  for p in pts:
    typed = {k: configs.coerce(k, kinds.get(k, typing.Any), v) for k, v in p.items()}
    c = dataclasses.replace(config, **typed)  # the config's own validation of every value, and the shared ranges
    configs.check_ranges(c)
    if "n_sampled_goal" in typed:
      k = typed["n_sampled_goal"]
      if her.num_virtual(config.batch_size, k) != her.num_virtual_traced(config.batch_size, k):
        raise ValueError(f"n_sampled_goal {k} with batch_size {config.batch_size}: SB3's float rounding of "
                         "int((1 - 1/(k+1)) * batch_size) differs from the exact count; sweep it separately")
    out.append(typed)
  return out


def point_name(i: int, point: dict) -> str:
  """The point's directory name, e.g. p03_ent_coef=0.05_gamma=0.98."""
  def text(v):
    return f"{v:g}" if isinstance(v, float) else str(v)
  return f"p{i:02d}_" + "_".join(f"{k}={text(v)}" for k, v in point.items())


def stack(pts: list[dict], action_size: int = 4):
  """{field: array [points]} of the grid points (what `make_sweep`'s functions are vmapped over): int32 for an
  all-integer field, float32 otherwise; SAC's `ent_coef` as {"learned", "alpha0", "log_alpha0"} arrays (a traced
  flag: "auto"/"auto_<init>" learned from that alpha, a number fixed; log alpha computed here as a run computes
  it), `target_entropy` "auto" as -dim(A)."""
  import jax.numpy as jnp
  from fetchjax.agents.configs import parse_ent_coef

  out = {}
  for field in pts[0]:
    values = [p[field] for p in pts]
    if field == "ent_coef" and any(isinstance(v, str) for v in values):
      parsed = [parse_ent_coef(v) for v in values]
      alphas = [a for _, a in parsed]
      out[field] = dict(learned=jnp.asarray([learned for learned, _ in parsed]),
                        alpha0=jnp.asarray(alphas, jnp.float32),
                        log_alpha0=jnp.asarray([math.log(a) if a > 0 else -math.inf for a in alphas], jnp.float32))
      continue
    if field == "target_entropy":
      values = [-float(action_size) if isinstance(v, str) else v for v in values]
    kind = jnp.int32 if all(isinstance(v, int) and not isinstance(v, bool) for v in values) else jnp.float32
    out[field] = jnp.asarray(values, kind)
  return out


def _with(config, hp: dict):
  """A copy of `config` whose fields in `hp` hold (traced) arrays; the frozen dataclass's validation is not run
  again (`check_points` validated every concrete value)."""
  c = copy.copy(config)
  for k, v in hp.items():
    object.__setattr__(c, k, v)
  return c


def make_sweep(algo, config, env, pts: list[dict]):
  """`(init(hp, key) -> runner, run(hp, runner, n) -> (runner, metrics))` for one grid point `hp` (a slice of
  `stack(pts)`): `algo.make_runner` on a config carrying hp's values; vmap both over points and seeds."""
  check_points(algo, config, pts)

  def init(hp, key):
    return algo.make_runner(_with(config, hp), env)[0](key)

  def run(hp, runner, n: int):
    return algo.make_runner(_with(config, hp), env)[1](runner, n)

  return init, run


def host_points(n_points: int, num_hosts: int, host_id: int) -> list[int]:
  """The points host `host_id` of `num_hosts` trains and writes: contiguous blocks, sizes differing by at most
  one, the first hosts taking the larger ones; every point owned by exactly one host."""
  if num_hosts < 1 or not 0 <= host_id < num_hosts:
    raise ValueError(f"--host-id must be in [0, {num_hosts}), got {host_id}")
  if num_hosts > n_points:
    raise ValueError(f"--num-hosts {num_hosts} exceeds the sweep's {n_points} point(s): each host needs one")
  base, extra = divmod(n_points, num_hosts)
  start = host_id * base + min(host_id, extra)
  return list(range(start, start + base + (host_id < extra)))


# ----------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------
def ci95(values) -> dict:
  """mean, std (ddof 1), the 95% confidence interval of the mean by Student's t (half-width
  t_{0.975, n-1} std / sqrt(n); None for n = 1), the book's 2 std / sqrt(n) beside it, and n."""
  from scipy import stats

  v = np.asarray(values, np.float64)
  n = len(v)
  std = float(v.std(ddof=1)) if n > 1 else 0.0
  half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else None
  return dict(mean=float(v.mean()), std=std, ci95=half,
              ci95_low=None if half is None else float(v.mean()) - half,
              ci95_high=None if half is None else float(v.mean()) + half,
              two_se=2.0 * std / math.sqrt(n), n=n)


def summarize(pts: list[dict], per_point: list[dict | None]) -> dict:
  """Per point (from its eval.json's per-seed success rates and returns) mean, std and t-based 95% CI over
  seeds; per swept value (marginals, as the book reports them) the same over every run with that value (all
  points x seeds); the best point by mean success. `per_point[i]` None: that point has no eval yet."""
  rows = []
  for i, (p, ev) in enumerate(zip(pts, per_point)):
    row = dict(name=point_name(i, p), values=p)
    if ev is not None:
      row["success_rate"] = ci95([s["aggregate"]["success_rate"] for s in ev["per_seed"]])
      row["return"] = ci95([s["aggregate"]["return_mean"] for s in ev["per_seed"]])
      row["per_seed_success_rate"] = [s["aggregate"]["success_rate"] for s in ev["per_seed"]]
      row["per_seed_return"] = [s["aggregate"]["return_mean"] for s in ev["per_seed"]]
    rows.append(row)
  done = [r for r in rows if "success_rate" in r]
  marginals = {}
  for field in (pts[0] if pts else {}):
    marginals[field] = []
    for value in dict.fromkeys(p[field] for p in pts):
      mine = [r for r in done if r["values"][field] == value]
      if mine:
        marginals[field].append(dict(
            value=value, points=len(mine),
            success_rate=ci95([x for r in mine for x in r["per_seed_success_rate"]]),
            **{"return": ci95([x for r in mine for x in r["per_seed_return"]])}))
  best = max(done, key=lambda r: r["success_rate"]["mean"])["name"] if done else None
  return dict(method="over training seeds (per point) or over all runs with the value (marginals): mean, std "
                     "(ddof 1), 95% CI of the mean = mean +- t_{0.975, n-1} std / sqrt(n) (Student's t); two_se = "
                     "2 std / sqrt(n), the book's ci95",
              points=rows, marginals=marginals, best=best, complete=len(done) == len(rows))


def _pct(s: dict | None, scale=100.0, unit="%") -> str:
  if not s:
    return "-"
  ci = "" if s["ci95"] is None else f" [{(s['mean'] - s['ci95']) * scale:.1f}, {(s['mean'] + s['ci95']) * scale:.1f}]"
  return f"{s['mean'] * scale:.1f}{unit} ± {s['std'] * scale:.1f}{ci}"


def markdown(sw: dict) -> str:
  st = sw["stats"]
  fields = list(sw["grid"])
  lines = [f"# Sweep{' ' + sw['name'] if sw.get('name') else ''}: {sw['algo']} on {sw['env_id']}", "",
           f"{len(sw['points'])} points x {len(sw['seeds'])} seeds {sw['seeds']}, {sw['total_steps']:,} steps each, "
           f"{sw['eval_episodes']} eval episodes per seed; status {sw['status']}.", "",
           "Success and return: mean ± std over seeds [95% CI of the mean, Student's t].", "",
           "| point | " + " | ".join(fields) + " | success | return |",
           "|---|" + "---|" * len(fields) + "---|---|"]
  ranked = sorted(st["points"], key=lambda r: -r["success_rate"]["mean"] if "success_rate" in r else 1.0)
  for r in ranked:
    lines.append(f"| {r['name']} | " + " | ".join(str(r["values"][f]) for f in fields)
                 + f" | {_pct(r.get('success_rate'))} | {_pct(r.get('return'), 1.0, '')} |")
  lines += ["", "Marginals: every run (points x seeds) with the value.", "",
            "| field | value | runs | success | return |", "|---|---|---|---|---|"]
  for field, rows in st["marginals"].items():
    for m in rows:
      lines.append(f"| {field} | {m['value']} | {m['success_rate']['n']} | {_pct(m['success_rate'])} | "
                   f"{_pct(m['return'], 1.0, '')} |")
  if st["best"]:
    lines += ["", f"Best point: {st['best']}."]
  return "\n".join(lines) + "\n"


def plot(sweep_dir: Path, sw: dict) -> None:
  """sweep.png: training success vs steps per point (mean over seeds), and final eval success per swept value
  (marginal mean with 95% CI bars)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from fetchjax import runs

  fields = list(sw["grid"])
  fig, axes = plt.subplots(1, 1 + len(fields), figsize=(5 * (1 + len(fields)), 4), squeeze=False)
  ax = axes[0, 0]
  for p in sw["points"]:
    try:
      steps, hist = runs.RunDir(sweep_dir / POINTS_DIR / p["name"]).load_metrics()
    except runs.RunError:
      continue
    ax.plot(steps, np.nanmean(hist["success_rate"], 0), label=p["name"], lw=1)
  ax.set(xlabel="env steps per seed", ylabel="training success rate", title="success vs steps (mean over seeds)")
  if len(sw["points"]) <= 12:
    ax.legend(fontsize=6)
  for j, field in enumerate(fields):
    ax = axes[0, j + 1]
    rows = sw["stats"]["marginals"].get(field, [])
    xs = np.arange(len(rows))
    means = [m["success_rate"]["mean"] for m in rows]
    errs = [m["success_rate"]["ci95"] or 0.0 for m in rows]
    ax.bar(xs, means, yerr=errs, capsize=4)
    ax.set_xticks(xs, [str(m["value"]) for m in rows])
    ax.set(xlabel=field, ylabel="final eval success", ylim=(0, 1.05), title=f"{field} (mean, 95% CI)")
  fig.tight_layout()
  fig.savefig(sweep_dir / SWEEP_PNG, dpi=100)
  plt.close(fig)


def write_summary(sweep_dir, say=lambda *x: None) -> dict:
  """Reads every point's eval.json, writes the statistics into sweep.json and sweep.md, and sweep.png."""
  import json

  from fetchjax import runs

  sweep_dir = Path(sweep_dir)
  sw = read_sweep(sweep_dir)
  evals = []
  for p in sw["points"]:
    path = sweep_dir / POINTS_DIR / p["name"] / "eval.json"
    evals.append(json.loads(path.read_text()) if path.exists() else None)
  sw["stats"] = summarize([p["values"] for p in sw["points"]], evals)
  runs.write_json(sweep_dir / SWEEP_JSON, sw)
  (sweep_dir / SWEEP_MD).write_text(markdown(sw))
  try:
    plot(sweep_dir, sw)
  except Exception as e:  # a missing plotting backend must not lose the sweep
    say(f"WARN sweep.png not written: {type(e).__name__}: {e}")
  return sw


def read_sweep(sweep_dir) -> dict:
  import json

  from fetchjax import runs

  path = Path(sweep_dir) / SWEEP_JSON
  if not Path(sweep_dir).is_dir():
    raise runs.RunError(f"no sweep directory at {sweep_dir}")
  try:
    sw = json.loads(path.read_text())
  except FileNotFoundError:
    raise runs.RunError(f"{sweep_dir} is not a fetchjax sweep directory (no {SWEEP_JSON})") from None
  except json.JSONDecodeError as e:
    raise runs.RunError(f"{path} is corrupt ({e})") from None
  if sw.get("format") != FORMAT:
    raise runs.RunError(f"{path} is not a {FORMAT} file")
  return sw


# ----------------------------------------------------------------------------------------------------------
# The CLI
# ----------------------------------------------------------------------------------------------------------
def _state_bytes(tree) -> int:
  import jax

  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _device_memory(n_devices: int) -> int | None:
  """Bytes this host's `n_devices` devices hold: their allocator limit on an accelerator, RAM on the CPU."""
  import jax

  d = jax.local_devices()[0]
  if d.platform == "cpu":
    try:
      return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
      return None
  try:
    return int(d.memory_stats()["bytes_limit"]) * n_devices
  except Exception:  # a backend without memory_stats
    return None


def _gib(n) -> str:
  return "?" if n is None else f"{n / 2 ** 30:.2f} GiB"


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, not the usage block
    print(f"fetchjax.sweep: error: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


@dataclasses.dataclass
class Sweep:
  """What one sweep session trains: the base plan (fetchjax.train.Plan), the typed points, this host's share."""

  dir: Path
  plan: object
  points: list[dict]
  names: list[str]
  owned: list[int]
  host_id: int = 0
  num_hosts: int = 1

  def point_plan(self, i: int):
    return dataclasses.replace(self.plan, config=dataclasses.replace(self.plan.config, **self.points[i]),
                               video_episodes=0)

  def run_dir(self, i: int):
    from fetchjax import runs

    return runs.RunDir(self.dir / POINTS_DIR / self.names[i])


def _say(quiet):
  def say(*x):
    if not quiet:
      print(*x, file=sys.stderr, flush=True)
  return say


def build(a) -> tuple[Sweep, dict | None]:
  """The sweep of the flags (fresh) or of `--resume DIR` (with its sweep.json); ValueError/RunError for bad input."""
  from fetchjax import agents, envs, train

  if a.resume:
    sw = read_sweep(a.resume)
    algo = agents.get(sw["algo"])
    config = algo.config_from_dict(sw["config"])
    env = envs.EnvConfig.from_dict(sw["env_config"])
    plan = train.Plan(sw["algo"], env, sw["seeds"], config, sw.get("preset", "?"),
                      a.checkpoint_every or sw["checkpoint_every"],
                      a.eval_episodes if a.eval_episodes is not None else sw["eval_episodes"], 0, a.pause_at,
                      sw.get("checkpoint_buffer", True), a.devices)
    pts = check_points(algo, config, [p["values"] for p in sw["points"]])
    names = [p["name"] for p in sw["points"]]
    sweep_dir = Path(a.resume).expanduser().absolute()
  else:
    grid = parse_grid(a.grid)
    if a.sweep:
      preset = PRESETS[a.sweep]
      if grid:
        raise ValueError(f"--sweep {a.sweep} brings its own grid: leave out --grid")
      grid = dict(preset["grid"])
    pts = points(grid)
    if a.eval_episodes is None:
      a.eval_episodes = 100
    # the base config (everything the points share) through the train CLI's own flag handling
    a.resume, a.run_dir, a.step, a.video_episodes = None, "unused", None, 0
    requested, a.devices = a.devices, None  # devices split the points here, not the seeds
    _, plan, _ = train.build_plan(a)
    a.devices = requested
    if plan.env.backend == "auto":  # recorded as chosen: the checkpoints hold that backend's state
      plan.env = dataclasses.replace(plan.env, backend=envs.default_backend())
    plan.devices = requested
    algo = agents.get(plan.algo)
    pts = check_points(algo, plan.config, pts)
    names = [point_name(i, p) for i, p in enumerate(pts)]
    for p in pts:  # what a point's own run would require of the env (e.g. a buffer holding one episode per env)
      dataclasses.replace(plan.config, **p).check_env(plan.env.num_envs)
    sweep_dir = Path(a.sweep_dir or f"sweeps/{a.sweep or plan.algo}_{plan.env_id}_{time.strftime('%Y%m%d-%H%M%S')}")
    sweep_dir = sweep_dir.expanduser().absolute()
    sw = None
  owned = host_points(len(pts), a.num_hosts, a.host_id)
  return Sweep(sweep_dir, plan, pts, names, owned, a.host_id, a.num_hosts), sw


def main(argv=None) -> int:
  p = _Parser(prog="python -m fetchjax.sweep", description=__doc__,
              formatter_class=argparse.RawDescriptionHelpFormatter)
  from fetchjax import compile_cache, runs, train

  train.add_run_args(p)
  p.add_argument("--grid", action="append", metavar="FIELD=V1,V2,...",
                 help="a swept config field and its values (repeatable; the grid is their cartesian product)")
  p.add_argument("--sweep", choices=sorted(PRESETS), default=None,
                 help="a named sweep: book_push_120 = the book's 120-run SAC+HER Push sweep (24 points x seeds "
                      f"{BOOK_SEEDS}, 2M steps, 100-episode evals)")
  p.add_argument("--sweep-dir", default=None, help="output directory (default sweeps/<name>_<env>_<time>)")
  p.add_argument("--resume", default=None, metavar="SWEEP_DIR", help="continue a sweep from its newest checkpoints")
  p.add_argument("--summarize", default=None, metavar="SWEEP_DIR",
                 help="only (re)write sweep.json's statistics, sweep.md and sweep.png from the points' eval.json")
  p.add_argument("--dry-run", action="store_true",
                 help="print the points, runs and the memory of their training state, train nothing")
  train.add_session_args(p)
  p.set_defaults(eval_episodes=None)
  p.add_argument("--pause-at", type=int, default=None, metavar="STEPS",
                 help="checkpoint and stop once this many steps per seed are done (continue with --resume)")
  p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                 help="several hosts: host 0's address (jax.distributed.initialize)")
  p.add_argument("--num-hosts", type=int, default=1, help="several hosts: how many (default 1)")
  p.add_argument("--host-id", type=int, default=0, help="several hosts: this host's index, 0..N-1")
  p.add_argument("--quiet", action="store_true", help="no progress output")
  a = p.parse_args(argv)
  if a.summarize:
    try:
      sw = write_summary(a.summarize)
    except (runs.RunError, OSError) as e:
      print(f"fetchjax.sweep: error: {e}", file=sys.stderr)
      return 2
    print(f"wrote {Path(a.summarize) / SWEEP_JSON}, {SWEEP_MD}, {SWEEP_PNG} (best: {sw['stats']['best']})")
    return 0
  if a.sweep:  # a named sweep stands for its flags; given ones must agree or be session flags
    preset = PRESETS[a.sweep]
    for key, flag, default in (("algo", "--algo", "ppo"), ("env", "--env", train.DEFAULT_ENV),
                               ("preset", "--preset", None), ("seeds", "--seeds", None),
                               ("total_steps", "--total-steps", None)):
      if getattr(a, key) not in (default, preset[key]):
        p.error(f"--sweep {a.sweep} sets {flag} {preset[key]}; leave it out")
      setattr(a, key, preset[key])
    a.her = True
    if a.eval_episodes is None:
      a.eval_episodes = preset["eval_episodes"]
  if a.resume and (a.grid or a.sweep or a.sweep_dir or a.set or a.seeds or a.n_envs or a.preset or a.backend
                   or a.algo != "ppo" or a.env != train.DEFAULT_ENV or a.her or a.ent_coef is not None
                   or a.gamma is not None or a.her_n_sampled_goal is not None or a.total_steps is not None
                   or a.checkpoint_buffer is not None or a.physics or a.no_jdotv or a.threads is not None):
    p.error("--resume takes its settings from the sweep; only --pause-at, --checkpoint-every, --eval-episodes, "
            "--devices, --compile-cache, the host flags and --quiet may be given with it")
  if not a.resume and not a.grid and not a.sweep:
    p.error("give at least one --grid FIELD=V1,V2,... (or --sweep NAME, or --resume SWEEP_DIR)")
  train.check_numbers(argparse.Namespace(**{**vars(a), "eval_episodes": a.eval_episodes or 0}), p.error)
  if a.num_hosts < 1 or not 0 <= a.host_id < a.num_hosts:
    p.error(f"--host-id must be in [0, --num-hosts) and --num-hosts >= 1, got {a.host_id} of {a.num_hosts}")
  if a.num_hosts > 1 and not a.coordinator:
    p.error("--num-hosts > 1 needs --coordinator HOST:PORT (host 0's address, the same on every host)")
  command = "python -m fetchjax.sweep " + shlex.join(sys.argv[1:] if argv is None else list(argv))
  if a.num_hosts > 1:  # before anything touches a JAX backend
    import jax

    jax.distributed.initialize(coordinator_address=a.coordinator, num_processes=a.num_hosts, process_id=a.host_id)
  cache = compile_cache.enable(compile_cache.resolve(a.compile_cache))
  try:
    sweep, sw = build(a)
    return run(sweep, sw, a, command.strip(), cache)
  except (runs.RunError, ValueError, TypeError) as e:
    print(f"fetchjax.sweep: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:
    from fetchjax import checkpoints

    print(f"fetchjax.sweep: error: {checkpoints.io_error_message(e, 'cannot write')}", file=sys.stderr)
    return 1


def _stack_trees(trees):
  import jax
  import jax.numpy as jnp

  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def run(sweep: Sweep, sw: dict | None, a, command: str, cache) -> int:
  """Trains this host's points x seeds in one program per chunk (fresh when `sw` is None, else resumed from the
  newest step every point has a checkpoint of), evaluates them in one program, writes the point run
  directories and (host 0) sweep.json/md/png. Returns the exit status (0; 130 when stopped by Ctrl-C/SIGTERM)."""
  import jax
  import jax.numpy as jnp

  from fetchjax import agents, devices, interrupts, runs, train

  say = _say(a.quiet)
  plan, own = sweep.plan, sweep.owned
  algo, cfg = agents.get(plan.algo), plan.config
  n_points, n_seeds = len(own), len(plan.seeds)
  pts = [sweep.points[i] for i in own]
  plans = [sweep.point_plan(i) for i in own]
  rds = [sweep.run_dir(i) for i in own]
  per_update = plan.per_update
  env = plan.env.make()
  train.check_env_fits(plan, env.observation_spec)
  init, run_one = make_sweep(algo, cfg, env, pts)
  hp = stack(pts)
  keys = jnp.stack([jax.random.PRNGKey(s) for s in plan.seeds])
  v_init = jax.jit(jax.vmap(jax.vmap(init, (None, 0)), (0, None)))
  if plan.devices is not None and plan.devices <= jax.local_device_count() and n_points % plan.devices:
    raise ValueError(f"--devices {plan.devices} must divide the number of points this host trains ({n_points}): "
                     "each device trains whole points")
  n_devices = devices.plan_devices(n_points, jax.local_device_count(), plan.devices)
  sharding = devices.seed_sharding(n_devices)  # the leading axis: points

  # the plan: exact state size from the shapes (nothing allocated), against what the devices hold
  shapes = jax.eval_shape(v_init, hp, keys)
  state_b = _state_bytes(shapes)
  buffer = getattr(shapes, "buffer", None)
  buffer_b = _state_bytes(buffer) if buffer is not None else 0
  avail = _device_memory(n_devices)
  kind = runs.device_info()["kind"]
  lines = [f"sweep {sweep.dir}: {plan.algo} on {plan.env_id}, {len(sweep.points)} points x {n_seeds} seeds "
           f"{plan.seeds} = {len(sweep.points) * n_seeds} runs, {cfg.total_timesteps:,} steps each, "
           f"{plan.env.num_envs} envs per run, preset {plan.preset}"]
  if sweep.num_hosts > 1:
    lines.append(f"host {sweep.host_id} of {sweep.num_hosts} trains points {own[0]}..{own[-1]} "
                 f"({n_points * n_seeds} runs)")
  lines += [f"  {sweep.names[i]}" for i in own]
  lines.append(f"training state of {n_points * n_seeds} runs on this host: {_gib(state_b)} (replay buffers "
               f"{_gib(buffer_b)}); {kind} x {n_devices}: {_gib(avail)}")
  fits = avail is None or state_b <= 0.9 * avail
  if a.dry_run:
    print("\n".join(lines))
    if not fits:
      print(f"fetchjax.sweep: error: this cannot fit: the training state needs {_gib(state_b)} and the "
            f"device(s) hold {_gib(avail)} (spread the points over hosts with --num-hosts, or fewer points/seeds)",
            file=sys.stderr)
      return 2
    return 0
  if not fits:
    raise ValueError(f"the training state of {n_points} points x {n_seeds} seeds needs {_gib(state_b)}, more "
                     f"than the {_gib(avail)} of {kind} x {n_devices} here (spread the points over hosts with "
                     "--num-hosts, or sweep fewer points/seeds); --dry-run prints the plan")
  say(lines[0] + (f"; {lines[1]}" if sweep.num_hosts > 1 else ""))

  stop = interrupts.StopRequests(lambda: print(
      "\nstop requested: finishing the current chunk, then checkpoint and exit (press Ctrl-C again to stop at "
      "once)", file=sys.stderr, flush=True))
  # trained: the newest finished chunk ([points, seeds, ...]); saved: the updates last checkpointed
  state = dict(trained=None, saved=None, created=False)

  def set_status(status, host0_too=True, **fields):
    for rd in rds:
      try:
        rd.update_meta(status=status, **fields)
      except (OSError, runs.RunError):
        pass
    if host0_too and sweep.host_id == 0 and (sweep.dir / SWEEP_JSON).exists():
      try:
        runs.write_json(sweep.dir / SWEEP_JSON, {**read_sweep(sweep.dir), "status": status})
      except (OSError, runs.RunError):
        pass

  def checkpoint():
    trained = state["trained"]
    if state["saved"] == trained.updates:
      return
    for j, rd in enumerate(rds):
      r = jax.tree.map(lambda x: x[j], trained.runner)
      hist = {k: v[j] for k, v in trained.history.items()}
      rd.save_checkpoint(trained.updates * per_update,
                         {"runner": r if plan.checkpoint_buffer else algo.drop_buffer(r)},
                         trained.steps, hist, policy=algo.policy_of(plans[j].config, r))
      rd.save_metrics(trained.steps, hist)
    state["saved"] = trained.updates

  def hint():
    return f"python -m fetchjax.sweep --resume {shlex.quote(str(sweep.dir))}" + (
        f" --coordinator {a.coordinator} --num-hosts {sweep.num_hosts} --host-id {sweep.host_id}"
        if sweep.num_hosts > 1 else "")

  with stop:
    try:
      ckpt_every = plan.checkpoint_interval
      resumed_from = None
      if sw is None:  # fresh
        if sweep.host_id == 0 and (sweep.dir / SWEEP_JSON).exists():  # (the other hosts: host 0 may have written it)
          raise runs.RunError(f"{sweep.dir} already holds a sweep; pass --resume {sweep.dir} to continue it or "
                              "choose another --sweep-dir")
        for rd in rds:
          if not rd.is_fresh():
            raise runs.RunError(f"{rd.path} already holds a run; choose another --sweep-dir")
        sw = dict(format=FORMAT, name=a.sweep, algo=plan.algo, env_id=plan.env_id, seeds=plan.seeds,
                  grid={f: list(dict.fromkeys(p[f] for p in sweep.points)) for f in sweep.points[0]},
                  points=[dict(name=n, values=p) for n, p in zip(sweep.names, sweep.points)],
                  preset=plan.preset, config=dataclasses.asdict(cfg), env_config=dataclasses.asdict(plan.env),
                  total_steps=cfg.total_timesteps, checkpoint_every=ckpt_every,
                  checkpoint_buffer=plan.checkpoint_buffer, eval_episodes=plan.eval_episodes,
                  num_hosts=sweep.num_hosts, command=command, status="running", created_at=runs.now(),
                  device=runs.device_info(), versions=runs.versions(), git_commit=runs.git_commit())
        with stop.critical():
          made = not sweep.dir.exists()
          sweep.dir.mkdir(parents=True, exist_ok=True)
          state["created"] = made
          if sweep.host_id == 0:
            runs.write_json(sweep.dir / SWEEP_JSON, sw)
          for j, rd in enumerate(rds):
            meta = train.run_meta(plans[j], ckpt_every, n_devices, command, cache, env.observation_spec)
            meta["sweep"] = dict(dir=str(sweep.dir), point=sweep.names[own[j]], values=pts[j], host=sweep.host_id)
            rd.create(meta)
        state["trained"] = train.Trained(devices.shard_seeds(v_init(hp, keys), sharding), 0, np.zeros(0, np.int64),
                                         {})
      else:  # resume: the newest step every point of this host has
        one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), shapes)
        if not plan.checkpoint_buffer:
          one = algo.drop_buffer(one)
        newest = []
        for rd in rds:
          if not rd.checkpoint_steps():
            raise runs.RunError(f"{rd.path} has no checkpoint: this sweep cannot be resumed (start it again)")
          newest.append(rd.checkpoint_steps()[-1])
        common = min(newest)
        restored = []
        with stop.critical():
          for rd in rds:
            s, st, metrics = rd.restore_checkpoint({"runner": one}, common, writable=True)
            restored.append((st["runner"], metrics if metrics is not None else rd.load_metrics()))
        runners = _stack_trees([r for r, _ in restored])
        if not plan.checkpoint_buffer:  # an empty buffer, filled again from here (not bit-exact)
          runners = jax.jit(jax.vmap(jax.vmap(algo.fresh_buffer)))(runners, v_init(hp, keys))
          say("note: the sweep's checkpoints leave out the replay buffer: training resumes with empty ones")
        done = int(np.asarray(runners.train_state.step).reshape(-1)[0])
        if done * per_update != common:
          raise runs.RunError(f"checkpoint {common} holds {done} updates, not {common // per_update}")
        state.update(saved=done, trained=train.Trained(
            devices.shard_seeds(runners, sharding), done, restored[0][1][0][:done],
            {k: np.stack([m[1][k][:, :done] for _, m in restored]) for k in restored[0][1][1]}))
        with stop.critical():
          for j, rd in enumerate(rds):
            for moved in rd.checkpoints().set_aside_newer_than(common):
              say(f"a checkpoint newer than step {common:,} was moved to {moved}")
            rd.save_metrics(state["trained"].steps, {k: v[j] for k, v in state["trained"].history.items()})
            meta = rd.read_meta()
            rd.update_meta(status="running", resumed_at=meta.get("resumed_at", []) + [dict(step=common, at=runs.now())])
          if sweep.host_id == 0:
            runs.write_json(sweep.dir / SWEEP_JSON, {**sw, "status": "running"})
        resumed_from = common
        say(f"resuming {sweep.dir} at {common:,} / {cfg.total_timesteps:,} steps per run")

      status, findings, timing = _loop(sweep, a, plan, algo, plans, rds, hp, run_one, state, stop, checkpoint,
                                       resumed_from, say)
    except KeyboardInterrupt:
      status = "interrupted"
    except BaseException:
      with stop.critical():
        if state["saved"] is None and state["created"] and sweep.host_id == 0:
          shutil.rmtree(sweep.dir, ignore_errors=True)  # a new sweep that failed before training: nothing kept
        else:
          set_status("failed")
      raise
    if status == "interrupted":
      with stop.critical():
        if state["trained"] is None or state["trained"].updates == 0:
          if state["created"] and sweep.host_id == 0:
            shutil.rmtree(sweep.dir, ignore_errors=True)
            print(f"interrupted before training started: removed the new sweep directory {sweep.dir}",
                  file=sys.stderr)
          return 130
        checkpoint()
        set_status("interrupted")
      print(f"interrupted: checkpoint at {state['trained'].updates * per_update:,} steps; continue with: {hint()}",
            file=sys.stderr)
      return 130
  if status == "paused":
    set_status("paused")
    say(f"paused at {state['trained'].updates * per_update:,} steps (checkpoints saved); continue with: {hint()}")
    return 0
  _finish(sweep, plan, algo, plans, rds, state, findings, timing, say)
  if sweep.num_hosts > 1:  # host 0 summarises once every host has written its points
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("fetchjax.sweep.finished")
  if sweep.host_id == 0:
    runs.write_json(sweep.dir / SWEEP_JSON, {**read_sweep(sweep.dir), "status": "finished",
                                             "finished_at": runs.now(), **timing})
    sw = write_summary(sweep.dir, say)
    best = next((r for r in sw["stats"]["points"] if r["name"] == sw["stats"]["best"]), None)
    if best:
      say(f"best point {best['name']}: success {_pct(best['success_rate'])}")
    say(f"done: {sweep.dir / SWEEP_MD}")
  return 0


def _loop(sweep, a, plan, algo, plans, rds, hp, run_one, state, stop, checkpoint, resumed_from, say):
  """The chunked training of `state["trained"]` ([points, seeds, ...]): one compiled program per chunk; returns
  (status, findings per point, timing)."""
  import functools

  import jax

  from fetchjax import diagnostics, train

  per_update, num_updates = plan.per_update, plan.num_updates
  start = state["trained"].updates
  chunk = train.chunk_updates(num_updates, start)
  t = time.time()
  v_run = jax.jit(jax.vmap(jax.vmap(lambda h, r: run_one(h, r, chunk), (None, 0)), (0, 0)))
  compiled = v_run.lower(hp, state["trained"].runner).compile()
  compile_s = time.time() - t
  say(f"compiled {chunk} update(s) per call for {len(rds)} points x {len(plan.seeds)} seeds in {compile_s:.1f} s")
  if stop.requested:
    return "interrupted", [], {}
  tbs = [train.TensorBoard(rd, plan.seeds, algo.tb_names, resume_step=resumed_from) for rd in rds]
  line = None if a.quiet else train.Progress(num_updates * per_update, start * per_update)
  findings: list[list] = [[] for _ in rds]
  n_runs = len(rds) * len(plan.seeds)

  def on_chunk(trained, first: int, metrics: dict, elapsed: float) -> None:
    state["trained"] = trained
    fps = (trained.updates - start) * per_update * n_runs / max(elapsed, 1e-9)
    for j, (rd, tb) in enumerate(zip(rds, tbs)):
      pc = plans[j].config
      tb.log(trained.steps[first:], {k: v[j] for k, v in metrics.items()}, {
          "time/fps": fps, "time/time_elapsed": elapsed, "rollout/ep_len_mean": 50.0, **algo.tb_constants(pc)},
          first)
      found = algo.check({k: v[j] for k, v in trained.history.items()}, trained.steps, pc, plan.env_id)
      for f in diagnostics.new_findings(findings[j], found):
        findings[j].append(f)
        say(f"{rd.path.name}: {diagnostics.format_finding(f)}")

  try:
    status, train_s = train.train_chunks(functools.partial(compiled, hp), state["trained"], per_update=per_update,
                                         stop_updates=plan.stop_updates, ckpt_every=plan.checkpoint_interval,
                                         stop=stop, on_chunk=on_chunk, checkpoint=checkpoint, line=line)
  finally:
    for tb in tbs:
      tb.close()
    if line:
      line.close()
  if status == "interrupted":
    return "interrupted", findings, {}
  done = state["trained"].updates
  if done < num_updates:
    return "paused", findings, {}
  timing = dict(training_time_sec=train_s, compile_time_sec=compile_s,
                steps_per_sec=(done - start) * per_update * n_runs / max(train_s, 1e-9))
  say(f"trained {done * per_update:,} steps x {n_runs} runs in {train_s:.1f} s (+{compile_s:.1f} s "
      f"compile): {timing['steps_per_sec']:,.0f} env-steps/s")
  return "trained", findings, timing


def _finish(sweep, plan, algo, plans, rds, state, findings, timing, say) -> None:
  """Every point of this host evaluated in ONE program (points x seeds policies), then each point's run directory
  finished as the train CLI finishes a run (eval.json, learning curve, diagnostics.json, status)."""
  import jax

  from fetchjax import eval as fj_eval, train

  n_points = len(rds)
  trained = state["trained"]
  runners = trained.runner
  for j, rd in enumerate(rds):
    rd.update_meta(status="trained", trained_steps=int(trained.updates * plan.per_update),
                   training_time_sec=timing.get("training_time_sec"),
                   compile_time_sec=timing.get("compile_time_sec"),
                   steps_per_sec=timing.get("steps_per_sec"), sweep_program_runs=n_points * len(plan.seeds))
  reports = [None] * n_points
  if plan.eval_episodes > 0:
    # acting reads no swept field (they are all training-only), so one act serves every point
    policies = jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), algo.policy_of(plan.config, runners))
    report, _ = fj_eval.evaluate(plan.env_id, algo.make_act(plan.config), policies, plan.seeds * n_points,
                                 plan.eval_episodes, 0, True, plan.env.backend,
                                 frame_stack=algo.frame_stack(plan.config), env_config=plan.env)
    reports = fj_eval.split_report(report, n_points)
  for j, rd in enumerate(rds):
    runner = jax.tree.map(lambda x: x[j], runners)
    hist = {k: v[j] for k, v in trained.history.items()}
    train.finish(rd, plans[j], plans[j].config, algo, runner, trained.steps, hist, findings[j],
                 lambda *x: None, report=reports[j])
    if reports[j] is not None:
      say(f"{rd.path.name}: " + fj_eval.summary_line(reports[j]))


if __name__ == "__main__":
  try:
    sys.exit(main())
  except KeyboardInterrupt:  # before a sweep exists (training handles its own interrupts)
    print("fetchjax.sweep: interrupted", file=sys.stderr)
    sys.exit(130)
