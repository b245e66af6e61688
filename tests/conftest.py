"""pytest configuration shared by all tests."""

import sys
from pathlib import Path

# Make tests/helpers.py importable as ``helpers`` whatever pytest's import mode
# (``prepend`` adds this folder itself, ``importlib`` does not).
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


def pytest_configure(config):
    """In CI the TensorFlow compatibility tests must run, never be skipped."""
    import os

    if os.environ.get("CI"):
        try:
            import tensorflow  # noqa: F401
        except ImportError as exc:  # pragma: no cover - CI misconfiguration
            raise RuntimeError(
                "CI is set but TensorFlow is not importable; the compatibility tests would be "
                "skipped. Install the test extras: pip install -e '.[test]'") from exc
