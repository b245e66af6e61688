"""pytest configuration shared by all tests."""

import os
import sys
from pathlib import Path

import pytest

# Make tests/helpers.py importable as ``helpers`` whatever pytest's import mode
# (``prepend`` adds this folder itself, ``importlib`` does not).
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

# JAX tests shard over a 2x4 mesh of host devices; XLA reads this flag when jax
# first starts a backend, so it is set before any test imports jax.
_DEVICES_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES_FLAG}".strip()


from helpers import skips_forbidden as _strict  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skip is a failure that says what was missing: compatibility tests that do
    not run prove nothing."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and _strict():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI=true, where everything this test needs must be "
                           f"present: {reason}")


#: What CI must be able to import (tests/test_suite_policy.py runs this file without them).
REQUIRED_IN_CI = ("tensorflow", "torch", "jax")


def pytest_configure(config):
    """In CI the framework tests (TensorFlow, torch, JAX) must run, never be skipped: say
    at once when one cannot be imported, rather than fail test after test."""
    import importlib

    if _strict():
        for name in REQUIRED_IN_CI:
            try:
                importlib.import_module(name)
            except ImportError as exc:  # pragma: no cover - CI misconfiguration
                raise RuntimeError(
                    f"CI is set but {name} is not importable; its tests would be skipped. "
                    f"Install the test extras: pip install -e '.[test]'") from exc
