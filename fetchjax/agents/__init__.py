"""Agents, one algorithm per file, and the registry the CLIs (train, eval, load_policy, profile) reach them through.

    ppo.py, sac.py, td3.py   an algorithm each: its config and presets, networks, losses and update; none
                             imports another
    offpolicy.py             the replay/update loop SAC and TD3 share (warm-up, HER buffer, train_freq, ...)
    her.py                   the episode replay buffer with SB3's HER sampling
    nets.py                  networks and initialisers several algorithms use, where an encoder lives
                             (ROUTINGS), the diagonal Gaussian
    configs.py               what every config shares: presets with checked overrides, meta.json round trip

`ALGORITHMS[name]` is an `Algorithm`: everything a CLI needs about one algorithm, spelled out once.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from fetchjax import diagnostics
from fetchjax.agents import configs, offpolicy, ppo, sac, td3


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """One algorithm as the CLIs use it."""

  name: str                         # --algo, meta.json "algo"
  label: str                        # in messages ("unknown PPO preset ...")
  config_cls: type
  presets: Mapping[str, Any]        # name -> config
  make_runner: Callable             # (config, env=None) -> (init(key) -> runner, run(runner, n) -> (runner, metrics))
  make_train: Callable              # (config, env=None) -> train(key) -> (train state, metrics): the whole run
  policy_of: Callable               # (config, runner or its raw restored dict) -> what `act` needs
  make_act: Callable                # config -> act(policy, obs, key=None) -> action in [-1, 1]
  tb_names: Mapping[str, str]       # metric -> SB3 logger key
  tb_constants: Callable            # config -> {SB3 logger key: value} logged every iteration
  check: Callable                   # diagnostics: (history, steps, config, env_id) -> findings
  rule_ids: tuple[str, ...]         # the diagnostics rules `check` (and the eval check) apply
  drop_buffer: Callable | None = None   # runner -> runner without its replay buffer (checkpoints without it)
  fresh_buffer: Callable | None = None  # (runner restored without it, runner from init) -> runner, empty buffer

  def preset(self, name: str, **overrides):
    """`presets[name]` with `overrides` (checked and typed); ValueError naming the valid presets / fields."""
    return configs.from_preset(self.presets, self.label, name, overrides)

  def config_from_dict(self, d: dict):
    """The config a run recorded in meta.json."""
    return configs.from_dict(self.presets, self.label, d)


ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm("ppo", "PPO", ppo.PPOConfig, ppo.PRESETS, ppo.make_runner, ppo.make_train, ppo.policy_of,
                     ppo.make_act, ppo.TB_NAMES, ppo.tb_constants, diagnostics.check_ppo, diagnostics.PPO_RULE_IDS),
    "sac": Algorithm("sac", "SAC", sac.SACConfig, sac.PRESETS, sac.make_runner, sac.make_train, offpolicy.policy_of,
                     sac.make_act, sac.TB_NAMES, offpolicy.tb_constants, diagnostics.check_sac,
                     diagnostics.SAC_RULE_IDS, offpolicy.drop_buffer, offpolicy.fresh_buffer),
    "td3": Algorithm("td3", "TD3", td3.TD3Config, td3.PRESETS, td3.make_runner, td3.make_train, offpolicy.policy_of,
                     td3.make_act, td3.TB_NAMES, offpolicy.tb_constants, diagnostics.check_td3,
                     diagnostics.TD3_RULE_IDS, offpolicy.drop_buffer, offpolicy.fresh_buffer),
}


def get(name: str) -> Algorithm:
  if name not in ALGORITHMS:
    raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(ALGORITHMS)}")
  return ALGORITHMS[name]
