"""DrQ augmentation (fetchjax.agents.drq): the book's RandomShiftAug (replicate pad 4, integer crop offsets
uniform in 0..8 per sample, one offset for all channels, dtype kept) and DrQDictReplayBuffer / HerDrQ semantics
(obs and next_obs shifted independently, after HER, goals untouched)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import fetchjax  # noqa: F401  (XLA flags before JAX initialises)
import jax
import jax.numpy as jnp

from fetchjax.agents import drq, her

PAD = 4
shift = jax.jit(drq.random_shift, static_argnames="pad")


def coords(b, h=16, w=16, extra=1):
  """uint8 [b, h, w, 2 + extra]: channel 0 = row, 1 = column, the rest = row again (a stacked frame's copy)."""
  i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  img = np.stack([i, j] + [i] * extra, -1).astype(np.uint8)
  return jnp.asarray(np.broadcast_to(img, (b, h, w, 2 + extra)))


def offsets_of(out):
  """(dy, dx) of a shifted `coords` batch: out[p, p] = x[dy, dx] (replicate padding never reaches it)."""
  return np.asarray(out[:, PAD, PAD, 0]).astype(int), np.asarray(out[:, PAD, PAD, 1]).astype(int)


def test_each_sample_is_an_integer_translation_of_its_replicate_padded_input():
  x = jax.random.randint(jax.random.PRNGKey(0), (64, 12, 10, 6), 0, 256).astype(jnp.uint8)
  out = shift(jax.random.PRNGKey(1), x, pad=PAD)
  assert out.dtype == jnp.uint8 and out.shape == x.shape
  padded = np.pad(np.asarray(x), ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)), mode="edge")
  found = []
  for b in range(64):  # the crop (all channels at once) equals exactly one window of the padded image
    hits = [(dy, dx) for dy in range(2 * PAD + 1) for dx in range(2 * PAD + 1)
            if np.array_equal(np.asarray(out[b]), padded[b, dy:dy + 12, dx:dx + 10])]
    assert len(hits) == 1, (b, hits)
    found.append(hits[0])
  assert len(set(found)) > 20                          # the offsets vary per sample
  # a float image gets the same shift with the same key and stays float
  f = shift(jax.random.PRNGKey(1), x.astype(jnp.float32), pad=PAD)
  assert f.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(f), np.asarray(out).astype(np.float32))


def test_offsets_are_uniform_on_0_to_2pad_and_shared_by_all_channels():
  x = coords(8100, extra=9)                           # 11 channels: a 4-frame stack has 12
  out = shift(jax.random.PRNGKey(2), x, pad=PAD)
  dy, dx = offsets_of(out)
  # every channel of a sample moves by the same (dy, dx): the copies of the row channel agree with channel 0
  np.testing.assert_array_equal(np.asarray(out[..., 2:]), np.broadcast_to(np.asarray(out[..., :1]), out[..., 2:].shape))
  assert set(dy) == set(range(2 * PAD + 1)) and set(dx) == set(range(2 * PAD + 1))
  joint = np.bincount(dy * 9 + dx, minlength=81)      # (dy, dx) uniform on the 81 cells: each axis uniform and
  assert stats.chisquare(joint).pvalue > 1e-3         # the two independent
  for d in (dy, dx):
    assert stats.chisquare(np.bincount(d, minlength=9)).pvalue > 1e-3
  # the whole image is the translation: out[i, j] = x[clip(i + dy - pad), clip(j + dx - pad)]
  i = np.clip(np.arange(16)[None, :] + dy[:, None] - PAD, 0, 15)
  j = np.clip(np.arange(16)[None, :] + dx[:, None] - PAD, 0, 15)
  np.testing.assert_array_equal(np.asarray(out[..., 0]), np.broadcast_to(i[:, :, None], (8100, 16, 16)))
  np.testing.assert_array_equal(np.asarray(out[..., 1]), np.broadcast_to(j[:, None, :], (8100, 16, 16)))


def test_pad_zero_is_the_identity_and_a_constant_image_stays_constant():
  x = jax.random.randint(jax.random.PRNGKey(3), (16, 9, 9, 3), 0, 256).astype(jnp.uint8)
  np.testing.assert_array_equal(np.asarray(shift(jax.random.PRNGKey(4), x, pad=0)), np.asarray(x))
  c = jnp.full((16, 9, 9, 3), 77, jnp.uint8)          # the book's checkpoint: replicate padding of a constant
  np.testing.assert_array_equal(np.asarray(shift(jax.random.PRNGKey(4), c, pad=PAD)), 77)
  with pytest.raises(ValueError, match="pad"):
    drq.random_shift(jax.random.PRNGKey(0), x, pad=-1)
  with pytest.raises(ValueError, match="NHWC"):
    drq.random_shift(jax.random.PRNGKey(0), x[0], pad=PAD)


def test_vmap_over_seeds():
  x = jnp.stack([coords(32), coords(32)])
  keys = jax.random.split(jax.random.PRNGKey(5), 2)
  vs = jax.jit(jax.vmap(lambda k, p: drq.random_shift(k, p, PAD)))(keys, x)
  for s in range(2):
    np.testing.assert_array_equal(np.asarray(vs[s]), np.asarray(shift(keys[s], x[s], pad=PAD)))
  assert not np.array_equal(np.asarray(vs[0]), np.asarray(vs[1]))


def _batch(n=4096):
  """A HER-like batch whose obs and next_obs pixels are the same `coords` image (so their shifts can be read)."""
  g = jax.random.normal(jax.random.PRNGKey(6), (n, 3))
  side = lambda: {"pixels": coords(n), "proprioception": jnp.arange(n * 10.0).reshape(n, 10),  # noqa: E731
                  "achieved_goal": g + 1, "desired_goal": g}
  return her.Batch(obs=side(), action=jnp.ones((n, 4)), reward=-jnp.ones(n), next_obs=side(), done=jnp.zeros(n))


def test_augment_shifts_obs_and_next_obs_independently_and_nothing_else():
  b = _batch()
  a = jax.jit(drq.augment)(b, jax.random.PRNGKey(7))
  (oy, ox), (ny, nx) = offsets_of(a.obs["pixels"]), offsets_of(a.next_obs["pixels"])
  assert a.obs["pixels"].dtype == jnp.uint8 and a.obs["pixels"].shape == b.obs["pixels"].shape
  # independent shifts: equal offsets only by chance (1/81), and uncorrelated
  same = np.mean((oy == ny) & (ox == nx))
  assert abs(same - 1 / 81) < 5 * np.sqrt(1 / 81 / len(oy))
  assert abs(np.corrcoef(oy, ny)[0, 1]) < 0.06 and abs(np.corrcoef(ox, nx)[0, 1]) < 0.06
  assert stats.chi2_contingency(np.histogram2d(oy, ny, bins=9)[0]).pvalue > 1e-3
  # goals, proprioception, actions, rewards, done: the same arrays
  for side_a, side_b in ((a.obs, b.obs), (a.next_obs, b.next_obs)):
    for k in ("proprioception", "achieved_goal", "desired_goal"):
      np.testing.assert_array_equal(np.asarray(side_a[k]), np.asarray(side_b[k]))
  for f in ("action", "reward", "done"):
    np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)))
  # pad 0: the batch unchanged
  z = drq.augment(b, jax.random.PRNGKey(7), pad=0)
  np.testing.assert_array_equal(np.asarray(z.obs["pixels"]), np.asarray(b.obs["pixels"]))
  np.testing.assert_array_equal(np.asarray(z.next_obs["pixels"]), np.asarray(b.next_obs["pixels"]))
