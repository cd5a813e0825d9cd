"""Agents, one algorithm per file. The CLIs (train, eval, load_policy) reach each through the same module-level
interface: `PRESETS`, `preset(name, **overrides) -> config`, `config_from_dict(d)`, `make_runner(config) ->
(init, run)`, `policy_of(runner) -> policy`, `make_act(config) -> act(policy, obs, key=None)`."""
from __future__ import annotations

import importlib
from types import ModuleType

IMPLEMENTED = ("ppo", "sac", "td3")
PLANNED = ()


def get(name: str) -> ModuleType:
  if name not in IMPLEMENTED:
    planned = f" ({name} is planned, not implemented yet)" if name in PLANNED else ""
    raise ValueError(f"unknown algorithm {name!r}{planned}; available: {', '.join(IMPLEMENTED)}")
  return importlib.import_module(f"fetchjax.agents.{name}")
