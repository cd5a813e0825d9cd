"""Pure, batched goal-env functions with gymnasium-robotics' exact operators.

`compute_reward` / `is_success` work on any leading batch shape, like `BaseFetchEnv.compute_reward`.
Dtypes follow the reference: the sparse reward is float32, the dense reward keeps the input dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def goal_distance(goal_a: jax.Array, goal_b: jax.Array) -> jax.Array:
  """np.linalg.norm(a - b, axis=-1) with numpy's summation order, bit-exact eagerly and under jit: the squares
  sit behind an optimization barrier, because XLA may contract the multiply-adds into FMAs (jax 0.11's XLA:CPU
  does: up to 2 ulp off numpy, and a sparse reward could flip at the 5 cm threshold)."""
  if goal_a.shape[-1:] != goal_b.shape[-1:]:
    raise ValueError(f"goal shapes differ: {goal_a.shape} vs {goal_b.shape}")
  x = goal_a - goal_b
  if x.shape[-1] != 3:
    return jnp.linalg.norm(x, axis=-1)
  sq = jax.lax.optimization_barrier(x * x)
  return jnp.sqrt((sq[..., 0] + sq[..., 1]) + sq[..., 2])


def compute_reward(achieved_goal, desired_goal, info=None, *, reward_type: str = "sparse",
                   distance_threshold: float = 0.05) -> jax.Array:
  """-(d > threshold) as float32 (sparse) or -d (dense); `info` is ignored, as upstream."""
  del info
  d = goal_distance(jnp.asarray(achieved_goal), jnp.asarray(desired_goal))
  if reward_type == "sparse":
    return -(d > distance_threshold).astype(jnp.float32)
  if reward_type == "dense":
    return -d
  raise ValueError(f"reward_type must be 'sparse' or 'dense', got '{reward_type}'")


def is_success(achieved_goal, desired_goal, distance_threshold: float = 0.05) -> jax.Array:
  """(d < threshold) as float32: strict, so d == threshold is a 0-reward failure, as upstream."""
  d = goal_distance(jnp.asarray(achieved_goal), jnp.asarray(desired_goal))
  return (d < distance_threshold).astype(jnp.float32)


def mat2euler(mat: jax.Array) -> jax.Array:
  """gymnasium_robotics.utils.rotations.mat2euler for [..., 3, 3] matrices."""
  eps = 4 * jnp.finfo(mat.dtype).eps
  cy = jnp.sqrt(mat[..., 2, 2] * mat[..., 2, 2] + mat[..., 1, 2] * mat[..., 1, 2])
  cond = cy > eps
  ez = jnp.where(cond, -jnp.arctan2(mat[..., 0, 1], mat[..., 0, 0]),
                 -jnp.arctan2(-mat[..., 1, 0], mat[..., 1, 1]))
  ey = -jnp.arctan2(-mat[..., 0, 2], cy)
  ex = jnp.where(cond, -jnp.arctan2(mat[..., 1, 2], mat[..., 2, 2]), 0.0)
  return jnp.stack([ex, ey, ez], axis=-1)


def sample_object_xy(key: jax.Array, initial_gripper_xy: jax.Array, obj_range: float,
                     min_distance: float = 0.1) -> jax.Array:
  """`_reset_sim`'s rejection loop: uniform in ±obj_range around the gripper, at least 10 cm away."""

  def draw(k):
    return initial_gripper_xy + jax.random.uniform(k, (2,), minval=-obj_range, maxval=obj_range)

  def too_close(carry):
    return jnp.linalg.norm(carry[1] - initial_gripper_xy) < min_distance

  def redraw(carry):
    k, _ = carry
    k, sub = jax.random.split(k)
    return k, draw(sub)

  key, sub = jax.random.split(key)
  return jax.lax.while_loop(too_close, redraw, (key, draw(sub)))[1]


def sample_goal(key: jax.Array, initial_gripper_xpos: jax.Array, *, has_object: bool,
                target_range: float, target_offset=0.0, height_offset: float = 0.0,
                target_in_the_air: bool = False) -> jax.Array:
  """`_sample_goal`: a ±target_range box around the initial grip position (object tasks: on the table).
  target_offset: a scalar or an (x, y, z) offset (Slide: 0.4 m along x, beyond the arm's reach)."""
  k_box, k_air, k_height = jax.random.split(key, 3)
  goal = initial_gripper_xpos + jax.random.uniform(k_box, (3,), minval=-target_range, maxval=target_range)
  if not has_object:
    return goal
  goal = (goal + jnp.asarray(target_offset, goal.dtype)).at[2].set(height_offset)
  if target_in_the_air:
    lift = jax.random.uniform(k_height, (), minval=0.0, maxval=0.45)
    goal = goal.at[2].add(jnp.where(jax.random.uniform(k_air) < 0.5, lift, 0.0))
  return goal
