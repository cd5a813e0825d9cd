"""Several local devices: the seed axis of a run sharded over them with `jax.sharding` (a `Mesh` with one axis,
"seeds", and `NamedSharding(mesh, P("seeds"))` on every leaf's leading axis; no pmap). Seeds never talk to each
other, so XLA's partitioner splits the vmapped program into independent per-device parts: each device trains its
seeds, and checkpoints save and restore the sharded state as one array per leaf.

How many devices: all local ones by default, `--devices N` to choose; the count must divide the number of seeds
(each device holds whole seeds), so the default takes the largest count that does (`plan_devices`).
"""
from __future__ import annotations

SEED_AXIS = "seeds"


def plan_devices(n_seeds: int, n_available: int, requested: int | None = None) -> int:
  """Devices to shard `n_seeds` seeds over, of `n_available`: `requested` (ValueError when there are not that many
  or it does not divide the seeds), else the largest count <= n_available that divides n_seeds."""
  if requested is not None:
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
      raise ValueError(f"--devices must be a positive integer, got {requested!r}")
    if requested > n_available:
      raise ValueError(f"--devices {requested}: only {n_available} device(s) here")
    if n_seeds % requested:
      raise ValueError(f"--devices {requested} must divide the number of seeds ({n_seeds}): each device trains "
                       "whole seeds")
    return requested
  return max(d for d in range(1, min(n_seeds, n_available) + 1) if n_seeds % d == 0)


def seed_sharding(n_devices: int):
  """The NamedSharding that splits a leading seed axis over the first `n_devices` local devices (None for one:
  the default placement, no mesh)."""
  if n_devices <= 1:
    return None
  import jax
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  mesh = Mesh(np.asarray(jax.local_devices()[:n_devices]), (SEED_AXIS,))
  return NamedSharding(mesh, PartitionSpec(SEED_AXIS))


def shard_seeds(tree, sharding):
  """`tree` (every leaf with a leading seed axis) placed with `sharding` (None: unchanged)."""
  if sharding is None:
    return tree
  import jax

  return jax.device_put(tree, sharding)

