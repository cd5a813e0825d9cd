"""DrQ augmentation (fetchjax.agents.drq): the book's RandomShiftAug (replicate pad 4, integer crop offsets
uniform in 0..8 per sample, one offset for all channels, dtype kept) and DrQDictReplayBuffer / HerDrQ semantics
(obs and next_obs shifted independently, after HER, goals untouched); wired into the off-policy loop behind
`drq` / `frame_stack` (a SAC+HER run of the book's ch9 learner on a small pixel env samples stacks, augments
them and trains)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import fetchjax  # noqa: F401  (XLA flags before JAX initialises)
import jax
import jax.numpy as jnp

import fetchjax.envs as envs
from fetchjax.agents import drq, her, offpolicy, sac, td3

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


# --- config and the off-policy loop -------------------------------------------------------------------------
def test_config_fields_are_validated():
  assert sac.SACConfig().frame_stack == 1 and sac.SACConfig().drq is False
  for bad in (0, -1, 1.5, True):
    with pytest.raises(ValueError, match="frame_stack must be a positive integer"):
      sac.SACConfig(frame_stack=bad)
  with pytest.raises(ValueError, match="drq must be true or false"):
    sac.SACConfig(drq=1)
  assert td3.TD3Config(frame_stack=4, drq=True).frame_stack == 4
  with pytest.raises(ValueError, match="frame_stack"):
    td3.TD3Config(frame_stack=0)
  with pytest.raises(ValueError, match="drq augments"):
    offpolicy.network_spec(sac.SACConfig(drq=True), her.state_spec(10))
  with pytest.raises(ValueError, match="cannot stack"):
    offpolicy.network_spec(sac.SACConfig(frame_stack=4), her.state_spec(10))


class PixelReach:
  """FetchReach with a 6x6x3 uint8 frame per env and step (values from the step count and the gripper x), the
  shape of a rendered-pixel env for the loop."""

  def __init__(self, env):
    self.env = env
    self.num_envs, self.action_size, self.max_episode_steps = env.num_envs, env.action_size, env.max_episode_steps
    self.compute_reward = env.compute_reward

  @property
  def observation_spec(self):
    return {**self.env.observation_spec, "pixels": jax.ShapeDtypeStruct((6, 6, 3), jnp.uint8)}

  def _with_pixels(self, obs, steps):
    grid = jnp.arange(6 * 6 * 3).reshape(6, 6, 3)
    v = steps[:, None, None, None] * 5 + (obs["observation"][:, :1, None, None] * 100).astype(jnp.int32) + grid
    return {**obs, "pixels": (v % 256).astype(jnp.uint8)}

  def reset(self, key):
    s = self.env.reset(key)
    obs = self._with_pixels(s.obs, s.info["steps"])
    return s.replace(obs=obs, info={**s.info, "final_obs": obs})

  def step(self, state, action):
    s = self.env.step(state, action)
    steps = s.info["steps"]
    final = self._with_pixels(s.info["final_obs"], jnp.where(s.done > 0, self.max_episode_steps, steps))
    return s.replace(obs=self._with_pixels(s.obs, steps), info={**s.info, "final_obs": final})


def test_a_sac_her_run_on_drq_augmented_frame_stacks(monkeypatch):
  """The book's ch9 learner (ManipulationExtractor owned by the critic; SAC + HER, frame_stack, DrQ) in the loop
  on a small pixel env (6x6x3 frames here, 84x84x3 in the book: SpatialSoftmax makes the extractor size-free):
  the buffer stores single frames, her.sample is asked for 3-frame stacks, drq.augment is applied to every
  sample after HER, the networks are built for (and the policy acts on) 9 channels, and training moves the
  critic's encoder."""
  calls = {"augment": 0, "frame_stack": set()}
  real_augment, real_sample = drq.augment, her.sample

  def spy_augment(batch, key, *a, **kw):
    calls["augment"] += 1
    assert batch.obs["pixels"].shape[-1] == 9 and batch.next_obs["pixels"].shape[-1] == 9
    return real_augment(batch, key, *a, **kw)

  def spy_sample(*a, **kw):
    calls["frame_stack"].add(kw.get("frame_stack"))
    return real_sample(*a, **kw)

  monkeypatch.setattr(drq, "augment", spy_augment)
  monkeypatch.setattr(her, "sample", spy_sample)
  env = PixelReach(envs.make("FetchReach-v4", num_envs=2, backend="cpu"))
  cfg = sac.SACConfig(buffer_size=400, batch_size=16, hidden_sizes=(8,), learning_starts=60, her=True,
                      encoder="manipulation", encoder_routing="critic", frame_stack=3, drq=True)
  init, run = sac.make_runner(cfg, env)
  r0 = init(jax.random.PRNGKey(0))
  r, m = jax.jit(run, static_argnums=1)(r0, 2)
  assert calls["augment"] == 1 and calls["frame_stack"] == {3}          # traced once, inside the scan
  assert r.buffer.obs["pixels"].shape == (8, 51, 6, 6, 3)               # single frames
  # gradient steps at vectorised steps 50..100: num_timesteps > 60 and the first episode complete (step 50)
  assert int(m["n_updates"][-1]) == 51 and np.isfinite(float(m["critic_loss"][-1]))
  enc0, enc = (x.train_state.critic_params["params"]["encoder"] for x in (r0, r))
  assert enc["cnn"]["conv_0"]["kernel"].shape[2] == 9                   # the networks read 3-frame stacks
  assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(enc0),
                                                                              jax.tree.leaves(enc)))
