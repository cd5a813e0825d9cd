"""Network pieces shared by the agents: initialisers, SB3's off-policy MLP and twin critic, the diagonal Gaussian."""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2.0 * math.pi)


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


# ----------------------------------------------------------------------------------------------------------
# SB3's off-policy networks (SAC, TD3): PyTorch's default `nn.Linear` init
# ----------------------------------------------------------------------------------------------------------
def torch_uniform(fan_in: int):
  """PyTorch `nn.Linear.reset_parameters`: kaiming_uniform(a=sqrt(5)) on the weight = U(+-1/sqrt(fan_in)), and
  the bias U(+-1/sqrt(fan_in)). No QR, so it vmaps over seeds without the XLA:CPU stall (see `orthogonal`)."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class TorchDense(nn.Module):
  """`nn.Linear` with PyTorch's default init. kernel [in, out] = torch weight.T."""
  features: int

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    kernel = self.param("kernel", torch_uniform(fan_in), (fan_in, self.features))
    bias = self.param("bias", torch_uniform(fan_in), (self.features,))
    return x @ kernel + bias


class MLP(nn.Module):
  """SB3 `create_mlp`: Linear+ReLU per hidden layer, then a Linear output (if out_size), optional tanh."""
  hidden_sizes: Sequence[int]
  out_size: int = 0
  squash: bool = False

  @nn.compact
  def __call__(self, x):
    for i, h in enumerate(self.hidden_sizes):
      x = nn.relu(TorchDense(h, name=f"dense_{i}")(x))
    if self.out_size:
      x = TorchDense(self.out_size, name=f"dense_{len(self.hidden_sizes)}")(x)
    return jnp.tanh(x) if self.squash else x


class DoubleCritic(nn.Module):
  """SB3 `ContinuousCritic(n_critics=2)`: qf0, qf1 on cat(obs, action) -> (q1, q2), each [...]."""
  hidden_sizes: Sequence[int] = (256, 256)

  @nn.compact
  def __call__(self, obs, action):
    x = jnp.concatenate([obs, action], axis=-1)
    return tuple(MLP(self.hidden_sizes, 1, name=f"qf{i}")(x)[..., 0] for i in range(2))


# ----------------------------------------------------------------------------------------------------------
# Diagonal Gaussian (PPO's policy, SAC's pre-squash distribution)
# ----------------------------------------------------------------------------------------------------------
def gaussian_log_prob(x, mean, log_std):
  """Diagonal Gaussian log-density summed over the action dims (SB3 `sum_independent_dims`)."""
  return jnp.sum(-0.5 * jnp.square((x - mean) / jnp.exp(log_std)) - log_std - 0.5 * _LOG_2PI, axis=-1)


def gaussian_entropy(log_std):
  return jnp.sum(0.5 + 0.5 * _LOG_2PI + log_std, axis=-1)
