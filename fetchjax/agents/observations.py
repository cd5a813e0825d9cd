"""The policy input of every agent: SB3 MultiInputPolicy's CombinedExtractor concatenates the goal dict's entries
in sorted-key order."""
from __future__ import annotations

import jax
import jax.numpy as jnp

OBS_KEYS = ("achieved_goal", "desired_goal", "observation")  # sorted, as SB3's CombinedExtractor


def flatten_obs(obs: dict) -> jax.Array:
  """The goal dict concatenated in OBS_KEYS order (16-D for Reach, 31-D for Push)."""
  return jnp.concatenate([obs[k] for k in OBS_KEYS], axis=-1)


def flat_size(env) -> int:
  """Length of `flatten_obs` for an env's observations."""
  return sum(env.observation_size[k] for k in OBS_KEYS)
