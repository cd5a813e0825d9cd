"""fetchjax never sets an XLA flag the installed jaxlib does not know (jaxlib >= 0.11 aborts on one)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fetchjax
from fetchjax import xla_flags

OLD_FLAG = "--xla_cpu_use_fusion_emitters=false"


@pytest.mark.parametrize("version, expected", [
    ("0.10.2", (OLD_FLAG,)), ("0.10.0", (OLD_FLAG,)), ("0.9.2", (OLD_FLAG,)), ("0.6.0", (OLD_FLAG,)),
    ("0.11.0", ()), ("0.11.2", ()), ("0.12.0.1", ()), ("1.0", ()), ("0.11.0.dev20260101", ()),
    (None, ()), ("", ()), ("garbage", ()),
])
def test_flags_are_a_function_of_the_jaxlib_version(version, expected):
  assert xla_flags.cpu_flags_for(version) == expected


def test_parse_version():
  assert xla_flags.parse_version("0.10.2") == (0, 10, 2)
  assert xla_flags.parse_version("0.12.0.1") == (0, 12, 0, 1)
  assert xla_flags.parse_version("0.11.0rc1") == (0, 11, 0)
  assert xla_flags.parse_version(None) is None


def test_user_flags_are_kept_and_never_overridden():
  assert xla_flags.merged("", (OLD_FLAG,)) == OLD_FLAG
  assert xla_flags.merged("--xla_force_host_platform_device_count=2", (OLD_FLAG,)) == \
      f"--xla_force_host_platform_device_count=2 {OLD_FLAG}"
  mine = "--xla_cpu_use_fusion_emitters=true"
  assert xla_flags.merged(mine, (OLD_FLAG,)) == mine
  assert xla_flags.merged("--a=1", ()) == "--a=1"
  assert xla_flags.merged("", ()) == ""


def _import_with_faked_jaxlib(version: str, xla_flags_env: str | None) -> subprocess.CompletedProcess:
  """Imports fetchjax in a fresh interpreter whose package metadata reports `version` for jaxlib, and prints
  XLA_FLAGS afterwards (JAX is not started: the flags are what matters)."""
  code = (
      "import importlib.metadata as m\n"
      "real = m.version\n"
      f"m.version = lambda name: {version!r} if name == 'jaxlib' else real(name)\n"
      "import os, fetchjax\n"
      "print(repr(os.environ.get('XLA_FLAGS')))\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if xla_flags_env is not None:
    env["XLA_FLAGS"] = xla_flags_env
  env["PYTHONPATH"] = str(Path(fetchjax.__file__).parent.parent)
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_import_with_a_newer_jaxlib_sets_no_flag():
  r = _import_with_faked_jaxlib("0.11.2", None)
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip() == "None"
  r = _import_with_faked_jaxlib("0.12.0", "--xla_force_host_platform_device_count=2")
  assert r.stdout.strip() == repr("--xla_force_host_platform_device_count=2")


def test_import_with_jaxlib_0_10_sets_the_cpu_flag():
  r = _import_with_faked_jaxlib("0.10.2", None)
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip() == repr(OLD_FLAG)


def test_the_installed_jaxlib_accepts_the_flags_fetchjax_sets():
  """The real thing: a fresh interpreter imports fetchjax and runs a JAX computation (jaxlib >= 0.11 aborted
  here with 'Unknown flag in XLA_FLAGS' before the fix)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = str(Path(fetchjax.__file__).parent.parent)
  r = subprocess.run([sys.executable, "-c", "import fetchjax, jax.numpy as jnp; print(float(jnp.ones(3).sum()))"],
                     capture_output=True, text=True, env=env, timeout=120)
  assert r.returncode == 0 and r.stdout.strip() == "3.0", r.stderr[-2000:]
