"""Pixel encoders (fetchjax/encoders/cnn.py, book ch9): shapes, SpatialSoftmax geometry, uint8 input, and
weight-level parity with PyTorch: the book's modules (transcribed below from Listings 9.5-9.7) and SB3's own
`NatureCNN` / `CombinedExtractor`, with the torch weights copied into the Flax params."""
from __future__ import annotations

import types

import numpy as np
import pytest

import fetchjax  # noqa: F401  (XLA flags before JAX initialises)
import jax
import jax.numpy as jnp
from measured import Recorder, max_abs

from fetchjax.encoders import cnn

TOL = 1e-5
B, CH = 2, 12  # batch, 4 stacked RGB frames
VECTORS = {"proprioception": 10, "desired_goal": 3, "achieved_goal": 3}


def _obs(seed=0, batch=(B,)):
  """A ch9 observation, NHWC uint8 pixels, in the wrapper's insertion order (pixels, proprio, dg, ag)."""
  rng = np.random.default_rng(seed)
  obs = {"pixels": rng.integers(0, 256, (*batch, 84, 84, CH), dtype=np.uint8)}
  obs.update({k: rng.normal(size=(*batch, n)) for k, n in VECTORS.items()})
  return obs


def _init(module, x, seed=0):
  return module.init(jax.random.PRNGKey(seed), x)


# ----------------------------------------------------------------------------------------------------------
# Shapes, factory, geometry (no torch)
# ----------------------------------------------------------------------------------------------------------
def test_shapes():
  obs = _obs()
  px = obs["pixels"]
  for module, x, shape in ((cnn.NatureCNN(), px, (B, 512)),
                           (cnn.ManipulationCNN(), px, (B, 21, 21, 32)),
                           (cnn.SpatialSoftmax(), jnp.zeros((B, 21, 21, 32)), (B, 64)),
                           (cnn.ManipulationExtractor(), obs, (B, 80)),
                           (cnn.ManipulationExtractor(spatial_softmax=False), obs, (B, 66)),
                           (cnn.NatureExtractor(), obs, (B, 256 + 16))):
    out, _ = module.init_with_output(jax.random.PRNGKey(0), x)
    assert out.shape == shape, (type(module).__name__, out.shape)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
  temp = _init(cnn.SpatialSoftmax(), jnp.zeros((1, 21, 21, 32)))["params"]["temperature"]
  assert temp.shape == (1,) and float(temp[0]) == 1.0


def test_init_is_pytorch_default():
  """Every conv/linear weight and bias ~ U(+-1/sqrt(fan_in)) (PyTorch's default, which SB3's SAC keeps)."""
  params = _init(cnn.ManipulationExtractor(spatial_softmax=False), _obs())["params"]
  layers = {**{f"cnn/{k}": v for k, v in params["cnn"].items()}, "linear": params["linear"]}
  for name, p in layers.items():
    fan_in = int(np.prod(p["kernel"].shape[:-1]))
    bound = 1.0 / np.sqrt(fan_in)
    for leaf in (p["kernel"], p["bias"]):
      assert float(jnp.max(jnp.abs(leaf))) <= bound, name
    assert float(jnp.max(jnp.abs(p["kernel"]))) > 0.95 * bound, name


def test_leading_dims():
  """Any leading dims, none included: [T, B, ...] and a single unbatched observation."""
  module = cnn.ManipulationExtractor()
  obs = _obs(batch=(1, B))
  out, params = module.init_with_output(jax.random.PRNGKey(0), obs)
  assert out.shape == (1, B, 80)
  one = jax.tree.map(lambda a: a[0, 1], obs)
  np.testing.assert_allclose(module.apply(params, one), out[0, 1], atol=1e-6)


def test_key_order_and_vector_keys():
  """Sorted key order (SB3 on gymnasium's sorted Dict space): achieved_goal, desired_goal, pixels, proprioception.
  `vector_keys` picks the vector inputs, e.g. without achieved_goal (strict pixels), with the same params."""
  obs = _obs()
  module = cnn.ManipulationExtractor()
  out, params = module.init_with_output(jax.random.PRNGKey(0), obs)
  f32 = {k: np.asarray(v, np.float32) for k, v in obs.items() if k != "pixels"}
  np.testing.assert_array_equal(out[:, 0:3], f32["achieved_goal"])
  np.testing.assert_array_equal(out[:, 3:6], f32["desired_goal"])
  np.testing.assert_array_equal(out[:, 70:80], f32["proprioception"])
  strict = cnn.ManipulationExtractor(vector_keys=("proprioception", "desired_goal")).apply(params, obs)
  np.testing.assert_array_equal(strict, out[:, 3:])


def test_make():
  assert isinstance(cnn.make("manipulation"), cnn.ManipulationExtractor)
  assert not cnn.make("manipulation", spatial_softmax=False).spatial_softmax
  assert isinstance(cnn.make("nature"), cnn.NatureExtractor)
  with pytest.raises(ValueError, match="manipulation, nature"):
    cnn.make("impala")


def test_spatial_softmax_geometry():
  """A single hot pixel per channel at (row r, col c), low temperature -> (x, y) = (lin_W[c], lin_H[r]); H != W
  catches a swapped axis; output is [x_1..x_C, y_1..y_C]."""
  h, w = 5, 7
  hot = [(0, 0), (1, 5), (4, 6), (2, 3)]
  f = np.zeros((1, h, w, len(hot)), np.float32)
  for ch, (r, c) in enumerate(hot):
    f[0, r, c, ch] = 1.0
  module = cnn.SpatialSoftmax()
  params = {"params": {"temperature": jnp.array([0.01])}}
  out = np.asarray(module.apply(params, jnp.asarray(f)))[0]
  lin_x, lin_y = np.linspace(-1, 1, w), np.linspace(-1, 1, h)
  want = [lin_x[c] for _, c in hot] + [lin_y[r] for r, _ in hot]
  np.testing.assert_allclose(out, want, atol=1e-6)
  np.testing.assert_allclose(out[[0, len(hot)]], [-1.0, -1.0], atol=1e-6)  # pixel (0, 0) -> (-1, -1)


def test_uint8_equals_unit_float():
  """Pixels stay uint8 until the network: uint8 input == the same image given as float32 k/255."""
  obs = _obs(seed=1)
  as_float = dict(obs, pixels=obs["pixels"].astype(np.float32) / 255.0)
  assert np.array_equal(np.round(as_float["pixels"] * 255.0).astype(np.uint8), obs["pixels"])
  for module in (cnn.ManipulationExtractor(), cnn.NatureExtractor()):
    params = _init(module, obs)
    assert max_abs(module.apply(params, obs), module.apply(params, as_float)) <= 1e-7


# ----------------------------------------------------------------------------------------------------------
# Weight-level parity with PyTorch
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def book():
  """The book's modules (Listings 9.5-9.7) in PyTorch, and SB3's pieces."""
  th = pytest.importorskip("torch")
  pytest.importorskip("stable_baselines3")
  import gymnasium as gym
  from stable_baselines3.common.preprocessing import is_image_space
  from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
  nn, F = th.nn, th.nn.functional

  class ManipulationCNN(nn.Module):
    def __init__(self, in_channels=12, num_filters=32):
      super().__init__()
      self.conv = nn.Sequential(
        nn.Conv2d(in_channels, num_filters, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(num_filters, num_filters, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(num_filters, num_filters, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(num_filters, num_filters, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, pixels):
      return self.conv(pixels)

  class SpatialSoftmax(nn.Module):
    def __init__(self, height, width, num_channels, temperature=1.0):
      super().__init__()
      self.temperature = nn.Parameter(th.ones(1) * temperature)
      self.register_buffer("pos_x", th.linspace(-1.0, 1.0, width).reshape(1, 1, -1))
      self.register_buffer("pos_y", th.linspace(-1.0, 1.0, height).reshape(1, 1, -1))

    def forward(self, features):
      b, c, h, w = features.shape
      attn = F.softmax(features.reshape(b, c, -1) / self.temperature, dim=-1).reshape(b, c, h, w)
      exp_x = (attn.sum(dim=2) * self.pos_x).sum(dim=-1)
      exp_y = (attn.sum(dim=3) * self.pos_y).sum(dim=-1)
      return th.cat([exp_x, exp_y], dim=-1)

  class ManipulationExtractor(BaseFeaturesExtractor):
    # The listing's indentation is garbled in the text; this is its evident structure. Its forward is not
    # printed: SB3 CombinedExtractor's (concatenate the per-key outputs in the space's key order).
    def __init__(self, observation_space, spatial_softmax=True, num_filters=32, flat_features_dim=50):
      super().__init__(observation_space, features_dim=1)
      extractors, total = {}, 0
      for key, subspace in observation_space.spaces.items():
        if is_image_space(subspace):
          cnn_ = ManipulationCNN(subspace.shape[0], num_filters)
          with th.no_grad():
            _, c, h, w = cnn_(th.zeros(1, *subspace.shape) / 255.0).shape
          if spatial_softmax:
            extractors[key] = nn.Sequential(cnn_, SpatialSoftmax(h, w, c), nn.LayerNorm(2 * c), nn.Tanh())
            total += 2 * c
          else:
            extractors[key] = nn.Sequential(cnn_, nn.Flatten(), nn.Linear(c * h * w, flat_features_dim),
                                            nn.LayerNorm(flat_features_dim), nn.Tanh())
            total += flat_features_dim
        else:
          extractors[key] = nn.Flatten()
          total += gym.spaces.utils.flatdim(subspace)
      self.extractors = nn.ModuleDict(extractors)
      self._features_dim = total

    def forward(self, observations):
      return th.cat([ext(observations[k]) for k, ext in self.extractors.items()], dim=1)

  # The wrapper's space, built from a plain dict in its obs order: gymnasium sorts the keys (sort_keys=True).
  space = gym.spaces.Dict({"pixels": gym.spaces.Box(0, 255, (CH, 84, 84), np.uint8),
                           **{k: gym.spaces.Box(-np.inf, np.inf, (n,), np.float64) for k, n in VECTORS.items()}})
  assert list(space.spaces) == ["achieved_goal", "desired_goal", "pixels", "proprioception"]
  return types.SimpleNamespace(th=th, space=space, ManipulationCNN=ManipulationCNN, SpatialSoftmax=SpatialSoftmax,
                               ManipulationExtractor=ManipulationExtractor)


def _np(t):
  return t.detach().cpu().numpy()


def _conv(m):
  return {"kernel": jnp.asarray(_np(m.weight).transpose(2, 3, 1, 0)), "bias": jnp.asarray(_np(m.bias))}  # OIHW->HWIO


def _linear(m):
  return {"kernel": jnp.asarray(_np(m.weight).T), "bias": jnp.asarray(_np(m.bias))}  # [out, in] -> [in, out]


def _layer_norm(m):
  return {"scale": jnp.asarray(_np(m.weight)), "bias": jnp.asarray(_np(m.bias))}


def _manip_cnn(m):
  return {f"conv_{i}": _conv(m.conv[2 * i]) for i in range(4)}


def _nature(m):
  """SB3 NatureCNN -> Flax NatureCNN params."""
  return {**{f"conv_{i}": _conv(m.cnn[2 * i]) for i in range(3)}, "linear": _linear(m.linear[0])}


def _randomise(th, module):
  """Non-default LayerNorm affine and temperature, so that their transfer is tested too."""
  with th.no_grad():
    for m in module.modules():
      if isinstance(m, th.nn.LayerNorm):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
      if hasattr(m, "temperature"):
        m.temperature.fill_(0.37)


def _torch_obs(th, space, obs):
  """What SB3 feeds a features extractor: NCHW tensors through `preprocess_obs` (uint8 image / 255, float32)."""
  from stable_baselines3.common.preprocessing import preprocess_obs
  t = {k: th.as_tensor(np.moveaxis(v, -1, 1) if k == "pixels" else v) for k, v in obs.items()}
  return preprocess_obs(t, space, normalize_images=True)


def test_manipulation_cnn_and_spatial_softmax_parity(book):
  th, record = book.th, Recorder("encoders")
  th.manual_seed(0)
  obs = _obs(seed=2)
  tcnn = book.ManipulationCNN(CH, 32)
  with th.no_grad():
    want = _np(tcnn(_torch_obs(th, book.space, obs)["pixels"])).transpose(0, 2, 3, 1)
  got = cnn.ManipulationCNN().apply({"params": _manip_cnn(tcnn)}, obs["pixels"])
  record("ManipulationCNN max abs", max_abs(got, want), TOL)

  # SpatialSoftmax on spread-out features (std 3) and a non-default temperature, plus the temperature gradient.
  feats = np.random.default_rng(3).normal(scale=3.0, size=(B, 21, 21, 32)).astype(np.float32)
  proj = np.random.default_rng(4).normal(size=(B, 64)).astype(np.float32)
  tss = book.SpatialSoftmax(21, 21, 32, temperature=0.37)
  with th.no_grad():
    tout = tss(th.as_tensor(feats.transpose(0, 3, 1, 2)))
  params = {"params": {"temperature": jnp.array([0.37], jnp.float32)}}
  module = cnn.SpatialSoftmax()
  record("SpatialSoftmax max abs", max_abs(module.apply(params, feats), _np(tout)), TOL)
  # dLoss/dT sums 2 * 21 * 21 * 32 * B terms that largely cancel: float32 (torch's as much as JAX's) is off by
  # ~3e-4 relative, so the reference is the book's module in float64.
  tss.double()
  tout = tss(th.as_tensor(feats.transpose(0, 3, 1, 2)).double())
  (tout * th.as_tensor(proj).double()).sum().backward()
  grad = jax.grad(lambda p: jnp.sum(module.apply(p, feats) * proj))(params)["params"]["temperature"]
  tgrad = _np(tss.temperature.grad)
  assert np.all(np.isfinite(grad)) and abs(float(grad[0])) > 1e-3, grad
  record("SpatialSoftmax d/dT rel (vs float64)", abs(float(grad[0]) - float(tgrad[0])) / abs(float(tgrad[0])), 1e-3)


@pytest.mark.parametrize("spatial_softmax", [True, False], ids=["spatial_softmax", "flat"])
def test_manipulation_extractor_parity(book, spatial_softmax):
  th, record = book.th, Recorder("encoders")
  th.manual_seed(1)
  text = book.ManipulationExtractor(book.space, spatial_softmax=spatial_softmax)
  assert text.features_dim == (80 if spatial_softmax else 66)
  _randomise(th, text)
  seq = text.extractors["pixels"]
  if spatial_softmax:
    params = {"cnn": _manip_cnn(seq[0]), "spatial_softmax": {"temperature": jnp.asarray(_np(seq[1].temperature))},
              "layer_norm": _layer_norm(seq[2])}
  else:
    params = {"cnn": _manip_cnn(seq[0]), "linear": _linear(seq[2]), "layer_norm": _layer_norm(seq[3])}
  obs = _obs(seed=5)
  tout = text(_torch_obs(th, book.space, obs))
  module = cnn.ManipulationExtractor(spatial_softmax=spatial_softmax)
  # Same tree as Flax's own init: the port fills every param and nothing else.
  assert jax.tree.structure(_init(module, obs)["params"]) == jax.tree.structure(params)
  got = module.apply({"params": params}, obs)
  name = "ManipulationExtractor" + ("" if spatial_softmax else "(spatial_softmax=False)")
  record(f"{name} max abs", max_abs(got, _np(tout)), TOL)
  # At init on noise images the attention is near uniform: the 64 coordinates are ~1e-3 apart and the LayerNorm
  # scales their float32 error by 1/std ~ 1000, so most of the difference above is torch's own rounding
  # (~7e-6 vs the float64 module; fetchjax ~6e-7, see SpatialSoftmax). The float64 module pins fetchjax's part.
  text.double()
  with th.no_grad():
    exact = _np(text({k: v.double() for k, v in _torch_obs(th, book.space, obs).items()}))
  record(f"{name} max abs vs float64", max_abs(got, exact), TOL / 5)
  if spatial_softmax:  # the temperature learns through the LayerNorm and tanh too (no conv backward needed)
    proj = np.random.default_rng(6).normal(size=got.shape).astype(np.float32)

    def loss(temp):
      p = {**params, "spatial_softmax": {"temperature": temp}}
      return jnp.sum(module.apply({"params": p}, obs) * proj)

    g = jax.grad(loss)(params["spatial_softmax"]["temperature"])
    assert np.all(np.isfinite(g)) and float(jnp.abs(g[0])) > 0.0, g


def test_nature_parity(book):
  """Flax NatureCNN vs SB3's `NatureCNN`, and NatureExtractor vs SB3's `CombinedExtractor` (NatureCNN 256)."""
  from stable_baselines3.common.torch_layers import CombinedExtractor, NatureCNN
  th, record = book.th, Recorder("encoders")
  th.manual_seed(2)
  obs = _obs(seed=7)
  tobs = _torch_obs(th, book.space, obs)
  tnat = NatureCNN(book.space["pixels"], features_dim=512)
  with th.no_grad():
    want = _np(tnat(tobs["pixels"]))
  got = cnn.NatureCNN(512).apply({"params": _nature(tnat)}, obs["pixels"])
  record("NatureCNN max abs", max_abs(got, want), TOL)

  tcomb = CombinedExtractor(book.space)
  assert tcomb.features_dim == 256 + 16
  with th.no_grad():
    want = _np(tcomb(tobs))
  got = cnn.NatureExtractor().apply({"params": {"cnn": _nature(tcomb.extractors["pixels"])}}, obs)
  record("NatureExtractor (CombinedExtractor) max abs", max_abs(got, want), TOL)
