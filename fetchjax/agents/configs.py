"""What every algorithm's frozen config dataclass shares: named presets with checked overrides, the config a run
recorded in meta.json, and field validation with one clear message per mistake."""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Iterable, TypeVar

C = TypeVar("C")

# Ranges of the numeric fields the algorithms share, by name: (low, high, low inclusive, high inclusive).
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "learning_rate": (0.0, math.inf, False, False), "gamma": (0.0, 1.0, True, True),
    "gae_lambda": (0.0, 1.0, True, True), "clip_range": (0.0, math.inf, False, False),
    "tau": (0.0, 1.0, False, True), "max_grad_norm": (0.0, math.inf, False, False),
    "adam_eps": (0.0, math.inf, False, False), "vf_coef": (0.0, math.inf, True, False),
    "clip_obs": (0.0, math.inf, False, False), "target_policy_noise": (0.0, math.inf, True, False),
    "target_noise_clip": (0.0, math.inf, True, False), "action_noise_sigma": (0.0, math.inf, True, False),
}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def coerce(name: str, kind: Any, value: Any) -> Any:
  """`value` (from --set text or meta.json) as the field's declared type; ValueError naming the field."""
  def bad(what):
    return ValueError(f"{name} must be {what}, got {value!r}")

  if kind is bool:
    if isinstance(value, bool):
      return value
    if isinstance(value, (str, int)) and str(value).strip().lower() in _TRUE + _FALSE:
      return str(value).strip().lower() in _TRUE
    raise bad("true or false")
  if kind is int:
    if isinstance(value, bool):
      raise bad("an integer")
    if isinstance(value, float) and value.is_integer():
      return int(value)
    if isinstance(value, str):
      try:
        return int(value.strip())
      except ValueError:
        try:
          f = float(value)
        except ValueError:
          raise bad("an integer") from None
        if f.is_integer():
          return int(f)
        raise bad("an integer") from None
    if isinstance(value, int):
      return value
    raise bad("an integer")
  if kind is float:
    if isinstance(value, bool):
      raise bad("a number")
    try:
      out = float(value)
    except (TypeError, ValueError):
      raise bad("a number") from None
    if not math.isfinite(out):
      raise bad("a finite number")
    return out
  if kind is str:
    if isinstance(value, (tuple, list, dict)):
      raise bad("a single word")
    return str(value)
  if typing.get_origin(kind) is tuple:
    items = value if isinstance(value, (tuple, list)) else (value,)
    (elem, *_) = typing.get_args(kind) or (Any,)
    try:
      return tuple(coerce(name, elem, v) for v in items)
    except ValueError:
      raise bad(f"a comma-separated list of {getattr(elem, '__name__', 'value')}s") from None
  return value  # Any: the config's own validation decides


def check_ranges(config) -> None:
  """The shared numeric ranges (RANGES) and the env id / backend choices of a config."""
  from fetchjax import envs

  for name, choices in (("env_id", envs.list_envs()), ("backend", envs.BACKENDS)):
    if hasattr(config, name) and getattr(config, name) not in choices:
      raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(config, name)!r}")
  for f in dataclasses.fields(config):
    if f.name not in RANGES or isinstance(getattr(config, f.name), str):
      continue
    v, (lo, hi, lo_in, hi_in) = getattr(config, f.name), RANGES[f.name]
    if not ((lo <= v if lo_in else lo < v) and (v <= hi if hi_in else v < hi)):
      span = f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
      raise ValueError(f"{f.name} must be in {span}, got {v!r}")


def from_preset(presets: dict[str, C], algo: str, name: str, overrides: dict) -> C:
  """`presets[name]` with `overrides` applied; an unknown preset or field is a ValueError naming the valid ones."""
  if name not in presets:
    raise ValueError(f"unknown {algo} preset {name!r}; available: {', '.join(sorted(presets))}")
  base = presets[name]
  fields = {f.name for f in dataclasses.fields(base)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown {type(base).__name__} field(s) {unknown}; valid fields: {', '.join(sorted(fields))}")
  kinds = typing.get_type_hints(type(base))
  typed = {k: coerce(k, kinds.get(k, Any), v) for k, v in overrides.items()}
  config = dataclasses.replace(base, **typed)
  check_ranges(config)
  return config


def from_dict(presets: dict[str, C], algo: str, d: dict) -> C:
  """The config a run recorded in meta.json (JSON lists back to tuples; an unknown key is an error: the file is
  from another version)."""
  return from_preset(presets, algo, "book", {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def check_ints(config, positive: Iterable[str] = (), non_negative: Iterable[str] = ()) -> None:
  for names, low, what in ((positive, 1, "a positive"), (non_negative, 0, "a non-negative")):
    for name in names:
      v = getattr(config, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be {what} integer, got {v!r}")


def layer_sizes(v) -> tuple[int, ...]:
  """`hidden_sizes` as a tuple of positive ints (an int means one layer)."""
  hs = (v,) if isinstance(v, int) else tuple(v)
  if not hs or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hs):
    raise ValueError(f"hidden_sizes must be positive integers (e.g. 256,256), got {v!r}")
  return hs


def parse_ent_coef(v) -> tuple[bool, float]:
  """(learned?, initial/fixed alpha) from SB3's `ent_coef` ("auto", "auto_0.1", 0.05). A dict is a value traced by
  fetchjax.sweep (validated before): {"learned": flag, "alpha0": alpha, "log_alpha0": log alpha}, arrays; an
  array is a fixed coefficient traced by it."""
  if isinstance(v, dict):
    return v["learned"], v["alpha0"]
  if hasattr(v, "dtype") and hasattr(v, "shape"):
    return False, v
  if isinstance(v, str):
    if v == "auto":
      return True, 1.0
    if v.startswith("auto_"):
      init = float(v.split("_")[1])
      if init <= 0:
        raise ValueError(f"the initial ent_coef must be > 0, got {v!r}")
      return True, init
    try:
      v = float(v)
    except ValueError:
      raise ValueError(f"ent_coef must be 'auto', 'auto_<float>' or a float, got {v!r}") from None
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
    raise ValueError(f"ent_coef must be 'auto', 'auto_<float>' or a non-negative float, got {v!r}")
  return False, float(v)
