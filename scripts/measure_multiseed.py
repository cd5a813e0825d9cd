"""Cost of N vmapped seeds vs 1 seed with the real CLI, interleaved to bracket machine noise.

  python scripts/measure_multiseed.py --seeds 4 --total-steps 500000 --out-dir /tmp/multiseed

Runs `python -m fetchjax.train` for 1 seed, N seeds, then 1 seed again (eval 100 episodes, no video) and
prints one JSON line: training wall-clock (compile excluded) and compile time of each, the ratio N-seed /
mean(1-seed), and each run's eval success.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def run(seeds: str, steps: int, run_dir: Path) -> dict:
  cmd = [sys.executable, "-m", "fetchjax.train", "--seeds", seeds, "--total-steps", str(steps), "--run-dir",
         str(run_dir), "--video-episodes", "0", "--quiet"]
  subprocess.run(cmd, check=True)
  meta = json.loads((run_dir / "meta.json").read_text())
  ev = json.loads((run_dir / "eval.json").read_text())
  return dict(seeds=seeds, train_s=meta["training_time_sec"], compile_s=meta["compile_time_sec"],
              env_steps_per_s=meta["steps_per_sec"], success=[s["aggregate"]["success_rate"] for s in ev["per_seed"]])


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seeds", type=int, default=4)
  p.add_argument("--total-steps", type=int, default=500_000)
  p.add_argument("--out-dir", default="multiseed_runs")
  a = p.parse_args()
  out = Path(a.out_dir)
  if out.exists() and any(out.iterdir()):
    print(f"error: {out} is not empty", file=sys.stderr)
    return 2
  one_a = run("0", a.total_steps, out / "one_a")
  many = run(f"0-{a.seeds - 1}", a.total_steps, out / f"seeds{a.seeds}")
  one_b = run("0", a.total_steps, out / "one_b")
  one = (one_a["train_s"] + one_b["train_s"]) / 2
  print(json.dumps(dict(total_steps_per_seed=a.total_steps, one_seed=[one_a, one_b], n_seeds=many,
                        ratio=many["train_s"] / one, ratio_incl_compile=(many["train_s"] + many["compile_s"]) / (
                            one + (one_a["compile_s"] + one_b["compile_s"]) / 2))))
  return 0


if __name__ == "__main__":
  sys.exit(main())
