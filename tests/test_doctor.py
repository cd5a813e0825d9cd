"""`python -m fetchjax.doctor`: the whole proof of life in-process (~20 s on 2 cores, most of it the PPO smoke
run), the exit status when a step fails, and its one-line errors."""
import json
import subprocess
import sys

import pytest

import skip_policy
from fetchjax import doctor, runs

NAMES = ["device", "envs", "render", "ppo-smoke", "parity"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("doctor") / "d"
  rc = doctor.main(["--out", str(out)])
  return rc, out, json.loads((out / "doctor.json").read_text())


def test_full_run_passes_here(full_run):
  rc, out, report = full_run
  assert rc == 0 and report["exit_code"] == 0
  assert [s["name"] for s in report["steps"]] == NAMES
  by_name = {s["name"]: s for s in report["steps"]}
  for s in report["steps"]:
    assert s["status"] in ("OK", "WARN"), s  # WARN: CPU only, or no OpenGL backend (render)
    assert s["detail"] and s["seconds"] >= 0
  for name in ("envs", "ppo-smoke", "parity"):  # these must work on any machine
    assert by_name[name]["status"] == "OK", by_name[name]
  assert by_name["parity"]["data"]["physics_state_bit_exact"] is True
  assert by_name["parity"]["data"]["reward_mismatches"] == 0
  assert (out / "ppo_smoke" / "meta.json").exists() and runs.RunDir(out / "ppo_smoke").checkpoint_steps()
  if by_name["render"]["status"] == "OK":
    assert (out / "smoke_frame.png").stat().st_size > 1000
  else:  # no headless OpenGL here: a WARN with the fix, acceptable on a developer machine but not in CI
    assert "libosmesa6" in by_name["render"]["detail"]
    assert not skip_policy.require_all(), f"{skip_policy.ENV_VAR}=1 but no headless OpenGL: {by_name['render']}"
  assert report["summary"]["FAIL"] == 0 and report["schema"] == doctor.SCHEMA
  assert report["versions"]["jax"] and report["device"]["x64"] is False


def test_output_lines(tmp_path, monkeypatch, capsys):
  """One line per step (status first), then the summary line."""
  for name in ("check_device", "check_envs", "check_render", "check_parity"):
    monkeypatch.setattr(doctor, name, lambda ctx: ("OK", "stub", {}))
  rc = doctor.main(["--out", str(tmp_path / "d"), "--quick"])
  lines = capsys.readouterr().out.strip().splitlines()
  assert rc == 0
  assert [ln.split()[:2] for ln in lines[1:-1]] == [["OK", "device"], ["OK", "envs"], ["OK", "render"],
                                                     ["SKIP", "ppo-smoke"], ["OK", "parity"]]
  assert lines[-1].startswith("doctor: ready: 4 OK, 0 WARN, 0 FAIL, 1 SKIP")


def test_a_failing_step_gives_exit_1(tmp_path, monkeypatch):
  def broken(ctx):
    raise RuntimeError("simulated breakage\nsecond line")

  for name in ("check_device", "check_render", "check_parity"):
    monkeypatch.setattr(doctor, name, lambda ctx: ("WARN", "stub", {}))
  monkeypatch.setattr(doctor, "check_envs", broken)
  out = tmp_path / "d"
  assert doctor.main(["--out", str(out), "--quick"]) == 1
  report = json.loads((out / "doctor.json").read_text())
  envs_step = next(s for s in report["steps"] if s["name"] == "envs")
  assert envs_step["status"] == "FAIL" and envs_step["detail"] == "RuntimeError: simulated breakage"
  assert report["exit_code"] == 1 and report["summary"] == {"OK": 0, "WARN": 3, "FAIL": 1, "SKIP": 1}


def test_no_opengl_is_a_warning(monkeypatch, tmp_path):
  from fetchjax import render

  def no_gl():
    raise RuntimeError("no headless OpenGL backend works (egl: no libEGL; osmesa: no libOSMesa)")

  monkeypatch.setattr(render, "gl_backend", no_gl)
  status, detail, _ = doctor.check_render(doctor.Context(out=tmp_path))
  assert status == "WARN" and "libegl1 libosmesa6" in detail and "no libEGL" in detail


def test_x64_is_a_failure(monkeypatch):
  monkeypatch.setattr(doctor.runs, "device_info", lambda: {"x64": True})
  status, detail, _ = doctor.check_device(doctor.Context(out=None))
  assert status == "FAIL" and "jax_enable_x64" in detail


def test_step_results_are_checked():
  r = doctor.run_step("x", lambda ctx: ("MAYBE", "?", {}), doctor.Context(out=None))
  assert r.status == "FAIL" and "MAYBE" in r.detail


def test_bad_flags_and_existing_output(tmp_path):
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "doctor.json").write_text("{}")
  for args, msg in ((["--bogus"], "unrecognized arguments"), (["--out", str(tmp_path / "old")], "already holds")):
    r = subprocess.run([sys.executable, "-m", "fetchjax.doctor", *args], capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("fetchjax.doctor: error:") and msg in lines[0] and "Traceback" not in r.stderr


def test_version_notes():
  from fetchjax import doctor

  ok = {"jax": "0.10.2", "jaxlib": "0.10.2", "mujoco": doctor.PINNED_MUJOCO, "mujoco-mjx": doctor.PINNED_MUJOCO}
  assert doctor.version_notes(ok) == []
  assert doctor.version_notes({**ok, "jax": "0.11.2", "jaxlib": "0.11.2"}) == []
  notes = doctor.version_notes({**ok, "jax": "0.12.0", "jaxlib": "0.12.0"})
  assert len(notes) == 1 and "outside the tested series (0.10, 0.11.x)" in notes[0]
  assert "install matching versions" in doctor.version_notes({**ok, "jax": "0.11.2"})[0]
  assert "differ from the validated" in doctor.version_notes({**ok, "mujoco": "3.11.0"})[0]


def test_warp_step_matches_c_mujoco(tmp_path):
  """`--warp`: one MJX-Warp step (stock model) from reset, against the C MuJoCo backend's."""
  status, detail, data = doctor.check_warp(doctor.Context(tmp_path, True))
  assert status == "OK", detail
  assert data["obs_error_vs_c"] <= 1e-4 and not data["capacity"]["overflow"]
  assert [n for n, _ in doctor.steps(warp=True)][-1] == "warp"
