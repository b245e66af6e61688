"""Checkpoints at URLs, against real servers on 127.0.0.1 (tests/remote_servers.py).

* ``http://``: a Range-capable HTTP server that counts the requests and body bytes it
  serves, so the byte budgets of the contract are asserted, not assumed;
* ``s3://``: moto's S3 server in a child process, through s3fs, for reads and writes;
* ``memory://``: fsspec's in-memory filesystem, for the write-ordering checks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tfshard
from tfshard import storage

fsspec = pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")

from remote_servers import MotoS3, RangeServer, free_port  # noqa: E402

V1_DIR = Path(__file__).parent / "data" / "v1"
MiB = 1 << 20


@pytest.fixture
def served(tmp_path):
    """(folder, server): an HTTP server over a fresh folder, always stopped."""
    root = tmp_path / "www"
    root.mkdir()
    server = RangeServer(root)
    try:
        yield root, server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    server = MotoS3()
    try:
        server.create_bucket("bucket")
        yield server
    finally:
        server.stop()


def _table(rng, rows=30522, cols=768):
    return rng.standard_normal((rows, cols), dtype=np.float32)


def _data_bytes(root: Path, prefix: str) -> int:
    return sum(p.stat().st_size for p in root.glob(prefix + ".data-*"))


# ---- HTTP: what is fetched -----------------------------------------------------------

def test_open_and_rows_fetch_index_plus_rows(served):
    root, server = served
    rng = np.random.default_rng(0)
    emb = _table(rng)
    tfshard.save(root / "bert", {"emb": emb, "bias": np.arange(768, dtype=np.float32)})
    index_size = (root / "bert.index").stat().st_size
    server.reset()
    with tfshard.open(server.url_of("bert")) as ckpt:
        assert server.log == [("GET", index_size)]  # the index in one request
        assert sorted(ckpt) == ["bias", "emb"]
        assert ckpt.info("emb").shape == (30522, 768)
        rows = ckpt.read("emb", index=np.s_[1000:1100])
    np.testing.assert_array_equal(rows, emb[1000:1100])
    row_bytes = 100 * 768 * 4
    assert server.requests == 2
    assert [m for m, _ in server.log] == ["GET", "GET"]
    assert server.bytes_served <= index_size + row_bytes + MiB
    assert server.log[1][1] == row_bytes  # exactly the rows


def test_tensor_is_one_ranged_request_large_ones_split(served, monkeypatch):
    root, server = served
    rng = np.random.default_rng(1)
    small = rng.standard_normal(1000)
    big = rng.standard_normal((64, 1024))   # 512 KiB
    tfshard.save(root / "c", {"small": small, "big": big})
    with tfshard.open(server.url_of("c")) as ckpt:
        server.reset()
        np.testing.assert_array_equal(ckpt["small"], small)
        assert server.log == [("GET", small.nbytes)]
        monkeypatch.setattr(storage, "CHUNK", 128 << 10)
        server.reset()
        np.testing.assert_array_equal(ckpt["big"], big)
        assert server.requests == 4 and server.bytes_served == big.nbytes
        server.reset()
        np.testing.assert_array_equal(ckpt["big"], big)  # fetched bytes are kept
        assert server.requests == 0


def test_load_fetches_every_byte_once(served):
    root, server = served
    rng = np.random.default_rng(2)
    tensors = {f"layer{i}/w": rng.standard_normal((50, 40)).astype(np.float32)
               for i in range(30)}
    tensors["names"] = np.array([b"a", b"bc", b""], dtype=object)
    tensors["emb"] = _table(rng, 4000, 64)
    tfshard.save(root / "m", tensors, num_shards=3)
    server.reset()
    out = tfshard.load(server.url_of("m"))
    assert out.keys() == tensors.keys()
    for name, value in tensors.items():
        np.testing.assert_array_equal(out[name], value)
    index_size = (root / "m.index").stat().st_size
    data = _data_bytes(root, "m")
    assert server.bytes_served <= index_size + data
    # Small adjacent tensors are coalesced: far fewer requests than tensors.
    assert server.requests <= 1 + 3 + data // storage.CHUNK + 1
    # Whatever fetched, the arrays are read-only, like the local reader's views.
    assert not out["emb"].flags.writeable


def test_partitioned_rows_fetch_only_intersecting_slices(served):
    root, server = served
    full = np.arange(400 * 32, dtype=np.float32).reshape(400, 32)
    with tfshard.CheckpointWriter(root / "p", num_shards=2) as w:
        for start in range(0, 400, 100):
            w.add_slice("emb", [400, 32], f"{start},100:-", full[start:start + 100])
        w.add("other", np.zeros(100000, np.float32))
    with tfshard.open(server.url_of("p")) as ckpt:
        server.reset()
        np.testing.assert_array_equal(ckpt.read("emb", index=np.s_[120:180]), full[120:180])
        assert server.bytes_served == 100 * 32 * 4  # one slice of four
        np.testing.assert_array_equal(ckpt["emb"], full)
        assert ckpt.info("emb").slices


def test_writable_and_string_reads(served):
    root, server = served
    tfshard.save(root / "w", {"x": np.arange(10.0), "s": np.array([[b"q", b"rs"]], object)})
    with tfshard.open(server.url_of("w")) as ckpt:
        x = ckpt.read("x", writable=True)
        x[0] = 42.0
        assert ckpt["x"][0] == 0.0
        assert ckpt["s"].tolist() == [[b"q", b"rs"]]
        assert ckpt.verify_all() == []


def test_v1_checkpoints_read_whole(served):
    root, server = served
    for rel in ("dtypes/model.ckpt", "sharded/model.ckpt-00000-of-00002",
                "sharded/model.ckpt-?????-of-00002"):
        folder = root / rel.split("/")[0]
        if not folder.exists():
            shutil.copytree(V1_DIR / rel.split("/")[0], folder)
        local = V1_DIR / rel
        with tfshard.open(local) as want, tfshard.open(server.url_of(rel)) as got:
            assert type(got).__name__ == "RemoteV1Checkpoint"
            assert list(got) == list(want)
            for name in want:
                a, b = want[name], got[name]
                if a.dtype == object:
                    assert a.tolist() == b.tolist()
                else:
                    np.testing.assert_array_equal(a, b)


def test_state_file_directory_and_latest_checkpoint(served):
    root, server = served
    mgr = tfshard.CheckpointManager(root / "train", max_to_keep=2)
    mgr.save({"step": np.int64(1)})
    mgr.save({"step": np.int64(2)})
    url = server.url_of("train")
    assert tfshard.latest_checkpoint(url) == url + "/ckpt-2"
    assert tfshard.load(url)["step"] == 2
    reader = tfshard.load_checkpoint(url)
    assert reader.get_tensor("step") == 2
    assert tfshard.latest_checkpoint(server.url_of("nowhere")) is None


def test_missing_objects_are_checkpoint_not_found(served):
    root, server = served
    with pytest.raises(tfshard.CheckpointNotFoundError, match="no checkpoint at"):
        tfshard.open(server.url_of("absent/ckpt"))
    with pytest.raises(tfshard.CheckpointNotFoundError):
        tfshard.open(server.url_of("absent/ckpt.index"))
    tfshard.save(root / "c", {"x": np.arange(5.0)}, num_shards=2)
    (root / "c.data-00000-of-00002").unlink()
    (root / "c.data-00001-of-00002").unlink()
    with tfshard.open(server.url_of("c")) as ckpt:
        with pytest.raises(tfshard.CheckpointNotFoundError, match="data-0000"):
            ckpt["x"]


def test_truncated_and_corrupt_data(served):
    root, server = served
    x = np.arange(1000.0)
    tfshard.save(root / "t", {"a": np.ones(500), "x": x})
    with tfshard.open(root / "t") as local:
        offset = local.info("x").offset
    assert offset > 0
    data = root / "t.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[offset + 100] ^= 0xFF
    data.write_bytes(bytes(raw))
    with tfshard.open(server.url_of("t")) as ckpt:
        with pytest.raises(tfshard.ChecksumMismatchError) as info:
            ckpt["x"]
    assert info.value.offset == offset and f"offset {offset}" in str(info.value)
    # load() decodes from the fetched pieces; the error still names the object's offset.
    with pytest.raises(tfshard.ChecksumMismatchError) as info:
        tfshard.load(server.url_of("t"))
    assert info.value.offset == offset and f"offset {offset}" in str(info.value)
    data.write_bytes(bytes(raw[:4000]))
    with tfshard.open(server.url_of("t")) as ckpt:
        with pytest.raises(tfshard.CorruptCheckpointError, match="ended early|shorter"):
            ckpt.read("x", verify=False)


def test_connection_broken_mid_load_never_gives_partial_arrays(served):
    root, server = served
    rng = np.random.default_rng(3)
    tensors = {f"t{i}": rng.standard_normal(100_000) for i in range(8)}
    tfshard.save(root / "b", tensors)
    url = server.url_of("b")
    with tfshard.open(url) as ckpt:
        server.break_after(1_000_000)
        with pytest.raises(tfshard.RemoteStorageError) as info:
            for name in ckpt:
                ckpt[name]
        assert info.value.path.startswith(url)
        assert info.value.__cause__ is not None
        server.break_after(None)
        for name, value in tensors.items():  # what failed is fetched again, whole
            np.testing.assert_array_equal(ckpt[name], value)
    server.break_after(2_000_000)
    with pytest.raises(tfshard.RemoteStorageError):
        tfshard.load(url)


def test_stopped_server_is_reported_quickly(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    tfshard.save(root / "s", {"x": np.arange(10.0)})
    server = RangeServer(root)
    try:
        ckpt = tfshard.open(server.url_of("s"))
    finally:
        server.stop()
    start = time.monotonic()
    with pytest.raises(tfshard.RemoteStorageError, match="127.0.0.1"):
        ckpt["x"]
    assert time.monotonic() - start < 60
    with pytest.raises(tfshard.RemoteStorageError):
        tfshard.open(server.url_of("s"))


def test_stalled_server_hits_the_deadline(monkeypatch):
    import socket

    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        monkeypatch.setattr(storage, "REQUEST_TIMEOUT", 2.0)
        start = time.monotonic()
        with pytest.raises(tfshard.RemoteStorageError, match="within 2 s"):
            tfshard.open(f"http://127.0.0.1:{listener.getsockname()[1]}/ckpt")
        assert time.monotonic() - start < 10


def test_unknown_protocol_and_missing_package_are_clear():
    with pytest.raises(tfshard.UnsupportedError, match="nosuchproto"):
        tfshard.open("nosuchproto://bucket/ckpt")


def test_local_paths_never_import_fsspec(tmp_path):
    tfshard.save(tmp_path / "c", {"x": np.arange(3.0)})
    code = ("import sys, tfshard; tfshard.load(sys.argv[1]); tfshard.list_variables(sys.argv[1]);"
            "tfshard.save(sys.argv[1] + '2', {'y': [1.0]});"
            "print('fsspec' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], check=True,
                         capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.stdout.strip() == "False"


# ---- memory://: write ordering --------------------------------------------------------

class _FailingPuts:
    """Makes the memory filesystem refuse uploads whose path contains ``what``."""

    def __init__(self, monkeypatch, fs, what):
        original = type(fs).put_file

        def put_file(self, lpath, rpath, *args, **kwargs):
            if what in rpath:
                raise ConnectionResetError(f"connection reset uploading {rpath}")
            return original(self, lpath, rpath, *args, **kwargs)

        monkeypatch.setattr(type(fs), "put_file", put_file)


def test_failed_upload_leaves_no_index_and_no_data(monkeypatch):
    fs = fsspec.filesystem("memory")
    if fs.exists("/wfail"):
        fs.rm("/wfail", recursive=True)
    tfshard.save("memory://wfail/old", {"x": np.arange(3.0)})
    _FailingPuts(monkeypatch, fs, "data-00001")
    with pytest.raises(tfshard.RemoteStorageError, match="data-00001"):
        tfshard.save("memory://wfail/new", {"a": np.ones(4), "b": np.zeros(4)}, num_shards=2)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("/wfail", detail=False)) == [
        "old.data-00000-of-00001", "old.index"]
    monkeypatch.undo()
    _FailingPuts(monkeypatch, fs, ".index")
    with pytest.raises(tfshard.RemoteStorageError, match=r"\.index"):
        tfshard.save("memory://wfail/old", {"x": np.arange(7.0)})
    # The old checkpoint is whole: new data went under other names and was removed.
    np.testing.assert_array_equal(tfshard.load("memory://wfail/old")["x"], np.arange(3.0))
    assert len(fs.ls("/wfail", detail=False)) == 2


def test_upload_order_data_then_index_then_state(monkeypatch):
    fs = fsspec.filesystem("memory")
    order = []
    original = type(fs).put_file
    original_pipe = type(fs).pipe_file

    def put_file(self, lpath, rpath, *args, **kwargs):
        order.append(rpath.rsplit("/", 1)[1])
        return original(self, lpath, rpath, *args, **kwargs)

    def pipe_file(self, path, *args, **kwargs):
        order.append(path.rsplit("/", 1)[1])
        return original_pipe(self, path, *args, **kwargs)

    monkeypatch.setattr(type(fs), "put_file", put_file)
    monkeypatch.setattr(type(fs), "pipe_file", pipe_file)
    mgr = tfshard.CheckpointManager("memory://order/run", num_shards=3)
    assert mgr.save({"a": np.ones(3), "b": np.ones(2)}) == "memory://order/run/ckpt-1"
    assert sorted(order[:3]) == [f"ckpt-1.data-0000{i}-of-00003" for i in range(3)]
    assert order[3:] == ["ckpt-1.index", "checkpoint"]


# ---- s3:// through moto's server --------------------------------------------------------

def test_s3_write_read_roundtrip(s3):
    rng = np.random.default_rng(4)
    tensors = {"emb": _table(rng, 2000, 128), "w": rng.standard_normal((7, 3)),
               "s": np.array([b"hello", b""], dtype=object), "i": np.int64(5)}
    url = "s3://bucket/run/model"
    assert tfshard.save(url, tensors, num_shards=3, storage_options=s3.options) == url
    out = tfshard.load(url, storage_options=s3.options)
    for name, value in tensors.items():
        if value.dtype == object:
            assert out[name].tolist() == value.tolist()
        else:
            np.testing.assert_array_equal(out[name], value)
    with tfshard.open(url + ".index", storage_options=s3.options) as ckpt:
        np.testing.assert_array_equal(ckpt.read("emb", index=np.s_[10:20]), tensors["emb"][10:20])
    assert tfshard.list_variables(url, storage_options=s3.options)[0] == ("emb", [2000, 128])


def test_s3_framework_drop_ins_take_storage_options(s3):
    """tfshard.torch / tfshard.jax load_file and save_file, and safe_open, at s3:// URLs."""
    torch = pytest.importorskip("torch")
    tjax = pytest.importorskip("tfshard.jax")
    import tfshard.torch as tt

    opts = s3.options
    weights = {"a": torch.arange(12, dtype=torch.float32).reshape(3, 4),
               "b": torch.ones(5, dtype=torch.bfloat16)}
    url = "s3://bucket/fw/torch"
    assert tt.save_file(weights, url, storage_options=opts) == url
    back = tt.load_file(url, storage_options=opts)
    assert set(back) == {"a", "b"} and back["b"].dtype == torch.bfloat16
    assert torch.equal(back["a"], weights["a"]) and torch.equal(back["b"], weights["b"])
    with tfshard.safe_open(url, "np", storage_options=opts) as f:
        np.testing.assert_array_equal(f.get_slice("a")[1:3], np.arange(4, 12).reshape(2, 4))
    assert tjax.save_file({"c": np.arange(3, dtype=np.int32)}, "s3://bucket/fw/jax", storage_options=opts)
    assert tjax.load_file("s3://bucket/fw/jax", storage_options=opts)["c"].tolist() == [0, 1, 2]
    with pytest.raises(tfshard.CheckpointNotFoundError):
        tt.load_file("s3://bucket/fw/none", storage_options=opts)


def test_s3_partitioned_and_v1(s3):
    fs = s3.filesystem()
    full = np.arange(60, dtype=np.int32).reshape(12, 5)
    with tfshard.CheckpointWriter("s3://bucket/part/ckpt", storage_options=s3.options) as w:
        w.add_slice("p", [12, 5], "0,6:-", full[:6])
        w.add_slice("p", [12, 5], "6,6:-", full[6:])
    with tfshard.open("s3://bucket/part/ckpt", storage_options=s3.options) as ckpt:
        np.testing.assert_array_equal(ckpt["p"], full)
        np.testing.assert_array_equal(ckpt.read("p", index=np.s_[7:9]), full[7:9])
    fs.put(str(V1_DIR / "sharded") + "/", "bucket/v1/", recursive=True)
    with tfshard.open(V1_DIR / "sharded" / "model.ckpt-?????-of-00002") as want, \
            tfshard.open("s3://bucket/v1/model.ckpt", storage_options=s3.options) as got:
        assert list(got) == list(want) and got.num_shards == 2
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_s3_manager_and_state_directory(s3):
    opts = s3.options
    mgr = tfshard.CheckpointManager("s3://bucket/train", max_to_keep=2, storage_options=opts)
    for step in range(1, 5):
        mgr.save({"step": np.int64(step), "w": np.full(10, step, np.float32)})
    assert tfshard.latest_checkpoint("s3://bucket/train", storage_options=opts) == \
        "s3://bucket/train/ckpt-4"
    assert tfshard.load("s3://bucket/train", storage_options=opts)["step"] == 4
    names = sorted(p.rsplit("/", 1)[1] for p in s3.filesystem().ls("bucket/train"))
    assert names == ["checkpoint", "ckpt-3.data-00000-of-00001", "ckpt-3.index",
                     "ckpt-4.data-00000-of-00001", "ckpt-4.index"]
    again = tfshard.CheckpointManager("s3://bucket/train", max_to_keep=2, storage_options=opts)
    assert again.checkpoints == ["s3://bucket/train/ckpt-3", "s3://bucket/train/ckpt-4"]
    assert again.save({"step": np.int64(5)}) == "s3://bucket/train/ckpt-5"


def test_s3_missing_keys_and_dead_endpoint(s3):
    with pytest.raises(tfshard.CheckpointNotFoundError):
        tfshard.open("s3://bucket/no/such/ckpt", storage_options=s3.options)
    with pytest.raises(tfshard.CheckpointNotFoundError):
        tfshard.load("s3://no-such-bucket/ckpt", storage_options=s3.options)
    dead = {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_port()}",
                              "region_name": "us-east-1"}}
    start = time.monotonic()
    with pytest.raises(tfshard.RemoteStorageError, match="s3://bucket/ckpt"):
        tfshard.open("s3://bucket/ckpt", storage_options=dead)
    assert time.monotonic() - start < 60


# ---- conversions and the command line ---------------------------------------------------

def test_convert_between_urls_with_separate_options(s3, served):
    root, server = served
    from tfshard import conversion

    rng = np.random.default_rng(6)
    tensors = {"w": rng.standard_normal((6, 4)).astype(np.float32), "b": np.ones(4, np.float32)}
    tfshard.save(root / "src", tensors)
    # http source, s3 destination: the options are for the destination only.
    report = conversion.convert(server.url_of("src"), "s3://bucket/conv/model.safetensors",
                                dst_storage_options=s3.options)
    assert report.outputs == ["s3://bucket/conv/model.safetensors"]
    with pytest.raises(tfshard.OutputExistsError):
        conversion.convert(server.url_of("src"), "s3://bucket/conv/model.safetensors",
                           dst_storage_options=s3.options)
    conversion.convert("s3://bucket/conv/model.safetensors", "s3://bucket/conv/back",
                       storage_options=s3.options, max_shard_size=64)
    back = tfshard.load("s3://bucket/conv/back", storage_options=s3.options)
    for name, value in tensors.items():
        np.testing.assert_array_equal(back[name], value)
    assert conversion.verify("s3://bucket/conv/back", storage_options=s3.options).ok


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tfshard", *map(str, args)],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))


def test_cli_takes_urls_and_storage_options(s3, tmp_path):
    tfshard.save("s3://bucket/cli/ckpt", {"w": np.arange(6.0).reshape(2, 3)},
                 storage_options=s3.options)
    opts = ["--storage-option", "key=testing", "--storage-option", "secret=testing",
            "--storage-option", f"client_kwargs.endpoint_url={s3.endpoint}",
            "--storage-option", "client_kwargs.region_name=us-east-1"]
    out = _cli("ls", "s3://bucket/cli/ckpt", "--json", *opts)
    assert out.returncode == 0, out.stderr
    import json

    listing = json.loads(out.stdout)
    assert listing["prefix"] == "s3://bucket/cli/ckpt"
    assert [t["shape"] for t in listing["tensors"]] == [[2, 3]]
    out = _cli("convert", "s3://bucket/cli/ckpt", "s3://bucket/cli/m.safetensors", *opts)
    assert out.returncode == 0, out.stderr
    out = _cli("verify", "s3://bucket/cli/m.safetensors", *opts)
    assert out.returncode == 0 and "s3://bucket/cli/m.safetensors" in out.stdout, out
    out = _cli("ls", "s3://bucket/cli/absent", *opts)
    assert out.returncode == 1 and "no checkpoint at" in out.stderr
    out = _cli("ls", "s3://bucket/cli/ckpt", "--storage-option", "novalue")
    assert out.returncode == 2 and "KEY=VALUE" in out.stderr


def test_parse_option_nests_and_reads_json():
    opts: dict = {}
    storage.parse_option("anon=true", opts)
    storage.parse_option("client_kwargs.endpoint_url=http://h:9", opts)
    storage.parse_option("client_kwargs.verify=false", opts)
    storage.parse_option("token=abc", opts)
    assert opts == {"anon": True, "token": "abc",
                    "client_kwargs": {"endpoint_url": "http://h:9", "verify": False}}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        storage.parse_option("=x", {})


def test_file_urls_read_and_write_local_folders(tmp_path):
    url = (tmp_path / "new" / "ckpt").as_uri()
    assert tfshard.save(url, {"x": np.arange(4.0)}, num_shards=2) == url
    np.testing.assert_array_equal(tfshard.load(tmp_path / "new" / "ckpt")["x"], np.arange(4.0))
    mgr = tfshard.CheckpointManager((tmp_path / "run").as_uri())
    mgr.save({"y": np.ones(2)})
    # The state file is TF's: a local manager and TensorFlow read it back.
    assert tfshard.latest_checkpoint(tmp_path / "run") == str(tmp_path / "run" / "ckpt-1")


def test_v1_latest_checkpoint_and_range_ignoring_server(served, monkeypatch):
    root, server = served
    shutil.copytree(V1_DIR / "sharded", root / "v1")
    (root / "v1" / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-?????-of-00002"\n')
    url = server.url_of("v1")
    assert tfshard.latest_checkpoint(url) == url + "/model.ckpt-?????-of-00002"
    assert len(tfshard.load(url)) == len(tfshard.load(V1_DIR / "sharded" / "model.ckpt-?????-of-00002"))
    tfshard.save(root / "r", {"x": np.arange(100.0), "y": np.ones(100)})
    from remote_servers import _Handler

    serve = _Handler.do_GET

    def ignore_range(self):  # a server that answers every GET with the whole file
        del self.headers["Range"]
        return serve(self)

    monkeypatch.setattr(_Handler, "do_GET", ignore_range)
    with tfshard.open(server.url_of("r")) as ckpt:  # the index is read whole anyway
        with pytest.raises(tfshard.RemoteStorageError, match="ignores HTTP Range"):
            ckpt["y"]


def test_reads_without_an_in_memory_file(served, monkeypatch):
    """Where the OS has no memfd (macOS, Windows), fetched ranges go to an anonymous map."""
    root, server = served
    monkeypatch.setattr(storage, "_memory_file", lambda size: (-1, None))
    emb = np.arange(2000 * 16, dtype=np.float32).reshape(2000, 16)
    tfshard.save(root / "f", {"emb": emb})
    with tfshard.open(server.url_of("f")) as ckpt:
        server.reset()
        np.testing.assert_array_equal(ckpt.read("emb", index=np.s_[10:20]), emb[10:20])
        assert server.bytes_served == 10 * 16 * 4
        whole = ckpt["emb"]
        np.testing.assert_array_equal(whole, emb)
        assert not whole.flags.writeable
        ckpt.release("emb")
        np.testing.assert_array_equal(whole, emb)


def test_release_keeps_values(served):
    root, server = served
    x = np.arange(100000, dtype=np.float64)
    tfshard.save(root / "rel", {"x": x})
    with tfshard.open(server.url_of("rel")) as ckpt:
        view = ckpt["x"]
        ckpt.release("x")  # drops this process's pages; the fetched bytes stay
        np.testing.assert_array_equal(view, x)
        server.reset()
        np.testing.assert_array_equal(ckpt["x"], x)
        assert server.requests == 0


def test_server_stopped_during_load(tmp_path):
    import threading

    root = tmp_path / "www"
    root.mkdir()
    rng = np.random.default_rng(7)
    tfshard.save(root / "m", {f"t{i}": rng.standard_normal(250_000) for i in range(4)})
    server = RangeServer(root, rate=8 << 20)  # 8 MB take about a second to serve
    stopper = threading.Timer(0.3, server.stop)
    try:
        stopper.start()
        start = time.monotonic()
        with pytest.raises(tfshard.RemoteStorageError) as info:
            tfshard.load(server.url_of("m"))
        assert time.monotonic() - start < 60
        assert "127.0.0.1" in str(info.value) and info.value.__cause__ is not None
    finally:
        stopper.join()


def test_concurrent_readers_fetch_each_byte_once(served):
    from concurrent.futures import ThreadPoolExecutor

    root, server = served
    emb = np.arange(4000 * 32, dtype=np.float32).reshape(4000, 32)
    tfshard.save(root / "cc", {"emb": emb})
    with tfshard.open(server.url_of("cc")) as ckpt:
        server.reset()
        spans = [(i * 100, i * 100 + 300) for i in range(30)]  # overlapping row ranges
        with ThreadPoolExecutor(8) as pool:
            parts = list(pool.map(lambda s: ckpt.read("emb", index=np.s_[s[0]:s[1]]), spans))
        for (a, b), part in zip(spans, parts):
            np.testing.assert_array_equal(part, emb[a:b])
        assert server.bytes_served <= emb.nbytes
        with ThreadPoolExecutor(8) as pool:
            wholes = list(pool.map(lambda _: ckpt["emb"], range(8)))
        for whole in wholes:
            np.testing.assert_array_equal(whole, emb)
        assert server.bytes_served == emb.nbytes  # every byte once, whoever asked
