"""Fixed-seed regression: short PPO, SAC+HER and TD3+HER runs on the cpu backend must give, bit for bit, the final
runner state (parameters, optimiser states, replay buffer, env state, PRNG keys, counters) and the metrics history
recorded in tests/data/regression_<case>.npz. A refactor that is meant to change no behaviour keeps this green; a
change of algorithm math (a learning rate, a loss term, the order of PRNG splits) fails it, naming the leaf.

The recordings are written only by `python scripts/record_regression.py` (the cases are defined there), never by
this test: re-record deliberately, on the reference code, when behaviour is meant to change. XLA:CPU's bits
depend on the jaxlib version and the host's vector instructions, so on other software or another CPU (or
another JAX device) the comparison is skipped with the differences named; re-record there before refactoring.
~10 s per case on 2 cores."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from skip_policy import DEVICE_SKIP

ROOT = Path(__file__).resolve().parent.parent


def _script():
  spec = importlib.util.spec_from_file_location("record_regression", ROOT / "scripts" / "record_regression.py")
  mod = importlib.util.module_from_spec(spec)
  sys.modules["record_regression"] = mod
  spec.loader.exec_module(mod)
  return mod


rr = _script()


@pytest.mark.parametrize("case", list(rr.CASES))
def test_fixed_seed_run_is_bit_identical(case):
  assert rr.path_of(case).exists(), f"no recording {rr.path_of(case)}: run python scripts/record_regression.py"
  mismatch = rr.fingerprint_mismatch(case)
  if mismatch:
    pytest.skip(f"{DEVICE_SKIP} recorded elsewhere ({'; '.join(mismatch)}); bit-exactness holds only on the same "
                "software and CPU: record here with python scripts/record_regression.py before refactoring")
  runner, metrics = rr.run_case(case)
  diff = rr.differences(case, runner, metrics)
  assert not diff, f"{len(diff)} difference(s) from the recording:\n" + "\n".join(diff[:40])


def test_the_comparison_names_the_leaf(monkeypatch):
  """A changed or missing state leaf and a changed metric are each reported by name (checked on doctored copies of
  the recorded values, without running anything)."""
  table, metrics, _ = rr.load("ppo")
  changed = next(k for k in table if "log_std" in k and "opt_state" not in k)
  dropped = next(iter(table))
  now = {k: ("changed" if k == changed else d) for k, d in table.items() if k != dropped}
  monkeypatch.setattr(rr, "leaves", lambda runner: runner)  # the "runner" is already {path: digest}
  monkeypatch.setattr(rr, "digest", lambda leaf: leaf)
  bad = dict(metrics, ep_rew_mean=metrics["ep_rew_mean"] * 1.001)
  diff = rr.differences("ppo", now, bad)
  text = "\n".join(diff)
  assert f"state leaf {changed} differs" in text and f"state leaf {dropped} missing" in text
  assert "metric ep_rew_mean differs at (0, 0)" in text and len(diff) == 3, text
