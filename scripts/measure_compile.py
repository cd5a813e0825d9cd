"""Cold vs warm compile of the train program per backend, through the real CLI (docs/PERFORMANCE.md).

    python scripts/measure_compile.py [--backends cpu,mjx] [--algos ppo,sac] [--out compile.json]

Each (algo, backend) runs `python -m fetchjax.train` twice in fresh processes with one new, empty persistent
compilation cache: the first run compiles cold and fills the cache, the second loads the program from it. The
train program's tracing and XLA times come from each run's meta.json; the whole command's wall time is measured
here. Tiny configs (the tests' sizes): what is measured is compilation, not training.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = {
    "ppo": ["--algo", "ppo", "--n-envs", "4", "--set", "n_steps=64", "--set", "batch_size=128", "--set", "n_epochs=1",
            "--total-steps", "512"],
    "sac": ["--algo", "sac", "--her", "--env", "FetchReach-v4", "--n-envs", "2", "--set", "buffer_size=1000",
            "--set", "batch_size=32", "--set", "learning_starts=100", "--set", "hidden_sizes=16,16",
            "--total-steps", "300"],
}


def one(algo: str, backend: str, cache: Path, run_dir: Path) -> dict:
  cmd = [sys.executable, "-m", "fetchjax.train", *TINY[algo], "--backend", backend, "--run-dir", str(run_dir),
         "--eval-episodes", "0", "--video-episodes", "0", "--quiet", "--compile-cache", str(cache)]
  t0 = time.time()
  subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
  wall = time.time() - t0
  meta = json.loads((run_dir / "meta.json").read_text())
  return dict(wall_s=round(wall, 1), compile_s=round(meta["compile_time_sec"], 1),
              trace_s=round(meta["trace_time_sec"], 1), xla_s=round(meta["compile_time_sec"] - meta["trace_time_sec"], 1))


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--backends", default="cpu,mjx")
  p.add_argument("--algos", default="ppo,sac")
  p.add_argument("--out", default=None)
  a = p.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for algo in a.algos.split(","):
      for backend in a.backends.split(","):
        cache = Path(tmp) / f"cache_{algo}_{backend}"
        cold = one(algo, backend, cache, Path(tmp) / f"{algo}_{backend}_cold")
        warm = one(algo, backend, cache, Path(tmp) / f"{algo}_{backend}_warm")
        rows.append(dict(algo=algo, backend=backend, cold=cold, warm=warm))
        print(f"{algo:4s} {backend:4s} cold: compile {cold['compile_s']:6.1f} s (trace {cold['trace_s']:5.1f}, XLA "
              f"{cold['xla_s']:6.1f}), command {cold['wall_s']:6.1f} s | warm: compile {warm['compile_s']:6.1f} s "
              f"(trace {warm['trace_s']:5.1f}, XLA {warm['xla_s']:6.1f}), command {warm['wall_s']:6.1f} s", flush=True)
  if a.out:
    import jax

    Path(a.out).write_text(json.dumps(dict(jax=jax.__version__, date=time.strftime("%Y-%m-%d"), rows=rows), indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
