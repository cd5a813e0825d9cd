"""Acting on frame stacks outside training (book ch9 pixels): eval's rollout, `load_policy`'s `Policy` and the
training CLI's pixel flags, on a fake pixel env (FetchReach with a small uint8 frame and the 10-D proprioception
in place of `observation`, the observation layout of the env-side pixel option) until the rendered one exists.

The contract: outside training a policy acts on the very k-frame stacks training acted on (`her.acting_obs`:
oldest first, copies of the first frame at an episode start), so eval, video and `load_policy` reproduce the
training-time actions on the same states."""
from __future__ import annotations

import json

import numpy as np
import pytest

import fetchjax  # noqa: F401  (XLA flags before JAX initialises)
import jax
import jax.numpy as jnp

from fetchjax import envs, eval as fj_eval, policy as fj_policy, train as fj_train
from fetchjax.agents import frames, her, offpolicy, sac

H, W = 8, 7   # H != W and neither is a stack's channel count: channel-first input is told apart unambiguously


class FakePixels:
  """A fetchjax env with the pixel observation dict: pixels (H, W, 3) uint8 drawn from the gripper position and the
  step count (so consecutive frames differ), proprioception (10,) = observation[:10], both goals; no
  `observation`. reset / reset_to / step with info["final_obs"] as the real envs."""

  def __init__(self, env):
    self.env = env
    self.num_envs, self.action_size, self.max_episode_steps = env.num_envs, env.action_size, env.max_episode_steps
    self.compute_reward, self.backend_name = env.compute_reward, env.backend_name

  @property
  def observation_spec(self):
    spec = dict(self.env.observation_spec)
    spec.pop("observation")
    return {**spec, "pixels": jax.ShapeDtypeStruct((H, W, 3), jnp.uint8),
            "proprioception": jax.ShapeDtypeStruct((10,), jnp.float32)}

  def _obs(self, obs, steps):
    grid = jnp.arange(H * W * 3).reshape(H, W, 3)
    g = obs["observation"][:, :3] * 1000.0
    v = steps[:, None, None, None] * 7 + (g[:, 0, None, None, None] * (grid % 5) + g[:, 1, None, None, None]
                                          * (grid % 3)).astype(jnp.int32) + grid
    out = {k: v_ for k, v_ in obs.items() if k != "observation"}
    return {**out, "pixels": (v % 256).astype(jnp.uint8), "proprioception": obs["observation"][:, :10]}

  def _wrap(self, s):
    final = self._obs(s.info["final_obs"], jnp.where(s.done > 0, self.max_episode_steps, s.info["steps"]))
    return s.replace(obs=self._obs(s.obs, s.info["steps"]), info={**s.info, "final_obs": final})

  def reset(self, key):
    return self._wrap(self.env.reset(key))

  def reset_to(self, xy, goals, rng=None):
    return self._wrap(self.env.reset_to(xy, goals, rng))

  def step(self, state, action):
    return self._wrap(self.env.step(state, action))


def fake_env(n):
  return FakePixels(envs.make("FetchReach-v4", num_envs=n, backend="cpu"))


def pixel_config(k, **kw):
  return sac.SACConfig(buffer_size=400, batch_size=16, hidden_sizes=(8,), learning_starts=100, her=True,
                       encoder="manipulation", encoder_routing="critic", frame_stack=k, **kw)


def policies_of(cfg, env, seed=0):
  """The (vmapped, 1 seed) policy of a fresh runner: random networks act just as sensitively on their input."""
  init, _ = sac.make_runner(cfg, env)
  return jax.tree.map(lambda x: x[None], offpolicy.policy_of(cfg, jax.jit(init)(jax.random.PRNGKey(seed))))


N = 3


@pytest.mark.parametrize("k", [2, 4])
def test_eval_acts_on_the_stacks_training_acted_on(k):
  """eval.rollout's actions = the policy's on `her.acting_obs` (the stacks training acts on) for the same states,
  step for step; frames.push across an auto-reset equals acting_obs exactly; acting without the stack differs."""
  env = fake_env(N)
  cfg = pixel_config(k)
  act = sac.make_act(cfg)
  policies = policies_of(cfg, env)
  one = jax.tree.map(lambda x: x[0], policies)
  state0 = jax.jit(env.reset)(jax.random.PRNGKey(3))
  out = fj_eval.rollout(env, act, policies, state0, frame_stack=k)
  T = env.max_episode_steps
  assert out["action"].shape == (1, T, N, 4)

  step, add = jax.jit(env.step), jax.jit(her.add)
  acting, act_j = jax.jit(lambda b: her.acting_obs(b, k)), jax.jit(act)
  push = jax.jit(lambda st, o, first: frames.push(st, o, k, first=first))
  buf = her.start(her.create(400, N, her.spec_of(state0.obs), T=T), state0.obs)
  s, stacked = state0, frames.reset(state0.obs, k)
  rng = np.random.default_rng(0)
  unstacked_differs = False
  for t in range(2 * T):  # the eval episode, then a second one after the auto-reset (random actions)
    train_obs = acting(buf)
    np.testing.assert_array_equal(np.asarray(stacked["pixels"]), np.asarray(train_obs["pixels"]))
    for key in ("proprioception", "achieved_goal", "desired_goal"):
      np.testing.assert_array_equal(np.asarray(stacked[key]), np.asarray(train_obs[key]))
    if t < T:
      a = out["action"][0, t]
      np.testing.assert_allclose(np.asarray(act_j(one, train_obs)), a, atol=1e-5, err_msg=f"step {t}")
      if t >= 1:
        single = act_j(one, frames.reset(s.obs, k))   # the newest frame only, copied: another input
        unstacked_differs |= not np.allclose(np.asarray(single), a, atol=1e-4)
    else:
      a = rng.uniform(-1, 1, (N, 4)).astype(np.float32)
    s = step(s, jnp.asarray(a))
    buf = add(buf, jnp.asarray(a), s)
    stacked = push(stacked, s.obs, s.done > 0)
  assert unstacked_differs


def _numpy_obs(obs, i=None):
  return {k: np.asarray(v if i is None else v[i]) for k, v in obs.items()}


def test_policy_keeps_the_stack_or_takes_a_stacked_channel_first_observation():
  """`Policy` (load_policy's numpy callable) on one env's single HWC frames (reset() at the episode start), on a
  batch of them, and on the book wrapper's channel-first stacks (k*3, H, W): the actions eval took."""
  k = 4
  env = fake_env(N)
  cfg = pixel_config(k)
  act = sac.make_act(cfg)
  policies = policies_of(cfg, env, seed=1)
  spec = {key: (tuple(v.shape), str(v.dtype)) for key, v in env.observation_spec.items()}
  pol = fj_policy.Policy(act, jax.tree.map(lambda x: x[0], policies), "FetchReach-v4", "sac", 0, 0, spec, k)
  assert pol.keys == ("achieved_goal", "desired_goal", "pixels", "proprioception") and pol.image_shape == (H, W, 3)
  state0 = jax.jit(env.reset)(jax.random.PRNGKey(4))
  out = fj_eval.rollout(env, act, policies, state0, frame_stack=k)
  step = jax.jit(env.step)
  s, stacked = state0, frames.reset(state0.obs, k)
  batch = fj_policy.Policy(act, pol._policy, "FetchReach-v4", "sac", 0, 0, spec, k)
  for t in range(12):
    a = out["action"][0, t]
    obs = _numpy_obs(s.obs)
    np.testing.assert_allclose(pol({**_numpy_obs(s.obs, 1), "observation": np.zeros(25)}), a[1], atol=1e-5)
    np.testing.assert_allclose(batch(obs), a, atol=1e-5)
    chw = np.moveaxis(np.asarray(stacked["pixels"][2]), -1, 0)          # (12, H, W), as the book's wrapper
    assert chw.shape == (3 * k, H, W)
    np.testing.assert_allclose(pol({**_numpy_obs(s.obs, 2), "pixels": chw}), a[2], atol=1e-5)
    s = step(s, jnp.asarray(a))
    stacked = frames.push(stacked, s.obs, k)
  # a new episode without reset() would act on the old frames: reset() starts from copies again
  pol.reset()
  first = _numpy_obs(state0.obs, 1)
  np.testing.assert_allclose(pol(first), out["action"][0, 0, 1], atol=1e-5)
  # one channel-first single frame (3, H, W) is stacked like an HWC one
  pol.reset()
  np.testing.assert_allclose(pol({**first, "pixels": np.moveaxis(first["pixels"], -1, 0)}), out["action"][0, 0, 1],
                             atol=1e-5)
  with pytest.raises(ValueError, match="must be uint8"):
    pol({**first, "pixels": first["pixels"].astype(np.float32)})
  with pytest.raises(ValueError, match=r"expected one frame \(8, 7, 3\)"):
    pol({**first, "pixels": np.zeros((8, 7, 6), np.uint8)})
  with pytest.raises(ValueError, match="lacks \\['proprioception'\\]"):
    pol({k_: v for k_, v in first.items() if k_ != "proprioception"})
  with pytest.raises(ValueError, match="call reset"):
    pol(obs)                                            # a batch after a single env's stack


def test_evaluate_scores_a_frame_stacked_policy_on_the_runs_pixel_env(monkeypatch):
  """evaluate() builds the run's env from its EnvConfig (here made into the fake pixel env), acts on 2-frame
  stacks (the actions of eval.rollout on the same tasks) and scores the do-nothing baseline without an
  `observation` key."""
  k = 2
  monkeypatch.setattr(envs.EnvConfig, "make", lambda self: fake_env(self.num_envs))
  cfg = pixel_config(k)
  policies = policies_of(cfg, fake_env(1))
  report, out = fj_eval.evaluate("FetchReach-v4", sac.make_act(cfg), policies, [0], n_episodes=N, backend="cpu",
                                 frame_stack=k, env_config=envs.EnvConfig("FetchReach-v4", backend="cpu"))
  assert report["aggregate"]["n_episodes"] == N and "baseline_do_nothing" in report
  env = fake_env(N)
  xy, goals = fj_eval.book_tasks("FetchReach-v4", N, 0)
  again = fj_eval.rollout(env, sac.make_act(cfg), policies, env.reset_to(xy, goals), frame_stack=k)
  np.testing.assert_allclose(out["action"], again["action"], atol=1e-6)


def test_a_pixel_run_through_the_cli_trains_evaluates_resumes_and_loads(monkeypatch, tmp_path, capsys):
  """The algorithm-side pixel flags on the fake pixel env: meta.json records the observation spec, eval.json is
  written, the paused run resumes to the end, `load_policy` and `evaluate_run` act on 2-frame stacks; a state
  encoder on the pixel env, and --sim gymnasium for a pixel run, are one-line errors."""
  monkeypatch.setattr(envs.EnvConfig, "make", lambda self: fake_env(self.num_envs))
  d = tmp_path / "pix"
  common = ["--algo", "sac", "--her", "--env", "FetchReach-v4", "--n-envs", "2", "--encoder", "manipulation",
            "--critic-encoder", "--no-drq", "--frame-stack", "2", "--set", "buffer_size=400", "--set", "batch_size=16",
            "--set", "learning_starts=100", "--set", "hidden_sizes=8", "--backend", "cpu", "--quiet",
            "--video-episodes", "0", "--eval-episodes", "2"]
  assert fj_train.main([*common, "--total-steps", "300", "--run-dir", str(d), "--pause-at", "100"]) == 0
  assert fj_train.main(["--resume", str(d), "--quiet", "--video-episodes", "0", "--eval-episodes", "2"]) == 0
  meta = json.loads((d / "meta.json").read_text())
  assert meta["status"] == "finished" and meta["config"]["frame_stack"] == 2
  assert meta["config"]["encoder_routing"] == "critic" and meta["config"]["drq"] is False
  assert meta["obs_spec"]["pixels"] == {"shape": [H, W, 3], "dtype": "uint8"} and "observation" not in meta["obs_spec"]
  assert json.loads((d / "eval.json").read_text())["aggregate"]["n_episodes"] == 2
  pol = fetchjax.load_policy(d)
  assert pol.frame_stack == 2 and pol.image_shape == (H, W, 3) and "2-frame stacks" in repr(pol)
  s = fake_env(1).reset(jax.random.PRNGKey(0))
  assert pol(_numpy_obs(s.obs, 0)).shape == (4,)
  assert fj_eval.evaluate_run(d, n_episodes=2)["aggregate"]["n_episodes"] == 2
  assert fj_eval.main(["--run-dir", str(d), "--sim", "gymnasium", "--n-episodes", "1"]) == 2
  assert "--sim gymnasium drives state policies" in capsys.readouterr().err
  capsys.readouterr()
  assert fj_train.main(["--algo", "sac", "--her", "--n-envs", "2", "--quiet", "--run-dir", str(tmp_path / "flat")]) == 2
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(err) == 1 and "encoder 'flat' reads the state vector(s) ['observation']" in err[0], err
  assert "--preset book_pixels" in err[0] and not (tmp_path / "flat").exists()


def test_book_pixels_is_the_books_step2_on_ch5s_push_config():
  from fetchjax import agents

  algo = agents.get("sac")
  c = algo.preset("book_pixels")
  assert (c.encoder, c.encoder_routing, c.frame_stack, c.drq) == ("manipulation", "critic", 4, False)
  assert (c.buffer_size, c.her, c.n_sampled_goal, c.total_timesteps) == (500_000, True, 8, 5_000_000)
  push = algo.preset("book_her_push")                  # what ch9 does not state: ch5's Push run
  for f in ("gamma", "ent_coef", "learning_starts", "batch_size", "learning_rate", "hidden_sizes", "tau"):
    assert getattr(c, f) == getattr(push, f), f
  assert algo.env_preset("book_pixels").env_id == "FetchPush-v4" and algo.env_preset("book_pixels").num_envs == 8
  assert algo.frame_stack(c) == 4 and algo.pixel_needs(c) == ["encoder 'manipulation'", "frame_stack 4"]
  assert agents.get("ppo").frame_stack(agents.get("ppo").preset("book")) == 1 and algo.pixel_needs(push) == []


def test_pixels_default_to_the_book_pixels_preset_for_sac():
  """`--pixels` with SAC and no --preset runs the book's working ch9 setting; the preset itself renders frames."""
  assert fj_train.default_preset("sac", "FetchPush-v4", her=True, pixels=True) == "book_pixels"
  assert fj_train.default_preset("sac", "FetchPush-v4", her=True) != "book_pixels"
  assert fj_train.default_preset("td3", "FetchPush-v4", her=True, pixels=True) != "book_pixels"
  from fetchjax import agents

  assert agents.get("sac").env_preset("book_pixels").pixels is True
