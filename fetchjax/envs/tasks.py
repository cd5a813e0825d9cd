"""Per-task constants of gymnasium-robotics Fetch v4 (fetch/{reach,push,pick_and_place,slide}.py, v1.4.2)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FetchTask:
  """Constructor arguments of one gymnasium-robotics Fetch environment."""

  env_id: str
  xml_name: str
  reward_type: str  # "sparse" | "dense"
  has_object: bool
  block_gripper: bool
  gripper_extra_height: float
  target_in_the_air: bool
  target_offset: float | tuple[float, float, float]  # Slide: a vector (a tuple: tasks are hashable cache keys)
  obj_range: float
  target_range: float
  distance_threshold: float
  initial_qpos: tuple[tuple[str, tuple[float, ...]], ...]
  n_substeps: int = 20
  max_episode_steps: int = 50

  @property
  def obs_size(self) -> int:
    return 25 if self.has_object else 10


_REACH_QPOS = (("robot0:slide0", (0.4049,)), ("robot0:slide1", (0.48,)), ("robot0:slide2", (0.0,)))
_PUSH_QPOS = (
    ("robot0:slide0", (0.405,)),
    ("robot0:slide1", (0.48,)),
    ("robot0:slide2", (0.0,)),
    ("object0:joint", (1.25, 0.53, 0.4, 1.0, 0.0, 0.0, 0.0)),
)


def _reach(env_id: str, reward_type: str) -> FetchTask:
  return FetchTask(
      env_id=env_id, xml_name="reach.xml", reward_type=reward_type, has_object=False,
      block_gripper=True, gripper_extra_height=0.2, target_in_the_air=True, target_offset=0.0,
      obj_range=0.15, target_range=0.15, distance_threshold=0.05, initial_qpos=_REACH_QPOS)


def _push(env_id: str, reward_type: str) -> FetchTask:
  return FetchTask(
      env_id=env_id, xml_name="push.xml", reward_type=reward_type, has_object=True,
      block_gripper=True, gripper_extra_height=0.0, target_in_the_air=False, target_offset=0.0,
      obj_range=0.15, target_range=0.15, distance_threshold=0.05, initial_qpos=_PUSH_QPOS)


def _pick_and_place(env_id: str, reward_type: str) -> FetchTask:
  return FetchTask(
      env_id=env_id, xml_name="pick_and_place.xml", reward_type=reward_type, has_object=True,
      block_gripper=False, gripper_extra_height=0.2, target_in_the_air=True, target_offset=0.0,
      obj_range=0.15, target_range=0.15, distance_threshold=0.05, initial_qpos=_PUSH_QPOS)


_SLIDE_QPOS = (
    ("robot0:slide0", (0.05,)),
    ("robot0:slide1", (0.48,)),
    ("robot0:slide2", (0.0,)),
    ("object0:joint", (1.7, 1.1, 0.41, 1.0, 0.0, 0.0, 0.0)),
)


def _slide(env_id: str, reward_type: str) -> FetchTask:
  return FetchTask(
      env_id=env_id, xml_name="slide.xml", reward_type=reward_type, has_object=True,
      block_gripper=True, gripper_extra_height=-0.02, target_in_the_air=False, target_offset=(0.4, 0.0, 0.0),
      obj_range=0.1, target_range=0.3, distance_threshold=0.05, initial_qpos=_SLIDE_QPOS)


TASKS: dict[str, FetchTask] = {
    "FetchReach-v4": _reach("FetchReach-v4", "sparse"),
    "FetchReachDense-v4": _reach("FetchReachDense-v4", "dense"),
    "FetchPush-v4": _push("FetchPush-v4", "sparse"),
    "FetchPushDense-v4": _push("FetchPushDense-v4", "dense"),
    "FetchPickAndPlace-v4": _pick_and_place("FetchPickAndPlace-v4", "sparse"),
    "FetchPickAndPlaceDense-v4": _pick_and_place("FetchPickAndPlaceDense-v4", "dense"),
    "FetchSlide-v4": _slide("FetchSlide-v4", "sparse"),
    "FetchSlideDense-v4": _slide("FetchSlideDense-v4", "dense"),
}
