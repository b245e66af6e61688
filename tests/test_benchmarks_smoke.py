"""Smoke tests for the scripts in benchmarks/: each runs on tiny inputs and prints its table.

They check that the scripts run and report every case, not how fast anything is.  With tfshard
importable every row must have been measured (PASS or MISS, never SKIP, ERROR or WRONG: a
WRONG row means tfshard returned, or wrote, something other than what TensorFlow reads; rows
without a target say INFO instead).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
READ_CASES = ("open_list", "read_all_tf", "read_all_st", "read_rows", "cli_ls", "memory",
              "memory_keys")
WRITE_CASES = ("bert_tf", "bert_st", "bert_disk", "small_tf", "sharded", "overwrite")
WRITE_INFO_CASES = {"sharded", "overwrite"}  # measured for information, no target


def _run(script, *args, timeout=900):
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def _importable(cwd, code):
    """Whether the benchmark's interpreter can run ``code`` (which reaches the part of
    tfshard the script measures), as the script decides it: asked in a child run outside the
    source tree, so an unbuilt checkout does not count."""
    probe = subprocess.run([sys.executable, "-c", code],
                           cwd=cwd, capture_output=True, timeout=120)
    return probe.returncode == 0


def _check_help(script, cases):
    proc = _run(script, "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr
    for word in ("--quick", "--repeat", "--workdir", "--json", *cases):
        assert word in proc.stdout


def _run_quick(script, cases, tmp_path, *args, statuses=("PASS", "MISS", "SKIP")):
    """Run ``script --quick`` with JSON output; check every case has a table row with one of
    ``statuses``.  Returns (output for messages, {case: JSON row})."""
    results = tmp_path / "results.json"
    proc = _run(script, "--quick", *args, "--json", results)
    output = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-5000:]}"
    assert proc.returncode == 0, output
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["case", "tfshard"])
    table = {line.split()[0]: line.split() for line in lines[header + 2:] if line.strip()}
    for case in cases:
        assert case in table, f"no table row for {case}\n{output}"
        assert table[case][-1] in statuses, output
    rows = {row["case"]: row for row in json.loads(results.read_text())["rows"]}
    assert set(rows) == set(cases)
    return output, rows


def test_bench_read_help():
    _check_help("bench_read.py", READ_CASES)


def test_bench_read_quick(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("safetensors")
    output, rows = _run_quick("bench_read.py", READ_CASES, tmp_path,
                              "--workdir", tmp_path / "work")
    measured = _importable(tmp_path, "import tfshard; tfshard.open")
    for case, row in rows.items():
        assert row["tf"] is not None, f"{case}: TensorFlow side not measured\n{output}"
        if measured:
            assert row["status"] in {"PASS", "MISS"}, f"{case}: {row}\n{output}"
            assert row["tfshard"] is not None and row["ratio"] is not None
        else:
            assert row["status"] == "SKIP", f"{case}: {row}\n{output}"


def test_bench_write_help():
    _check_help("bench_write.py", WRITE_CASES)


def test_bench_write_quick(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("safetensors")
    work = tmp_path / "work"
    output, rows = _run_quick("bench_write.py", WRITE_CASES, tmp_path, "--repeat", 1,
                              "--workdir", work, statuses=("PASS", "MISS", "INFO", "SKIP"))
    measured = _importable(tmp_path, "import tfshard; tfshard.save")
    for case, row in rows.items():
        if case in WRITE_INFO_CASES:
            expected = {"INFO"} if measured else {"SKIP"}
        else:
            expected = {"PASS", "MISS"} if measured else {"SKIP"}
        assert row["status"] in expected, f"{case}: {row}\n{output}"
        if measured:
            assert row["tfshard"] is not None and row["ratio"] is not None, row
    # The scratch directory for written checkpoints is removed, leaving nothing behind.
    assert list(work.iterdir()) == [], list(work.iterdir())


CONVERT_CASES = ("tf_to_st", "tf_to_st_rss", "stream_memory", "avg_bert", "avg_bert_rss",
                 "avg_memory", "avg_memory_n")


def test_bench_convert_help():
    _check_help("bench_convert.py", CONVERT_CASES)


def test_bench_convert_quick(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("safetensors")
    if not Path("/proc/self/status").exists():
        pytest.skip("bench_convert measures memory through /proc")
    work = tmp_path / "work"
    output, rows = _run_quick("bench_convert.py", CONVERT_CASES, tmp_path, "--repeat", 1,
                              "--workdir", work)
    measured = _importable(tmp_path, "import tfshard.conversion as c; c.convert")
    for case, row in rows.items():
        if measured:
            assert row["status"] in {"PASS", "MISS"}, f"{case}: {row}\n{output}"
            assert row["tfshard"] is not None and row["ratio"] is not None, row
        else:
            assert row["status"] == "SKIP", f"{case}: {row}\n{output}"
    assert rows["tf_to_st"]["tf"] is not None, f"the reference script was not timed\n{output}"
    assert rows["avg_bert"]["tf"] is not None, f"the averaging script was not timed\n{output}"
    # Only the cached inputs remain: the scratch directory for outputs is removed.
    assert all(p.name.startswith(("tiny", "convert-bert-", "convert-big-", "convert-avg-"))
               for p in work.iterdir()), list(work.iterdir())


RESTORE_CASES = ("tf2_eager", "tf1_session")


def test_bench_restore_help():
    _check_help("bench_restore.py", RESTORE_CASES)


def test_bench_restore_quick(tmp_path):
    pytest.importorskip("tensorflow")
    output, rows = _run_quick("bench_restore.py", RESTORE_CASES, tmp_path,
                              "--workdir", tmp_path / "work")
    measured = _importable(tmp_path, "import tfshard.tf; tfshard.tf.restore")
    for case, row in rows.items():
        assert row["tf"] is not None, f"{case}: TensorFlow side not measured\n{output}"
        if measured:
            assert row["status"] in {"PASS", "MISS"}, f"{case}: {row}\n{output}"
            assert row["tfshard"] is not None and row["ratio"] is not None, row
        else:
            assert row["status"] == "SKIP", f"{case}: {row}\n{output}"


FRAMEWORK_CASES = ("torch_verified", "torch_noverify", "torch_call", "jax_verified",
                   "jax_noverify", "jax_call", "reader_loop", "rss_torch", "rss_jax",
                   "rss_reader")
FRAMEWORK_INFO_CASES = {"torch_call", "jax_call", "rss_torch", "rss_jax", "rss_reader"}


def test_bench_frameworks_help():
    _check_help("bench_frameworks.py", FRAMEWORK_CASES)


def test_bench_frameworks_quick(tmp_path):
    for name in ("tensorflow", "safetensors", "torch", "jax"):
        pytest.importorskip(name)
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("bench_frameworks measures peak memory through /proc")
    output, rows = _run_quick("bench_frameworks.py", FRAMEWORK_CASES, tmp_path,
                              "--workdir", tmp_path / "work",
                              statuses=("PASS", "MISS", "INFO", "SKIP"))
    measured = _importable(tmp_path, "import tfshard.torch, tfshard.jax; tfshard.load_checkpoint")
    for case, row in rows.items():
        if measured:
            expected = {"INFO"} if case in FRAMEWORK_INFO_CASES else {"PASS", "MISS"}
            assert row["status"] in expected, f"{case}: {row}\n{output}"
            assert row["tfshard"] is not None and row["ratio"] is not None, row
        else:
            assert row["status"] == "SKIP", f"{case}: {row}\n{output}"
        assert row["safetensors"] is not None or row["tf"] is not None, row
    if measured:  # copies are counted
        assert "without a copy" in output, output


DISTRIBUTED_CASES = ("dcp_bytes", "dcp_load", "jax_time", "jax_rss", "jax_time_1proc",
                     "jax_rss_1proc")
DISTRIBUTED_INFO_CASES = {"jax_time", "jax_time_1proc", "jax_rss_1proc"}


def test_bench_distributed_help():
    _check_help("bench_distributed.py", DISTRIBUTED_CASES)


def test_bench_distributed_quick(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    if not _importable(tmp_path, "import tfshard.torch, tfshard.jax"):
        pytest.skip("tfshard.torch / tfshard.jax are not importable outside the source tree")
    work = tmp_path / "work"
    # Two ranks instead of four keep the smoke test short; the script is the same.
    output, rows = _run_quick("bench_distributed.py", DISTRIBUTED_CASES, tmp_path,
                              "--workdir", work, "--ranks", 2,
                              statuses=("PASS", "MISS", "INFO"))
    for case, row in rows.items():
        expected = {"INFO"} if case in DISTRIBUTED_INFO_CASES else {"PASS", "MISS"}
        assert row["status"] in expected, f"{case}: {row}\n{output}"
        assert None not in (row["tfshard"], row["baseline"], row["ratio"]), row
    per_rank = rows["dcp_bytes"]["detail"]["per_rank"]
    assert len(per_rank) == 2 and sum(per_rank) == rows["dcp_bytes"]["detail"]["total"], output
    # Only the cached inputs remain: the workers' scratch directories are removed.
    assert all(p.name.startswith("distributed_") for p in work.iterdir()), list(work.iterdir())


GRAPH_CASES = ("decode", "decode_tf_lookup", "memory", "op_counts", "node_lookup")
GRAPH_INFO_CASES = {"decode_tf_lookup", "op_counts", "node_lookup"}


def test_bench_graph_help():
    _check_help("bench_graph.py", GRAPH_CASES)


def test_bench_graph_quick(tmp_path):
    pytest.importorskip("tensorflow")
    if not Path("/proc/self/status").exists():
        pytest.skip("bench_graph measures memory through /proc")
    output, rows = _run_quick("bench_graph.py", GRAPH_CASES, tmp_path,
                              "--workdir", tmp_path / "work",
                              statuses=("PASS", "MISS", "INFO", "SKIP"))
    measured = _importable(tmp_path, "import tfshard.graph; tfshard.graph.open")
    for case, row in rows.items():
        assert row["tf"] is not None, f"{case}: TensorFlow side not measured\n{output}"
        if not measured:
            assert row["status"] == "SKIP", f"{case}: {row}\n{output}"
            continue
        expected = {"INFO"} if case in GRAPH_INFO_CASES else {"PASS", "MISS"}
        assert row["status"] in expected, f"{case}: {row}\n{output}"
        assert row["tfshard"] is not None and row["ratio"] is not None, row


SCALE_CASES = ("open_list_30k", "m_open", "m_list", "m_read", "m_load", "m_verify", "m_save",
               "m_save_rss", "bert_plain", "bert_overwrite", "bert_st", "bert_read",
               "scale_verify_1", "scale_verify_2", "scale_load_1", "scale_load_2", "big")
SCALE_INFO_CASES = {"scale_verify_1", "scale_verify_2", "scale_load_1", "scale_load_2"}


def test_bench_scale_help():
    _check_help("bench_scale.py", SCALE_CASES)


def test_bench_scale_quick(tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("safetensors")
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("bench_scale measures peak memory through /proc")
    work = tmp_path / "work"
    output, rows = _run_quick("bench_scale.py", SCALE_CASES, tmp_path, "--workdir", work,
                              statuses=("PASS", "MISS", "INFO", "SKIP"))
    measured = _importable(tmp_path, "import tfshard; tfshard.load, tfshard.save")
    for case, row in rows.items():
        if case == "big":  # only with --big (tens of GB)
            assert row["status"] == "SKIP", f"{case}: {row}\n{output}"
            continue
        if not measured:
            assert row["status"] == "SKIP" or row["tfshard"] is None, f"{case}: {row}\n{output}"
            continue
        expected = {"INFO"} if case in SCALE_INFO_CASES else {"PASS", "MISS"}
        assert row["status"] in expected, f"{case}: {row}\n{output}"
        assert row["tfshard"] is not None and row["ratio"] is not None, row
    assert rows["open_list_30k"]["tf"] is not None and rows["m_list"]["tf"] is not None
    assert rows["m_read"]["tf"] is not None and rows["bert_read"]["tf"] is not None
    assert rows["bert_st"]["safetensors"] is not None, output
    assert "extrapolated" in output, output
    # Only the cached inputs remain: the scratch directory for written files is removed.
    assert all(not p.name.startswith("scale.") for p in work.iterdir()), list(work.iterdir())


REMOTE_CASES = ("rows_bytes", "load_bert", "load_bert_paced", "rows_time",
                "rows_ratio_bytes")
REMOTE_INFO_CASES = {"load_bert_paced", "rows_time", "rows_ratio_bytes"}


def test_bench_remote_help():
    _check_help("bench_remote.py", REMOTE_CASES)


def test_bench_remote_quick(tmp_path):
    pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp")
    output, rows = _run_quick("bench_remote.py", REMOTE_CASES, tmp_path,
                              "--workdir", tmp_path / "work",
                              statuses=("PASS", "MISS", "INFO"))
    for case, row in rows.items():
        expected = {"INFO"} if case in REMOTE_INFO_CASES else {"PASS", "MISS"}
        assert row["status"] in expected, f"{case}: {row}\n{output}"
        assert row["tfshard"] is not None and row["tf"] is not None, row
    # The byte budget is a property of what is fetched, not of the machine's speed.
    assert rows["rows_bytes"]["status"] == "PASS", output
    assert rows["rows_bytes"]["detail"]["requests"] == 2, output
