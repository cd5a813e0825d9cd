"""Frame stacks for acting outside training (eval, video, `load_policy`): the k-frame stack a policy trained with
`frame_stack=k` reads, rebuilt from an env's single frames exactly as training stacks them (`her.acting_obs`,
`her.sample`) and as the book's ch9 `PixelObservationWrapper` does: frames on the last (channel) axis, oldest
first, the deque filled with copies of the first frame at every episode start.

The state is the stacked observation itself (a pytree like the env's obs, `keys` with k times the channels), so a
`lax.scan` carries it beside the env state:

    stacked = frames.reset(state.obs, k)                           # at reset: k copies of o_0
    action = act(policy, stacked)
    state = env.step(state, action)
    stacked = frames.push(stacked, state.obs, k, first=state.done > 0)   # o_{t+1}; after an auto-reset: copies

k = 1 returns the observation itself (no stacking code runs). Pure functions (jnp; numpy arrays in work too).
"""
from __future__ import annotations

import jax.numpy as jnp

STACK_KEYS = ("pixels",)   # what a frame stack stacks: the rendered frames (the other keys are the newest values)


def _keys(obs: dict, keys) -> tuple[str, ...]:
  keys = (keys,) if isinstance(keys, str) else tuple(keys)
  missing = [k for k in keys if k not in obs]
  if missing:
    raise ValueError(f"cannot stack {missing}: the observation has {sorted(obs)}")
  return keys


def reset(obs: dict, k: int, keys=STACK_KEYS) -> dict:
  """The stack at an episode start: `keys` of `obs` ([..., c] single frames) as k copies, [..., k*c]."""
  if k == 1:
    return obs
  keys = _keys(obs, keys)
  return {n: jnp.concatenate([v] * k, axis=-1) if n in keys else v for n, v in obs.items()}


def push(stacked: dict, obs: dict, k: int, keys=STACK_KEYS, first=None) -> dict:
  """The stack after the next observation `obs` (single frames): the oldest frame dropped, `obs`'s appended; the
  other keys are `obs`'s. `first` (bool [n] or None): envs whose `obs` starts a new episode (an auto-reset) start
  from k copies of it instead."""
  if k == 1:
    return obs
  keys = _keys(obs, keys)
  out = dict(obs)
  for n in keys:
    c = obs[n].shape[-1]
    if stacked[n].shape[-1] != k * c:
      raise ValueError(f"stack {n!r} has {stacked[n].shape[-1]} channels, not {k} x {c}")
    nxt = jnp.concatenate([stacked[n][..., c:], obs[n]], axis=-1)
    if first is not None:
      again = jnp.concatenate([obs[n]] * k, axis=-1)
      nxt = jnp.where(jnp.reshape(first, first.shape + (1,) * (nxt.ndim - first.ndim)), again, nxt)
    out[n] = nxt
  return out


__all__ = ["STACK_KEYS", "reset", "push"]
