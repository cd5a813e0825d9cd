"""The cost of goal_distance's optimization barrier (bit-exact jitted rewards): a jitted reward on B goal pairs,
fused with what follows it, with the barrier ("after") and with the plain expression it replaced ("before").
Best of 5 repeats, microseconds per call.

    python scripts/measure_goal_distance.py
"""
from __future__ import annotations

import time

import fetchjax  # noqa: F401  (XLA flags before JAX starts)
import jax
import jax.numpy as jnp
import numpy as np

from fetchjax.envs import goal


def plain_distance(a, b):
  """goal_distance before the barrier: XLA may contract it into FMAs."""
  x = a - b
  return jnp.sqrt((x[..., 0] * x[..., 0] + x[..., 1] * x[..., 1]) + x[..., 2] * x[..., 2])


def per_call(f, a, b, n: int) -> float:
  f(a, b).block_until_ready()  # compile
  best = float("inf")
  for _ in range(5):
    t = time.perf_counter()
    for _ in range(n):
      out = f(a, b)
    out.block_until_ready()
    best = min(best, (time.perf_counter() - t) / n)
  return best


def main() -> None:
  rng = np.random.default_rng(0)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}")
  for batch in (256, 65536):
    a = jnp.asarray(rng.uniform(1.0, 1.6, (batch, 3)), jnp.float32)
    b = a + 0.03
    for name, dist in (("before", plain_distance), ("after", goal.goal_distance)):
      # a sparse and a dense reward, as the env step and HER relabelling use them, fused with a reduction
      f = jax.jit(lambda a, b, dist=dist: jnp.sum(-(dist(a, b) > 0.05).astype(jnp.float32) - 0.1 * dist(a, b)))
      print(f"B={batch:6d} {name:6s} {per_call(f, a, b, 2000 if batch == 256 else 300) * 1e6:8.2f} us/call")


if __name__ == "__main__":
  main()
