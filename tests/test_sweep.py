"""Sweeps in one program (fetchjax/sweep.py): grid points x seeds in one jit(vmap(vmap)), each point computing what
a separate run with its values computes (to float rounding), and one-line errors for what cannot be swept."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fetchjax
from fetchjax import agents, envs, runs, sweep

PPO, SAC = agents.get("ppo"), agents.get("sac")


def test_points_and_what_cannot_be_swept():
  pts = sweep.points({"learning_rate": [1e-4, 3e-4], "gamma": [0.95, 0.98, 0.99]})
  assert len(pts) == 6 and pts[0] == {"learning_rate": 1e-4, "gamma": 0.95} and pts[-1]["gamma"] == 0.99
  stacked = sweep.stack(pts)
  assert stacked["learning_rate"].shape == (6,) and stacked["gamma"].dtype == np.float32
  assert sweep.stack([{"learning_starts": 100}, {"learning_starts": 500}])["learning_starts"].dtype == np.int32
  cfg = SAC.preset("book_her")
  for grid, message in (({"hidden_sizes": [(64, 64), (256, 256)]}, "hidden_sizes cannot vary inside one program"),
                        ({"batch_size": [128, 256]}, "batch_size cannot vary"),
                        ({"gamma": [0.95, 1.5]}, r"gamma must be in \[0, 1\]"),
                        ({"ent_coef": [0.05, "automatic"]}, "ent_coef must be"),
                        ({"learning_starts": [100, 1.5]}, "learning_starts must be an integer"),
                        ({"lr": [1e-3]}, "unknown SAC config field 'lr'")):
    with pytest.raises(ValueError, match=message):
      sweep.check_points(SAC, cfg, sweep.points(grid))
  with pytest.raises(ValueError, match="needs --her"):
    sweep.check_points(SAC, SAC.preset("book"), sweep.points({"n_sampled_goal": [4, 8]}))
  with pytest.raises(ValueError, match="at least one"):
    sweep.points({})
  # values typed as their fields; 'auto' and fixed entropy coefficients in one program: a traced flag
  typed = sweep.check_points(SAC, cfg, sweep.points({"gamma": [1], "ent_coef": [0.05, "auto_0.1"]}))
  assert typed[0] == {"gamma": 1.0, "ent_coef": 0.05} and isinstance(typed[0]["gamma"], float)
  ent = sweep.stack(typed)["ent_coef"]
  assert ent["learned"].tolist() == [False, True]
  np.testing.assert_allclose(np.asarray(ent["alpha0"]), [0.05, 0.1], rtol=1e-7)
  np.testing.assert_allclose(np.asarray(ent["log_alpha0"]), np.log([0.05, 0.1]), rtol=1e-6)


def test_grid_flags_and_point_names():
  assert sweep.parse_grid(["ent_coef=0.05,auto", "learning-rate=1e-4,3e-4"]) == {
      "ent_coef": [0.05, "auto"], "learning_rate": [1e-4, 3e-4]}
  for items, message in ((["gamma"], "expects field=v1"), (["gamma="], "has no values"),
                         (["gamma=0.9", "gamma=0.8"], "given twice"), (["gamma=0.9,0.9"], "repeats a value")):
    with pytest.raises(ValueError, match=message):
      sweep.parse_grid(items)
  assert sweep.point_name(3, {"ent_coef": 0.05, "gamma": 0.98}) == "p03_ent_coef=0.05_gamma=0.98"


def test_host_points_cover_every_point_once():
  for n, hosts in ((24, 1), (24, 5), (7, 3), (3, 3)):
    owned = [sweep.host_points(n, hosts, h) for h in range(hosts)]
    assert sum(owned, []) == list(range(n))  # disjoint, contiguous, complete
    assert max(map(len, owned)) - min(map(len, owned)) <= 1
  assert sweep.host_points(7, 3, 0) == [0, 1, 2] and sweep.host_points(7, 3, 2) == [5, 6]
  for args, message in (((2, 3, 0), "exceeds"), ((4, 2, 2), "host-id")):
    with pytest.raises(ValueError, match=message):
      sweep.host_points(*args)


def test_statistics():
  s = sweep.ci95([1.0, 0.9, 0.8, 1.0, 1.0])
  std = np.std([1.0, 0.9, 0.8, 1.0, 1.0], ddof=1)
  assert s["n"] == 5 and s["mean"] == pytest.approx(0.94) and s["std"] == pytest.approx(std)
  assert s["ci95"] == pytest.approx(2.7764451 * std / np.sqrt(5), rel=1e-6)  # Student's t, 4 degrees of freedom
  assert s["two_se"] == pytest.approx(2 * std / np.sqrt(5))
  assert sweep.ci95([0.5])["ci95"] is None
  ev = lambda *sr: {"per_seed": [{"aggregate": {"success_rate": x, "return_mean": -10 * x}} for x in sr]}  # noqa
  pts = [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
  st = sweep.summarize(pts, [ev(1.0, 0.8), ev(0.6, 0.6), ev(0.2, 0.4), None])
  assert st["best"] == "p00_a=1_b=x" and not st["complete"] and "success_rate" not in st["points"][3]
  m = {(f, r["value"]): r for f, rows in st["marginals"].items() for r in rows}
  assert m["a", 1]["success_rate"]["mean"] == pytest.approx(0.75) and m["a", 1]["success_rate"]["n"] == 4
  assert m["b", "y"]["success_rate"]["mean"] == pytest.approx(0.6) and m["b", "y"]["points"] == 1
  assert m["a", 2]["return"]["mean"] == pytest.approx(-3.0)


def _sweep_vs_runs(algo, config, env, grid, n_updates, seeds=(0, 1)):
  pts = sweep.check_points(algo, config, sweep.points(grid) if isinstance(grid, dict) else grid)
  init, run = sweep.make_sweep(algo, config, env, pts)
  hp = sweep.stack(pts)
  keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in seeds])
  runners = jax.jit(jax.vmap(jax.vmap(init, (None, 0)), (0, None)))(hp, keys)
  _, swept = jax.jit(jax.vmap(jax.vmap(lambda h, r: run(h, r, n_updates), (None, 0)), (0, 0)))(hp, runners)
  for i, p in enumerate(pts):  # each point against its own separate run
    one = dataclasses.replace(config, **p)
    a_init, a_run = algo.make_runner(one, env)
    _, alone = jax.jit(jax.vmap(lambda k: a_run(a_init(k), n_updates)))(keys)
    for k in ("ep_rew_mean", "success_rate", *[m for m in alone if "loss" in m]):
      np.testing.assert_allclose(np.asarray(swept[k][i]), np.asarray(alone[k]), rtol=2e-4, atol=2e-5,
                                 err_msg=f"{k} at {p}")
  return swept


def test_ppo_sweep_points_match_separate_runs():
  cfg = PPO.preset("book", n_steps=64, batch_size=128, n_epochs=2, total_timesteps=3 * 256)
  env = envs.make("FetchReachDense-v4", num_envs=4, backend="cpu")
  m = _sweep_vs_runs(PPO, cfg, env, {"learning_rate": [3e-4, 3e-3], "clip_range": [0.1, 0.3]}, 3)
  assert m["value_loss"].shape == (4, 2, 3)
  # the points really differ (the sweep did not train one setting four times)
  assert not np.allclose(np.asarray(m["value_loss"][0]), np.asarray(m["value_loss"][2]))


def test_sac_her_sweep_points_match_separate_runs():
  """Fixed and learned ('auto') entropy coefficients and HER's k (a relabel count in the fixed batch) vary
  inside one program, each point as its own run."""
  cfg = SAC.preset("book_her", buffer_size=1_000, batch_size=32, hidden_sizes=(16, 16), learning_starts=100,
                   ent_coef=0.05, total_timesteps=3 * 100)
  env = envs.make("FetchReach-v4", num_envs=2, backend="cpu")
  pts = [{"ent_coef": 0.05, "n_sampled_goal": 4, "gamma": 0.95},
         {"ent_coef": "auto", "n_sampled_goal": 1, "gamma": 0.98},
         {"ent_coef": 0.2, "n_sampled_goal": 8, "gamma": 0.98}]
  m = _sweep_vs_runs(SAC, cfg, env, pts, 3)
  assert m["critic_loss"].shape == (3, 2, 3)
  alpha = np.asarray(m["ent_coef"][:, :, -1])
  np.testing.assert_allclose(alpha[[0, 2]], [[0.05, 0.05], [0.2, 0.2]], rtol=1e-6)
  assert np.all(alpha[1] < 1.0)  # learned from 1 ("auto"): it moved
  ent_loss = np.asarray(m["ent_coef_loss"])
  assert np.isnan(ent_loss[0]).all() and np.isfinite(ent_loss[1, :, -1]).all()  # fixed: none; learned: a loss


def test_traced_k_samples_the_batch_of_a_run_with_that_k():
  """her.sample with k traced draws exactly the batch the static-k sampler draws (every strategy)."""
  from fetchjax.agents import her

  env = envs.make("FetchReach-v4", num_envs=2, backend="cpu")
  key = jax.random.PRNGKey(0)
  state = env.reset(key)
  buf = her.start(her.create(400, 2, her.spec_of(state.obs), T=50, act_dim=4), state.obs)
  step = jax.jit(env.step)
  for t in range(100):  # two whole episodes per env
    a = jax.random.uniform(jax.random.fold_in(key, t), (2, 4), minval=-1, maxval=1)
    state = step(state, a)
    buf = her.add(buf, a, state)
  assert int(her.num_sampleable(buf)) == 4
  for strategy in her.STRATEGIES:
    traced_k = jax.jit(lambda kk, s=strategy: her.sample(buf, key, 64, env.compute_reward, n_sampled_goal=kk,
                                                         strategy=s))
    for k in (0, 1, 4, 8):
      static = her.sample(buf, key, 64, env.compute_reward, n_sampled_goal=k, strategy=strategy)
      traced = traced_k(jnp.int32(k))
      for a, b in zip(jax.tree.leaves(static), jax.tree.leaves(traced)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{strategy} k={k}")


# ----------------------------------------------------------------------------------------------------------
# The CLI: python -m fetchjax.sweep
# ----------------------------------------------------------------------------------------------------------
PPO_TINY = ["--n-envs", "4", "--set", "n_steps=64", "--set", "batch_size=128", "--set", "n_epochs=1",
            "--backend", "cpu", "--quiet", "--seeds", "0-1"]
SAC_TINY = ["--algo", "sac", "--her", "--env", "FetchReach-v4", "--n-envs", "2", "--set", "buffer_size=1000",
            "--set", "batch_size=32", "--set", "learning_starts=100", "--set", "hidden_sizes=16,16",
            "--backend", "cpu", "--quiet", "--seeds", "0-1"]
SAC_ITER = 2 * 50


def _json(path):
  import json

  return json.loads(Path(path).read_text())


def test_ppo_sweep_cli_writes_a_run_directory_per_point(tmp_path):
  """2 points x 2 seeds: sweep.json/md/png, and each point a normal run directory (meta with the point's config,
  checkpoints, TensorBoard per seed, eval.json) that load_policy reads."""
  d = tmp_path / "s"
  assert sweep.main([*PPO_TINY, "--total-steps", str(3 * 256), "--grid", "learning_rate=3e-4,3e-3",
                     "--eval-episodes", "4", "--sweep-dir", str(d)]) == 0
  sw = _json(d / "sweep.json")
  assert sw["status"] == "finished" and sw["grid"] == {"learning_rate": [3e-4, 3e-3]} and sw["seeds"] == [0, 1]
  assert [p["name"] for p in sw["points"]] == ["p00_learning_rate=0.0003", "p01_learning_rate=0.003"]
  assert sw["command"].startswith("python -m fetchjax.sweep") and sw["stats"]["complete"]
  for i, p in enumerate(sw["points"]):
    pd = d / "points" / p["name"]
    meta, ev = _json(pd / "meta.json"), _json(pd / "eval.json")
    assert meta["status"] == "finished" and meta["config"]["learning_rate"] == p["values"]["learning_rate"]
    assert meta["sweep"]["point"] == p["name"] and meta["seeds"] == [0, 1]
    assert ev["aggregate"]["n_episodes"] == 8 and [s["seed"] for s in ev["per_seed"]] == [0, 1]
    assert (pd / "tb" / "seed1").is_dir() and (pd / "learning_curve.png").exists()
    row = sw["stats"]["points"][i]
    assert row["success_rate"]["mean"] == pytest.approx(ev["across_seeds"]["success_rate"]["mean"])
    assert row["return"]["n"] == 2
  assert (d / "sweep.png").stat().st_size > 0
  md = (d / "sweep.md").read_text()
  assert "| p00_learning_rate=0.0003 | 0.0003 |" in md and "Marginals" in md
  # the points' evaluations are what each point's policies score alone
  pol = fetchjax.load_policy(d / "points" / sw["points"][1]["name"], seed_index=1)
  assert pol.seed == 1 and pol.step == 3 * 256


@pytest.mark.slow  # three sweeps of 2 SAC+HER points (~60 s on 2 cores)
def test_sac_her_sweep_resume_is_exact(tmp_path):
  """A sweep mixing a fixed and a learned entropy coefficient, paused half-way and resumed, ends with every
  point's checkpoint (replay buffers included), metrics and evaluation identical to the uninterrupted sweep."""
  a, b = tmp_path / "a", tmp_path / "b"
  common = [*SAC_TINY, "--total-steps", str(4 * SAC_ITER), "--checkpoint-every", str(SAC_ITER),
            "--grid", "ent_coef=0.05,auto", "--eval-episodes", "4"]
  assert sweep.main([*common, "--sweep-dir", str(a)]) == 0
  assert sweep.main([*common, "--sweep-dir", str(b), "--pause-at", str(2 * SAC_ITER)]) == 0
  assert _json(b / "sweep.json")["status"] == "paused"
  assert sweep.main(["--resume", str(b), "--quiet"]) == 0
  for p in _json(a / "sweep.json")["points"]:
    ra, rb = runs.RunDir(a / "points" / p["name"]), runs.RunDir(b / "points" / p["name"])
    (sa, xa), (sb, xb) = ra.restore_raw(), rb.restore_raw()
    assert sa == sb == 4 * SAC_ITER
    for u, v in zip(jax.tree.leaves(xa), jax.tree.leaves(xb)):
      np.testing.assert_array_equal(u, v)
    (_, ha), (_, hb) = ra.load_metrics(), rb.load_metrics()
    for k in ha:
      np.testing.assert_array_equal(ha[k], hb[k], err_msg=k)
    ea, eb = _json(ra.path / "eval.json"), _json(rb.path / "eval.json")
    assert ea["per_seed"] == eb["per_seed"]
    assert len(_json(rb.path / "meta.json")["resumed_at"]) == 1
  assert _json(b / "sweep.json")["stats"]["points"] == _json(a / "sweep.json")["stats"]["points"]


def test_book_push_120_plan():
  """The book's 120-run sweep as one command: its points, seeds and steps, and the exact memory of the training
  state (from the shapes, nothing allocated)."""
  out = subprocess.run([sys.executable, "-m", "fetchjax.sweep", "--sweep", "book_push_120", "--dry-run",
                        "--backend", "cpu", "--compile-cache", "off"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
  assert "24 points x 5 seeds [0, 1, 2, 42, 77] = 120 runs, 2,000,000 steps each" in out.stdout
  assert "p23_ent_coef=0.2_n_sampled_goal=8_learning_starts=5000_gamma=0.98" in out.stdout
  assert "training state of 120 runs on this host: 15.40 GiB (replay buffers 15.03 GiB)" in out.stdout


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args, message", [
    ([], "give at least one --grid"),
    (["--grid", "lr=1e-3"], "unknown PPO config field 'lr'"),
    (["--grid", "n_steps=32,64"], "n_steps cannot vary inside one program"),
    (["--grid", "gamma=0.9", "--grid", "gamma=0.8"], "--grid gamma is given twice"),
    (["--grid", "gamma=0.9,1.5"], r"gamma must be in [0, 1]"),
    (["--grid", "gamma="], "--grid gamma has no values"),
    (["--grid", "gamma"], "--grid expects field=v1,v2"),
    (["--algo", "sac", "--grid", "n_sampled_goal=2,4"], "needs --her"),
    (["--sweep", "book_push_120", "--env", "FetchReach-v4"], "--sweep book_push_120 sets --env FetchPush-v4"),
    (["--grid", "gamma=0.9", "--num-hosts", "2"], "needs --coordinator"),
    (["--grid", "gamma=0.9", "--resume", "x"], "--resume takes its settings from the sweep"),
    (["--resume", "/nonexistent/sweep"], "no sweep directory at /nonexistent/sweep"),
    (["--algo", "sac", "--her", "--env", "FetchReach-v4", "--set", "buffer_size=100000000000", "--grid",
      "gamma=0.9,0.95", "--dry-run", "--backend", "cpu"], "this cannot fit"),
])
def test_bad_input_is_one_line(args, message, capsys):
  _one_error_line(sweep.main, args, message, capsys)


def test_train_cli_with_a_grid_is_a_sweep(capsys):
  from fetchjax import train

  _one_error_line(train.main, ["--grid", "n_steps=32,64"], "n_steps cannot vary inside one program", capsys)
  _one_error_line(train.main, ["--sweep", "book_push_120", "--env", "FetchReach-v4"], "sets --env", capsys)


def _one_error_line(main, args, message, capsys):
  try:
    rc = main([*args, "--quiet", "--compile-cache", "off"])
  except SystemExit as e:  # argparse-level mistakes exit from the parser
    rc = e.code
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
  assert err.startswith("fetchjax.sweep: error:")


def _two_hosts(args):
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  cmd = [sys.executable, "-m", "fetchjax.sweep", *args, "--coordinator", f"localhost:{port}", "--num-hosts", "2"]
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  procs = [subprocess.Popen([*cmd, "--host-id", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in (0, 1)]
  outs = [p.communicate(timeout=240)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs


@pytest.mark.slow  # two processes, twice, each compiling its point's program (~50 s on 2 cores)
def test_two_hosts_with_jax_distributed(tmp_path):
  """Two processes on this machine joined by jax.distributed (localhost coordinator, CPU): each trains and writes
  its own point, pauses, resumes; host 0 waits for both and writes the statistics of all."""
  d = tmp_path / "s"
  _two_hosts([*PPO_TINY, "--total-steps", "512", "--grid", "learning_rate=3e-4,3e-3", "--eval-episodes", "2",
              "--sweep-dir", str(d), "--pause-at", "256"])
  assert _json(d / "sweep.json")["status"] == "paused"
  _two_hosts(["--resume", str(d), "--quiet"])
  sw = _json(d / "sweep.json")
  assert sw["status"] == "finished" and sw["num_hosts"] == 2 and sw["stats"]["complete"]
  hosts = [_json(d / "points" / p["name"] / "meta.json")["sweep"]["host"] for p in sw["points"]]
  assert hosts == [0, 1]
  for p in sw["points"]:
    assert [r["step"] for r in _json(d / "points" / p["name"] / "meta.json")["resumed_at"]] == [256]
  # each host's checkpoints (written without orbax's process-0 rule) read back in a single process
  assert (d / "points" / sw["points"][1]["name"] / "checkpoints" / "512" / "state" / "arrays.npz").is_file()
  assert fetchjax.load_policy(d / "points" / sw["points"][1]["name"], seed_index=1).step == 512
