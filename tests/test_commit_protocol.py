"""The commit protocol (tfshard._commit) in one process: an error injected at
every step of a commit, replaced-file detection in the reader, the commit lock,
and repair of a commit killed in its window.

Kills at every step, racing processes, full disks and size limits run for real
in test_fault_campaigns.py; here the failures are raised by wrapping the os
functions the commit calls, so that each step fails once, deterministically.
"""

import errno
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import tfshard
from tfshard import _commit
from tfshard.formats import open_source


def version(v, rows=64):
    return {"version": np.int64(v), "emb": np.arange(rows * 8, dtype=np.int32).reshape(rows, 8)
            + np.int32(v * 1000), "w": np.full(5000, v, np.float32)}


def assert_version(prefix, v):
    with tfshard.open(prefix) as c:
        assert c.verify_all() == []
        assert int(c["version"]) == v
        np.testing.assert_array_equal(c["emb"], version(v)["emb"])


def junk(directory):
    """Files a finished or failed commit must not leave."""
    return sorted(n for n in os.listdir(directory)
                  if ".tempstate" in n or _commit.ASIDE_MARK in n or n.endswith(".lock"))


class FailAt:
    """Make the k-th call (counted over ``names``) of the os functions fail with EIO,
    once a commit has started."""

    def __init__(self, monkeypatch, k, names=("rename", "replace", "link")):
        self.k, self.calls, self.hit = k, 0, None
        self.armed = False
        for name in names:
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))
        commit = tfshard.CheckpointWriter.commit

        def armed_commit(writer):
            self.armed = True
            try:
                return commit(writer)
            finally:
                self.armed = False

        monkeypatch.setattr(tfshard.CheckpointWriter, "commit", armed_commit)

    def _wrap(self, name, orig):
        def wrapped(*args, **kwargs):
            if self.armed:
                self.calls += 1
                if self.calls == self.k:
                    self.hit = f"{name} {' '.join(os.path.basename(str(a)) for a in args)}"
                    raise OSError(errno.EIO, "injected I/O error")
            return orig(*args, **kwargs)
        return wrapped


def fail_commit_point_once(monkeypatch, suffix):
    """The first os.replace onto a name ending in ``suffix`` (the commit point)
    fails with EIO; the rollback's renames then succeed."""
    real_replace = os.replace
    failed = []

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(suffix) and not failed:
            failed.append(dst)
            raise OSError(errno.EIO, "injected I/O error")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


LAYOUTS = [({}, {}), ({"num_shards": 2}, {"num_shards": 2}), ({}, {"num_shards": 3}),
           ({"num_shards": 3}, {})]


@pytest.mark.parametrize("old_layout, new_layout", LAYOUTS)
def test_an_error_at_any_step_of_a_commit_keeps_the_old_checkpoint(tmp_path, monkeypatch,
                                                                   old_layout, new_layout):
    failed_steps = []
    for k in range(1, 40):
        d = tmp_path / f"k{k}"
        prefix = str(d / "model.ckpt")
        tfshard.save(prefix, version(1), **old_layout)
        with monkeypatch.context() as m:
            fail = FailAt(m, k)
            try:
                tfshard.save(prefix, version(2), **new_layout)
                raised = None
            except tfshard.WriteFailedError as exc:
                raised = exc
        if fail.hit is None:
            assert raised is None
            assert_version(prefix, 2)
            break
        if raised is None:
            # A step after the commit point (a second name for the old index, moving
            # stale files aside) may fail without failing the save; the new
            # checkpoint is in place and whole.
            assert_version(prefix, 2)
        else:
            failed_steps.append(fail.hit)
            assert raised.errno == errno.EIO and isinstance(raised, OSError)
            assert prefix in str(raised) and "injected I/O error" in str(raised)
            # Renamed back at once: the old checkpoint is there under its own names,
            # with no repair needed, and nothing of the new one is left.
            assert os.path.isfile(prefix + ".index")
            assert_version(prefix, 1)
            assert junk(d) == [], fail.hit
        tfshard.save(prefix, version(3), **new_layout)  # and the next save works
        assert_version(prefix, 3)
        assert junk(d) == []
    else:
        pytest.fail("the save never completed")
    assert failed_steps  # some step did fail (every rename before the commit point)
    assert any("model.ckpt.index.tempstate" in s for s in failed_steps)


def test_a_failed_commit_of_merge_parts_puts_the_parts_back(tmp_path, monkeypatch):
    a, b, out = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "merged")
    tfshard.save(a, {"x": np.arange(3)})
    tfshard.save(b, {"y": np.arange(4)})
    tfshard.save(out, version(1), num_shards=2)
    with monkeypatch.context() as m:
        fail_commit_point_once(m, ".index")
        with pytest.raises(tfshard.WriteFailedError, match="merged"):
            tfshard.merge_parts([a, b], out)
    assert_version(out, 1)
    assert tfshard.load(a)["x"].tolist() == [0, 1, 2]  # the parts are whole again
    assert tfshard.load(b)["y"].tolist() == [0, 1, 2, 3]
    assert junk(tmp_path) == []


def test_sharded_safetensors_replaced_with_the_same_shard_count(tmp_path, monkeypatch):
    out = str(tmp_path / "st")
    big = {f"t{i}": np.full(40_000, i, np.float32) for i in range(4)}
    tfshard.save(str(tmp_path / "v1"), big)
    tfshard.save(str(tmp_path / "v2"), {k: v + 1 for k, v in big.items()})
    tfshard.convert(str(tmp_path / "v1"), out, dst_format="safetensors", max_shard_size=200_000)
    names = sorted(os.listdir(out))
    with monkeypatch.context() as m:
        fail_commit_point_once(m, ".index.json")
        with pytest.raises(tfshard.WriteFailedError):
            tfshard.convert(str(tmp_path / "v2"), out, dst_format="safetensors",
                            max_shard_size=200_000, overwrite=True)
    assert sorted(os.listdir(out)) == names
    with open_source(out) as s:
        assert s.read("t3")[0] == 3.0  # the old model, whole
    tfshard.convert(str(tmp_path / "v2"), out, dst_format="safetensors",
                    max_shard_size=200_000, overwrite=True)
    assert sorted(os.listdir(out)) == names
    with open_source(out) as s:
        assert s.read("t3")[0] == 4.0


# ---- readers of a checkpoint that is replaced ---------------------------------------

@pytest.mark.parametrize("new_layout", [{}, {"num_shards": 2}])
def test_an_open_checkpoint_keeps_reading_its_own_save(tmp_path, new_layout):
    prefix = str(tmp_path / "model.ckpt")
    tfshard.save(prefix, version(1), num_shards=2)
    with tfshard.open(prefix) as c:
        # Its data files were opened with its index: later saves change nothing.
        tfshard.save(prefix, version(2), **new_layout)
        tfshard.save(prefix, version(3), **new_layout)
        np.testing.assert_array_equal(c.read("emb", np.s_[3:5]), version(1)["emb"][3:5])
        assert int(c["version"]) == 1 and c.verify_all() == []
    assert_version(prefix, 3)


@pytest.mark.parametrize("new_layout", [{}, {"num_shards": 2}])
def test_a_data_file_opened_after_the_checkpoint_was_replaced_is_refused(tmp_path,
                                                                         monkeypatch,
                                                                         new_layout):
    # Checkpoints with more data files than are opened with the index open each on
    # first use: that open must notice a replaced checkpoint.
    monkeypatch.setattr(tfshard.reader, "_OPEN_AT_ONCE", 0)
    prefix = str(tmp_path / "model.ckpt")
    tfshard.save(prefix, version(1))
    with tfshard.open(prefix) as c:
        tfshard.save(prefix, version(2), **new_layout)  # before any data file is opened
        # The data file under the name now is the new save's (or gone): refused,
        # never read as if it were this checkpoint's.
        with pytest.raises(tfshard.CheckpointChangedError, match="reopen|open the checkpoint"):
            c.read("emb", np.s_[3:5])
    assert_version(prefix, 2)


def test_data_mapped_before_the_checkpoint_was_replaced_stays_the_old_data(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(tfshard.reader, "_OPEN_AT_ONCE", 0)
    prefix = str(tmp_path / "model.ckpt")
    tfshard.save(prefix, version(1))
    with tfshard.open(prefix) as c:
        assert int(c["version"]) == 1  # maps the data file
        tfshard.save(prefix, version(2))
        tfshard.save(prefix, version(3))
        # The open file is the old inode, whatever the name holds now.
        np.testing.assert_array_equal(c.read("emb", np.s_[3:5]), version(1)["emb"][3:5])
        assert c.verify_all() == []


def test_a_commit_killed_in_its_window_is_repaired_by_the_next_open(tmp_path):
    prefix = str(tmp_path / "model.ckpt")
    tfshard.save(prefix, version(1), num_shards=2)
    tfshard.save(str(tmp_path / "new"), version(2), num_shards=2)
    # What a commit killed in its window leaves: the old index and data aside, part
    # of the new data installed, no index under the prefix's name.
    token = _commit.ASIDE_MARK + "123"
    os.rename(prefix + ".index", prefix + ".index" + token)
    for i in range(2):
        os.rename(f"{prefix}.data-0000{i}-of-00002", f"{prefix}.data-0000{i}-of-00002{token}")
    os.rename(str(tmp_path / "new.data-00000-of-00002"), f"{prefix}.data-00000-of-00002")
    assert tfshard.latest_checkpoint(str(tmp_path)) is None  # no state file: nothing named
    assert_version(prefix, 1)  # the open put the old checkpoint back
    assert junk(tmp_path) == []


# ---- the commit lock ---------------------------------------------------------------

HOLD_LOCK = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
print(repr(time.time()), flush=True)
"""


def _hold_lock(path, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, path, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.skipif(not _commit.LOCKS_HELD_OPEN, reason="POSIX advisory locks")
def test_a_commit_waits_for_another_process_holding_the_lock(tmp_path):
    prefix = str(tmp_path / "model.ckpt")
    tfshard.save(prefix, version(1))
    holder = _hold_lock(prefix + ".lock", 0.4)
    try:
        tfshard.save(prefix, version(2))
        committed = time.time()
        released = float(holder.stdout.readline())
    finally:
        holder.wait()
    assert committed >= released  # the commit happened only once the lock was free
    assert_version(prefix, 2)
    assert junk(tmp_path) == []


@pytest.mark.skipif(not _commit.LOCKS_HELD_OPEN, reason="POSIX advisory locks")
def test_a_lock_held_too_long_is_a_write_failure_not_a_hang(tmp_path):
    path = str(tmp_path / "model.ckpt.lock")
    holder = _hold_lock(path, 3)
    try:
        with pytest.raises(tfshard.WriteFailedError) as info:
            _commit.OutputLock(path, timeout=0.2, target="model.ckpt")
        assert info.value.errno == errno.EAGAIN and "model.ckpt" in str(info.value)
        lock = _commit.OutputLock(path, blocking=False)
        assert not lock.held
    finally:
        holder.kill()  # only the helper this test started
        holder.wait()


def test_a_lock_file_left_by_a_killed_process_does_not_block(tmp_path):
    prefix = str(tmp_path / "model.ckpt")
    open(prefix + ".lock", "w").close()  # nobody holds it
    tfshard.save(prefix, version(1))
    assert_version(prefix, 1)
    assert junk(tmp_path) == []


def test_replacing_a_single_file_output_keeps_it_complete_at_every_step(tmp_path, monkeypatch):
    """The old file is given a second name first, so the rename replacing it frees
    nothing (the old blocks go when that name is deleted, after the rename)."""
    out = str(tmp_path / "m.npz")
    tfshard.save(str(tmp_path / "a"), version(1))
    tfshard.save(str(tmp_path / "b"), version(2))
    tfshard.convert(str(tmp_path / "a"), out)
    seen = []
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst) == out:
            seen.append(os.stat(out).st_nlink)  # the old file has two names now
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    tfshard.convert(str(tmp_path / "b"), out, overwrite=True)
    assert seen == [2]
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["m.npz"] + [f"{p}.{s}" for p in "ab" for s in ("index", "data-00000-of-00001")])
    with open_source(out) as s:
        assert int(s.read("version")) == 2


@pytest.mark.skipif(not _commit.LOCKS_HELD_OPEN or not os.path.isdir("/proc/self/fd"),
                    reason="needs unlink of open files and /proc/self/fd")
def test_old_files_leave_at_once_and_are_freed_in_the_background(tmp_path):
    """Saving over a checkpoint: the old files' names are gone when save returns (nothing
    for a reader or a directory listing to see), and the large one, whose blocks a
    background thread frees, is closed soon after."""
    big = {"w": np.ones(3 << 20 >> 2, np.float32)}   # 3 MiB: above FREE_LATER_MIN
    prefix = str(tmp_path / "m")
    tfshard.save(prefix, big)
    tfshard.save(prefix, big)
    assert sorted(os.listdir(tmp_path)) == ["m.data-00000-of-00002", "m.data-00001-of-00002",
                                            "m.index"]
    _commit._freeing_thread().submit(lambda: None).result()  # the worker is idle again

    def deleted_open():
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(tmp_path)) and target.endswith("(deleted)"):
                out.append(target)
        return out
    assert deleted_open() == []
    np.testing.assert_array_equal(tfshard.load(prefix)["w"], big["w"])


def test_discard_later_deletes_small_large_and_missing_files(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(b"x" * 10)
    large.write_bytes(b"x" * (2 << 20))
    _commit.discard_later([str(small), str(large), str(tmp_path / "missing")])
    assert os.listdir(tmp_path) == []
    _commit._freeing_thread().submit(lambda: None).result()
