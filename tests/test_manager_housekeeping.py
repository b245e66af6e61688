"""CheckpointManager's sweep after a successful save, and what it must never touch.

The leftovers are made as killed saves make them (a child process holding a
temporary file, SIGKILLed; files renamed as a commit killed in its window
leaves them), and the survivors are checked by name and by content.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tfshard
from tfshard import _commit
from tfshard.state import read_state


def t(n):
    return {"step": np.int64(n), "w": np.full(1000, n, np.float32)}


def names(d):
    return sorted(os.listdir(d))


def files_of(d, base):
    return [n for n in names(d) if n == base or n.startswith(base + ".")]


# A process that creates a temporary file the way the writer does (locked while
# in use) and waits; the test kills it or lets it live.
HOLD_TEMP = r"""
import os, sys, time
from tfshard._util import create_exclusive
fd = create_exclusive(sys.argv[1])
os.write(fd, b"x" * 1000)
print("ready", flush=True)
time.sleep(60)
"""


def _temp_holder(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_TEMP, path], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _age(path, seconds=60):
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX processes and locks")
def test_sweep_reclaims_what_killed_saves_left_and_spares_live_and_foreign_files(tmp_path):
    d = str(tmp_path)
    mgr = tfshard.CheckpointManager(d, max_to_keep=2)
    for n in (1, 2, 3):
        mgr.save(t(n))
    assert mgr.checkpoints == [os.path.join(d, "ckpt-2"), os.path.join(d, "ckpt-3")]
    # A save killed while writing: its temporary file, no longer locked.
    dead = os.path.join(d, "ckpt-4.data-00000.tempstate111")
    holder = _temp_holder(dead)
    holder.send_signal(signal.SIGKILL)  # the process this test started
    holder.wait()
    # A live writer's temporary file (a save in progress elsewhere).
    live = os.path.join(d, "ckpt-9.data-00000.tempstate222")
    alive = _temp_holder(live)
    # A save killed after its commit, before the state file named it.
    tfshard.save(os.path.join(d, "ckpt-7"), t(7))
    # Data files without an index (a deletion cut short).
    tfshard.save(os.path.join(d, "ckpt-5"), t(5), num_shards=2)
    os.unlink(os.path.join(d, "ckpt-5.index"))
    # The killed writer's state file temp, an aside file of a finished commit.
    with open(os.path.join(d, "checkpoint.tempstate333"), "wb") as f:
        f.write(b"x")
    aside = os.path.join(d, "ckpt-3.data-00000-of-00001" + _commit.ASIDE_MARK + "444")
    with open(aside, "wb") as f:
        f.write(b"old")
    # Files that are not the manager's: another name, and a lookalike of another stem.
    foreign = [os.path.join(d, "notes.txt"), os.path.join(d, "model-4.index"),
               os.path.join(d, "ckpt-8.index.bak")]
    for path in foreign:
        with open(path, "w") as f:
            f.write("keep")
    for path in [dead, aside, os.path.join(d, "checkpoint.tempstate333"), *foreign] + [
            os.path.join(d, n) for n in names(d) if n.startswith(("ckpt-7.", "ckpt-5."))]:
        _age(path)
    try:
        mgr.save(t(4))  # the successful save that sweeps
        left = names(d)
        assert os.path.basename(live) in left  # still held by a live process
        for gone in (dead, aside, os.path.join(d, "checkpoint.tempstate333")):
            assert os.path.basename(gone) not in left
        assert files_of(d, "ckpt-7") == []  # unlisted, numbered above the listed ones
        assert files_of(d, "ckpt-5") == []  # data without an index
        for path in foreign:
            assert open(path).read() == "keep"
        assert files_of(d, "ckpt-8") == ["ckpt-8.index.bak"]
        assert mgr.checkpoints == [os.path.join(d, "ckpt-3"), os.path.join(d, "ckpt-4")]
        for prefix in mgr.checkpoints:
            with tfshard.open(prefix) as c:
                assert c.verify_all() == []
    finally:
        alive.kill()  # the process this test started
        alive.wait()


def test_sweep_finishes_deletions_a_killed_save_recorded(tmp_path):
    d = str(tmp_path)
    mgr = tfshard.CheckpointManager(d, max_to_keep=1)
    mgr.save(t(1))
    mgr.save(t(2))
    # As a save killed between writing the state file and deleting ckpt-1 leaves it:
    # ckpt-1 complete but unlisted, and recorded as being deleted.
    tfshard.save(os.path.join(d, "ckpt-1"), t(1))
    with open(os.path.join(d, "ckpt.deleting"), "w") as f:
        json.dump(["ckpt-1"], f)
    for n in files_of(d, "ckpt-1"):
        _age(os.path.join(d, n))
    tfshard.CheckpointManager(d, max_to_keep=1).save(t(3))
    assert files_of(d, "ckpt-1") == [] and "ckpt.deleting" not in names(d)
    assert names(d) == sorted(["checkpoint", "ckpt-3.index", "ckpt-3.data-00000-of-00001"])


def test_sweep_keeps_preserved_and_unrecorded_old_checkpoints(tmp_path, monkeypatch):
    d = str(tmp_path)
    t0 = time.time() - 10 * 3600
    clock = [t0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    mgr = tfshard.CheckpointManager(d, max_to_keep=1, keep_checkpoint_every_n_hours=1)
    for n, hours in ((1, 0), (2, 2), (3, 2.1)):
        clock[0] = t0 + hours * 3600
        mgr.save(t(n))
    monkeypatch.undo()
    assert "ckpt-2.index" in names(d)  # preserved: unlisted, kept forever (TF's rule)
    # An old checkpoint nobody recorded (another tool's, or TF's manager's).
    tfshard.save(os.path.join(d, "ckpt-0"), t(0))
    for n in names(d):
        _age(os.path.join(d, n), 120)
    tfshard.CheckpointManager(d, max_to_keep=1).save(t(4))
    assert "ckpt-2.index" in names(d) and "ckpt-0.index" in names(d)
    with tfshard.open(os.path.join(d, "ckpt-2")) as c:
        assert c.verify_all() == [] and int(c["step"]) == 2


def test_a_commit_killed_in_its_window_is_put_back_by_the_sweep(tmp_path):
    d = str(tmp_path)
    mgr = tfshard.CheckpointManager(d, max_to_keep=3)
    mgr.save(t(1))
    mgr.save(t(2))
    base = os.path.join(d, "ckpt-2")
    token = _commit.ASIDE_MARK + "555"
    os.rename(base + ".index", base + ".index" + token)
    os.rename(base + ".data-00000-of-00001", base + ".data-00000-of-00001" + token)
    mgr.save(t(3))
    with tfshard.open(base) as c:
        assert c.verify_all() == [] and int(c["step"]) == 2
    assert not [n for n in names(d) if _commit.ASIDE_MARK in n]


def test_manager_never_deletes_outside_its_directory_unless_told(tmp_path):
    d, elsewhere = str(tmp_path / "run"), str(tmp_path / "elsewhere")
    os.makedirs(d)
    outside = os.path.join(elsewhere, "model-1")
    tfshard.save(outside, t(1))
    # A state file (as TensorFlow's manager writes it) listing a checkpoint elsewhere.
    with open(os.path.join(d, "checkpoint"), "w") as f:
        f.write(f'model_checkpoint_path: "{outside}"\nall_model_checkpoint_paths: "{outside}"\n'
                f"all_model_checkpoint_timestamps: {time.time() - 50}\n"
                f"last_preserved_timestamp: {time.time() - 100}\n")
    mgr = tfshard.CheckpointManager(d, max_to_keep=1)
    assert mgr.checkpoints == [outside]
    saved = mgr.save(t(2))
    assert mgr.checkpoints == [saved]
    assert read_state(d).all_model_checkpoint_paths == [saved]
    with tfshard.open(outside) as c:  # dropped from the list, not deleted
        assert c.verify_all() == []
    # With the explicit option, TensorFlow's behaviour: listed files are deleted.
    with open(os.path.join(d, "checkpoint"), "w") as f:
        f.write(f'model_checkpoint_path: "{outside}"\nall_model_checkpoint_paths: "{outside}"\n'
                f"all_model_checkpoint_timestamps: {time.time() - 50}\n"
                f"last_preserved_timestamp: {time.time() - 100}\n")
    tfshard.CheckpointManager(d, max_to_keep=1, delete_outside_directory=True).save(t(3))
    assert os.listdir(elsewhere) == []
