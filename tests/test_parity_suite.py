"""`python -m parity`: the report format, pass/fail semantics, the scripted controllers, and the CLI (a small
in-process run, exit codes, one-line errors). The whole quick suite runs in CI as its own step (.ci/run)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from parity import __main__ as cli, report, scripted

ROOT = Path(__file__).resolve().parent.parent


def test_check_semantics():
  assert report.Check("g", "err", 1e-7, 1e-6).passed
  assert not report.Check("g", "err", 2e-6, 1e-6).passed
  assert not report.Check("g", "err", math.nan, 1e-6).passed  # a NaN measurement never passes
  assert report.Check("g", "p-value", 0.5, 1e-3, ok=True).passed  # explicit verdict (e.g. at-least checks)
  s = report.skipped("transfer", "Push", "no run given")
  assert s.passed and s.status == "skip"
  assert report.Check("g", "err", 2.0, 1.0).status == "FAIL"
  info = report.Check("g", "chaotic replay", 0.13, math.nan, info=True)  # reported, no bound: never fails
  assert info.passed and info.status == "info"


def test_report_files(tmp_path):
  checks = [report.Check("rewards", "mismatches", 0.0, 0.0, "FetchReach-v4", "count"),
            report.Check("trajectories", "grip | err", 3e-6, 1e-4, "FetchReach-v4", "m", "a|b"),
            report.Check("sb3", "broken", math.nan, 0.0, ok=False, detail="ValueError: x"),
            report.skipped("transfer", "Push policy transfer", "no run"),
            report.Check("trajectories", "block after contact", 0.13, math.nan, info=True)]
  jpath, mpath = report.write(str(tmp_path / "out"), checks, dict(quick=True, wall_s=1.0, device="cpu"))
  doc = json.loads(Path(jpath).read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
  assert doc["summary"] == dict(n_checks=5, n_passed=2, n_failed=1, n_skipped=1, n_info=1, passed=False)
  assert [c["status"] for c in doc["checks"]] == ["pass", "pass", "FAIL", "skip", "info"]
  assert doc["checks"][4]["tol"] is None
  assert doc["checks"][2]["value"] is None and doc["versions"]["jax"]
  md = Path(mpath).read_text()
  assert "## trajectories" in md and "1 failed" in md
  for line in md.splitlines():
    if line.startswith("| FetchReach-v4 | grip"):
      assert line.count("|") == 8  # pipes inside names/details are escaped


def test_scripted_controllers_numpy_and_jax_agree():
  rng = np.random.default_rng(0)
  obs = rng.uniform(0.3, 1.5, (64, 25))
  obs[:8, :3] = obs[:8, 3:6] + [-0.05, 0.0, 0.005]  # some grippers right behind the block, low
  goal = rng.uniform(0.3, 1.5, (64, 3))
  for fn in (scripted.reach, scripted.push):
    a_np = fn(obs, goal)
    a_jx = np.asarray(fn(jnp.asarray(obs, jnp.float32), jnp.asarray(goal, jnp.float32), jnp))
    assert a_np.shape == (64, 4) and np.all(np.abs(a_np) <= 1) and np.all(a_np[:, 3] == 0)
    np.testing.assert_allclose(a_jx, a_np, atol=1e-5)
  one = scripted.push(obs[0], goal[0])  # unbatched, as gymnasium calls it
  np.testing.assert_allclose(one, scripted.push(obs[:1], goal[:1])[0])


def test_small_suite_in_process(tmp_path, capsys):
  out = tmp_path / "rep"
  rc = cli.main(["--quick", "--envs", "FetchReach-v4", "--only", "rewards,trajectories,samplers", "--skip", "mjx,warp",
                 "--out", str(out)])
  assert rc == 0, capsys.readouterr().out
  doc = json.loads((out / "parity_report.json").read_text())
  groups = {c["group"] for c in doc["checks"]}
  assert groups == {"rewards", "trajectories", "samplers"} and doc["summary"]["passed"]
  traj = [c for c in doc["checks"] if c["group"] == "trajectories"]
  assert len(traj) == 9 and all(c["value"] <= 1e-6 for c in traj)  # cpu backend: float32 rounding only
  assert "checks passed" in capsys.readouterr().out


def test_a_failing_check_fails_the_suite(tmp_path, monkeypatch):
  from parity import envs as penvs

  monkeypatch.setattr(penvs, "rewards", lambda env_id: [report.Check("rewards", "broken", 1.0, 0.0, env_id)])
  assert cli.main(["--envs", "FetchReach-v4", "--only", "rewards", "--out", str(tmp_path)]) == 1
  doc = json.loads((tmp_path / "parity_report.json").read_text())
  assert doc["summary"]["n_failed"] == 1


def test_a_crashing_check_is_reported_not_raised(tmp_path, monkeypatch):
  from parity import envs as penvs

  def boom(env_id):
    raise RuntimeError("simulator exploded")

  monkeypatch.setattr(penvs, "rewards", boom)
  assert cli.main(["--envs", "FetchReach-v4", "--only", "rewards", "--out", str(tmp_path)]) == 1
  doc = json.loads((tmp_path / "parity_report.json").read_text())
  assert "simulator exploded" in doc["checks"][0]["detail"]


@pytest.mark.parametrize("args, message", [
    (["--envs", "FetchNope-v4"], "unknown env id"),
    (["--only", "physics"], "unknown group"),
    (["--runs", "/nonexistent/run"], "no fetchjax run directory"),
    (["--episodes", "0"], "--episodes must be >= 1"),
    (["--warp-episodes", "-3"], "--warp-episodes must be >= 1"),
])
def test_bad_input_is_one_line(args, message):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  r = subprocess.run([sys.executable, "-m", "parity", *args], capture_output=True, text=True, timeout=120, env=env,
                     cwd=ROOT)
  assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip() and "Adroit" not in l]
  assert len(lines) == 1 and lines[0].startswith("python -m parity: error"), r.stderr
