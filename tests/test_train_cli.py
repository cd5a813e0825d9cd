"""`python -m fetchjax.train` / `fetchjax.eval` / `load_policy`: the run directory contract, exact resume, errors.

Tiny configs (4 envs x 64 steps, 1 epoch) keep each CLI call to seconds; the acceptance runs (book preset,
500k steps) are measured by hand and recorded in docs/PERFORMANCE.md.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fetchjax
from fetchjax import runs, train as fj_train

# Every backend goes through the same CLI contract. The mjx programs compile in ~1 min each on a 2-core CPU; the
# persistent compilation cache (conftest.py) lets the later runs of the same program load it instead. warp: MJX-Warp
# on the stock model (each program ~10-20 s to compile; Warp's kernels are cached on disk).
BACKENDS = ("cpu", "mjx", "warp")
# Rollout length per backend: warp on a CPU costs ~0.2 s per env step whatever the batch (kernel launches), so its
# runs take shorter rollouts; the contract is the same.
N_STEPS = {"cpu": 64, "mjx": 64, "warp": 32}  # warp: 3 updates still finish an episode (50 steps)


def update(backend: str = "cpu") -> int:
  """Env steps per seed per update."""
  return 4 * N_STEPS[backend]


UPDATE = update("cpu")


def tiny(backend: str = "cpu") -> list[str]:
  return ["--n-envs", "4", "--set", f"n_steps={N_STEPS[backend]}", "--set", f"batch_size={min(128, update(backend))}",
          "--set", "n_epochs=1", "--backend", backend, "--quiet"]


TINY = tiny("cpu")


def _train(*args, backend: str = "cpu"):
  return fj_train.main([*tiny(backend), *args])


def _ckpt_runner(run_dir):
  step, raw = runs.RunDir(run_dir).restore_raw()
  return step, raw["runner"]


_RUN2: dict = {}


def _run2(tmp_path_factory, backend):
  """2 vmapped seeds, 3 updates, eval 10 episodes, 1 video episode (made once per backend)."""
  if backend not in _RUN2:
    d = tmp_path_factory.mktemp(f"run_{backend}") / "r"
    rc = _train("--seeds", "0-1", "--total-steps", str(3 * update(backend)), "--run-dir", str(d), "--eval-episodes", "10",
                "--video-episodes", "1", backend=backend)
    assert rc == 0
    _RUN2[backend] = d
  return _RUN2[backend]


@pytest.fixture(scope="module", params=BACKENDS)
def run2(request, tmp_path_factory):
  return _run2(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def run2_cpu(tmp_path_factory):
  return _run2(tmp_path_factory, "cpu")


def _backend(run_dir) -> str:
  return json.loads((Path(run_dir) / "meta.json").read_text())["backend"]


def test_run_directory_contract(run2):
  meta = json.loads((run2 / "meta.json").read_text())
  UPDATE = update(meta["backend"])  # noqa: N806
  for k in ("algo", "env_id", "seeds", "total_steps", "n_envs", "config", "env_config", "device", "versions", "git_commit",
            "created_at", "training_time_sec", "steps_per_sec", "compile_time_sec"):
    assert k in meta, k
  assert meta["algo"] == "ppo" and meta["env_id"] == "FetchReachDense-v4" and meta["seeds"] == [0, 1]
  env_config = meta["env_config"]
  assert meta["status"] == "finished" and env_config["num_envs"] == meta["n_envs"] == 4
  assert meta["backend"] == env_config["backend"] in BACKENDS and env_config["physics"] == "fast"
  assert "num_envs" not in meta["config"] and "env_id" not in meta["config"]  # the algorithm's config alone
  assert meta["versions"]["jax"] and meta["versions"]["mujoco"] == "3.17.0"
  assert runs.RunDir(run2).checkpoint_steps()[-1] == 3 * UPDATE

  steps, hist = runs.RunDir(run2).load_metrics()
  np.testing.assert_array_equal(steps, [UPDATE, 2 * UPDATE, 3 * UPDATE])
  assert hist["success_rate"].shape == (2, 3)

  ev = json.loads((run2 / "eval.json").read_text())
  for k in ("success_rate", "return_mean", "final_distance_mean", "return_std", "ep_len_mean",
            "action_smoothness_mean", "action_max_abs_mean"):
    assert k in ev["aggregate"], k
  assert ev["aggregate"]["n_episodes"] == 20 and ev["deterministic"] is True
  assert [s["seed"] for s in ev["per_seed"]] == [0, 1] and len(ev["per_seed"][0]["per_episode"]) == 10
  ep = ev["per_seed"][0]["per_episode"][0]
  assert ep["length"] == 50 and set(ep) >= {"success", "return", "final_distance", "time_to_success"}
  assert "baseline_do_nothing" in ev and ev["across_seeds"]["success_rate"]["n"] == 2

  diag = json.loads((run2 / "diagnostics.json").read_text())
  assert "P4" in diag["rules_checked"] and isinstance(diag["findings"], list)
  assert (run2 / "learning_curve.png").stat().st_size > 1000


def _tb_tags(seed_dir):
  from tensorboardX.proto import event_pb2
  import struct

  files = list(seed_dir.glob("events.*"))
  assert len(files) == 1
  tags = set()
  data = files[0].read_bytes()
  pos = 0
  while pos < len(data):  # TFRecord framing: len u64, crc u32, payload, crc u32
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
    tags.update(v.tag for v in ev.summary.value)
    pos += 12 + n + 4
  return tags


def test_tensorboard_tags(run2):
  tags = _tb_tags(run2 / "tb" / "seed1")
  for t in ("rollout/ep_rew_mean", "rollout/success_rate", "train/value_loss", "train/approx_kl",
            "train/clip_fraction", "train/entropy_loss", "train/std", "time/fps"):
    assert t in tags, t


def test_video(run2):
  from fetchjax import render

  try:
    render.gl_backend()
  except RuntimeError as e:
    pytest.skip(f"no headless GL here: {e}")
  import imageio.v2 as iio

  reader = iio.get_reader(str(run2 / "videos" / "ppo_FetchReachDense-v4_seed0.mp4"), "ffmpeg")
  frames = [f for f in reader]
  assert len(frames) == 50 and frames[0].mean() > 10  # one episode at 25 fps, not black


def test_load_policy_drives_gymnasium(run2):
  import gymnasium as gym
  import gymnasium_robotics

  gym.register_envs(gymnasium_robotics)
  pol = fetchjax.load_policy(run2, seed_index=1)
  assert pol.seed == 1 and pol.step == 3 * update(_backend(run2))
  env = gym.make("FetchReachDense-v4")
  obs, _ = env.reset(seed=0)
  a = pol(obs)
  assert a.shape == (4,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
  batch = {k: np.stack([v, v]) for k, v in obs.items()}
  np.testing.assert_allclose(pol(batch), np.stack([a, a]), rtol=1e-5, atol=1e-7)  # batch-size rounding
  ret = 0.0
  for t in range(50):  # the policy drives the CPU reference env through a whole episode
    obs, r, term, trunc, info = env.step(pol(obs))
    ret += r
    assert not term and trunc == (t == 49)
  # reset(seed=0) is the book protocol's episode 0: this is the episode fetchjax's eval scored for seed 1
  ev = json.loads((run2 / "eval.json").read_text())["per_seed"][1]["per_episode"][0]
  ret_tol, dist_tol = GYM_TOL[_backend(run2)]
  assert ret == pytest.approx(ev["return"], abs=ret_tol)
  if abs(np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"]) - 0.05) > dist_tol:
    assert bool(info["is_success"]) == ev["success"]
  # seed 0's policy is a different network
  assert not np.array_equal(fetchjax.load_policy(run2, 0)(obs), pol(obs))
  with pytest.raises(runs.RunError, match="out of range"):
    fetchjax.load_policy(run2, seed_index=2)


# The train CLI's eval also records the video episode's qpos: a different XLA program. On cpu the physics runs in
# C MuJoCo, so the two evals agree to float32 rounding of the returns; warp's physics runs in Warp kernels, outside
# XLA's fusion; mjx's physics is inside the XLA program, whose float32 rounding changes with the fusion
# (measured 1.5e-6 relative with mujoco-mjx 3.17.0 over 20 episodes, 2026-11-30).
SAME_POLICY_REL = {"cpu": 1e-6, "mjx": 1e-5, "warp": 1e-6}


def test_eval_cli(run2, tmp_path, capsys):
  from fetchjax import eval as fj_eval

  out = tmp_path / "e.json"
  assert fj_eval.main(["--run-dir", str(run2), "--n-episodes", "10", "--json-out", str(out)]) == 0
  rep = json.loads(out.read_text())
  ref = json.loads((run2 / "eval.json").read_text())
  assert rep["aggregate"]["success_rate"] == ref["aggregate"]["success_rate"]
  assert rep["aggregate"]["return_mean"] == pytest.approx(ref["aggregate"]["return_mean"],
                                                         rel=SAME_POLICY_REL[_backend(run2)])
  gym_out = tmp_path / "g.json"
  assert fj_eval.main(["--run-dir", str(run2), "--n-episodes", "10", "--sim", "gymnasium",
                       "--json-out", str(gym_out)]) == 0
  gym = json.loads(gym_out.read_text())
  assert gym["simulator"].startswith("gymnasium") and gym["checkpoint_steps"] == 3 * update(_backend(run2))
  assert gym["aggregate"]["success_rate"] == ref["aggregate"]["success_rate"]
  assert gym["aggregate"]["return_mean"] == pytest.approx(ref["aggregate"]["return_mean"],
                                                          abs=GYM_TOL[_backend(run2)][0])


# fetchjax's eval vs the same policy in CPU gymnasium-robotics, per episode: (|return|, |final distance|). cpu:
# float32 observation rounding only. mjx: float32 MJX drifts from C MuJoCo by up to ~3 mm over an episode
# (docs/PARITY.md: 2.6 mm after 50 slow steps), so an episode's return (a sum of 50 distances) may move by 0.1.
# warp: the stock model in float32 stays within ~2e-6 m of C MuJoCo over 50 Reach steps (docs/PARITY.md).
GYM_TOL = {"cpu": (1e-4, 1e-5), "mjx": (0.1, 5e-3), "warp": (1e-3, 1e-4)}


def test_fetchjax_eval_matches_gymnasium(run2):
  """The deterministic eval in fetchjax and the same policy in CPU gymnasium-robotics, on the book's tasks
  (reset seeds 0..9): the same episodes up to the backend's tolerance (GYM_TOL)."""
  from fetchjax import eval as fj_eval

  ret_tol, dist_tol = GYM_TOL[_backend(run2)]
  ours = json.loads((run2 / "eval.json").read_text())["per_seed"][1]["per_episode"]
  ref = fj_eval.gymnasium_episodes(fetchjax.load_policy(run2, 1), "FetchReachDense-v4", 10, 0)
  for a, b in zip(ours, ref):
    if abs(b["final_distance"] - 0.05) > dist_tol:  # a success can only flip within the tolerance of 5 cm
      assert a["success"] == b["success"]
    assert abs(a["return"] - b["return"]) < ret_tol
    assert abs(a["final_distance"] - b["final_distance"]) < dist_tol
  assert len({round(e["return"], 3) for e in ref}) > 1  # different tasks per episode


def _assert_same_runs(a, b):
  """Both runs' last checkpoints (every leaf of the runner state) and metric histories are bitwise equal."""
  import jax

  sa, ra = _ckpt_runner(a)
  sb, rb = _ckpt_runner(b)
  assert sa == sb
  la, lb = jax.tree_util.tree_leaves_with_path(ra), jax.tree_util.tree_leaves_with_path(rb)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  _, ha = runs.RunDir(a).load_metrics()
  _, hb = runs.RunDir(b).load_metrics()
  assert set(ha) == set(hb)
  for k in ha:
    np.testing.assert_array_equal(ha[k], hb[k], err_msg=k)
  return sa, ra


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_is_bitwise(tmp_path, tmp_path_factory, backend, monkeypatch):
  """A run stopped by Ctrl-C right after its first checkpoint and resumed (every backend), and one paused after 2
  of 4 updates and resumed (cpu), end with the same bits as the uninterrupted run (every leaf of the runner state,
  env state included, and every metric). The uninterrupted 3-update run is `run2` (its eval and video come after
  its last checkpoint): on mjx each CLI run costs ~40 s of tracing on 2 cores."""
  import os
  import signal

  UPDATE = update(backend)  # noqa: N806
  resume = ["--quiet", "--eval-episodes", "0", "--video-episodes", "0"]
  if backend == "cpu":  # --pause-at is backend-independent
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--seeds", "0-1", "--total-steps", str(4 * UPDATE), "--eval-episodes", "0", "--video-episodes", "0"]
    assert _train(*common, "--run-dir", str(a), backend=backend) == 0
    assert _train(*common, "--run-dir", str(b), "--pause-at", str(2 * UPDATE), backend=backend) == 0
    assert json.loads((b / "meta.json").read_text())["status"] == "paused"
    assert runs.RunDir(b).checkpoint_steps()[-1] == 2 * UPDATE
    assert fj_train.main(["--resume", str(b), *resume]) == 0
    assert _assert_same_runs(a, b)[0] == 4 * UPDATE

  real, calls = runs.RunDir.save_checkpoint, []

  def save_then_ctrl_c(self, *args, **kw):
    real(self, *args, **kw)
    calls.append(1)
    if len(calls) == 1:
      os.kill(os.getpid(), signal.SIGINT)

  uninterrupted, c = _run2(tmp_path_factory, backend), tmp_path / "c"
  monkeypatch.setattr(runs.RunDir, "save_checkpoint", save_then_ctrl_c)
  assert _train("--seeds", "0-1", "--total-steps", str(3 * UPDATE), "--eval-episodes", "0", "--video-episodes", "0",
                "--run-dir", str(c), backend=backend) == 130
  monkeypatch.setattr(runs.RunDir, "save_checkpoint", real)
  meta = json.loads((c / "meta.json").read_text())
  assert meta["status"] == "interrupted" and runs.RunDir(c).checkpoint_steps() == [UPDATE]
  assert fj_train.main(["--resume", str(c), *resume]) == 0
  assert _assert_same_runs(uninterrupted, c)[0] == 3 * UPDATE


# SAC + HER through the same CLI: 2 envs x 50 steps per iteration, warm-up 100 steps, tiny nets.
SAC_TINY = ["--algo", "sac", "--her", "--env", "FetchReach-v4", "--n-envs", "2", "--set", "buffer_size=1000",
            "--set", "batch_size=32", "--set", "learning_starts=100", "--set", "hidden_sizes=16,16",
            "--backend", "cpu", "--quiet"]
SAC_ITER = 2 * 50


def test_sac_her_run_and_exact_resume(tmp_path):
  """SAC+HER, 2 vmapped seeds: the run directory contract (SAC metrics and TensorBoard tags, off-policy
  diagnostics, eval.json, a policy that drives CPU gymnasium), and a run paused half-way and resumed from its
  checkpoint (which holds the replay buffer) ends bitwise identical to the uninterrupted run."""
  a, b = tmp_path / "a", tmp_path / "b"
  common = [*SAC_TINY, "--seeds", "0-1", "--total-steps", str(6 * SAC_ITER), "--checkpoint-every", str(SAC_ITER),
            "--video-episodes", "0"]
  assert fj_train.main([*common, "--run-dir", str(a), "--eval-episodes", "4"]) == 0
  assert fj_train.main([*common, "--run-dir", str(b), "--eval-episodes", "4", "--pause-at", str(3 * SAC_ITER)]) == 0
  assert json.loads((b / "meta.json").read_text())["status"] == "paused"
  assert fj_train.main(["--resume", str(b), "--quiet", "--video-episodes", "0"]) == 0
  step, runner = _assert_same_runs(a, b)
  assert step == 6 * SAC_ITER
  assert np.all(np.asarray(runner["buffer"]["size"]) == 6 * 2)  # the replay buffer is in the checkpoint
  meta = json.loads((a / "meta.json").read_text())
  # the device's default preset for SAC+HER on Reach (book_her on CPU, gpu on an accelerator)
  assert meta["algo"] == "sac" and meta["preset"] == fj_train.default_preset("sac", "FetchReach-v4", her=True)
  assert meta["config"]["her"] is True and meta["config"]["gamma"] == 0.95
  assert meta["config"]["hidden_sizes"] == [16, 16]
  _, hist = runs.RunDir(a).load_metrics()
  assert hist["critic_loss"].shape == (2, 6) and np.isnan(hist["critic_loss"][:, 0]).all()  # warm-up iteration
  # gradient steps after every vectorised step once num_timesteps > 100: 50 per iteration from the second
  assert np.isfinite(hist["critic_loss"][:, 1:]).all()
  assert np.all(hist["n_updates"][:, -1] == (6 * 50 - 50) * meta["config"]["gradient_steps"])
  tags = _tb_tags(a / "tb" / "seed1")
  for t in ("rollout/success_rate", "train/critic_loss", "train/actor_loss", "train/ent_coef",
            "train/ent_coef_loss", "replay/q_min_mean", "train/n_updates", "time/fps"):
    assert t in tags, t
  from fetchjax import diagnostics

  diag = json.loads((a / "diagnostics.json").read_text())
  assert diag["rules_checked"] == diagnostics.SAC_RULE_IDS
  assert not [f for f in diag["findings"] if f["rule"] == "NAN"]  # warm-up NaNs are not findings
  ev = json.loads((a / "eval.json").read_text())
  assert ev["algo"] == "sac" and ev["aggregate"]["n_episodes"] == 8 and ev["deterministic"] is True
  assert "baseline_do_nothing" in ev

  import gymnasium as gym
  import gymnasium_robotics

  gym.register_envs(gymnasium_robotics)
  pol = fetchjax.load_policy(a, seed_index=1)
  env = gym.make("FetchReach-v4")
  obs, _ = env.reset(seed=0)
  for _ in range(50):
    a_t = pol(obs)
    assert a_t.shape == (4,) and np.all(np.abs(a_t) <= 1)
    obs, r, term, trunc, info = env.step(a_t)
  assert trunc and r in (0.0, -1.0)


def test_checkpoints_without_the_replay_buffer_resume_with_an_empty_one(tmp_path, capsys):
  """--checkpoint-buffer off: checkpoints leave the buffer out (and say so in meta.json); a resumed run starts
  from the checkpointed networks, env and counters with an empty buffer that fills again, and trains on."""
  d = tmp_path / "nobuf"
  common = [*SAC_TINY, "--total-steps", str(4 * SAC_ITER), "--video-episodes", "0", "--eval-episodes", "2"]
  assert fj_train.main([*common, "--run-dir", str(d), "--pause-at", str(2 * SAC_ITER),
                        "--checkpoint-buffer", "off"]) == 0
  assert json.loads((d / "meta.json").read_text())["checkpoint_buffer"] is False
  raw = runs.RunDir(d).restore_raw()[1]["runner"]
  assert "buffer" not in raw or not raw["buffer"], "the buffer is in the checkpoint"
  paused = _ckpt_runner(d)[1]["train_state"]
  capsys.readouterr()
  assert fj_train.main(["--resume", str(d), "--video-episodes", "0", "--eval-episodes", "2"]) == 0
  assert "training resumes with an empty one" in capsys.readouterr().err
  step, runner = _ckpt_runner(d)
  assert step == 4 * SAC_ITER and int(np.asarray(runner["train_state"]["step"])[0]) == 4
  # training went on (the buffer refilled: one episode, then gradient steps again), from the saved networks
  assert int(np.asarray(runner["train_state"]["n_updates"])[0]) > int(np.asarray(paused["n_updates"])[0])
  assert json.loads((d / "meta.json").read_text())["status"] == "finished"
  r = _cli("--algo", "ppo", "--checkpoint-buffer", "off", "--run-dir", str(tmp_path / "x"))
  assert r.returncode == 2 and "--algo ppo has no replay buffer" in r.stderr


def test_load_policy_reads_only_the_policy_item(run2_cpu, tmp_path):
  """load_policy and eval read the checkpoint's small policy item: a damaged state item (a replay buffer of many
  GB, say) neither stops them nor is hashed; resuming, which needs the state, refuses that checkpoint."""
  d = tmp_path / "copy"
  shutil.copytree(run2_cpu, d)
  step = runs.RunDir(d).checkpoint_steps()[-1]
  before = fetchjax.load_policy(d, seed_index=1)
  obs = {"observation": np.linspace(-1, 1, 10, dtype=np.float32), "achieved_goal": np.zeros(3, np.float32),
         "desired_goal": np.ones(3, np.float32)}
  state_files = sorted(p for p in (d / "checkpoints" / str(step) / "state").rglob("*") if p.is_file())
  with open(state_files[0], "r+b") as f:
    f.write(b"\0garbage")
  pol = fetchjax.load_policy(d, seed_index=1)
  assert pol.step == step
  np.testing.assert_array_equal(pol(obs), before(obs))
  assert runs.RunDir(d).checkpoints().check(step) is not None  # the whole checkpoint is not intact


def test_td3_her_cli_run(tmp_path):
  d = tmp_path / "td3"
  args = [a for a in SAC_TINY if a != "sac"]
  args[args.index("--algo") + 1:args.index("--algo") + 1] = ["td3"]
  assert fj_train.main([*args, "--total-steps", str(3 * SAC_ITER), "--run-dir", str(d), "--eval-episodes", "2",
                        "--video-episodes", "0"]) == 0
  meta = json.loads((d / "meta.json").read_text())
  assert meta["algo"] == "td3" and meta["status"] == "finished" and meta["config"]["policy_delay"] == 2
  _, hist = runs.RunDir(d).load_metrics()
  assert np.isfinite(hist["critic_loss"][:, 1:]).all() and "ent_coef" not in hist
  assert json.loads((d / "diagnostics.json").read_text())["rules_checked"][:2] == ["NAN", "S1"]


def _cli(*args, cwd=None):
  env = dict(os.environ, PYTHONPATH=str(Path(fetchjax.__file__).parent.parent))
  return subprocess.run([sys.executable, "-m", "fetchjax.train", *args], capture_output=True, text=True,
                        timeout=300, env=env, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["--env", "FetchNope-v4"], "unknown env id"),
    (["--seeds", "3-1"], "bad seed list"),
    (["--algo", "td3", "--ent-coef", "0.1"], "do(es) not apply to --algo td3"),
    (["--algo", "sac", "--set", "buffer_size=10"], "must hold at least one episode per env"),
    (["--algo", "sac", "--her-strategy", "final"], "need --her"),
    (["--algo", "dqn"], "unknown algorithm"),
    (["--total-steps", "0"], "must be a positive integer"),
    (["--set", "learning_rat=1"], "unknown PPOConfig field"),
    (["--set", "batch_size=100"], "must divide"),
    (["--preset", "huge"], "unknown ppo preset"),
    (["--resume", "/nonexistent/run"], "no run directory"),
    (["--bogus-flag"], "unrecognized arguments"),
    (["--her"], "HER needs an off-policy algorithm"),
    (["--gamma", "0.9", "--resume", "/tmp/x"], "--resume takes its settings from the run"),
    (["--set", "learning_rate=abc"], "learning_rate must be a number, got 'abc'"),
    (["--set", "gamma=abc"], "gamma must be a number"),
    (["--set", "gamma=1.5"], "gamma must be in [0, 1]"),
    (["--set", "clip_range=abc"], "clip_range must be a number"),
    (["--set", "normalize_obs=maybe"], "normalize_obs must be true or false, got 'maybe'"),
    (["--set", "n_epochs=2.5"], "n_epochs must be an integer"),
    (["--set", "env_id=Foo"], "use --env instead of --set env_id"),
    (["--set", "num_envs=4"], "use --n-envs"),
    (["--algo", "sac", "--set", "tau=-1"], "tau must be in (0, 1]"),
    (["--step", "5"], "--step picks the checkpoint to resume from"),
    (["--algo", "ppo", "--frame-stack", "4"], "--frame-stack do(es) not apply to --algo ppo"),
    (["--algo", "sac", "--her", "--env", "FetchPush-v4", "--preset", "book_pixels", "--backend", "mjx"],
     "pixels need a renderer: backend 'mjx'"),   # the preset renders frames; MJX-JAX has no renderer
    (["--algo", "sac", "--her", "--frame-stack", "4"], "need(s) --pixels"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
  r = _cli(*args) if "--resume" in args else _cli(*args, "--run-dir", str(tmp_path / "x"))
  assert r.returncode == 2, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]  # nothing else: no third-party import notices either
  assert len(lines) == 1 and message in lines[0], r.stderr
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "x").exists()  # a failed start leaves no run directory behind


def test_existing_run_dir_is_never_overwritten(run2_cpu, tmp_path):
  d = tmp_path / "copy"
  shutil.copytree(run2_cpu, d)
  before = (d / "meta.json").read_text()
  assert _train("--run-dir", str(d)) == 2
  assert (d / "meta.json").read_text() == before


def test_corrupt_newest_checkpoint_falls_back_to_the_intact_one(run2_cpu, tmp_path, capsys):
  """Issue 14: 100 bytes overwritten in the newest checkpoint used to load silently (and the resume then deleted
  the last good one). Now: one line says so, the bad one is set aside (kept), the run resumes from the older
  intact checkpoint and ends bit-identical to the untouched run."""
  d = tmp_path / "corrupt"
  shutil.copytree(run2_cpu, d)
  steps = runs.RunDir(d).checkpoint_steps()
  assert steps == [2 * UPDATE, 3 * UPDATE]
  data = [f for f in (d / "checkpoints" / str(steps[-1]) / "state").rglob("*") if f.is_file()
          and f.stat().st_size > 200]
  for f in data:  # same sizes, different bytes
    b = bytearray(f.read_bytes())
    b[100:200] = bytes(100)
    f.write_bytes(bytes(b))
  assert fj_train.main(["--resume", str(d), "--quiet", "--eval-episodes", "0", "--video-episodes", "0"]) == 0
  err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(err) == 1 and "corrupt" in err[0] and "checkpoints_set_aside" in err[0], err
  assert len(list((d / "checkpoints_set_aside").iterdir())) == 1
  _assert_same_runs(run2_cpu, d)


def test_all_checkpoints_corrupt_is_one_line(run2_cpu, tmp_path, capsys):
  d = tmp_path / "corrupt"
  shutil.copytree(run2_cpu, d)
  for f in (d / "checkpoints").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and f.name != "manifest.json":
      f.write_bytes(b"garbage")
  assert fj_train.main(["--resume", str(d), "--quiet", "--total-steps", str(4 * UPDATE)]) == 2
  err = [l for l in capsys.readouterr().err.strip().splitlines() if not l.startswith("WARN")]
  assert len(err) == 1 and "no intact checkpoint" in err[0], err


def test_chunks_end_exactly_at_the_total():
  """Regression: a run extended with --resume --total-steps used chunks that overshot the new total (a SAC Push
  run resumed from 1M to 2M trained 2.04M)."""
  assert fj_train.chunk_updates(5000) == 200                      # 25 calls
  assert fj_train.chunk_updates(5000, 2400) == 200                # a plain resume keeps the boundaries
  for total, done in [(5000, 2500), (5000, 2460), (1250, 625), (97, 13)]:
    c = fj_train.chunk_updates(total, done)
    assert (total - done) % c == 0 and 1 <= c <= max(1, total // 25), (total, done, c)
