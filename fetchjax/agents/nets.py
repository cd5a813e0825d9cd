"""Network pieces shared by the agents."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def orthogonal(gain: float = 1.0):
  """`nn.initializers.orthogonal`, safe to vmap over seeds on XLA:CPU.

  Under `vmap` the QR becomes one batched LAPACK call that jaxlib (0.10) spreads over the intra-op thread pool
  with `ParallelBatchMap`; inside a jitted training program that pool's threads can all be blocked, and the
  call waits forever (seen as a silent stall of `jit(vmap(train))`). `sequential_vmap` maps the seeds with
  `lax.map` instead, so every QR is unbatched. Initialisation runs once, so the cost is nil.
  """
  base = nn.initializers.orthogonal(gain)

  def init(key, shape, dtype=jnp.float32):
    return jax.custom_batching.sequential_vmap(lambda k: base(k, shape, dtype))(key)

  return init
