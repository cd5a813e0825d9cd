"""`FetchEnv`: gymnasium-robotics Fetch v4 as a batched, functional JAX environment (brax `Env` style)."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from fetchjax.envs import goal, scene
from fetchjax.envs.tasks import FetchTask

GoalObs = dict  # {"observation": [..., n], "achieved_goal": [..., 3], "desired_goal": [..., 3]}
# With pixels (envs/pixels.py): {"pixels": [..., S, S, 3] uint8, "proprioception": [..., 10], "achieved_goal",
# "desired_goal"}.


@flax.struct.dataclass
class State:
  """One batch of envs. Every leaf has a leading `num_envs` axis.

  pipeline_state: `mjx.Data` (mjx backend), the uint32 view of C MuJoCo's float64 state (cpu backend), or a dict
    of the MuJoCo state the next MJX-Warp step reads (warp backend: qpos, qvel, ..., see warp_backend.py).
  obs: the goal dict. After the 50th step it is already the next episode's first observation;
       `info["final_obs"]` keeps the episode's last one (the value to bootstrap from at truncation).
  reward, done: of the transition just taken (done = truncated at the time limit; never terminated).
  info: steps (in episode), truncation, is_success (of the transition), final_obs, rng (per env).
  """

  pipeline_state: Any
  obs: GoalObs
  reward: jax.Array
  done: jax.Array
  metrics: dict = flax.struct.field(default_factory=dict)
  info: dict = flax.struct.field(default_factory=dict)


class FetchEnv:
  """Batched Fetch env. `reset(key) -> State`, `step(state, action) -> State`; both jittable.

  Auto-reset: the step that ends an episode (always by truncation at `max_episode_steps`) returns the first
  observation of a new episode with a FRESH goal and object position drawn from the per-env PRNG keys.
  """

  def __init__(self, task: FetchTask, num_envs: int, physics_backend, pixels=None):
    self.task = task
    self.num_envs = num_envs
    self.backend = physics_backend
    self.pixels = pixels  # a pixels.PixelConfig: the book's pixel observations; None: the goal dict
    if pixels is not None:
      from fetchjax.envs.pixels import proprio_indices

      if getattr(physics_backend, "render", None) is None:
        raise ValueError(f"backend {physics_backend.name!r} cannot render pixel observations")
      self._proprio = jnp.asarray(proprio_indices(task))
    _, reset = scene.stock_model(task)
    self._reset_state = reset
    self._grip0 = jnp.asarray(reset.initial_gripper_xpos, jnp.float32)
    self.height_offset = reset.height_offset

  # --- spaces -------------------------------------------------------------------------------
  @property
  def env_id(self) -> str:
    return self.task.env_id

  @property
  def action_size(self) -> int:
    return 4

  @property
  def observation_size(self) -> dict[str, int]:
    """Sizes of the vector keys (with pixels: proprioception and the goals; the frame is in observation_spec)."""
    if self.pixels is not None:
      return {"proprioception": int(self._proprio.shape[0]), "achieved_goal": 3, "desired_goal": 3}
    return {"observation": self.task.obs_size, "achieved_goal": 3, "desired_goal": 3}

  @property
  def observation_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape and dtype of ONE env's observation, per key (what learners and replay buffers are built from)."""
    spec = {k: jax.ShapeDtypeStruct((n,), jnp.float32) for k, n in self.observation_size.items()}
    if self.pixels is not None:
      s = self.pixels.size
      spec = {"pixels": jax.ShapeDtypeStruct((s, s, 3), jnp.uint8), **spec}
    return spec

  @property
  def hidden_keys(self) -> tuple[str, ...]:
    """Observation keys kept for reward recomputation that the networks must not read (strict pixels:
    achieved_goal, the true object position in Push)."""
    from fetchjax.envs.pixels import hidden_keys

    return hidden_keys(self.pixels)

  def _obs(self, observation, achieved, goal, frame=None) -> GoalObs:
    if self.pixels is None:
      return {"observation": observation, "achieved_goal": achieved, "desired_goal": goal}
    return {"pixels": frame, "proprioception": observation[..., self._proprio], "achieved_goal": achieved,
            "desired_goal": goal}

  @property
  def max_episode_steps(self) -> int:
    return self.task.max_episode_steps

  @property
  def backend_name(self) -> str:
    return self.backend.name

  # --- pure goal-env functions ---------------------------------------------------------------
  def compute_reward(self, achieved_goal, desired_goal, info=None):
    return goal.compute_reward(achieved_goal, desired_goal, info, reward_type=self.task.reward_type,
                               distance_threshold=self.task.distance_threshold)

  def is_success(self, achieved_goal, desired_goal):
    return goal.is_success(achieved_goal, desired_goal, self.task.distance_threshold)

  # --- samplers -------------------------------------------------------------------------------
  def sample_task(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(object_xy, goal) for one env, with `_reset_sim`'s then `_sample_goal`'s distributions."""
    k_obj, k_goal = jax.random.split(key)
    t = self.task
    if t.has_object:
      xy = goal.sample_object_xy(k_obj, self._grip0[:2], t.obj_range)
    else:
      xy = jnp.zeros(2, jnp.float32)
    g = goal.sample_goal(k_goal, self._grip0, has_object=t.has_object, target_range=t.target_range,
                         target_offset=t.target_offset, height_offset=float(np.nan_to_num(self.height_offset)),
                         target_in_the_air=t.target_in_the_air)
    return xy, g

  # --- API ------------------------------------------------------------------------------------
  def reset(self, key: jax.Array) -> State:
    keys = jax.random.split(key, self.num_envs + 1)
    rng = jax.random.split(keys[0], self.num_envs)
    object_xy, goals = jax.vmap(self.sample_task)(keys[1:])
    return self.reset_to(object_xy, goals, rng)

  def reset_to(self, object_xy: jax.Array, goals: jax.Array, rng: jax.Array | None = None) -> State:
    """Reset from given task parameters (object xy [n, 2], goal [n, 3]): parity tests inject the CPU
    env's samples here, since numpy's PCG64 stream cannot be reproduced in JAX."""
    exact_xy = None
    if getattr(self.backend, "exact_reset", False):
      try:  # concrete float64 values reach C MuJoCo losslessly (uint32 view), for bit-exact parity runs
        exact_xy = np.asarray(object_xy, np.float64).reshape(self.num_envs, 2).view(np.uint32)
      except jax.errors.TracerArrayConversionError:
        exact_xy = None  # traced (inside jit): float32 is all there is
    object_xy = jnp.asarray(object_xy, jnp.float32).reshape(self.num_envs, 2)
    goals = jnp.asarray(goals, jnp.float32).reshape(self.num_envs, 3)
    if rng is None:
      rng = jax.random.split(jax.random.PRNGKey(0), self.num_envs)
    extra = () if exact_xy is None else (exact_xy,)
    if self.pixels is None:
      ps, observation, achieved = self.backend.reset(object_xy, *extra)
      obs = self._obs(observation, achieved, goals)
    else:
      ps, observation, achieved, frame = self.backend.reset_render(object_xy, goals, *extra)
      obs = self._obs(observation, achieved, goals, frame)
    zeros = jnp.zeros(self.num_envs, jnp.float32)
    info = {"steps": jnp.zeros(self.num_envs, jnp.int32), "truncation": zeros,
            "is_success": self.is_success(achieved, goals), "final_obs": obs, "rng": rng}
    return State(pipeline_state=ps, obs=obs, reward=zeros, done=zeros, metrics={}, info=info)

  def step(self, state: State, action: jax.Array) -> State:
    if action.shape[-1] != 4:
      raise ValueError(f"action must have 4 components [dx, dy, dz, gripper], got shape {action.shape}")
    action = jnp.clip(action.astype(jnp.float32), -1.0, 1.0)
    steps = state.info["steps"] + 1
    done = steps >= self.task.max_episode_steps
    split = jax.vmap(lambda k: jax.random.split(k, 2))(state.info["rng"])
    rng, task_keys = split[:, 0], split[:, 1]
    new_xy, new_goal = jax.vmap(self.sample_task)(task_keys)

    desired = state.obs["desired_goal"]
    goal_next = jnp.where(done[:, None], new_goal, desired)
    if self.pixels is None:
      ps, obs_next, ag_next, obs_last, ag_last = self.backend.step(state.pipeline_state, action, done, new_xy)
      frame_next = frame_last = None
    else:
      ps, obs_next, ag_next, obs_last, ag_last, frame_next, frame_last = self.backend.step_render(
          state.pipeline_state, action, done, new_xy, desired, goal_next)
    final_obs = self._obs(obs_last, ag_last, desired, frame_last)
    reward = self.compute_reward(ag_last, desired)
    success = self.is_success(ag_last, desired)
    obs = self._obs(obs_next, ag_next, goal_next, frame_next)
    donef = done.astype(jnp.float32)
    info = {"steps": jnp.where(done, 0, steps), "truncation": donef, "is_success": success,
            "final_obs": final_obs, "rng": rng}
    return State(pipeline_state=ps, obs=obs, reward=reward, done=donef, metrics=state.metrics, info=info)
