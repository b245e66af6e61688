"""Bad days, for real: scripts/fault_campaign.py run with small counts.

Each campaign runs in its own process (it forks savers it SIGKILLs, lowers its
file-size limit, or mounts a tmpfs in a private mount namespace) and reports
what it found as JSON; a campaign's ``failures`` list holds every broken
promise (see the script's docstring), so each test asserts it is empty, and
that the campaign really hit what it was meant to hit.  Longer runs are the
same script with larger ``--count`` (their numbers are in the project notes).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import private_tmpfs_missing_reason, skips_forbidden

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "fault_campaign.py"

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")


def campaign(mode, *args, timeout=300):
    proc = subprocess.run([sys.executable, str(SCRIPT), mode, "--json", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    result = json.loads(proc.stdout)[mode]
    assert result["failures"] == [], json.dumps(result["failures"], indent=1)[:4000]
    assert proc.returncode == 0, proc.stderr[-3000:]
    return result


WRITE_CASES = {
    "save, tensors >= 1 MiB (direct writes)", "save, many small tensors (staged writes)",
    "save, num_shards=4 (threaded writes)", "save, max_shard_size (sharded writes)",
    "CheckpointWriter.add one by one", "CheckpointManager.save", "convert tf -> tf, overwrite",
    "tfshard convert (command line)", "convert -> safetensors", "convert -> sharded safetensors",
    "convert -> npz", "convert -> npy directory", "convert -> torch",
}


def _check_write_cases(result, errno_name):
    cases = {c["case"]: c for c in result["cases"]}
    assert WRITE_CASES <= set(cases)
    for name, case in cases.items():
        if "skipped" in case:
            # A framework may be absent only where skips are allowed (the wheel checks).
            assert not skips_forbidden(), f"{name} skipped in CI: {case['skipped']}"
            continue
        # Every failed write raised WriteFailedError with the real errno (the command
        # line exits 1 with the message), kept the old output and left nothing.
        assert case["ok"] and case["old_intact"] and case["leftovers"] == [], case
        if case["raised"] == "WriteFailedError":
            assert case["errno"] == errno_name, case
        else:
            assert case["raised"] == "exit 1" and errno_name in case["message"], case


def test_every_write_path_fails_loudly_at_the_file_size_limit():
    result = campaign("efbig")
    _check_write_cases(result, "EFBIG")


def test_every_write_path_fails_loudly_on_a_full_disk():
    why = private_tmpfs_missing_reason()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must allow the ENOSPC test's private tmpfs: {why}")
        pytest.skip(why)
    result = campaign("enospc")
    _check_write_cases(result, "ENOSPC")
    index_case = [c for c in result["cases"] if "index does not" in c["case"]]
    assert index_case and index_case[0]["errno"] == "ENOSPC"


def test_a_kill_before_any_step_of_a_commit_loses_neither_checkpoint():
    result = campaign("kill-steps")
    # Every layout was killed before each of its renames, links and unlinks...
    steps = " ".join(result["steps"])
    for needle in ("1 -> 1 shard: replace model.ckpt.data-00001.tempstate",
                   "1 -> 1 shard: link model.ckpt.index",
                   "2 -> 2 shards: replace model.ckpt.data-00002.tempstate",
                   "2 -> 2 shards: rename model.ckpt.data-00001-of-00002",
                   "1 -> 3 shards: link model.ckpt.index",
                   "1 -> 3 shards: rename model.ckpt.data-00000-of-00001",
                   "3 -> 1 shard: unlink model.ckpt.data-00002-of-00003.aside",
                   "beside stale files of 4: rename model.ckpt.data-00003-of-00004",
                   "beside stale files of 3: rename model.ckpt.index model.ckpt.index.aside",
                   "beside stale files of 3: replace model.ckpt.index.tempstate",
                   "unlink model.ckpt.lock"):
        assert needle in steps, needle
    assert result["kills"] >= 60
    # ...and what tfshard opens afterwards is always the old or the new checkpoint,
    # whole (the old one is put back from its aside names when the kill came
    # inside the commit's window, which only a collision with stale files opens).
    assert set(result["opened"]) <= {"old", "new"}
    assert result["opened"]["old"] >= 10 and result["opened"]["new"] >= 10
    assert sum(result["opened"].values()) == result["kills"]
    # As TensorFlow sees the files at rest: the old or the new checkpoint at its own
    # names after every kill, saving over the same shard count included.
    for layout, outcomes in result["at_rest_by_layout"].items():
        if "stale files of 3" not in layout:
            assert set(outcomes) <= {"old", "new"}, (layout, outcomes)
    assert result["at_rest_by_layout"]["2 -> 2 shards beside stale files of 3"].get("none")


def test_random_kills_of_a_save_loop_never_lose_the_checkpoint():
    result = campaign("random-kills", "--count", "30", "--seed", "3")
    assert set(result["outcomes"]) <= {"old", "new", "none at rest (repaired on open)"}
    assert result["saves_completed"] >= 30


def test_random_kills_of_a_manager_leave_nothing_after_the_next_save():
    result = campaign("manager-kills", "--count", "15", "--seed", "5")
    assert result["after_clean_save"] == {"temps": 0, "unlisted": 0, "data_only": 0}


def test_two_writers_racing_on_one_prefix_leave_one_complete_checkpoint():
    result = campaign("race-writers", "--count", "30", "--seed", "7")
    assert result["outcomes"] == {"complete": 30}
    assert result["saver_errors"] == 0


def test_readers_racing_a_writer_never_get_another_saves_rows():
    result = campaign("race-readers", "--count", "150", "--readers", "2", "--seed", "9")
    outcomes = result["outcomes"]
    assert set(outcomes) <= {"ok", "CheckpointChangedError", "CheckpointNotFoundError"}
    assert outcomes.get("ok", 0) >= 50
