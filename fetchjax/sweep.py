"""Hyperparameter sweeps in one program: every grid point x seed of a sweep trains inside ONE compiled, vmapped
program, the swept config fields traced (a leading [points] axis of values) instead of baked in as constants.

    grid = {"learning_rate": [1e-4, 3e-4], "gamma": [0.95, 0.98]}
    pts = sweep.points(grid)                             # the 4 grid points, in order
    init, run = sweep.make_sweep(algo, config, env, pts) # algo = agents.get("sac"), env = EnvConfig(...).make()
    hp = sweep.stack(pts)                                # {field: [4]} values
    runners = jax.jit(jax.vmap(jax.vmap(init, (None, 0)), (0, None)))(hp, seed_keys)   # [points, seeds, ...]
    runners, metrics = jax.jit(jax.vmap(jax.vmap(lambda h, r: run(h, r, n), (None, 0)), (0, 0)))(hp, runners)

Only fields that change no array shape and no Python-level branch of the program can be swept (`SWEEPABLE`); any
other field (network sizes, batch size, HER's k, buffer size, ...) is a ValueError naming it. Every value is
validated as the config itself would validate it before anything is traced.

How: the algorithms build their programs from a frozen config by reading its fields; `make_sweep` builds them
inside the vmapped function from a copy of the config whose swept fields hold the traced values, so learning
rates reach optax, gamma/tau/entropy coefficients the losses, as arrays. A point of a sweep computes what a run
with that value computes, up to float rounding (a traced scalar where a constant was folded into the program).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools

# Fields that are only arithmetic in the programs (never a shape, never a Python `if`), per algorithm.
SWEEPABLE = {
    "ppo": ("learning_rate", "gamma", "gae_lambda", "clip_range", "ent_coef", "vf_coef", "max_grad_norm",
            "adam_eps"),
    "sac": ("learning_rate", "gamma", "tau", "ent_coef", "learning_starts", "adam_eps"),
    "td3": ("learning_rate", "gamma", "tau", "target_policy_noise", "target_noise_clip", "learning_starts",
            "adam_eps"),
}


def points(grid: dict[str, list]) -> list[dict]:
  """The cartesian product of `grid` ({field: [values]}), the first field varying slowest."""
  if not grid:
    raise ValueError("a sweep needs at least one --grid field")
  for name, values in grid.items():
    if not values:
      raise ValueError(f"--grid {name} has no values")
  names = list(grid)
  return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def check_points(algo, config, pts: list[dict]) -> None:
  """ValueError for a field that cannot vary inside one program, or a value the config rejects."""
  name = algo.name
  for field in pts[0]:
    if field not in {f.name for f in dataclasses.fields(config)}:
      raise ValueError(f"unknown {algo.label} config field {field!r}")
    if field not in SWEEPABLE[name]:
      raise ValueError(f"{field} cannot vary inside one program (it changes array shapes or the program's "
                       f"structure); sweepable {name} fields: {', '.join(SWEEPABLE[name])}")
  from fetchjax.agents import configs

  for p in pts:
    c = dataclasses.replace(config, **p)  # the config's own validation of every value, and the shared ranges
    configs.check_ranges(c)
    if name == "sac" and "ent_coef" in p and isinstance(c.ent_coef, str):
      raise ValueError(f"ent_coef {c.ent_coef!r} learns alpha (another program): a sweep takes fixed "
                       "coefficients only; sweep 'auto' separately")


def stack(pts: list[dict]):
  """{field: float32/int32 array [points]} of the grid points (what `make_sweep`'s functions are vmapped over)."""
  import jax.numpy as jnp

  out = {}
  for field in pts[0]:
    values = [p[field] for p in pts]
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
