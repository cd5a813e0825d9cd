"""DrQ image augmentation (Kostrikov et al. 2020) as the book's ch9 uses it: `RandomShiftAug(pad=4)` (its listing
9.8) applied at sample time to obs and next_obs pixels with independent shifts (`DrQDictReplayBuffer`, listing
9.9), after HER relabelling and never to goals (`HerDrQDictReplayBuffer`, listing 9.10).

Why at sample time: every replay of a transition sees another view of it, which is DrQ's regulariser of the
Q-function; the buffer keeps one uint8 frame per time index (her.py, "Frame stacks" and "Memory": ~21.7 kB per
transition for the book's 84x84x3 frames, 7.8x less than SB3's stacked obs + next_obs), and the shift is applied
to the stacks `her.sample` rebuilds, so all stacked frames of a sample move together, as the book's shift of its
12-channel tensor. Pure JAX: jittable, and vmappable over a seed axis.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

IMAGE_KEY = "pixels"


def random_shift(key: jax.Array, pixels: jax.Array, pad: int = 4) -> jax.Array:
  """RandomShiftAug on NHWC images [B, H, W, C] (uint8 or float; the dtype is kept): replicate-pad `pad` pixels
  (edge values extended: zero padding would draw dark borders the CNN could read as a position signal), then
  crop H x W at integer offsets (dy, dx) drawn uniformly in 0..2*pad, independently per sample and axis, one
  offset per sample for all its channels (all its stacked frames). No interpolation, so a uint8 frame stays
  exact uint8. pad=0 is the identity."""
  if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
    raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
  if pixels.ndim != 4:
    raise ValueError(f"random_shift takes NHWC images [B, H, W, C], got shape {pixels.shape}")
  b, h, w, c = pixels.shape
  padded = jnp.pad(pixels, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
  offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)   # (dy, dx) per sample, as torch.randint(0, 2p+1)
  zero = jnp.zeros((), offsets.dtype)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], zero), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def augment(batch, key: jax.Array, image_key: str = IMAGE_KEY, pad: int = 4):
  """`batch` (a `her.Batch`, or anything with `.obs`/`.next_obs` dicts and `.replace`) with obs[image_key] and
  next_obs[image_key] shifted by `random_shift` with INDEPENDENT keys (DrQ, the book's DrQDictReplayBuffer: each
  side sees its own view). Goals, proprioception, actions and rewards are untouched, so HER's
  reward = compute_reward(achieved_goal, desired_goal) still holds: apply it after relabelling."""
  k_obs, k_next = jax.random.split(key)
  return batch.replace(obs={**batch.obs, image_key: random_shift(k_obs, batch.obs[image_key], pad)},
                       next_obs={**batch.next_obs, image_key: random_shift(k_next, batch.next_obs[image_key], pad)})


__all__ = ["IMAGE_KEY", "random_shift", "augment"]
