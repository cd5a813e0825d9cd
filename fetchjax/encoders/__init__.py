"""Observation encoders: flax modules `encoder(obs: dict) -> features [..., F]` that the agents put inside their
networks (so an encoder's parameters live in the tree of the network that owns it; see
`fetchjax.agents.nets.ROUTINGS` for which network that is).

    state.py   FlatState: the goal dict concatenated in SB3's sorted-key order (no parameters)
"""
from __future__ import annotations

import flax.linen as nn

from fetchjax.encoders.state import OBS_KEYS, FlatState, flatten_obs

ENCODERS = ("flat",)


def make(name: str) -> nn.Module:
  """The encoder called `name` (a config's `encoder` field)."""
  if name == "flat":
    return FlatState()
  raise ValueError(f"unknown encoder {name!r}; available: {', '.join(ENCODERS)}")


__all__ = ["ENCODERS", "make", "FlatState", "flatten_obs", "OBS_KEYS"]
