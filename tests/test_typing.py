"""The public API as type checkers see it: mypy checks tests/typing/public_api.py, which
states the types users get (``with tfshard.open(p) as c`` is a Checkpoint, reads are
ndarrays, errors carry typed attributes...)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_public_api_types(tmp_path):
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (pip install "
                              "-e '.[test]' brings it)")
    stdout, stderr, status = api.run([
        "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache"),
        "--no-incremental", "--follow-imports=silent", "--show-error-codes",
        str(ROOT / "tests" / "typing" / "public_api.py")])
    assert status == 0, stdout + stderr
