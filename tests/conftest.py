"""pytest configuration shared by all tests."""

import sys
from pathlib import Path

# Make tests/helpers.py importable as ``helpers`` whatever pytest's import mode
# (``prepend`` adds this folder itself, ``importlib`` does not).
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


def pytest_configure(config):
    """In CI the framework tests (TensorFlow, torch, JAX) must run, never be skipped."""
    import importlib
    import os

    if os.environ.get("CI"):
        for name in ("tensorflow", "torch", "jax"):
            try:
                importlib.import_module(name)
            except ImportError as exc:  # pragma: no cover - CI misconfiguration
                raise RuntimeError(
                    f"CI is set but {name} is not importable; its tests would be skipped. "
                    f"Install the test extras: pip install -e '.[test]'") from exc
