"""In CI a missing dependency must fail, not skip (issue #17).

With the environment variable FETCHJAX_REQUIRE_ALL=1 (set by `.ci/run` and the Docker image) every skip becomes
a failure: a test that skips at setup or in its body (e.g. no headless OpenGL for the rendering tests) and a test
module skipped at collection (e.g. `pytest.importorskip("stable_baselines3")` without the `parity` extra). The
only skips left alone are those whose reason starts with DEVICE_SKIP ("not on this device:"), for behaviour that
legitimately exists only on some devices. Without the variable, skips stay skips (a developer machine without
OpenGL or SB3 can still run the rest).

The hooks are imported into tests/conftest.py.
"""
from __future__ import annotations

import os

import pytest

ENV_VAR = "FETCHJAX_REQUIRE_ALL"
DEVICE_SKIP = "not on this device:"


def require_all() -> bool:
  return os.environ.get(ENV_VAR, "").strip() not in ("", "0", "false", "False", "no")


def _reason(longrepr) -> str:
  if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, lineno, "Skipped: reason")
    return str(longrepr[2])
  return str(longrepr)


def _forbidden(report) -> bool:
  if not (report.skipped and require_all()) or hasattr(report, "wasxfail"):
    return False
  reason = _reason(report.longrepr)
  return DEVICE_SKIP not in reason


def _fail(report, what: str) -> None:
  reason = _reason(report.longrepr)
  report.outcome = "failed"
  report.longrepr = (f"{what} skipped, but {ENV_VAR}=1 (CI): a missing dependency must fail, not skip.\n"
                     f"skip reason: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  if _forbidden(report):
    _fail(report, f"test {item.nodeid}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
  outcome = yield
  report = outcome.get_result()
  if _forbidden(report):
    _fail(report, f"collection of {collector.nodeid}")
