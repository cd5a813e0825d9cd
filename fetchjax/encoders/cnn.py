"""Pixel encoders of book ch9 (its ManipulationCNN, SpatialSoftmax and extractor listings; SB3's NatureCNN) as Flax
modules whose weights port 1:1 from PyTorch.

Layout: Flax is NHWC, the book and SB3 are NCHW. Pixels arrive as `[..., 84, 84, 3 * frames]` (frames stacked on
the channel axis, oldest first), uint8 until the network: the modules divide by 255 themselves, as SB3's
`preprocess_obs` does for a uint8 image space, so buffers and augmentation stay uint8. Wherever a feature map is
flattened it is first put in PyTorch's CHW order, so a torch `Linear` weight ports as a plain transpose.

Init is PyTorch's default (`Conv2d`/`Linear`: U(+-1/sqrt(fan_in)) for weight and bias), as SB3's off-policy
algorithms leave it; LayerNorm uses PyTorch's epsilon 1e-5 (Flax's default is 1e-6).

`make(name)` returns an extractor: a module whose `__call__(obs: dict) -> [..., F]` turns an observation dict into
features; the agents place it as a submodule of a network, so its params live in that network's tree.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

IMAGE_KEY = "pixels"
_PAD1 = ((1, 1), (1, 1))  # PyTorch padding=1; Flax 'SAME' would pad (0, 1) at stride 2 and shift the grid


def torch_uniform(fan_in: int):
  """PyTorch's default `Conv2d`/`Linear` init (`reset_parameters`: kaiming_uniform(a=sqrt(5)) on the weight =
  U(+-1/sqrt(fan_in)), and the bias U(+-1/sqrt(fan_in))). No QR, so it vmaps over seeds without the XLA:CPU stall
  of the orthogonal init (agents/nets.py). Here, below the agents, so that networks and encoders share it."""
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def to_unit_float(pixels):
  """uint8 [0, 255] -> float32 [0, 1]; a float image is taken as already scaled (SB3 `normalize_images`)."""
  if jnp.issubdtype(pixels.dtype, jnp.integer):
    return pixels.astype(jnp.float32) / 255.0
  return pixels


def flatten_chw(x):
  """[..., H, W, C] -> [..., C*H*W] in PyTorch's `nn.Flatten` order on NCHW."""
  return jnp.moveaxis(x, -1, -3).reshape(*x.shape[:-3], -1)


def _torch_dense(x, features: int, name: str):
  """`nn.Linear` with PyTorch's default init; kernel [in, out] = torch weight.T."""
  init = torch_uniform(x.shape[-1])
  return nn.Dense(features, kernel_init=init, bias_init=init, name=name)(x)


def _torch_conv(x, features: int, kernel: int, stride: int, padding, name: str):
  """`nn.Conv2d` with PyTorch's default init; kernel HWIO = torch weight OIHW permuted (2, 3, 1, 0)."""
  fan_in = x.shape[-1] * kernel * kernel
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in), name=name)(x)


class NatureCNN(nn.Module):
  """SB3 `NatureCNN` (Mnih et al. 2015): 84 -> 20 -> 9 -> 7, flatten 3136, Linear+ReLU. [..., H, W, C] -> [..., F].

  The book's failing baseline: stride 4 in the first layer leaves a 5-pixel puck about one pixel wide.
  """
  features: int = 512

  @nn.compact
  def __call__(self, pixels):
    x = to_unit_float(pixels)
    for i, (ch, k, s) in enumerate(((32, 8, 4), (64, 4, 2), (64, 3, 1))):
      x = nn.relu(_torch_conv(x, ch, k, s, "VALID", f"conv_{i}"))
    return nn.relu(_torch_dense(flatten_chw(x), self.features, "linear"))


class ManipulationCNN(nn.Module):
  """Book Listing 9.5: four 3x3 convs, strides 2, 1, 1, 2, padding 1, ReLU. [..., 84, 84, C] -> [..., 21, 21, 32].

  Gentle downsampling keeps a 5-pixel puck about 3 pixels wide after the first layer.
  """
  filters: int = 32

  @nn.compact
  def __call__(self, pixels):
    x = to_unit_float(pixels)
    for i, s in enumerate((2, 1, 1, 2)):
      x = nn.relu(_torch_conv(x, self.filters, 3, s, _PAD1, f"conv_{i}"))
    return x


class SpatialSoftmax(nn.Module):
  """Book Listing 9.6 (Levine et al. 2016): per channel, the expected (x, y) of softmax(features / T) over H*W.

  [..., H, W, C] -> [..., 2C] = [x_1..x_C, y_1..y_C] (not interleaved), coordinates linspace(-1, 1): pixel
  (row 0, col 0) -> (-1, -1). T is one learnable, unconstrained scalar, shape (1,).
  """
  temperature: float = 1.0

  @nn.compact
  def __call__(self, features):
    h, w, c = features.shape[-3:]
    temp = self.param("temperature", nn.initializers.constant(self.temperature), (1,), features.dtype)
    attn = jax.nn.softmax(features / temp, axis=(-3, -2))
    # Positions (2i - (n-1)) / (n-1), rounded once from float64, sum to exactly 0, so Sum_k pos_k attn_k =
    # Sum_k pos_k (attn_k - 1/(H W)): equal in exact arithmetic, but on a near-uniform map (an untrained net) the
    # book's form sums ~1/(H W) terms that cancel to coordinates ~1e-3 apart, whose float32 error the LayerNorm
    # after this layer scales by 1/std ~ 1000. Measured max error vs float64 on 21x21x32 maps: near uniform 3e-9
    # (book's form with float32 jnp.linspace 8e-8, the book in torch 2e-8); peaked 5e-7 (both forms; torch 1e-6).
    centred = attn - 1.0 / (h * w)
    pos_x = jnp.asarray((2.0 * np.arange(w) - (w - 1)) / (w - 1), features.dtype)
    pos_y = jnp.asarray((2.0 * np.arange(h) - (h - 1)) / (h - 1), features.dtype)
    exp_x = jnp.einsum("...hwc,w->...c", centred, pos_x)
    exp_y = jnp.einsum("...hwc,h->...c", centred, pos_y)
    return jnp.concatenate([exp_x, exp_y], axis=-1)


def _concat_sorted(obs: dict, image_key: str, image_features, vector_keys: Sequence[str] | None,
                   hidden_keys: Sequence[str] = ()):
  """Image features and flattened vector keys, concatenated in sorted key order.

  SB3's `CombinedExtractor` (and the book's extractor) concatenate in the order of the observation *space*'s
  keys. gymnasium (1.4.0, checked) `spaces.Dict({...})` given a plain dict sorts its keys (`sort_keys=True`, the
  default; an OrderedDict or a list of pairs keeps its order), so the ch9 wrapper's space is ordered
  achieved_goal, desired_goal, pixels, proprioception, whatever order the wrapper builds its obs dict in.
  """
  if vector_keys is None:
    keys = [k for k in obs if k != image_key and k not in hidden_keys]
  else:
    keys = list(vector_keys)
  batch = image_features.shape[:-1]
  parts = {image_key: image_features}
  for k in keys:
    parts[k] = jnp.asarray(obs[k]).astype(image_features.dtype).reshape(*batch, -1)
  return jnp.concatenate([parts[k] for k in sorted(parts)], axis=-1)


class ManipulationExtractor(nn.Module):
  """Book Listing 9.7 on an obs dict: pixels -> ManipulationCNN -> SpatialSoftmax -> LayerNorm -> tanh (64),
  or, with `spatial_softmax=False`, -> flatten (CHW) -> Linear(50) -> LayerNorm -> tanh (50); vector keys pass
  through flattened. 80 features for pixels + proprioception (10) + both goals (3 + 3); 66 without
  SpatialSoftmax.

  `vector_keys`: the non-image keys fed to the network (None: every other key of the obs dict but `hidden_keys`),
  e.g. without achieved_goal for the strict-pixels variant (`hidden_keys=("achieved_goal",)`).
  """
  spatial_softmax: bool = True
  filters: int = 32
  flat_features: int = 50
  image_key: str = IMAGE_KEY
  vector_keys: Sequence[str] | None = None
  hidden_keys: Sequence[str] = ()

  @nn.compact
  def __call__(self, obs: dict):
    x = ManipulationCNN(self.filters, name="cnn")(obs[self.image_key])
    if self.spatial_softmax:
      x = SpatialSoftmax(name="spatial_softmax")(x)
    else:
      x = _torch_dense(flatten_chw(x), self.flat_features, "linear")
    x = jnp.tanh(nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name="layer_norm")(x))
    return _concat_sorted(obs, self.image_key, x, self.vector_keys, self.hidden_keys)


class NatureExtractor(nn.Module):
  """SB3 `CombinedExtractor` on an obs dict: pixels -> NatureCNN(256) (`cnn_output_dim`), vector keys flattened,
  concatenated in sorted key order: 256 + 16 = 272 features for the ch9 observation."""
  features: int = 256
  image_key: str = IMAGE_KEY
  vector_keys: Sequence[str] | None = None
  hidden_keys: Sequence[str] = ()

  @nn.compact
  def __call__(self, obs: dict):
    x = NatureCNN(self.features, name="cnn")(obs[self.image_key])
    return _concat_sorted(obs, self.image_key, x, self.vector_keys, self.hidden_keys)


ENCODERS = {"nature": NatureExtractor, "manipulation": ManipulationExtractor}


def make(name: str, **kw) -> nn.Module:
  """The extractor called `name` ("nature", "manipulation"), built with `kw`."""
  if name not in ENCODERS:
    raise ValueError(f"unknown encoder {name!r}; valid: {', '.join(sorted(ENCODERS))}")
  return ENCODERS[name](**kw)
