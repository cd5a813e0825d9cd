"""A run directory never loses or silently corrupts work, and every user mistake or environment fault is one
line (issue 14): interrupts at chosen points, --resume --step, unwritable and full disks, kill + resume
consistency of TensorBoard and metrics.npz. Tiny cpu-backend PPO runs (4 envs x 64 steps) keep each to seconds."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fetchjax
from fetchjax import runs, train as fj_train
from tests.test_train_cli import TINY, UPDATE, _assert_same_runs, _tb_tags  # noqa: F401

NO_EVAL = ["--eval-episodes", "0", "--video-episodes", "0"]


def _train(*args):
  return fj_train.main([*TINY, *args])


def _meta(d):
  return json.loads((Path(d) / "meta.json").read_text())


@pytest.fixture(scope="module")
def full4(tmp_path_factory):
  """The uninterrupted reference: 2 seeds, 4 updates, checkpoint after every update."""
  d = tmp_path_factory.mktemp("full") / "r"
  assert _train("--seeds", "0-1", "--total-steps", str(4 * UPDATE), "--run-dir", str(d), *NO_EVAL) == 0
  return d


def _run4(d, *extra):
  return _train("--seeds", "0-1", "--total-steps", str(4 * UPDATE), "--run-dir", str(d), *NO_EVAL, *extra)


def _resume(d, *extra):
  return fj_train.main(["--resume", str(d), "--quiet", *NO_EVAL, *extra])


def _signal_self(times=1):
  for _ in range(times):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # let the handler run between the two


def test_ctrl_c_right_after_a_checkpointed_chunk(full4, tmp_path, monkeypatch, capsys):
  """Used to crash with StepAlreadyExistsError (exit 1, status left 'running', no resume hint)."""
  d = tmp_path / "r"
  real = runs.RunDir.save_checkpoint
  calls = []

  def save_then_ctrl_c(self, *a, **k):
    real(self, *a, **k)
    calls.append(a[0])
    if len(calls) == 1:
      _signal_self()

  monkeypatch.setattr(runs.RunDir, "save_checkpoint", save_then_ctrl_c)
  assert _run4(d, "--checkpoint-every", str(UPDATE)) == 130
  monkeypatch.setattr(runs.RunDir, "save_checkpoint", real)
  err = capsys.readouterr().err
  assert "Traceback" not in err and f"--resume {d}" in err and "interrupted: checkpoint at 256 steps" in err
  assert _meta(d)["status"] == "interrupted" and runs.RunDir(d).checkpoint_steps() == [UPDATE]
  assert _resume(d) == 0 and _meta(d)["status"] == "finished"
  _assert_same_runs(full4, d)


def test_second_ctrl_c_stops_at_once_and_keeps_the_last_finished_chunk(full4, tmp_path, monkeypatch, capsys):
  d = tmp_path / "r"
  real = fj_train.TensorBoard.log
  calls = []

  def log_then_ctrl_c_twice(self, *a, **k):
    calls.append(1)
    if len(calls) == 2:  # chunk 2 finished (not yet checkpointed: --checkpoint-every 4 updates)
      _signal_self(2)
    return real(self, *a, **k)

  monkeypatch.setattr(fj_train.TensorBoard, "log", log_then_ctrl_c_twice)
  assert _run4(d, "--checkpoint-every", str(4 * UPDATE)) == 130
  monkeypatch.setattr(fj_train.TensorBoard, "log", real)
  err = capsys.readouterr().err
  assert "Traceback" not in err and "stop requested" in err and "interrupted: checkpoint at 512 steps" in err
  assert runs.RunDir(d).checkpoint_steps() == [2 * UPDATE] and _meta(d)["status"] == "interrupted"
  assert _resume(d) == 0
  _assert_same_runs(full4, d)


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_compilation_removes_the_new_run(tmp_path, monkeypatch, capsys, presses):
  """Used to give a raw KeyboardInterrupt traceback and a directory that could neither resume nor be reused."""
  import jax

  d = tmp_path / "r"
  real = jax.stages.Lowered.compile

  def compile_with_ctrl_c(self, *a, **k):
    _signal_self(presses)
    return real(self, *a, **k)

  monkeypatch.setattr(jax.stages.Lowered, "compile", compile_with_ctrl_c)
  assert _run4(d) == 130
  monkeypatch.setattr(jax.stages.Lowered, "compile", real)
  err = capsys.readouterr().err
  assert "Traceback" not in err and "removed the new run directory" in err
  assert not d.exists()
  assert _run4(d) == 0  # the same command works again


def test_ctrl_c_during_compilation_of_a_resumed_run_keeps_it_resumable(full4, tmp_path, monkeypatch, capsys):
  import jax

  d = tmp_path / "r"
  assert _run4(d, "--pause-at", str(2 * UPDATE)) == 0
  real = jax.stages.Lowered.compile
  monkeypatch.setattr(jax.stages.Lowered, "compile", lambda self, *a, **k: (_signal_self(), real(self, *a, **k))[1])
  assert _resume(d) == 130
  monkeypatch.setattr(jax.stages.Lowered, "compile", real)
  assert _meta(d)["status"] == "interrupted" and runs.RunDir(d).checkpoint_steps()[-1] == 2 * UPDATE
  assert "--resume" in capsys.readouterr().err
  assert _resume(d) == 0
  _assert_same_runs(full4, d)


def test_ctrl_c_during_evaluation(tmp_path, monkeypatch, capsys):
  from fetchjax import eval as fj_eval

  def interrupted(*a, **k):
    raise KeyboardInterrupt

  monkeypatch.setattr(fj_eval, "evaluate", interrupted)
  d = tmp_path / "r"
  assert _train("--total-steps", str(UPDATE), "--run-dir", str(d), "--eval-episodes", "2") == 130
  err = capsys.readouterr().err
  assert "Traceback" not in err and f"python -m fetchjax.eval --run-dir {d}" in err
  assert _meta(d)["status"] == "trained" and runs.RunDir(d).checkpoint_steps() == [UPDATE]


def _cli(*args, cwd=None):
  env = dict(os.environ, PYTHONPATH=str(Path(fetchjax.__file__).parent.parent))
  return subprocess.Popen([sys.executable, "-m", "fetchjax.train", *args], stderr=subprocess.PIPE, text=True,
                          env=env, cwd=cwd)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_real_signal_to_the_cli(tmp_path, sig):
  """A real process, a real signal once training started: exit 130, no traceback, a true status, resumable."""
  d = tmp_path / "r"
  args = [a for a in TINY if a != "--quiet"]
  p = _cli(*args, "--total-steps", str(40 * UPDATE), "--run-dir", str(d), *NO_EVAL, "--checkpoint-every",
           str(UPDATE))
  lines = []
  for line in p.stderr:
    lines.append(line)
    if line.startswith("compiled"):
      time.sleep(1.0)
      p.send_signal(sig)
      break
  rest = p.stderr.read()
  rc = p.wait(timeout=120)
  err = "".join(lines) + rest
  assert rc == 130, err
  assert "Traceback" not in err and "--resume" in err, err
  meta = _meta(d)
  assert meta["status"] == "interrupted"
  step = runs.RunDir(d).checkpoint_steps()[-1]
  assert 0 < step < 40 * UPDATE
  steps, hist = runs.RunDir(d).load_metrics()
  assert steps[-1] == step and hist["success_rate"].shape[1] == step // UPDATE  # metrics match the checkpoint


def test_resume_from_an_older_step(full4, tmp_path, capsys):
  d = tmp_path / "r"
  assert _run4(d) == 0
  assert runs.RunDir(d).checkpoint_steps() == [3 * UPDATE, 4 * UPDATE]
  assert _resume(d, "--step", str(UPDATE)) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].endswith("no checkpoint at step 256; available: 768, 1024"), err
  assert _meta(d)["status"] == "finished"  # a refused resume changes nothing
  assert _resume(d, "--step", str(3 * UPDATE)) == 0
  aside = list((d / "checkpoints_set_aside").iterdir())
  assert len(aside) == 1 and aside[0].name.startswith(f"{4 * UPDATE}-superseded")  # kept, not deleted
  _assert_same_runs(full4, d)


def test_eval_step(full4, tmp_path, capsys):
  from fetchjax import eval as fj_eval

  assert fj_eval.main(["--run-dir", str(full4), "--n-episodes", "2", "--step", "99",
                       "--json-out", str(tmp_path / "e.json")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no checkpoint at step 99; available: 768, 1024" in err[0], err
  assert fj_eval.main(["--run-dir", str(full4), "--n-episodes", "2", "--step", str(3 * UPDATE),
                       "--json-out", str(tmp_path / "e.json")]) == 0
  assert json.loads((tmp_path / "e.json").read_text())["checkpoint_steps"] == 3 * UPDATE


def _one_error_line(p: subprocess.CompletedProcess) -> str:
  lines = [l for l in p.stderr.splitlines() if l.strip()]
  assert p.returncode not in (0, 130) and "Traceback" not in p.stderr, p.stderr
  assert len(lines) == 1 and "error:" in lines[0], p.stderr
  return lines[0]


def _run_cli(*args):
  env = dict(os.environ, PYTHONPATH=str(Path(fetchjax.__file__).parent.parent))
  return subprocess.run([sys.executable, "-m", "fetchjax.train", *TINY, *args], capture_output=True, text=True,
                        env=env, timeout=300)


def test_unwritable_run_dir_is_one_line():
  line = _one_error_line(_run_cli("--total-steps", str(UPDATE), "--run-dir", "/proc/fetchjax-test/run"))
  assert "/proc/fetchjax-test/run" in line


def test_read_only_run_dir_is_one_line(tmpfs):
  mnt = tmpfs("1m", readonly=True)
  line = _one_error_line(_run_cli("--total-steps", str(UPDATE), "--run-dir", str(mnt / "run")))
  assert str(mnt / "run") in line and "Read-only file system" in line


def test_full_disk_is_one_line_and_keeps_what_was_saved(tmpfs):
  """Used to print 909 lines and 96 tracebacks with the cause at line 19."""
  mnt = tmpfs("160k")
  d = mnt / "run"
  p = _run_cli("--total-steps", str(40 * UPDATE), "--run-dir", str(d), *NO_EVAL, "--checkpoint-every", str(UPDATE))
  line = _one_error_line(p)
  assert "No space left on device" in line
  rd = runs.RunDir(d)
  if rd.checkpoint_steps():  # whatever was saved before the disk filled up is intact
    assert all(rd.checkpoints().check(s) is None for s in rd.checkpoint_steps())


def test_kill_then_resume_keeps_tensorboard_and_metrics_consistent(full4, tmp_path):
  """A process killed after logging chunk 3 but before checkpointing it left TensorBoard events and a
  metrics.npz column beyond the checkpoint; the resumed run has each step once, as the uninterrupted run."""
  from tensorboardX import SummaryWriter

  d = tmp_path / "r"
  assert _run4(d, "--pause-at", str(2 * UPDATE)) == 0
  for seed in (0, 1):  # what the killed process had logged after the checkpoint
    w = SummaryWriter(str(runs.RunDir(d).tb_dir(seed)))
    w.add_scalar("rollout/success_rate", 0.123, 3 * UPDATE)
    w.add_scalar("time/iterations", 3, 3 * UPDATE)
    w.close()
  steps, hist = runs.RunDir(d).load_metrics()
  runs.RunDir(d).save_metrics(np.append(steps, 3 * UPDATE), {k: np.concatenate([v, v[:, -1:]], 1)
                                                              for k, v in hist.items()})
  assert _resume(d) == 0
  _assert_same_runs(full4, d)
  for seed in (0, 1):
    ours, ref = _scalars(runs.RunDir(d).tb_dir(seed)), _scalars(runs.RunDir(full4).tb_dir(seed))
    assert set(ours) == set(ref)
    for tag in ours:
      assert [s for s, _ in ours[tag]] == [s for s, _ in ref[tag]], tag  # each step once, in order
      if not tag.startswith("time/"):
        assert [v for _, v in ours[tag]] == pytest.approx([v for _, v in ref[tag]], rel=1e-6), tag


def test_resume_takes_the_metrics_history_from_the_checkpoint(full4, tmp_path):
  """The checkpoint carries the metrics history: a run directory whose metrics.npz was lost resumes to the same
  metrics as the uninterrupted run."""
  d = tmp_path / "r"
  assert _run4(d, "--pause-at", str(2 * UPDATE)) == 0
  (d / runs.METRICS).unlink()
  assert _resume(d) == 0
  _assert_same_runs(full4, d)


def _scalars(seed_dir) -> dict:
  from tensorboardX.proto import event_pb2

  out = {}
  for f in sorted(Path(seed_dir).glob("events.*")):
    for rec in fj_train.read_events(f):
      ev = event_pb2.Event.FromString(rec)
      for v in ev.summary.value:
        out.setdefault(v.tag, []).append((ev.step, v.simple_value))
  return {k: sorted(v) for k, v in out.items()}


def test_newcomer_output(tmp_path):
  """No third-party import notices; a rounded step count is said once; meta.json's command re-runs."""
  args = [a for a in TINY if a != "--quiet"]
  env = dict(os.environ, PYTHONPATH=str(Path(fetchjax.__file__).parent.parent))
  p = subprocess.run([sys.executable, "-m", "fetchjax.train", *args, "--total-steps", "300", "--run-dir",
                      str(tmp_path / "r"), *NO_EVAL], capture_output=True, text=True, env=env, timeout=300)
  assert p.returncode == 0, p.stderr
  assert "Adroit" not in p.stderr and "Traceback" not in p.stderr
  notes = [l for l in p.stderr.splitlines() if l.startswith("note:")]
  assert len(notes) == 1 and "300 steps" in notes[0] and "512" in notes[0], p.stderr
  meta = _meta(tmp_path / "r")
  assert meta["command"].startswith("python -m fetchjax.train --n-envs 4") and "--total-steps 300" in meta["command"]
  assert meta["compile_cache"]["enabled"] in (True, False) and "dir" in meta["compile_cache"]


def test_tensorboard_writers_in_the_same_second_keep_each_others_events(tmp_path):
  """tensorboardX names event files by the second and opens them with "wb": a resume started within a second of
  the previous writer used to truncate that writer's events (seen as a lost history in a quick pause/resume)."""
  rd = runs.RunDir(tmp_path / "r")
  first = fj_train.TensorBoard(rd, [0], {"success_rate": "rollout/success_rate"})
  first.log(np.array([1]), {"success_rate": np.array([[0.5]])}, {}, 0)
  first.close()
  second = fj_train.TensorBoard(rd, [0], {"success_rate": "rollout/success_rate"}, resume_step=1)
  second.log(np.array([2]), {"success_rate": np.array([[0.75]])}, {}, 1)
  second.close()
  assert _scalars(rd.tb_dir(0))["rollout/success_rate"] == [(1, 0.5), (2, 0.75)]
