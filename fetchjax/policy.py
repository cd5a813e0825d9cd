"""The policies of a training run: `load_run` (every seed's, vmapped, as eval scores them) and `load_policy` (one
seed's deterministic policy as a plain numpy callable, e.g. to drive CPU gymnasium-robotics)."""
from __future__ import annotations

import jax
import numpy as np

from fetchjax import agents, runs
from fetchjax.encoders import OBS_KEYS


def load_run(run_dir, step: int | None = None):
  """(meta, agents.Algorithm, config, vmapped policies, checkpoint step) of a run directory."""
  rd = runs.RunDir(run_dir)
  meta = rd.read_meta()
  algo = agents.get(meta["algo"])
  try:
    config = algo.config_from_dict(meta["config"])
  except (KeyError, TypeError, ValueError) as e:
    raise runs.RunError(f"{rd.meta_path} has no usable config ({e})") from None
  ckpt_step, policies = rd.restore_policy(step)  # the small policy item, not the (replay-buffer sized) state
  if policies is None:  # a checkpoint written before the policy item existed
    ckpt_step, raw = rd.restore_raw(ckpt_step)
    try:
      policies = algo.policy_of(config, raw["runner"])
    except (KeyError, TypeError) as e:
      raise runs.RunError(f"checkpoint {ckpt_step} of {rd.path} lacks the policy ({e})") from None
  return meta, algo, config, policies, ckpt_step


class Policy:
  """Deterministic policy of one training seed: `policy(obs_dict) -> action` (numpy in, numpy out).

  `obs_dict` is a gymnasium-robotics observation, single ({"observation": (10,), ...} -> action (4,)) or
  batched (leading axis n -> actions (n, 4)), e.g. from a gymnasium vector env. For a run with pixel observations
  (`--pixels`): the fetchjax pixel env's dict (pixels [S, S, 3] uint8, proprioception, achieved_goal,
  desired_goal), single or batched."""

  def __init__(self, act, policy, env_id: str, algo: str, seed: int, step: int, keys: tuple[str, ...] = OBS_KEYS):
    self.env_id, self.algo, self.seed, self.step = env_id, algo, seed, step
    self._policy = policy
    self._act = jax.jit(act)
    self.keys = tuple(keys)

  def __call__(self, obs: dict) -> np.ndarray:
    missing = [k for k in self.keys if k not in obs]
    if missing:
      raise ValueError(f"observation dict lacks {missing}; expected the keys {list(self.keys)} of {self.env_id}")
    x = {k: np.asarray(obs[k], np.uint8 if k == "pixels" else np.float32) for k in self.keys}
    single = x["desired_goal"].ndim == 1
    if single:
      x = {k: v[None] for k, v in x.items()}
    a = np.asarray(self._act(self._policy, x), np.float32)
    return a[0] if single else a

  def __repr__(self) -> str:
    return f"Policy({self.algo} on {self.env_id}, training seed {self.seed}, {self.step} steps)"


def load_policy(run_dir, seed_index: int = 0, step: int | None = None) -> Policy:
  """The deterministic policy of training seed number `seed_index` (position in the run's seed list) from the
  newest (or the given) checkpoint of a `python -m fetchjax.train` run directory."""
  meta, algo, config, policies, ckpt_step = load_run(run_dir, step)
  n = len(meta["seeds"])
  if not 0 <= seed_index < n:
    raise runs.RunError(f"seed_index {seed_index} out of range: the run trained {n} seed(s) {meta['seeds']}")
  one = jax.tree.map(lambda x: np.asarray(x)[seed_index], policies)
  keys = OBS_KEYS
  if agents.env_config_from_meta(meta).pixels:
    from fetchjax.envs.pixels import OBS_KEYS as keys
  return Policy(algo.make_act(config), one, meta["env_id"], meta["algo"], meta["seeds"][seed_index], ckpt_step,
                keys)
