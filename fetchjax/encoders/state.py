"""The state encoder: the goal dict concatenated as SB3 MultiInputPolicy's CombinedExtractor does (flatten each
key, concatenate in sorted-key order). No parameters."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

OBS_KEYS = ("achieved_goal", "desired_goal", "observation")  # sorted, as SB3's CombinedExtractor


def flatten_obs(obs: dict) -> jax.Array:
  """The goal dict concatenated in OBS_KEYS order (16-D for Reach, 31-D for Push)."""
  return jnp.concatenate([obs[k] for k in OBS_KEYS], axis=-1)


class FlatState(nn.Module):
  """`flatten_obs` as an encoder module: obs dict [..., *] -> features [..., 16 | 31]."""

  @nn.compact
  def __call__(self, obs: dict) -> jax.Array:
    return flatten_obs(obs)
