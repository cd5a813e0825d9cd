"""Observation encoders: flax modules `encoder(obs: dict) -> features [..., F]` that the agents put inside their
networks (so an encoder's parameters live in the tree of the network that owns it; `fetchjax.agents.nets.ROUTINGS`
says which network that is).

    state.py   FlatState: the goal dict concatenated in SB3's sorted-key order (no parameters)
    cnn.py     the pixel encoders of book ch9: NatureCNN (SB3's CombinedExtractor), ManipulationCNN +
               SpatialSoftmax (ManipulationExtractor); uint8 NHWC frames under obs["pixels"]
"""
from __future__ import annotations

import flax.linen as nn

from fetchjax.encoders import cnn
from fetchjax.encoders.state import OBS_KEYS, FlatState, flatten_obs

ENCODERS = ("flat", *sorted(cnn.ENCODERS))


def make(name: str, hidden_keys: tuple[str, ...] = ()) -> nn.Module:
  """The encoder called `name` (a config's `encoder` field). `hidden_keys`: observation keys a pixel encoder must
  not read although the observation holds them (strict pixels: achieved_goal, kept for HER's rewards)."""
  if name == "flat":
    if hidden_keys:
      raise ValueError(f"encoder 'flat' reads every goal-dict key; it cannot hide {list(hidden_keys)}")
    return FlatState()
  if name in cnn.ENCODERS:
    return cnn.make(name, hidden_keys=tuple(hidden_keys)) if hidden_keys else cnn.make(name)
  raise ValueError(f"unknown encoder {name!r}; available: {', '.join(ENCODERS)}")


def required_keys(name: str) -> tuple[str, ...]:
  """The observation keys encoder `name` reads (beyond those, an observation dict may hold anything)."""
  if name == "flat":
    return OBS_KEYS
  return (cnn.IMAGE_KEY, "achieved_goal", "desired_goal") if name in cnn.ENCODERS else ()


def check_inputs(name: str, obs_keys) -> None:
  """ValueError when an env's observations lack what encoder `name` reads (e.g. a pixel encoder on a state env)."""
  missing = [k for k in required_keys(name) if k not in obs_keys]
  if missing:
    raise ValueError(f"encoder {name!r} reads the observation key(s) {missing}, which this env does not provide "
                     f"(it has {', '.join(sorted(obs_keys))})")


__all__ = ["ENCODERS", "make", "required_keys", "check_inputs", "FlatState", "flatten_obs", "OBS_KEYS", "cnn"]
