"""Network pieces shared by the agents: initialisers, SB3's off-policy MLP and twin critic, where an off-policy
agent's observation encoder lives (`ROUTINGS`), the diagonal Gaussian."""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fetchjax.encoders.cnn import torch_uniform  # PyTorch's default Linear/Conv init, shared with the encoders

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
  """SB3 `create_mlp`: Linear+ReLU per hidden layer, then a Linear output (if out_size), optional tanh; on the
  features of `encoder` (an `fetchjax.encoders` module, params under "encoder") when one is given."""
  hidden_sizes: Sequence[int]
  out_size: int = 0
  squash: bool = False
  encoder: nn.Module | None = None

  @nn.compact
  def __call__(self, x):
    if self.encoder is not None:
      x = self.encoder(x)
    for i, h in enumerate(self.hidden_sizes):
      x = nn.relu(TorchDense(h, name=f"dense_{i}")(x))
    if self.out_size:
      x = TorchDense(self.out_size, name=f"dense_{len(self.hidden_sizes)}")(x)
    return jnp.tanh(x) if self.squash else x


class DoubleCritic(nn.Module):
  """SB3 `ContinuousCritic(n_critics=2)`: qf0, qf1 on cat(encoder(obs), action) -> (q1, q2), each [...].
  `encoder` (an `fetchjax.encoders` module, params under "encoder"; None: `obs` are features already) is shared
  by both Q heads, as SB3's critic features extractor."""
  hidden_sizes: Sequence[int] = (256, 256)
  encoder: nn.Module | None = None

  def setup(self):
    self.qf0 = MLP(self.hidden_sizes, 1)
    self.qf1 = MLP(self.hidden_sizes, 1)

  def encode(self, obs):
    """The features the Q heads read (with the critic routing: what the actor reads too)."""
    return obs if self.encoder is None else self.encoder(obs)

  def __call__(self, obs, action):
    x = jnp.concatenate([self.encode(obs), action], axis=-1)
    return self.qf0(x)[..., 0], self.qf1(x)[..., 0]


# ----------------------------------------------------------------------------------------------------------
# Where the observation encoder lives (an off-policy config's `encoder_routing`)
# ----------------------------------------------------------------------------------------------------------
ROUTINGS = {
    # SB3 SAC/TD3's default (share_features_extractor=False): actor and critic own an encoder each, each trained
    # by its own loss; the target critic has a Polyak copy of the critic's.
    "separate": "the actor and the critic each own an encoder, trained by their own loss",
    # Book ch9 (the decisive change of the pixel investigation): ONE encoder, in the critic's tree and optimiser,
    # trained by the critic loss only; the actor reads its features without their gradient; the target critic
    # has its own Polyak-averaged copy.
    "critic": "one encoder in the critic, trained by the critic loss only; the actor reads stop_gradient(features)",
}


def check_routing(routing: str) -> None:
  if routing not in ROUTINGS:
    raise ValueError(f"encoder_routing must be one of {', '.join(ROUTINGS)}, got {routing!r}")


def actor_owns_encoder(routing: str) -> bool:
  return routing == "separate"


def hidden_keys(config) -> tuple[str, ...]:
  """Observation keys an off-policy config's networks never read: achieved_goal with `hide_achieved_goal` (strict
  pixels: in Push the true object position, which stays in the observation for HER's reward recomputation)."""
  return ("achieved_goal",) if config.hide_achieved_goal else ()


def actor_and_critic(config, make_actor):
  """An off-policy algorithm's actor (`make_actor(encoder or None)`) and twin critic, each with the encoder it
  owns under `config.encoder_routing` (config.encoder, config.hidden_sizes)."""
  from fetchjax import encoders

  hidden = hidden_keys(config)
  enc = encoders.make(config.encoder, hidden_keys=hidden) if hidden else encoders.make(config.encoder)
  return make_actor(enc if actor_owns_encoder(config.encoder_routing) else None), DoubleCritic(config.hidden_sizes,
                                                                                                enc)


def actor_input(critic: DoubleCritic, routing: str):
  """`(critic_params, obs) -> what the actor module reads`: the observation dict itself when the actor owns its
  encoder; with the critic routing, the critic encoder's features with their gradient stopped (so the actor loss
  never trains the encoder, and the actor optimiser never sees its parameters)."""
  if actor_owns_encoder(routing):
    return lambda critic_params, obs: obs
  return lambda critic_params, obs: jax.lax.stop_gradient(
      critic.apply(critic_params, obs, method=DoubleCritic.encode))


def encoder_params_of(critic_params) -> dict | None:
  """The critic encoder's variables (what acting needs besides the actor with the critic routing), or None for an
  encoder without parameters."""
  enc = critic_params["params"].get("encoder")
  return None if enc is None else {"params": {"encoder": enc}}


# ----------------------------------------------------------------------------------------------------------
# Diagonal Gaussian (PPO's policy, SAC's pre-squash distribution)
# ----------------------------------------------------------------------------------------------------------
def gaussian_log_prob(x, mean, log_std):
  """Diagonal Gaussian log-density summed over the action dims (SB3 `sum_independent_dims`)."""
  return jnp.sum(-0.5 * jnp.square((x - mean) / jnp.exp(log_std)) - log_std - 0.5 * _LOG_2PI, axis=-1)


def gaussian_entropy(log_std):
  return jnp.sum(0.5 + 0.5 * _LOG_2PI + log_std, axis=-1)
