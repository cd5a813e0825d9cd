"""`python -m fetchjax.profile`: tiny sizes through the real CLI (JSON schema, finite rates, the PNG) and its
one-line errors. Both modes at num_envs 1 and 2 with the C MuJoCo backend keep this to ~30 s on 2 cores."""
import json
import math
import subprocess
import sys

import pytest

from fetchjax import profile

ENV = "FetchReach-v4"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out = tmp_path_factory.mktemp("profile") / "p"
  rc = profile.main(["all", "--envs", ENV, "--num-envs", "1,2", "--backends", "cpu", "--steps", "4",
                     "--gym-steps", "50", "--out", str(out)])
  assert rc == 0
  return out, json.loads((out / "profile.json").read_text())


def _positive(x):
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_header(report):
  _, r = report
  assert r["schema"] == profile.SCHEMA and r["mode"] == "all"
  assert r["command"].startswith("python -m fetchjax.profile all")
  for k in ("date", "device", "versions", "cpu_count", "settings", "gymnasium", "envs", "train", "files"):
    assert k in r, k
  assert r["device"]["platform"] == "cpu" and r["device"]["x64"] is False
  assert r["versions"]["jax"] and r["versions"]["mujoco"] and r["versions"]["mujoco-mjx"]
  assert r["settings"]["num_envs"] == {"envs": [1, 2], "train": [1, 2]}
  assert set(r["gymnasium"]) == {ENV, "FetchReachDense-v4"} and all(_positive(v) for v in r["gymnasium"].values())
  assert r["failures"] == 0


def test_env_rows(report):
  _, r = report
  assert [(x["env"], x["backend"], x["num_envs"]) for x in r["envs"]] == [(ENV, "cpu", 1), (ENV, "cpu", 2)]
  for x in r["envs"]:
    assert "error" not in x
    for k in ("env_steps_per_s", "physics_steps_per_s", "compile_s", "vs_gymnasium", "physics_share"):
      assert _positive(x[k]), (k, x[k])
    assert x["steps_per_env"] == 4 and x["physics_compile_s"] is None  # C MuJoCo: nothing to compile
    assert set(x["memory"]) == {"program_bytes", "device_bytes_in_use", "device_peak_bytes"}
    assert x["memory"]["device_peak_bytes"] is None  # XLA:CPU keeps no allocator statistics


def test_train_rows(report):
  _, r = report
  assert [(x["algo"], x["env"], x["num_envs"]) for x in r["train"]] == [
      ("ppo", "FetchReachDense-v4", 1), ("ppo", "FetchReachDense-v4", 2), ("sac_her", ENV, 1), ("sac_her", ENV, 2)]
  for x in r["train"]:
    assert "error" not in x
    for k in ("env_steps_per_s", "compile_s", "env_only_steps_per_s", "env_s_per_call", "env_share"):
      assert _positive(x[k]), (k, x[k])
    assert 0 < x["env_share"] <= 1 and x["learn_s_per_call"] >= 0
    assert x["gradient_steps_per_call"] > 0  # the timed call really trained
    assert x["env_steps_per_call"] == x["num_envs"] * x["steps_per_env"]
    assert x["config"]["num_envs"] == x["num_envs"] and x["preset"] in ("book", "book_her")
  sac = [x for x in r["train"] if x["algo"] == "sac_her"]
  assert all(x["steps_per_env"] == 50 and x["config"]["her"] for x in sac)  # one episode per iteration
  assert all(x["gradient_steps_per_call"] == 50 for x in sac)  # learning_starts 0: every vectorised step trains


def test_png(report):
  out, r = report
  png = out / r["files"]["png"]
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_existing_profile_is_not_overwritten(report, capsys):
  out, _ = report
  with pytest.raises(SystemExit) as e:
    profile.main(["envs", "--out", str(out)])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "already holds a profile.json" in err[0]


@pytest.mark.parametrize("args,msg", [
    (["envs", "--envs", "FetchSlide-v4"], "unknown env 'FetchSlide-v4'"),
    (["envs", "--backends", "cpu,gpu"], "unknown backend 'gpu'"),
    (["envs", "--num-envs", "1,x"], "--num-envs must be positive integers"),
    (["envs", "--num-envs", "0"], "--num-envs must be positive integers"),
    (["train", "--algos", "ddpg"], "unknown algo 'ddpg'"),
    (["envs", "--steps", "0"], "--steps must be a positive integer"),
    (["benchmark"], "invalid choice: 'benchmark'"),
    (["envs", "--warp", "turbo"], "--warp takes KEY=VALUE items"),
    (["envs", "--warp", "njmax=x"], "--warp njmax must be an integer"),
    (["envs", "--warp", "naconmax=5"], "unknown warp option"),
    (["envs", "--warp", "graph_mode=FAST"], "unknown warp graph_mode"),
])
def test_bad_flags_in_process(args, msg, capsys, tmp_path):
  with pytest.raises(SystemExit) as e:
    profile.main([*args, "--out", str(tmp_path / "p")])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("fetchjax.profile: error:") and msg in err[0], err
  assert not (tmp_path / "p").exists()  # nothing is created for a bad command line


def test_warp_options_parse():
  assert profile._warp_options(["contacts_per_env=24,njmax=64", "graph_mode=WARP", "fresh_jdotv=false",
                                "tolerance=1e-6"]) == {"contacts_per_env": 24, "njmax": 64, "graph_mode": "WARP",
                                                       "fresh_jdotv": False, "tolerance": 1e-6}
  assert profile._warp_options(None) is None
  assert profile.defaults(True, True)["backends"] == ["warp", "mjx"] and profile.defaults(True)["backends"] == ["mjx"]


def test_bad_flags_subprocess(tmp_path):
  for args in (["envs", "--envs", "FetchNope-v4"], ["envs", "--backends", "tpu"], ["--bogus"]):
    r = subprocess.run([sys.executable, "-m", "fetchjax.profile", *args, "--out", str(tmp_path / "p")],
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("fetchjax.profile: error:"), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
