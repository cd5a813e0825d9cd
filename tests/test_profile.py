"""`python -m fetchjax.profile`: tiny sizes through the real CLI (JSON schema, the PNG), what its numbers are
(the rates are the measured work over the measured time, the derived columns follow from them, the timer
measures what runs), and its one-line errors. Both modes at num_envs 1 and 2 with the C MuJoCo backend keep this
to ~30 s on 2 cores; the expectations that depend on the device (platform, allocator statistics, presets) are
those of the device the tests run on."""
import json
import math
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fetchjax import profile
from fetchjax.train import default_preset

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
  assert r["device"]["platform"] == jax.default_backend() and r["device"]["x64"] is False
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
    if jax.default_backend() == "cpu":
      assert x["memory"]["device_peak_bytes"] is None  # XLA:CPU keeps no allocator statistics
    else:  # GPU/TPU allocators count; the peak includes this program's buffers
      assert x["memory"]["device_peak_bytes"] >= x["memory"]["device_bytes_in_use"] > 0
    # derived columns: vs the single gymnasium env, and the physics-only share of the full step's time
    assert x["vs_gymnasium"] == pytest.approx(x["env_steps_per_s"] / r["gymnasium"][x["env"]], rel=1e-9)
    assert x["physics_share"] == pytest.approx(x["env_steps_per_s"] / x["physics_steps_per_s"], rel=1e-9)


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
    # the device's preset (book / book_her on CPU, gpu on an accelerator), on num_envs envs
    her = x["algo"] == "sac_her"
    assert x["preset"] == default_preset("sac" if her else "ppo", x["env"], her=her)
    # env-only time per call and its share of the training call follow from the measured rates
    assert x["env_s_per_call"] == pytest.approx(x["env_steps_per_call"] / x["env_only_steps_per_s"], rel=1e-9)
    run_s = x["env_steps_per_call"] / x["env_steps_per_s"]
    assert x["env_share"] == pytest.approx(min(x["env_s_per_call"] / run_s, 1.0), rel=1e-9)
    assert x["learn_s_per_call"] == pytest.approx(max(run_s - x["env_s_per_call"], 0.0), rel=1e-6, abs=1e-9)
  sac = [x for x in r["train"] if x["algo"] == "sac_her"]
  assert all(x["steps_per_env"] == 50 and x["config"]["her"] for x in sac)  # one episode per iteration
  # learning_starts 0: every vectorised step trains (gradient_steps each: 1 in book_her, more in gpu)
  assert all(x["gradient_steps_per_call"] == 50 * x["config"]["gradient_steps"] for x in sac)
  ppo = [x for x in r["train"] if x["algo"] == "ppo"]
  assert all(x["gradient_steps_per_call"] == x["config"]["n_epochs"] * x["num_envs"]
             * x["config"]["n_steps"] // x["config"]["batch_size"] for x in ppo)


def test_measure_times_what_it_runs():
  """The timer: a program that takes a known 0.2 s (a host sleep inside it) is measured at 0.2 s, not at the
  time to dispatch it (JAX is asynchronous), and its compile time is reported apart."""
  def sleep(x):
    time.sleep(0.2)
    return x

  def program(c):
    c = jax.pure_callback(sleep, jax.ShapeDtypeStruct((), jnp.float32), c + 1.0)
    return c, c * 2.0

  r = profile.measure(program, jnp.zeros((), jnp.float32), repeats=2)
  assert 0.2 <= r["run_s"] < 0.6, r
  assert r["compile_s"] > 0 and float(r["aux"]) == 2.0 * 3.0  # warm-up + 2 timed calls continue the carry: c = 3


def test_env_rate_is_steps_of_all_envs_over_the_measured_time(monkeypatch):
  """env-steps/s = num_envs x steps per env / the measured run time (every env's transitions count)."""
  from fetchjax import envs

  seen = {}

  def fake_measure(program, carry, repeats=1):
    seen["steps"] = program(carry)  # the real program runs once, untimed
    return {"compile_s": 1.5, "run_s": 0.25, "memory": {}, "aux": None}

  monkeypatch.setattr(profile, "measure", fake_measure)
  env = envs.make("FetchReach-v4", num_envs=3, backend="cpu")
  r = profile.env_rollout(env, steps=7)
  assert r["env_steps_per_s"] == pytest.approx(3 * 7 / 0.25) and r["compile_s"] == 1.5
  (state, _), _ = seen["steps"]
  np.testing.assert_array_equal(np.asarray(state.info["steps"]), [7, 7, 7])  # 7 env steps really ran


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
    (["envs", "--envs", "FetchSlide-v3"], "unknown env 'FetchSlide-v3'"),
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


@pytest.mark.parametrize("backend", ["cpu", "warp"])
def test_physics_only_rate_through_the_backend_interface(backend):
  """The physics-only column times `PhysicsBackend.physics_step` (jax backends) or C MuJoCo's own loop (cpu)."""
  from fetchjax import envs

  r = profile.physics_rate(envs.make(ENV, num_envs=2, backend=backend), steps=2)
  assert _positive(r["physics_steps_per_s"])
  assert (r["physics_compile_s"] is None) == (backend == "cpu")
