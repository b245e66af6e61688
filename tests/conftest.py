"""pytest configuration shared by all tests."""

import os
import sys
from pathlib import Path

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


def pytest_configure(config):
    """In CI the tests that need TensorFlow, torch or jax must run, never be skipped."""
    import importlib.util

    if os.environ.get("CI"):
        try:
            import tensorflow  # noqa: F401
        except ImportError as exc:  # pragma: no cover - CI misconfiguration
            raise RuntimeError(
                "CI is set but TensorFlow is not importable; the compatibility tests would be "
                "skipped. Install the test extras: pip install -e '.[test]'") from exc
        # Found, not imported: the sanitizer pass runs with ASan preloaded, and these
        # frameworks load native libraries of their own.
        for module in ("torch", "jax"):
            if importlib.util.find_spec(module) is None:  # pragma: no cover
                raise RuntimeError(
                    f"CI is set but {module} is not installed; the tests that need it would "
                    f"be skipped. Install the test extras: pip install -e '.[test]'")
