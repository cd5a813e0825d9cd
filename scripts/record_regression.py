"""Fixed-seed regression runs: record what short PPO, SAC+HER and TD3+HER runs produce today, so that a refactor
can prove it changed no bit (tests/test_regression_fixed_seed.py compares against the recording).

    python scripts/record_regression.py                 # record every case into tests/data/regression_<case>.npz
    python scripts/record_regression.py --only ppo      # one case
    python scripts/record_regression.py --check         # compare only (what the test does), write nothing

Record on the code whose behaviour is the reference (before a refactor), commit the files, then refactor: the
test must stay green. Each case builds its runner through the public API (`make_runner(config, env)`), as the
training CLI does: `jit(vmap(init))` over two seeds, then one jitted `run` of a few iterations. A recording holds
  - for every leaf of the final runner state (parameters, optimiser states, replay buffer, env state, PRNG keys,
    counters), keyed by its pytree path: dtype, shape and the sha256 of its bytes;
  - the whole metrics history as arrays (`metric/<name>`);
  - the software and CPU it was made on (`fingerprint`): XLA:CPU's results depend on the jaxlib version and on
    the vector instructions of the host, so a comparison is only meaningful on the same ones.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
# The CPU features XLA:CPU's code generation (vector width, FMA) depends on.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16",
             "avx512_fp16", "avx_vnni", "amx_bf16", "amx_tile")


def _ppo():
  from fetchjax.agents import ppo
  from fetchjax.envs import EnvConfig

  # normalize_obs on: the running statistics are part of the state; 2 epochs x 2 minibatches; 3 updates
  config = ppo.PPOConfig(n_steps=64, batch_size=128, n_epochs=2, hidden_sizes=(32, 32), total_timesteps=3 * 256,
                         normalize_obs=True)
  return ppo, config, EnvConfig("FetchReachDense-v4", num_envs=4, backend="cpu")


def _sac_her():
  from fetchjax.agents import sac
  from fetchjax.envs import EnvConfig

  # warm-up of 1 episode, then 1 gradient step per vectorised step with HER relabelling and a learned alpha; the
  # buffer (3 episodes per env) wraps around
  config = sac.SACConfig(buffer_size=600, batch_size=32, hidden_sizes=(32, 32), learning_starts=200, gamma=0.95,
                         her=True, total_timesteps=4 * 200)
  return sac, config, EnvConfig("FetchPush-v4", num_envs=4, backend="cpu")


def _td3_her():
  from fetchjax.agents import td3
  from fetchjax.envs import EnvConfig

  # action noise, target smoothing and the delayed actor update (policy_delay 2) all draw on the state
  config = td3.TD3Config(buffer_size=1_000, batch_size=32, hidden_sizes=(32, 32), learning_starts=100, gamma=0.95,
                         her=True, action_noise_sigma=0.1, total_timesteps=3 * 100)
  return td3, config, EnvConfig("FetchReach-v4", num_envs=2, backend="cpu")


CASES = {"ppo": _ppo, "sac_her": _sac_her, "td3_her": _td3_her}
# Leaves a refactor moved without changing a bit: recorded path prefix -> path now. The digests must still match,
# so a rename is not a way to hide a change; re-recording drops the need for an entry.
RENAMED = {
    ".buffer.observation": ".buffer.obs['observation']",      # issue 13: the HER buffer stores an obs pytree
    ".buffer.achieved_goal": ".buffer.obs['achieved_goal']",
}
SEEDS = (0, 1)


def run_case(name: str):
  """(final runner state [seeds, ...], metrics {name: [seeds, iterations]}) of a case, as numpy."""
  import fetchjax  # noqa: F401  (XLA flags before JAX initialises)
  import jax
  import numpy as np

  module, config, env_config = CASES[name]()
  env = env_config.make()
  init, run = module.make_runner(config, env)
  keys = jax.numpy.stack([jax.random.PRNGKey(s) for s in SEEDS])
  runner = jax.jit(jax.vmap(init))(keys)
  runner, metrics = jax.jit(jax.vmap(lambda r: run(r, config.num_updates(env.num_envs))))(runner)
  return jax.tree.map(np.asarray, runner), {k: np.asarray(v) for k, v in metrics.items()}


def leaves(tree) -> dict[str, "object"]:
  """{pytree key path: leaf} of a runner state (PRNG key arrays as their raw key data)."""
  import jax

  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    out[jax.tree_util.keystr(path)] = leaf
  return out


def digest(leaf) -> str:
  import numpy as np

  a = np.ascontiguousarray(np.asarray(leaf))
  return f"{a.dtype.str}{list(a.shape)}:{hashlib.sha256(a.tobytes()).hexdigest()}"


def fingerprint() -> dict[str, str]:
  """What XLA:CPU's bits depend on besides the code: library versions and the host's vector instructions."""
  from importlib import metadata

  versions = {p: metadata.version(p) for p in ("jax", "jaxlib", "numpy", "mujoco", "flax", "optax")}
  flags = set()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("flags"):
        flags = set(line.split(":", 1)[1].split())
        break
  except OSError:
    pass
  import jax

  return {**versions, "python": platform.python_version(), "machine": platform.machine(),
          "isa": " ".join(f for f in ISA_FLAGS if f in flags), "jax_backend": jax.default_backend()}


def path_of(name: str) -> Path:
  return DATA / f"regression_{name}.npz"


def record(name: str, runner, metrics) -> Path:
  import numpy as np

  table = {k: digest(v) for k, v in leaves(runner).items()}
  out = path_of(name)
  out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(out, leaf_paths=np.array(list(table)), leaf_digests=np.array(list(table.values())),
                      fingerprint=np.array(json.dumps(fingerprint(), sort_keys=True)),
                      **{f"metric/{k}": v for k, v in metrics.items()})
  return out


def renamed(path: str) -> str:
  """A recorded leaf path as the code names that leaf now (RENAMED)."""
  for old, new in RENAMED.items():
    if path == old or path.startswith(old + ".") or path.startswith(old + "["):
      return new + path[len(old):]
  return path


def load(name: str) -> tuple[dict[str, str], dict, dict]:
  """(leaf digests by path, as the code names the leaves now; metrics; fingerprint) of a recording."""
  import numpy as np

  with np.load(path_of(name)) as f:
    table = {renamed(p): d for p, d in zip(f["leaf_paths"].tolist(), f["leaf_digests"].tolist())}
    metrics = {k[len("metric/"):]: f[k] for k in f.files if k.startswith("metric/")}
    return table, metrics, json.loads(str(f["fingerprint"]))


def differences(name: str, runner, metrics) -> list[str]:
  """One line per leaf or metric that differs from the recording (empty: bit-identical)."""
  import numpy as np

  table, rec_metrics, _ = load(name)
  now = {k: digest(v) for k, v in leaves(runner).items()}
  out = [f"{name}: state leaf {k} missing (recorded {table[k]})" for k in table if k not in now]
  out += [f"{name}: state leaf {k} not in the recording (now {now[k]})" for k in now if k not in table]
  out += [f"{name}: state leaf {k} differs: recorded {table[k]}, now {now[k]}"
          for k in table if k in now and now[k] != table[k]]
  out += [f"{name}: metric {k} missing" for k in rec_metrics if k not in metrics]
  out += [f"{name}: metric {k} not in the recording" for k in metrics if k not in rec_metrics]
  for k in sorted(set(rec_metrics) & set(metrics)):
    a, b = rec_metrics[k], metrics[k]
    if a.dtype != b.dtype or a.shape != b.shape:
      out.append(f"{name}: metric {k} is {b.dtype}{list(b.shape)}, recorded {a.dtype}{list(a.shape)}")
    elif a.tobytes() != b.tobytes():
      first = np.argwhere(~((a == b) | (np.isnan(a) & np.isnan(b))))
      where = tuple(int(i) for i in first[0]) if len(first) else "bits of a NaN"
      at = f"at {where}: recorded {a[where]!r}, now {b[where]!r}" if len(first) else f"({where})"
      out.append(f"{name}: metric {k} differs {at}")
  return out


def fingerprint_mismatch(name: str) -> list[str]:
  """The fingerprint entries of the recording that differ here (a comparison elsewhere means nothing)."""
  _, _, rec = load(name)
  now = fingerprint()
  return [f"{k} {rec.get(k)!r} recorded, {now.get(k)!r} here" for k in sorted(set(rec) | set(now))
          if rec.get(k) != now.get(k)]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--only", default=None, help=f"comma-separated cases (default all: {', '.join(CASES)})")
  p.add_argument("--check", action="store_true", help="compare with the recordings instead of writing them")
  a = p.parse_args(argv)
  names = a.only.split(",") if a.only else list(CASES)
  unknown = [n for n in names if n not in CASES]
  if unknown:
    p.error(f"unknown case(s) {unknown}; available: {', '.join(CASES)}")
  status = 0
  for name in names:
    t0 = time.time()
    runner, metrics = run_case(name)
    if a.check:
      diff = differences(name, runner, metrics)
      print(f"{name}: {'bit-identical' if not diff else f'{len(diff)} difference(s)'} ({time.time() - t0:.1f} s)")
      for line in diff[:20]:
        print("  " + line)
      status |= bool(diff)
    else:
      out = record(name, runner, metrics)
      print(f"{name}: recorded {len(leaves(runner))} state leaves and {len(metrics)} metrics into "
            f"{out.relative_to(ROOT)} ({time.time() - t0:.1f} s)")
  return status


if __name__ == "__main__":
  sys.exit(main())
