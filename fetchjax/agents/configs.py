"""What every algorithm's frozen config dataclass shares: named presets with checked overrides, the config a run
recorded in meta.json, and field validation with one clear message per mistake."""
from __future__ import annotations

import dataclasses
from typing import Iterable, TypeVar

C = TypeVar("C")


def from_preset(presets: dict[str, C], algo: str, name: str, overrides: dict) -> C:
  """`presets[name]` with `overrides` applied; an unknown preset or field is a ValueError naming the valid ones."""
  if name not in presets:
    raise ValueError(f"unknown {algo} preset {name!r}; available: {', '.join(sorted(presets))}")
  base = presets[name]
  fields = {f.name for f in dataclasses.fields(base)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown {type(base).__name__} field(s) {unknown}; valid fields: {', '.join(sorted(fields))}")
  return dataclasses.replace(base, **overrides)


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
