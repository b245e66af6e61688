"""Odd files and names: FIFOs, devices and symlink loops where checkpoint files
should be, a state file path that is a directory, huge claimed slice lists,
undecodable and control characters in names, npz members with a bad CRC-32.

Every case must end in a TFShardError that names the path (keeping the errno
where the system gave one) -- never a hang, a raw OSError or a traceback.  A
FIFO would block an ordinary open() forever, so each read here runs under an
alarm that turns a hang into a test failure.
"""

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import tfshard
from tfshard.formats import open_source
from tfshard.slices import find_overlap

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and symlinks")


@contextlib.contextmanager
def no_hang(seconds=5):
    def timeout(signum, frame):
        raise AssertionError(f"blocked for {seconds} s (a FIFO opened for reading?)")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def refused(call, path, *, errno_=None):
    """``call()`` raises a TFShardError naming ``path`` (with ``errno_`` if given)."""
    with no_hang(), pytest.raises(tfshard.TFShardError) as info:
        call()
    assert os.path.basename(str(path)) in str(info.value), info.value
    if errno_ is not None:
        assert info.value.errno == errno_, info.value
        assert isinstance(info.value, OSError)
    return info.value


def _model(tmp_path):
    prefix = str(tmp_path / "ckpt-1")
    tfshard.save(prefix, {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                          "v": np.ones(4, np.int32)})
    return prefix


def _replace_with_fifo(path):
    os.unlink(path)
    os.mkfifo(path)


def _replace_with_loop(path):
    os.unlink(path)
    os.symlink(os.path.basename(path), path)  # a link to itself


# ---- FIFOs and devices ------------------------------------------------------------

def test_a_fifo_as_the_state_file_is_refused_without_blocking(tmp_path):
    _model(tmp_path)
    os.mkfifo(tmp_path / "checkpoint")
    err = refused(lambda: tfshard.latest_checkpoint(str(tmp_path)), tmp_path / "checkpoint")
    assert "FIFO" in str(err)
    refused(lambda: tfshard.open(str(tmp_path)), tmp_path / "checkpoint")


def test_a_fifo_named_by_the_state_file_is_refused_without_blocking(tmp_path):
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "pipe"\n')
    os.mkfifo(tmp_path / "pipe")  # the V1 lookup would read the file's last bytes
    refused(lambda: tfshard.open(str(tmp_path)), tmp_path / "pipe")
    os.mkfifo(tmp_path / "pipe.index")
    err = refused(lambda: tfshard.open(str(tmp_path / "pipe")), tmp_path / "pipe.index")
    assert "FIFO" in str(err)


def test_a_fifo_or_a_device_as_a_data_shard_is_refused_without_blocking(tmp_path):
    prefix = _model(tmp_path)
    shard = prefix + ".data-00000-of-00001"
    _replace_with_fifo(shard)
    with tfshard.open(prefix) as c:
        err = refused(lambda: c["w"], shard)
        assert isinstance(err, tfshard.CheckpointNotFoundError) and "FIFO" in str(err)
    os.unlink(shard)
    os.symlink("/dev/zero", shard)
    with tfshard.open(prefix) as c:
        assert "character device" in str(refused(lambda: c["w"], shard))


def _fifo_cases(tmp_path):
    """(description, path to make a FIFO, how it is read) for every other format."""
    src = _model(tmp_path)
    cases = []
    for fmt, name in (("safetensors", "m.safetensors"), ("npz", "m.npz"), ("torch", "m.pt")):
        if fmt == "torch":
            pytest.importorskip("torch")
        out = str(tmp_path / name)
        tfshard.convert(src, out)
        cases.append((fmt, out, lambda out=out: open_source(out).read("w")))
    npy = str(tmp_path / "npy")
    tfshard.convert(src, npy, dst_format="npy")
    member = os.path.join(npy, "w.npy")
    cases.append(("npy member", member, lambda: open_source(npy).read("w")))
    cases.append(("npy names.json", os.path.join(npy, "names.json"),
                  lambda: open_source(npy, "npy")))
    sharded = str(tmp_path / "sharded")
    tfshard.convert(src, sharded, dst_format="safetensors", max_shard_size=8)
    index = os.path.join(sharded, "model.safetensors.index.json")
    cases.append(("safetensors index", index, lambda: open_source(index)))
    return cases


def test_fifos_in_place_of_any_model_file_are_refused_without_blocking(tmp_path):
    for what, path, read in _fifo_cases(tmp_path):
        _replace_with_fifo(path)
        refused(read, path)


def test_symlink_loops_in_place_of_model_files_keep_their_errno(tmp_path):
    prefix = _model(tmp_path)
    tfshard.save(str(tmp_path / "ckpt-2"), {"w": np.zeros(2)})
    shard = prefix + ".data-00000-of-00001"
    _replace_with_loop(shard)
    with tfshard.open(prefix) as c:
        err = refused(lambda: c["w"], shard, errno_=errno.ELOOP)
        assert isinstance(err, tfshard.ReadFailedError)
    state = tmp_path / "checkpoint"
    os.symlink("checkpoint", state)
    refused(lambda: tfshard.latest_checkpoint(str(tmp_path)), state, errno_=errno.ELOOP)
    refused(lambda: tfshard.open(str(tmp_path)), state, errno_=errno.ELOOP)
    _replace_with_loop(prefix + ".index")
    refused(lambda: tfshard.open(prefix), prefix + ".index", errno_=errno.ELOOP)
    other = tmp_path / "other"
    other.mkdir()
    for what, path, read in _fifo_cases(other):
        _replace_with_loop(path)
        refused(read, path, errno_=errno.ELOOP)


# ---- CheckpointManager and its state file -----------------------------------------

def test_manager_refuses_a_directory_state_file_before_writing_anything(tmp_path):
    os.mkdir(tmp_path / "checkpoint")
    mgr = tfshard.CheckpointManager(str(tmp_path), max_to_keep=2)
    with pytest.raises(tfshard.OutputExistsError, match="checkpoint is a directory"):
        mgr.save({"w": np.zeros(3)})
    assert os.listdir(tmp_path) == ["checkpoint"]  # no ckpt-1 files


# ---- partitioned tensors claiming many slices -------------------------------------

def _claims(tmp_path, n):
    """A checkpoint whose one entry claims ``n`` stored slices that are not there
    (encoded with the writer's C encoders: the pure-Python test builder would
    take longer than the reader)."""
    from tfshard import _build

    prefix = str(tmp_path / "claims")
    entry = _build.encode_partitioned_entry(1, (n, 4), [[(i, 1), (0, -1)] for i in range(n)])
    with open(prefix + ".index", "wb") as f:
        f.write(_build.build_table([b"", b"emb"], [_build.encode_header(1), entry]))
    open(prefix + ".data-00000-of-00001", "wb").close()
    return prefix


def test_a_huge_claimed_slice_list_is_refused_in_time_bounded_by_the_file(tmp_path):
    prefix = _claims(tmp_path, 100_000)  # a 1.2 MB index; 28 s before this was bounded
    assert os.path.getsize(prefix + ".index") < 2_000_000
    with tfshard.open(prefix) as c:
        started = time.monotonic()
        with pytest.raises(tfshard.CorruptCheckpointError, match="100000 stored slices"):
            c.info("emb")
        with pytest.raises(tfshard.CorruptCheckpointError):
            c["emb"]
        assert time.monotonic() - started < 5  # a hang guard, not a speed target


def test_overlap_search_is_n_log_n_and_finds_the_overlap():
    n = 100_000
    boxes = [[(2 * i, 2 * i + 2), (0, 8)] for i in range(n)]
    started = time.monotonic()
    assert find_overlap(boxes) is None
    boxes.append([(2 * n - 3, 2 * n - 1), (0, 8)])  # overlaps the last two
    a, b = find_overlap(boxes)
    assert time.monotonic() - started < 5  # quadratic took minutes: a hang guard
    assert {tuple(a[0]), tuple(b[0])} <= {(2 * n - 4, 2 * n - 2), (2 * n - 2, 2 * n),
                                          (2 * n - 3, 2 * n - 1)}
    # Boxes cut along two dimensions still go through the grid check.
    grid = [[(r, r + 1), (c, c + 1)] for r in range(50) for c in range(50)]
    assert find_overlap(grid) is None
    assert find_overlap(grid + [[(10, 12), (20, 21)]]) is not None


# ---- names that cannot be printed as they are ---------------------------------------

def _safetensors_with_names(path, names):
    header = {name: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
              for i, name in enumerate(names)}
    raw = json.dumps(header).encode()  # ASCII: a lone surrogate becomes "\udcff"
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + b"\0" * (4 * len(names)))


def _cli(*args):
    env = dict(os.environ, PYTHONIOENCODING="utf-8")  # strict, as a UTF-8 terminal
    return subprocess.run([sys.executable, "-m", "tfshard", *args], capture_output=True,
                          text=True, env=env, timeout=120, errors="strict")


def test_ls_prints_lone_surrogates_and_control_characters_escaped(tmp_path):
    path = str(tmp_path / "m.safetensors")
    _safetensors_with_names(path, ["bad\udcffname", "two\nlines", "plain"])
    proc = _cli("ls", path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("bad\\udcffname ") for line in lines), proc.stdout
    assert any(line.startswith("two\\nlines ") for line in lines), proc.stdout
    assert len(lines) == 5  # header, three tensors, summary: the newline did not split one
    tree = _cli("ls", "--tree", path)
    assert tree.returncode == 0 and "bad\\udcffname" in tree.stdout, tree.stderr


def test_cli_prints_undecodable_tf_keys_escaped(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from bundle_builder import Bundle

    b = Bundle()
    b.add("ok", np.zeros(2, np.float32))
    b.items.append((b"raw\xffkey",) + b.items[0][1:])  # a key that is not UTF-8
    prefix = b.write(str(tmp_path / "m"))
    proc = _cli("ls", prefix)
    assert proc.returncode == 0 and "raw\\udcffkey" in proc.stdout, proc.stderr
    shown = _cli("show", prefix, "raw\udcffkey")
    assert shown.returncode == 0 and shown.stdout.startswith("raw\\udcffkey:"), shown.stderr


# ---- npz member checksums ----------------------------------------------------------

def _flip_member_byte(path, member):
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), "<u2")
        at = info.header_offset + 30 + int(name_len) + int(extra_len) + info.compress_size // 2
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x40]))


@pytest.mark.parametrize("compressed", [False, True])
def test_an_npz_member_with_a_bad_crc_is_refused(tmp_path, compressed):
    path = str(tmp_path / "m.npz")
    (np.savez_compressed if compressed else np.savez)(
        path, w=np.arange(1000, dtype=np.float32), v=np.ones(3))
    _flip_member_byte(path, "w.npy")
    with pytest.raises(Exception):
        np.load(path)["w"]  # numpy itself notices (BadZipFile): the flip is real
    # A stored member's CRC-32 is now checked as a compressed one's always was (a
    # flip in deflated bytes may also break the stream itself).
    expected = tfshard.CorruptCheckpointError if compressed else tfshard.ChecksumMismatchError
    with open_source(path) as s:
        with pytest.raises(expected, match="w.npy"):
            s.read("w")
        assert s.read("v").tolist() == [1.0, 1.0, 1.0]  # other members still read
    out = str(tmp_path / "out")
    with pytest.raises(expected):
        tfshard.convert(path, out)
    assert not os.path.exists(out + ".index")
    proc = _cli("convert", path, out)
    assert proc.returncode == 1 and "w.npy" in proc.stderr, proc.stderr
