"""The ``tfshard`` command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tfshard import cli

GOLDEN = Path(__file__).parent / "data" / "golden"


def run(*args):
    return subprocess.run([sys.executable, "-m", "tfshard", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_ls_table(capsys):
    assert cli.main(["ls", str(GOLDEN / "partitioned")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "DTYPE", "SHAPE", "SIZE"]
    rows = {line.split()[0]: line for line in out[1:-1]}
    assert set(rows) == {"cols", "dense/bias", "dense/kernel", "global_step"}
    assert "float32" in rows["dense/kernel"] and "[10, 4]" in rows["dense/kernel"]
    assert out[-1].startswith("4 tensors, 504 B in 1 shard(s)")


def test_ls_json_patterns_and_sort(capsys):
    assert cli.main(["ls", str(GOLDEN / "sharded" / "model.ckpt.index"), "--json", "[ab]",
                     "--sort", "size"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["num_shards"] == 2
    assert [t["name"] for t in doc["tensors"]] == ["b", "a"]
    assert doc["tensors"][0] == {"name": "b", "dtype": "int64", "shape": [2], "nbytes": 16,
                                 "shard": 1, "offset": 0, "partitioned": False}
    assert doc["total_bytes"] == 24


def test_exit_codes_and_help(tmp_path):
    missing = run("ls", tmp_path / "nope")
    assert missing.returncode == 1
    assert "tfshard ls: error:" in missing.stderr and "nope.index does not exist" in missing.stderr
    assert run("ls").returncode == 2
    assert run("frobnicate").returncode == 2
    help_ = run("ls", "--help")
    assert help_.returncode == 0 and "examples:" in help_.stdout and "--json" in help_.stdout


def test_corrupt_checkpoint_exits_1(tmp_path):
    (tmp_path / "bad.index").write_bytes(b"\x00" * 100)
    proc = run("ls", tmp_path / "bad")
    assert proc.returncode == 1 and "bad magic number" in proc.stderr
