"""What importing tfshard costs: no optional framework is imported by ``import tfshard``
or by the command line's start, only by the modules named after them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "torch", "jax", "fsspec", "safetensors", "tqdm")


def imported_after(code: str) -> list:
    probe = (f"import contextlib, io, json, sys\n"
             f"with contextlib.redirect_stdout(io.StringIO()):\n    {code}\n"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & "
             f"set({HEAVY!r}))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120, cwd=ROOT).stdout
    return json.loads(out)


@pytest.mark.parametrize("code", [
    "import tfshard",
    "import tfshard; tfshard.save, tfshard.convert, tfshard.CheckpointManager",
    "import tfshard.cli, tfshard.formats, tfshard.conversion, tfshard.tree, tfshard.stats",
    "import tfshard.cli; tfshard.cli.main(['ls', 'tests/data/golden/partitioned'])",
])
def test_no_framework_is_imported(code):
    assert imported_after(code) == []
