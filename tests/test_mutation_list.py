"""scripts/mutation_check.py's curated mutations must stay applicable: each original snippet occurs exactly once in
today's source and the mutated file compiles. A refactor that moves a snippet fails here, so the list (and the
tests it names) gets updated instead of silently protecting nothing. Running the mutations themselves takes
~30-45 min: `python scripts/mutation_check.py`."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script():
  spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "scripts" / "mutation_check.py")
  mod = importlib.util.module_from_spec(spec)
  sys.modules["mutation_check"] = mod  # dataclasses look their module up there
  spec.loader.exec_module(mod)
  return mod


def test_every_mutation_applies_and_names_existing_tests():
  mc = _script()
  assert mc.check_list(ROOT, mc.MUTATIONS) == []
  for m in mc.MUTATIONS:
    for f in mc.test_files(m):
      assert (ROOT / f).exists() or m.needs, f"{m.id}: {f} does not exist (and no other issue is named to add it)"
  covered = " ".join(m.id for m in mc.MUTATIONS)
  for behaviour in ("reward", "success", "autoreset", "no_dt", "physics_reset", "bootstrap", "logprob", "gae",
                    "her_future", "her_reward", "sac_target", "resume", "interrupt", "td3_no_policy_delay"):
    assert behaviour in covered, behaviour


@pytest.mark.slow
def test_every_mutation_is_killed():
  """The whole mutation check (~30-45 min on 2 CPU cores): every curated bug fails at least one of its tests."""
  r = subprocess.run([sys.executable, str(ROOT / "scripts" / "mutation_check.py")], cwd=ROOT, capture_output=True,
                     text=True, timeout=4 * 3600)
  print(r.stdout[-6000:])
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
