"""Agents, one algorithm per file, and the registry the CLIs (train, eval, load_policy, profile) reach them through.

    ppo.py, sac.py, td3.py   an algorithm each: its config and presets, networks, losses and update; none
                             imports another
    offpolicy.py             the replay/update loop SAC and TD3 share (warm-up, HER buffer, train_freq, ...)
    her.py                   the episode replay buffer with SB3's HER sampling (and frame stacks for pixels)
    drq.py                   DrQ's random-shift augmentation of sampled pixels (book ch9)
    frames.py                frame stacks for acting outside training (eval, video, load_policy)
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
from fetchjax.envs.config import EnvConfig


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """One algorithm as the CLIs use it."""

  name: str                         # --algo, meta.json "algo"
  label: str                        # in messages ("unknown PPO preset ...")
  config_cls: type
  presets: Mapping[str, Any]        # name -> config
  env_presets: Mapping[str, Any]    # name -> the envs.EnvConfig the preset was made for (num_envs, task)
  make_runner: Callable             # (config, env) -> (init(key) -> runner, run(runner, n) -> (runner, metrics))
  make_train: Callable              # (config, env) -> train(key) -> (train state, metrics): the whole run
  policy_of: Callable               # (config, runner or its raw restored dict) -> what `act` needs
  make_act: Callable                # config -> act(policy, obs, key=None) -> action in [-1, 1]
  tb_names: Mapping[str, str]       # metric -> SB3 logger key
  tb_constants: Callable            # config -> {SB3 logger key: value} logged every iteration
  check: Callable                   # diagnostics: (history, steps, config, env_id) -> findings
  rule_ids: tuple[str, ...]         # the diagnostics rules `check` (and the eval check) apply
  drop_buffer: Callable | None = None   # runner -> runner without its replay buffer (checkpoints without it)
  fresh_buffer: Callable | None = None  # (runner restored without it, runner from init) -> runner, empty buffer
  frame_stack: Callable = lambda config: 1  # config -> k: `act` reads k-frame stacks of obs["pixels"] (frames.py)
  pixel_needs: Callable = lambda config: []  # config -> what in it reads obs["pixels"] ([]: a state config)

  def env_preset(self, name: str, **overrides) -> EnvConfig:
    """The EnvConfig preset `name` was made for, with `overrides` (env_id, num_envs, backend, physics, ...)."""
    if name not in self.env_presets:
      raise ValueError(f"unknown {self.label} preset {name!r}; available: {', '.join(sorted(self.env_presets))}")
    return dataclasses.replace(self.env_presets[name], **overrides)

  def preset(self, name: str, **overrides):
    """`presets[name]` with `overrides` (checked and typed); ValueError naming the valid presets / fields."""
    return configs.from_preset(self.presets, self.label, name, overrides)

  def config_from_dict(self, d: dict):
    """The config a run recorded in meta.json (runs made before EnvConfig existed recorded the env's settings in
    it too: those keys are left to `env_config_from_meta`)."""
    return configs.from_dict(self.presets, self.label, {k: v for k, v in d.items() if k not in _ENV_KEYS})


_ENV_KEYS = ("env_id", "num_envs", "backend")  # in algorithm configs before EnvConfig


def env_config_from_meta(meta: dict) -> EnvConfig:
  """The EnvConfig a run recorded in meta.json (or, for runs made before it was recorded, rebuilt from the env
  id, the env count and the backend they recorded)."""
  if "env_config" in meta:
    return EnvConfig.from_dict(meta["env_config"])
  return EnvConfig(meta["env_id"], meta.get("n_envs", meta["config"].get("num_envs", 8)),
                   meta["config"].get("backend", "auto"))


_OFFPOLICY = dict(policy_of=offpolicy.policy_of, tb_constants=offpolicy.tb_constants,
                  drop_buffer=offpolicy.drop_buffer, fresh_buffer=offpolicy.fresh_buffer,
                  frame_stack=offpolicy.acting_frames, pixel_needs=offpolicy.pixel_needs)
ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm("ppo", "PPO", ppo.PPOConfig, ppo.PRESETS, ppo.ENV_PRESETS, ppo.make_runner, ppo.make_train,
                     make_act=ppo.make_act, tb_names=ppo.TB_NAMES, check=diagnostics.check_ppo,
                     rule_ids=diagnostics.PPO_RULE_IDS, policy_of=ppo.policy_of, tb_constants=ppo.tb_constants),
    "sac": Algorithm("sac", "SAC", sac.SACConfig, sac.PRESETS, sac.ENV_PRESETS, sac.make_runner, sac.make_train,
                     make_act=sac.make_act, tb_names=sac.TB_NAMES, check=diagnostics.check_sac,
                     rule_ids=diagnostics.SAC_RULE_IDS, **_OFFPOLICY),
    "td3": Algorithm("td3", "TD3", td3.TD3Config, td3.PRESETS, td3.ENV_PRESETS, td3.make_runner, td3.make_train,
                     make_act=td3.make_act, tb_names=td3.TB_NAMES, check=diagnostics.check_td3,
                     rule_ids=diagnostics.TD3_RULE_IDS, **_OFFPOLICY),
}


def get(name: str) -> Algorithm:
  if name not in ALGORITHMS:
    raise ValueError(f"unknown algorithm {name!r}; available: {', '.join(ALGORITHMS)}")
  return ALGORITHMS[name]
