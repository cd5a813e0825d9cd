"""Scripted controllers, written once for numpy (CPU gymnasium-robotics) and jax.numpy (fetchjax, batched):
`xp` is the array module. obs: the `observation` vector [..., 10 or 25]; goal: [..., 3]."""
from __future__ import annotations

import numpy as np

GAIN = 10.0  # action = gain * position error (0.05 m per unit action and step: ~2 steps to close 1 cm)


def reach(obs, goal, xp=np):
  """Proportional reach: move the gripper straight to the goal."""
  return _action(xp, goal - obs[..., :3])


def push(obs, goal, xp=np):
  """A stateless three-phase push: hover over the point 6 cm behind the block (opposite the goal), descend there
  to block height, then push along the block-goal line until the block centre reaches the goal (the gripper
  stops 3.5 cm short of it: finger half-width + block half-size). Rises first when low and out of line."""
  grip, obj = obs[..., :3], obs[..., 3:6]
  to_goal = (goal - obj)[..., :2]
  d = to_goal / (xp.linalg.norm(to_goal, axis=-1, keepdims=True) + 1e-8)
  rel = grip[..., :2] - obj[..., :2]
  along = xp.sum(rel * d, axis=-1, keepdims=True)
  lateral = xp.linalg.norm(rel - along * d, axis=-1, keepdims=True)
  in_line = (lateral < 0.02) & (along < -0.02) & (along > -0.09)
  low = grip[..., 2:3] < obj[..., 2:3] + 0.02
  z_obj, z_hover = obj[..., 2:3], obj[..., 2:3] + 0.06
  behind = obj[..., :2] - 0.06 * d
  pushing = xp.concatenate([goal[..., :2] - 0.035 * d, z_obj], axis=-1)
  descend = xp.concatenate([behind, z_obj], axis=-1)
  rise = xp.concatenate([grip[..., :2], z_hover], axis=-1)
  hover = xp.concatenate([behind, z_hover], axis=-1)
  target = xp.where(in_line, xp.where(low, pushing, descend), xp.where(low, rise, hover))
  return _action(xp, target - grip)


def _action(xp, delta):
  move = xp.clip(GAIN * delta, -1.0, 1.0)
  return xp.concatenate([move, xp.zeros_like(move[..., :1])], axis=-1)


def for_env(env_id: str):
  return push if "Push" in env_id else reach
