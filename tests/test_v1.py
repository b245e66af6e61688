"""Legacy V1 ("TensorSlice") checkpoints through ``tfshard.open``.

Goldens under ``tests/data/v1/`` were written by TF 2.21's V1 saver
(``tests/data/make_v1_goldens.py``); ``manifest.json`` holds the values TF was given.
The TF cross-checks run TF's own V1 reader (the ``Restore`` op) on the same files.
Hostile files are built here: protobuf records encoded by hand into SSTables with valid
block checksums, so the V1 parsers themselves are reached.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import bundle_builder as bb
from helpers import tensor_sha256

import tfshard
from tfshard import _build, cli
from tfshard.reader_v1 import V1Checkpoint, _key

V1_DIR = Path(__file__).parent / "data" / "v1"
MANIFEST = json.loads((V1_DIR / "manifest.json").read_text())
PREFIXES = sorted(MANIFEST)


def v1_files(rel: str) -> list[Path]:
    prefix = V1_DIR / rel
    if prefix.is_file():
        return [prefix]
    return sorted(prefix.parent.glob(prefix.name + "-?????-of-?????"))


def tf_pattern(rel: str) -> str:
    """What TF's V1 reader is given for a golden: the file or the shard pattern."""
    files = v1_files(rel)
    if len(files) == 1 and files[0] == V1_DIR / rel:
        return str(files[0])
    return f"{V1_DIR / rel}-?????-of-{len(files):05d}"


# ---- goldens -----------------------------------------------------------------------

GOLDEN_PARAMS = [pytest.param(rel, name, id=f"{rel}:{name}")
                 for rel in PREFIXES for name in sorted(MANIFEST[rel])]


@pytest.mark.parametrize("rel, name", GOLDEN_PARAMS)
def test_golden_tensor_matches_manifest(rel, name):
    record = MANIFEST[rel][name]
    with tfshard.open(V1_DIR / rel) as ckpt:
        arr = ckpt[name]
        info = ckpt.info(name)
    assert list(arr.shape) == record["shape"]
    assert str(arr.dtype) == record["numpy_dtype"]
    assert tensor_sha256(arr) == record["sha256"]
    assert info.dtype == record["dtype"] and list(info.shape) == record["shape"]
    assert info.shard is None and info.offset is None
    assert not arr.flags.writeable


@pytest.mark.parametrize("rel", PREFIXES)
def test_golden_listing(rel):
    expected = sorted((n, r["shape"]) for n, r in MANIFEST[rel].items())
    assert tfshard.list_variables(V1_DIR / rel) == expected
    with tfshard.open(V1_DIR / rel) as ckpt:
        assert isinstance(ckpt, V1Checkpoint) and isinstance(ckpt, tfshard.Checkpoint)
        assert list(ckpt) == [n for n, _ in expected] and len(ckpt) == len(expected)
        assert [i.name for i in ckpt.infos()] == list(ckpt)
        assert ckpt.verify_all() == []
        assert ckpt.num_shards == len(v1_files(rel))
        assert "V1" in repr(ckpt)
    loaded = tfshard.load(V1_DIR / rel)
    assert {n: tensor_sha256(a) for n, a in loaded.items()} == \
        {n: r["sha256"] for n, r in MANIFEST[rel].items()}


def test_strings_and_special_values():
    with tfshard.open(V1_DIR / "dtypes" / "model.ckpt") as ckpt:
        s = ckpt["t_string"]
        assert s.dtype == object and s[0, 0] == b"" and s[0, 2] == b"\xff\xfe non-utf8"
        assert s[1, 1] == bytes(range(256))
        assert ckpt["scalar_string"][()] == b"hello, v1"
        assert ckpt.info("t_string").nbytes == sum(len(x) for x in s.ravel())
        f16 = ckpt["t_float16"]
        assert np.isnan(f16[1, 2]) and np.isinf(f16[1, 1]) and np.signbit(f16[1, 0])
        assert ckpt["t_int8"][0, 2] == -128 and ckpt["t_uint16"][0, 2] == 65535
        assert ckpt["t_int64"][1, 0] == np.iinfo(np.int64).max
        assert ckpt["empty_complex128"].shape == (0, 3)
        assert ckpt.info("t_complex128").nbytes == 6 * 16


def test_partitioned_info_and_row_ranges():
    with tfshard.open(V1_DIR / "partitioned" / "model.ckpt") as ckpt:
        full = ckpt["dense/kernel"]
        info = ckpt.info("dense/kernel")
        assert info.slices == (((0, 4), (0, 4)), ((4, 3), (0, 4)), ((7, 3), (0, 4)))
        assert info.nbytes == 160
        assert ckpt.info("dense/bias").slices == ()
        np.testing.assert_array_equal(ckpt.read("dense/kernel", index=np.s_[3:8]), full[3:8])
        np.testing.assert_array_equal(ckpt.read("dense/kernel", index=5), full[5])
        np.testing.assert_array_equal(ckpt.read("dense/kernel", index=np.s_[-2:, 1]),
                                      full[-2:, 1])
        np.testing.assert_array_equal(ckpt.read("cols", index=np.s_[1:3]), ckpt["cols"][1:3])
        np.testing.assert_array_equal(ckpt.read("ids", index=np.s_[::2]), ckpt["ids"][::2])
        with pytest.raises(IndexError):
            ckpt.read("dense/kernel", index=10)


def test_sharded_paths_and_state_file():
    d = V1_DIR / "sharded"
    expected = tfshard.load(d)
    assert sorted(expected) == ["a", "b", "c", "emb"]
    for path in (d, d / "model.ckpt", d / "model.ckpt-00000-of-00002",
                 d / "model.ckpt-00001-of-00002", str(d / "model.ckpt-?????-of-00002")):
        with tfshard.open(path) as ckpt:
            # The prefix of the shards, or the pattern TF's state file names them by.
            assert ckpt.prefix in (str(d / "model.ckpt"), str(d / "model.ckpt-?????-of-00002"))
            assert ckpt.num_shards == 2
            np.testing.assert_array_equal(ckpt["emb"], expected["emb"])
    # As TF: the state file's pattern is returned as written.
    assert tfshard.latest_checkpoint(d) == str(d / "model.ckpt-?????-of-00002")
    assert tfshard.latest_checkpoint(V1_DIR / "partitioned") == \
        str(V1_DIR / "partitioned" / "model.ckpt")
    np.testing.assert_array_equal(tfshard.load_variable(d, "emb")[3:], expected["emb"][3:])


def test_missing_shard_and_mixed_saves(tmp_path):
    src = V1_DIR / "sharded"
    shutil.copy(src / "model.ckpt-00000-of-00002", tmp_path / "m-00000-of-00002")
    with pytest.raises(tfshard.CheckpointNotFoundError, match="missing m-00001-of-00002"):
        tfshard.open(tmp_path / "m")
    shutil.copy(src / "model.ckpt-00001-of-00002", tmp_path / "m-00001-of-00002")
    assert sorted(tfshard.load(tmp_path / "m")) == ["a", "b", "c", "emb"]
    shutil.copy(V1_DIR / "misc" / "model.ckpt", tmp_path / "m-00000-of-00001")
    with pytest.raises(tfshard.CheckpointNotFoundError, match="several saves"):
        tfshard.open(tmp_path / "m")
    with tfshard.open(str(tmp_path / "m-?????-of-00001")) as ckpt:  # the pattern picks one
        assert "q/qint8" in ckpt and ckpt.num_shards == 1
    with tfshard.open(tmp_path / "m-00001-of-00002") as ckpt:        # so does a shard file
        assert "emb" in ckpt and ckpt.num_shards == 2


def test_v2_wins_when_index_exists(tmp_path):
    shutil.copy(V1_DIR / "misc" / "model.ckpt", tmp_path / "ckpt")
    assert isinstance(tfshard.open(tmp_path / "ckpt"), V1Checkpoint)
    tfshard.save(str(tmp_path / "ckpt"), {"v2": np.arange(3, dtype=np.float32)})
    with tfshard.open(tmp_path / "ckpt") as ckpt:
        assert not isinstance(ckpt, V1Checkpoint) and list(ckpt) == ["v2"]


def test_non_checkpoint_files_are_not_v1(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"x" * 100)
    with pytest.raises(tfshard.CheckpointNotFoundError):
        tfshard.open(junk)


def test_lookup_errors_and_close():
    ckpt = tfshard.open(V1_DIR / "partitioned" / "model.ckpt")
    with pytest.raises(tfshard.TensorNotFoundError, match="dense/kernel"):
        ckpt["dense/kernal"]
    with pytest.raises(tfshard.TensorNotFoundError):
        ckpt.release("nope")
    with pytest.raises(tfshard.TensorNotFoundError):
        ckpt.read(3)
    assert 3 not in ckpt and "ids" in ckpt
    arr = ckpt["ids"]
    ckpt.release("ids")
    ckpt.close()
    ckpt.close()
    assert "closed" in repr(ckpt) and arr[0] == 5
    with pytest.raises(ValueError, match="closed"):
        ckpt["ids"]


# ---- CLI --------------------------------------------------------------------------

def test_cli_ls_show_verify(capsys):
    assert cli.main(["ls", str(V1_DIR / "partitioned"), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    text = json.dumps(listing)
    assert "dense/kernel" in text and "global_step" in text
    assert cli.main(["show", str(V1_DIR / "sharded"), "emb"]) == 0
    assert "-5.5" in capsys.readouterr().out
    assert cli.main(["verify", str(V1_DIR / "large" / "model.ckpt")]) == 0
    assert cli.main(["show", str(V1_DIR / "sharded"), "nope"]) == 1


def test_cli_convert_to_v2_and_safetensors(tmp_path):
    src = V1_DIR / "partitioned" / "model.ckpt"
    assert cli.main(["convert", str(src), str(tmp_path / "out" / "ckpt")]) == 0
    assert cli.main(["convert", str(src), str(tmp_path / "m.safetensors")]) == 0
    expected = tfshard.load(src)
    for out in (tmp_path / "out" / "ckpt", tmp_path / "m.safetensors"):
        from tfshard.formats import open_source

        with open_source(str(out)) as s:
            assert sorted(s.names()) == sorted(expected)
            for name in expected:
                np.testing.assert_array_equal(s.read(name), expected[name])


# ---- TensorFlow cross-checks --------------------------------------------------------

@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def _tf_value(tf, pattern, name, dtype, like):
    got = tf.raw_ops.Restore(file_pattern=pattern, tensor_name=name, dt=dtype).numpy()
    if dtype.is_quantized:   # TF returns a structured numpy type; tfshard its storage type
        got = np.asarray(got).view(like.dtype)
    return got


@pytest.mark.parametrize("rel", PREFIXES)
def test_tf_reads_the_same_values(tf, rel):
    pattern = tf_pattern(rel)
    reader = tf.train.load_checkpoint(pattern)
    shapes, types = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    with tfshard.open(V1_DIR / rel) as ckpt:
        assert sorted(shapes) == list(ckpt)
        for name in ckpt:
            info = ckpt.info(name)
            assert info.dtype == types[name].name and list(info.shape) == shapes[name], name
            mine = ckpt[name]
            theirs = _tf_value(tf, pattern, name, types[name], mine)
            if mine.dtype == object:
                assert list(np.asarray(theirs, dtype=object).ravel()) == list(mine.ravel())
            else:
                assert theirs.shape == mine.shape and theirs.tobytes() == mine.tobytes(), name


@pytest.mark.parametrize("rel", ["dtypes/model.ckpt", "partitioned/model.ckpt",
                                 "sharded/model.ckpt"])
def test_v1_to_v2_read_back_by_tf(tf, tmp_path, rel):
    values = tfshard.load(V1_DIR / rel)
    out = str(tmp_path / "v2" / "ckpt")
    assert cli.main(["convert", str(V1_DIR / rel), out]) == 0
    saved = tfshard.save(str(tmp_path / "saved"), values)
    for prefix in (out, saved):
        reader = tf.train.load_checkpoint(prefix)
        assert sorted(reader.get_variable_to_shape_map()) == sorted(values)
        for name, want in values.items():
            got = reader.get_tensor(name)
            if want.dtype == object:
                assert list(np.asarray(got, dtype=object).ravel()) == list(want.ravel())
            else:
                assert np.asarray(got).tobytes() == want.tobytes(), (prefix, name)


# ---- hand-built files ---------------------------------------------------------------

_varint = bb.varint


def _len(num: int, payload: bytes) -> bytes:
    return bb.field(num, 2, payload)


def _int(num: int, value: int) -> bytes:
    return bb.field(num, 0, value)


def _shape(dims) -> bytes:
    return b"".join(_len(2, _int(1, d)) for d in dims)


def _slice(extents) -> bytes:
    return b"".join(_len(1, (_int(1, s) if s else b"") + (_int(2, n) if n >= 0 else b""))
                    for s, n in extents)


def _meta(tensors, producer=1, min_consumer=0) -> bytes:
    body = b""
    for name, dtype, dims, slices in tensors:
        body += _len(1, _len(1, name.encode()) + _len(2, _shape(dims)) + _int(3, dtype)
                     + b"".join(_len(4, _slice(e)) for e in slices))
    return _len(1, body + _len(2, _int(1, producer) + _int(2, min_consumer)))


def _data(name, extents, proto) -> bytes:
    return _len(2, _len(1, name.encode()) + _len(2, _slice(extents)) + _len(3, proto))


def _floats(values, packed=True) -> bytes:
    raw = np.asarray(values, "<f4").tobytes()
    if packed:
        return _len(5, raw)
    return b"".join(_varint(5 << 3 | 5) + raw[i:i + 4] for i in range(0, len(raw), 4))


def write_v1(path, tensors, records, **versions):
    """An SSTable with a meta record for ``tensors`` and one data record per
    ``records[(name, extents)] = TensorProto bytes``."""
    pairs = {b"": _meta(tensors, **versions)}
    for (name, extents), proto in records.items():
        pairs[_key(name, extents)] = _data(name, extents, proto)
    keys = sorted(pairs)
    Path(path).write_bytes(_build.build_table(keys, [pairs[k] for k in keys]))
    return str(path)


FLOAT, HALF, BF16, STRING, INT32, INT8, BOOL, C64 = 1, 19, 14, 7, 3, 6, 10, 8
ALL = (0, -1)


def test_hand_built_encodings_decode(tmp_path, tf):
    """Unpacked repeated fields, tensor_content, bfloat16 in half_val, uint32 and
    negative int_val values truncated to int8 all decode; TF agrees where it reads them."""
    path = write_v1(tmp_path / "ok", [
        ("unpacked", FLOAT, [3], [[ALL]]),
        ("content", FLOAT, [2], [[ALL]]),
        ("bf16", BF16, [2], [[ALL]]),
        ("i8", INT8, [3], [[ALL]]),
        ("flags", BOOL, [3], [[ALL]]),
        ("c", C64, [1], [[ALL]]),
        ("u32", 22, [2], [[ALL]]),
        ("s", STRING, [], [[]]),
    ], {
        ("unpacked", (ALL,)): _floats([1, 2, 3], packed=False),
        ("content", (ALL,)): _len(4, np.array([0.5, -1], "<f4").tobytes()),
        ("bf16", (ALL,)): _len(13, _varint(0x3F80) + _varint(0xC000)),
        ("i8", (ALL,)): _len(7, _varint(-1) + _varint(127) + _varint(-128)),
        ("flags", (ALL,)): _int(11, 1) + _int(11, 0) + _int(11, 5),
        ("c", (ALL,)): _len(9, np.array([1.5, -2], "<f4").tobytes()),
        ("u32", (ALL,)): _len(16, _varint(2**32 - 1) + _varint(7)),
        ("s", ()): _len(8, b"\xff\x00"),
    })
    with tfshard.open(path) as ckpt:
        np.testing.assert_array_equal(ckpt["unpacked"], [1, 2, 3])
        np.testing.assert_array_equal(ckpt["content"], [0.5, -1])
        assert ckpt["bf16"].astype(np.float32).tolist() == [1.0, -2.0]
        assert ckpt["i8"].tolist() == [-1, 127, -128] and ckpt["i8"].dtype == np.int8
        assert ckpt["flags"].tolist() == [True, False, True]
        assert ckpt["c"].tolist() == [1.5 - 2j]
        assert ckpt["u32"].tolist() == [2**32 - 1, 7]
        assert ckpt["s"][()] == b"\xff\x00"
    got = tf.raw_ops.Restore(file_pattern=path, tensor_name="unpacked", dt=tf.float32)
    assert got.numpy().tolist() == [1, 2, 3]
    assert tf.raw_ops.Restore(file_pattern=path, tensor_name="i8", dt=tf.int8).numpy().tolist() \
        == [-1, 127, -128]


HOSTILE = {
    "fewer values than the shape": (
        [("t", FLOAT, [4], [[ALL]])], {("t", (ALL,)): _floats([1, 2, 3])},
        tfshard.CorruptCheckpointError, "needs 4 values but the record holds 3"),
    "more values than the shape": (
        [("t", FLOAT, [2], [[ALL]])], {("t", (ALL,)): _floats([1, 2, 3])},
        tfshard.CorruptCheckpointError, "needs 2 values"),
    "huge shape, few bytes": (
        [("t", FLOAT, [2**31, 2**31], [[ALL, ALL]])], {("t", (ALL, ALL)): _floats([1, 2])},
        tfshard.CorruptCheckpointError, "needs 4611686018427387904 values"),
    "huge partitioned shape, few bytes": (
        [("t", INT32, [2**40, 4], [[(0, 2**39), ALL], [(2**39, 2**39), ALL]])],
        {("t", ((0, 2**39), ALL)): _len(7, b"\x01"),
         ("t", ((2**39, 2**39), ALL)): _len(7, b"\x01")},
        tfshard.CorruptCheckpointError, "values but the record holds 1"),
    "zero-size tensor with a huge dimension": (
        [("t", FLOAT, [0, 2**62], [[ALL, ALL]])], {("t", (ALL, ALL)): b""},
        tfshard.UnsupportedError, "numpy cannot represent"),
    "zero-size tensor": (
        [("t", FLOAT, [0, 2**20], [[ALL, ALL]])], {("t", (ALL, ALL)): b""}, None, None),
    "slices not covering": (
        [("t", FLOAT, [4], [[(0, 2)], [(3, 1)]])],
        {("t", ((0, 2),)): _floats([1, 2]), ("t", ((3, 1),)): _floats([4])},
        tfshard.CorruptCheckpointError, "do not cover"),
    "duplicate slices": (
        [("t", FLOAT, [2], [[(0, 2)], [(0, 2)]])], {("t", ((0, 2),)): _floats([1, 2])},
        tfshard.CorruptCheckpointError, "overlapping slices"),
    "overlapping slices": (
        [("t", FLOAT, [3], [[(0, 2)], [(1, 2)]])],
        {("t", ((0, 2),)): _floats([1, 2]), ("t", ((1, 2),)): _floats([2, 3])},
        tfshard.CorruptCheckpointError, "overlapping slices"),
    "meta lists a tensor with no data": (
        [("t", FLOAT, [2], [[ALL]]), ("u", FLOAT, [1], [[ALL]])],
        {("t", (ALL,)): _floats([1, 2])},
        tfshard.CorruptCheckpointError, "holds no data record"),
    "slice outside the shape": (
        [("t", FLOAT, [2], [[(1, 5)]])], {},
        tfshard.CorruptCheckpointError, "outside its shape"),
    "slice of the wrong rank": (
        [("t", FLOAT, [2], [[ALL, ALL]])], {},
        tfshard.CorruptCheckpointError, "rank"),
    "no slices": (
        [("t", FLOAT, [2], [])], {}, tfshard.CorruptCheckpointError, "no stored slice"),
    "unknown dtype": (
        [("t", 99, [2], [[ALL]])], {("t", (ALL,)): _floats([1, 2])},
        tfshard.UnsupportedError, "unknown dtype code 99"),
    "dtype V1 cannot hold": (
        [("t", 24, [2], [[ALL]])], {("t", (ALL,)): _len(4, b"\x01\x02")},
        tfshard.UnsupportedError, "float8_e5m2"),
    "stray bytes in a packed float field": (
        [("t", FLOAT, [1], [[ALL]])], {("t", (ALL,)): _len(5, b"\x00\x00\x80\x3f\x00")},
        tfshard.CorruptCheckpointError, "whole number"),
    "odd complex parts": (
        [("t", C64, [1], [[ALL]])], {("t", (ALL,)): _len(9, b"\x00" * 12)},
        tfshard.CorruptCheckpointError, "whole number"),
    "wrong wire type": (
        [("t", FLOAT, [1], [[ALL]])], {("t", (ALL,)): _int(5, 3)},
        tfshard.CorruptCheckpointError, "protobuf"),
    "typed values and tensor_content": (
        [("t", FLOAT, [1], [[ALL]])],
        {("t", (ALL,)): _floats([1]) + _len(4, b"\x00\x00\x80\x3f")},
        tfshard.CorruptCheckpointError, "both typed values and tensor_content"),
    "truncated string field": (
        [("t", STRING, [1], [[ALL]])], {("t", (ALL,)): _varint(8 << 3 | 2) + _varint(50)},
        tfshard.CorruptCheckpointError, "protobuf"),
    "negative dimension": (
        [("t", FLOAT, [-3], [[ALL]])], {}, tfshard.CorruptCheckpointError, "invalid shape"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files(tmp_path, case):
    tensors, records, error, message = HOSTILE[case]
    path = write_v1(tmp_path / "bad", tensors, records)

    def everything():
        with tfshard.open(path) as ckpt:
            ckpt.infos()
            return {name: ckpt[name] for name in ckpt}

    if error is None:
        everything()
        return
    with pytest.raises(error, match=re.escape(message)) as info:
        everything()
    assert isinstance(info.value, tfshard.TFShardError)


def test_hostile_file_headers(tmp_path):
    ok = [("t", FLOAT, [1], [[ALL]])]
    rec = {("t", (ALL,)): _floats([1])}
    with pytest.raises(tfshard.IncompatibleVersionError, match="version 5"):
        tfshard.open(write_v1(tmp_path / "v", ok, rec, min_consumer=5))
    # The empty key holds a data record, not the meta.
    bad = tmp_path / "nometa"
    bad.write_bytes(_build.build_table([b"", _key("t", (ALL,))],
                                       [_data("t", (ALL,), _floats([1]))] * 2))
    with pytest.raises(tfshard.CorruptCheckpointError, match="holds no SavedTensorSliceMeta"):
        tfshard.open(bad)
    # A data record whose key and contents disagree.
    mixed = tmp_path / "mixed"
    mixed.write_bytes(_build.build_table([b"", _key("t", (ALL,))],
                                         [_meta(ok), _data("u", (ALL,), _floats([1]))]))
    with pytest.raises(tfshard.CorruptCheckpointError, match="names tensor 'u'"):
        tfshard.open(mixed)["t"]


def test_shards_that_disagree(tmp_path):
    write_v1(tmp_path / "m-00000-of-00002", [("t", FLOAT, [4], [[(0, 2)]])],
             {("t", ((0, 2),)): _floats([1, 2])})
    write_v1(tmp_path / "m-00001-of-00002", [("t", INT32, [4], [[(2, 2)]])],
             {("t", ((2, 2),)): _len(7, b"\x03\x04")})
    with pytest.raises(tfshard.CorruptCheckpointError, match="earlier as float32"):
        tfshard.open(tmp_path / "m")


# ---- corruption of the goldens -------------------------------------------------------

def exercise(path) -> str:
    """Open, list, read (whole and a row range) and verify; 'ok' or the error's class.
    Any exception that is not a TFShardError propagates and fails the test."""
    try:
        with tfshard.open(path) as ckpt:
            ckpt.infos()
            for name in ckpt:
                arr = ckpt.read(name)
                if arr.ndim and arr.shape[0] > 1:
                    ckpt.read(name, index=np.s_[1:])
            ckpt.verify_all()
        return "ok"
    except tfshard.TFShardError as exc:
        return type(exc).__name__


def _golden_copy(tmp_path, rel) -> tuple[Path, list[Path]]:
    """Copy one golden checkpoint; returns (what to open, its files)."""
    out = tmp_path / "c"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    files = []
    for f in v1_files(rel):
        shutil.copy(f, out / f.name)
        files.append(out / f.name)
    return out / Path(rel).name, files


@pytest.mark.parametrize("rel", PREFIXES)
def test_byte_flips_and_truncations(tmp_path, rel):
    """Flips at sampled offsets and truncations at sampled lengths of every file of
    every golden: only TFShardError may escape."""
    prefix, files = _golden_copy(tmp_path, rel)
    rng = random.Random(rel)
    outcomes = {}
    for target in files:
        original = target.read_bytes()
        n = len(original)
        offsets = sorted(set(range(0, n, max(1, n // 150))) | set(range(max(0, n - 60), n)))
        for pos in offsets:
            data = bytearray(original)
            data[pos] ^= 1 << rng.randrange(8)
            target.write_bytes(bytes(data))
            result = exercise(prefix)
            outcomes[result] = outcomes.get(result, 0) + 1
        for cut in sorted(set(range(0, n, max(1, n // 60))) | set(range(max(0, n - 50), n))):
            target.write_bytes(original[:cut])
            result = exercise(prefix)
            outcomes[result] = outcomes.get(result, 0) + 1
        target.write_bytes(original)
    assert exercise(prefix) == "ok"
    assert set(outcomes) <= {"ok", "CorruptCheckpointError", "ChecksumMismatchError",
                             "CheckpointNotFoundError", "UnsupportedError",
                             "IncompatibleVersionError"}, outcomes
    assert outcomes.get("ChecksumMismatchError", 0) > 0


@pytest.mark.parametrize("rel", ["dtypes/model.ckpt", "partitioned/model.ckpt",
                                 "misc/model.ckpt", "sharded/model.ckpt"])
def test_record_mutations_behind_valid_checksums(tmp_path, rel):
    """Every byte of every record (meta and data) altered, and every record cut short,
    with the SSTable rebuilt so its checksums hold: the V1 parsers see the damage."""
    from tfshard import _index

    prefix, files = _golden_copy(tmp_path, rel)
    target = files[0]
    table = _index.IndexTable(target.read_bytes())
    keys = [b""] + [table.key(h) for h in table.handles()]
    values = [table.header_value] + [bytes(table.value(h)) for h in table.handles()]
    outcomes = {}

    def run(vals):
        target.write_bytes(_build.build_table(keys, vals))
        result = exercise(prefix)
        outcomes[result] = outcomes.get(result, 0) + 1

    for i, value in enumerate(values):
        for pos in range(len(value)):
            mutated = bytearray(value)
            mutated[pos] ^= 0x80 if pos % 2 else 0x01   # varint continuation bits, or low bits
            run(values[:i] + [bytes(mutated)] + values[i + 1:])
        for cut in range(0, len(value), max(1, len(value) // 8)):
            run(values[:i] + [value[:cut]] + values[i + 1:])
    assert set(outcomes) <= {"ok", "CorruptCheckpointError", "UnsupportedError",
                             "IncompatibleVersionError"}, outcomes
    assert outcomes.get("CorruptCheckpointError", 0) > 50 and outcomes.get("ok", 0) > 0


def test_goldens_are_small():
    total = sum(p.stat().st_size for p in V1_DIR.rglob("*") if p.is_file())
    assert total < 1024 * 1024
    assert os.path.isfile(V1_DIR / "sharded" / "model.ckpt-00001-of-00002")
