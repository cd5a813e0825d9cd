"""The policies of a training run: `load_run` (every seed's, vmapped, as eval scores them) and `load_policy` (one
seed's deterministic policy as a plain numpy callable, e.g. to drive CPU gymnasium-robotics; for pixel runs it
keeps the frame stack the policy was trained on, or takes a stacked observation)."""
from __future__ import annotations

import jax
import numpy as np

from fetchjax import agents, encoders, runs
from fetchjax.agents import frames
from fetchjax.encoders import OBS_KEYS


def load_run(run_dir, step: int | None = None):
  """(meta, agents.Algorithm, config, vmapped policies, checkpoint step) of a run directory."""
  rd = runs.RunDir(run_dir)
  meta = rd.read_meta()
  algo = agents.get(meta["algo"])
  try:
    config = algo.config_from_dict(meta["config"])
  except (KeyError, TypeError, ValueError) as e:
    raise runs.RunError(f"{rd.meta_path} has no usable config ({e})") from None
  ckpt_step, policies = rd.restore_policy(step)  # the small policy item, not the (replay-buffer sized) state
  if policies is None:  # a checkpoint written before the policy item existed
    ckpt_step, raw = rd.restore_raw(ckpt_step)
    try:
      policies = algo.policy_of(config, raw["runner"])
    except (KeyError, TypeError) as e:
      raise runs.RunError(f"checkpoint {ckpt_step} of {rd.path} lacks the policy ({e})") from None
  return meta, algo, config, policies, ckpt_step


def obs_spec_of(meta: dict, algo, config) -> dict[str, tuple[tuple[int, ...], str]]:
  """{key: (shape, dtype)} of one env observation the run's networks read (single frames): what training recorded
  in meta.json ("obs_spec"), else (runs made before it was recorded: state runs) the state keys of its encoder,
  float32, shapes not checked."""
  if "obs_spec" in meta:
    return {k: (tuple(v["shape"]), v["dtype"]) for k, v in meta["obs_spec"].items()}
  keys = encoders.required_keys(config.encoder) if hasattr(config, "encoder") else OBS_KEYS
  return {k: (None, "float32") for k in keys}


class Policy:
  """Deterministic policy of one training seed: `policy(obs_dict) -> action` (numpy in, numpy out).

  `obs_dict` holds the observation keys the run trained on (`keys`; any other key is ignored), single (e.g.
  {"observation": (10,), "achieved_goal": (3,), "desired_goal": (3,)} -> action (4,)) or batched (leading axis
  n -> actions (n, 4)), e.g. from gymnasium-robotics or a gymnasium vector env. Vectors are cast to float32.

  Pixel runs (`frame_stack` k, `image_shape` (H, W, c) of one rendered frame, uint8 only: the network scales
  integer frames by 1/255 itself, so a float image would be misread). obs["pixels"] may be
    - one frame, (H, W, c) as fetchjax renders it or (c, H, W): the policy keeps the k-frame stack itself, as
      training built it (oldest first; filled with copies of the first frame). Call `reset()` after every env
      reset (a batch of frames shares one stack state: its envs must reset together);
    - a stack of k frames, (H, W, k*c) or (k*c, H, W) (the book's ch9 PixelObservationWrapper gives (12, 84, 84)
      for k = 4: frame i is channels i*c..(i+1)*c-1, oldest first): used as given, no state.
  Channel-first input is moved to channel-last (a transpose; channel order kept). A shape that is neither is a
  ValueError naming the expected ones; (H, W, ...) is tried first where H, W and the channel count coincide."""

  def __init__(self, act, policy, env_id: str, algo: str, seed: int, step: int, obs_spec: dict | None = None,
               frame_stack: int = 1):
    self.env_id, self.algo, self.seed, self.step = env_id, algo, seed, step
    self.obs_spec = obs_spec or {k: (None, "float32") for k in OBS_KEYS}
    self.keys = tuple(sorted(self.obs_spec))
    self.frame_stack = frame_stack
    image = self.obs_spec.get(frames.STACK_KEYS[0])
    self.image_shape = None if image is None or image[0] is None else tuple(image[0])
    self._policy = policy
    self._act = jax.jit(act)
    self._stack = None

  def reset(self) -> None:
    """Forget the frame stack (a new episode starts): the next single frame fills it with copies of itself."""
    self._stack = None

  def _pixels(self, p) -> tuple[np.ndarray, bool]:
    """obs["pixels"] as channel-last uint8 and whether it is one frame (to stack) or a whole stack."""
    p = np.asarray(p)
    if p.dtype != np.uint8:
      raise ValueError(f"obs['pixels'] must be uint8 frames in [0, 255], got {p.dtype}")
    (h, w, c), k = self.image_shape, self.frame_stack
    if p.ndim >= 3 and p.shape[-3:-1] == (h, w) and p.shape[-1] in (c, k * c):
      hwc = p
    elif p.ndim >= 3 and p.shape[-2:] == (h, w) and p.shape[-3] in (c, k * c):
      hwc = np.moveaxis(p, -3, -1)
    else:
      raise ValueError(f"obs['pixels'] of shape {p.shape}: expected one frame ({h}, {w}, {c}) / ({c}, {h}, {w}) or "
                       f"a stack of {k} ({h}, {w}, {k * c}) / ({k * c}, {h}, {w}), optionally batched")
    return hwc, k > 1 and hwc.shape[-1] == c

  def __call__(self, obs: dict) -> np.ndarray:
    missing = [k for k in self.keys if k not in obs]
    if missing:
      raise ValueError(f"observation dict lacks {missing}; this policy reads {', '.join(self.keys)} ({self.env_id})")
    x = {k: np.asarray(obs[k], np.float32) for k in self.keys if k not in frames.STACK_KEYS}
    single = x["desired_goal"].ndim == 1
    if single:
      x = {k: v[None] for k, v in x.items()}
    if self.image_shape is not None:
      hwc, one_frame = self._pixels(obs[frames.STACK_KEYS[0]])
      hwc = hwc[None] if single else hwc
      if one_frame:
        new = {frames.STACK_KEYS[0]: hwc}
        if self._stack is not None and self._stack.shape[:-1] != hwc.shape[:-1]:
          raise ValueError(f"frames of shape {hwc.shape} after a stack of {self._stack.shape}: call reset() "
                           "between episodes of different batch sizes")
        stacked = frames.reset(new, self.frame_stack) if self._stack is None else \
            frames.push({frames.STACK_KEYS[0]: self._stack}, new, self.frame_stack)
        self._stack = hwc = np.asarray(stacked[frames.STACK_KEYS[0]])
      x[frames.STACK_KEYS[0]] = hwc
    a = np.asarray(self._act(self._policy, x), np.float32)
    return a[0] if single else a

  def __repr__(self) -> str:
    stack = f", {self.frame_stack}-frame stacks" if self.frame_stack > 1 else ""
    return f"Policy({self.algo} on {self.env_id}, training seed {self.seed}, {self.step} steps{stack})"


def load_policy(run_dir, seed_index: int = 0, step: int | None = None) -> Policy:
  """The deterministic policy of training seed number `seed_index` (position in the run's seed list) from the
  newest (or the given) checkpoint of a `python -m fetchjax.train` run directory."""
  meta, algo, config, policies, ckpt_step = load_run(run_dir, step)
  n = len(meta["seeds"])
  if not 0 <= seed_index < n:
    raise runs.RunError(f"seed_index {seed_index} out of range: the run trained {n} seed(s) {meta['seeds']}")
  one = jax.tree.map(lambda x: np.asarray(x)[seed_index], policies)
  return Policy(algo.make_act(config), one, meta["env_id"], meta["algo"], meta["seeds"][seed_index], ckpt_step,
                obs_spec_of(meta, algo, config), algo.frame_stack(config))
