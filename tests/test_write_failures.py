"""WriteFailedError and checked writes: the error's contract, the write loop, and
real size-limit failures of the command line and of a writer used step by step.

Every write path under a size limit and on a full disk is covered by
test_fault_campaigns.py; these are the cases a user meets first.
"""

import errno
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tfshard
from tfshard._util import write_all

LIMIT = 5_000_000  # bytes; above the old checkpoints, below the new ones


def test_write_failed_error_is_an_oserror_with_errno_and_the_users_path():
    exc = tfshard.WriteFailedError("cannot write out/m: ...", errno=errno.ENOSPC,
                                   strerror="No space left on device", path="out/m")
    assert isinstance(exc, OSError) and isinstance(exc, tfshard.TFShardError)
    assert (exc.errno, exc.strerror, exc.filename, exc.path) == (
        errno.ENOSPC, "No space left on device", "out/m", "out/m")
    assert str(exc) == "cannot write out/m: ..."
    again = pickle.loads(pickle.dumps(exc))  # e.g. from a worker process
    assert type(again) is tfshard.WriteFailedError
    assert (again.errno, again.path, str(again)) == (exc.errno, exc.path, str(exc))


def test_write_all_continues_after_short_writes_and_fails_without_progress(tmp_path,
                                                                           monkeypatch):
    real_write = os.write
    sizes = []

    def short_write(fd, data):
        sizes.append(len(data))
        return real_write(fd, bytes(data)[:max(1, len(data) // 3)])  # a third at a time

    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        monkeypatch.setattr(os, "write", short_write)
        write_all(fd, np.arange(1000, dtype=np.int64))
        monkeypatch.setattr(os, "write", lambda fd, data: 0)
        with pytest.raises(OSError) as info:
            write_all(fd, b"more")
        assert info.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert len(sizes) > 3
    assert path.read_bytes() == np.arange(1000, dtype=np.int64).tobytes()


def _limited(cmd, **kwargs):
    """Run ``cmd`` with a file-size limit (Python ignores SIGXFSZ, so write()
    returns EFBIG), through prlimit(1) as a user would where it exists."""
    if shutil.which("prlimit"):
        return subprocess.run(["prlimit", f"--fsize={LIMIT}", *cmd], capture_output=True,
                              text=True, timeout=120, **kwargs)
    import resource

    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                                (LIMIT, LIMIT)), **kwargs)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX resource limits")
def test_cli_convert_at_the_size_limit_fails_and_keeps_the_old_checkpoint(tmp_path):
    src, dst = str(tmp_path / "big"), str(tmp_path / "out")
    tfshard.save(src, {"w": np.ones(2_000_000, np.float32),
                       "b": np.ones(300_000, np.float32)})
    tfshard.save(dst, {"w": np.arange(10, dtype=np.float32)})
    proc = _limited([sys.executable, "-m", "tfshard", "convert", src, dst, "--overwrite"])
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert f"cannot write {dst}" in proc.stderr and "EFBIG" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    with tfshard.open(dst) as c:
        assert c.verify_all() == []
        np.testing.assert_array_equal(c["w"], np.arange(10, dtype=np.float32))
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"{p}.{s}" for p in ("big", "out") for s in ("index", "data-00000-of-00001"))


STEP_BY_STEP = r"""
import os, sys
import numpy as np
import tfshard
prefix = sys.argv[1]
w = tfshard.CheckpointWriter(prefix)
w.add("small", np.arange(5))
try:
    w.add("big", np.ones(2_000_000, np.float32))
except tfshard.WriteFailedError as exc:
    print("failed:", exc.errno, "big" in str(exc), prefix in str(exc))
try:
    w.add("more", np.arange(3))
except tfshard.WriterClosedError:
    print("closed")
try:
    w.commit()
except tfshard.WriterClosedError:
    print("not committed")
print(sorted(os.listdir(os.path.dirname(prefix))))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX resource limits")
def test_a_writer_whose_write_failed_is_aborted_and_cannot_commit(tmp_path):
    prefix = str(tmp_path / "m")
    tfshard.save(prefix, {"old": np.arange(4)})
    proc = _limited([sys.executable, "-c", STEP_BY_STEP, prefix])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:3] == [f"failed: {errno.EFBIG} True True", "closed", "not committed"]
    assert lines[3] == str(["m.data-00000-of-00001", "m.index"])  # no temporary file left
    assert tfshard.load(prefix)["old"].tolist() == [0, 1, 2, 3]
