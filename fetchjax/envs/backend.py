"""The interface of a physics backend (`cpu`, `mjx`, `warp`): what `FetchEnv` and all code outside
`fetchjax/envs/` may use of one (`env.backend`). Batched: every array has the env axis first.

A backend's state (`State.pipeline_state`) is opaque outside `envs/`: its layout differs per backend (C MuJoCo
state bits, an `mjx.Data`, a compact dict of Warp fields); read it only through these methods.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Protocol, runtime_checkable

import numpy as np


class Replay(NamedTuple):
  """What rendering needs of recorded states, on the host in float64: qpos [..., nq] and, where the backend keeps
  it, the mocap target [..., 3] / [..., 4] (None: the renderer leaves the model's own mocap pose)."""

  qpos: np.ndarray
  mocap_pos: Optional[np.ndarray] = None
  mocap_quat: Optional[np.ndarray] = None


@runtime_checkable
class PhysicsBackend(Protocol):
  name: str  # "cpu" | "mjx" | "warp"
  # Pixel observations (envs/pixels.py): the backend's `step_render` when it was built with a PixelConfig, else None
  # (mjx has no renderer). With it, `reset_render(object_xy, goal)` -> reset's outputs + frames [n, S, S, 3] uint8
  # and `step_render(state, action, reset_mask, reset_xy, goal_last, goal_next)` -> step's outputs + the frames of
  # the next observation and of the step's own, rendered inside the step (no extra host round trip).
  render: Optional[Callable[..., Any]]

  def reset(self, object_xy) -> tuple[Any, Any, Any]:
    """(state, observation, achieved goal) of fresh episodes with the object at `object_xy` [n, 2]."""

  def step(self, state, action, reset_mask, reset_xy) -> tuple[Any, Any, Any, Any, Any]:
    """One env step of every env, then a reset of the envs in `reset_mask` (object at `reset_xy`): (next state,
    next observation, next achieved goal, the step's own observation, its achieved goal)."""

  def physics_step(self, state, action) -> Any:
    """The physics of one env step only (mocap target, substeps): no observation, reward or reset. Jittable;
    what `python -m fetchjax.profile` times as "physics only"."""

  def snapshot(self, state, k: int) -> Any:
    """Jittable: what `replay` needs of the first `k` envs' states (recorded inside a rollout program)."""

  def replay(self, snapshots) -> Replay:
    """Host side: the `Replay` of snapshots with any leading axes ([seeds, T, k, ...])."""

  def observe_states(self, qpos, qvel) -> tuple[Any, Any]:
    """(observation, achieved goal) of given MuJoCo states qpos [n, nq], qvel [n, nv] (the parity checks load
    the reference's states with it)."""
