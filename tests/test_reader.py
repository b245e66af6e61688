"""Reader behaviour on hand-built bundles: byte order, compression, slices, views, checksums."""

import mmap
import threading

import crc32c

import ml_dtypes
import numpy as np
import pytest

import bundle_builder as bb
import tfshard
from tfshard import ChecksumMismatchError, CorruptCheckpointError, TensorNotFoundError

RNG = np.random.default_rng(7)


def sample_arrays():
    """One array per fixed-size numpy dtype the builder knows, plus strings."""
    out = {}
    for name in ["float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8",
                 "uint16", "uint32", "uint64", "complex64", "complex128"]:
        dt = np.dtype(name)
        if dt.kind == "c":
            a = RNG.normal(size=(3, 4)) + 1j * RNG.normal(size=(3, 4))
        elif dt.kind == "f":
            a = RNG.normal(size=(3, 4)) * 100
        else:
            info = np.iinfo(dt)
            a = RNG.integers(info.min, info.max, size=(3, 4), dtype=dt, endpoint=True)
        out[name] = a.astype(dt)
    out["bool"] = RNG.integers(0, 2, size=(5,)).astype(bool)
    out["bfloat16"] = RNG.normal(size=(2, 3)).astype(ml_dtypes.bfloat16)
    for f8 in ["float8_e5m2", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e4m3b11fnuz",
               "float8_e5m2fnuz"]:
        out[f8] = np.array([[1.0, -2.0, 0.5]], dtype=getattr(ml_dtypes, f8))
    out["int4"] = np.array([-8, -1, 0, 7], dtype=ml_dtypes.int4)
    out["uint4"] = np.array([0, 15, 3], dtype=ml_dtypes.uint4)
    out["int2"] = np.array([-2, -1, 0, 1], dtype=ml_dtypes.int2)
    out["uint2"] = np.array([0, 3], dtype=ml_dtypes.uint2)
    out["float4_e2m1fn"] = np.array([-6.0, -1.0, 0.5, 6.0], dtype=ml_dtypes.float4_e2m1fn)
    out["scalar"] = np.float64(3.25)
    out["empty"] = np.zeros((0, 3), np.float32)
    out["strings"] = np.array([[b"", b"\x00\xff"], ["h\u00e9".encode(), b"x" * 300]],
                              dtype=object)
    return out


def write(tmp_path, arrays, **kw):
    big = kw.pop("big_endian", False)
    b = bb.Bundle(big_endian=big)
    for name, a in arrays.items():
        b.add(name, a)
    return b.write(str(tmp_path / "ckpt"), **kw)


def assert_same(actual, expected):
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    if expected.dtype == object:
        assert actual.tolist() == expected.tolist()
    else:
        assert actual.tobytes() == expected.tobytes()


@pytest.mark.parametrize("big_endian", [False, True], ids=["little", "big"])
@pytest.mark.parametrize("alignment", [1, 64])
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "snappy"])
def test_round_trip_every_dtype(tmp_path, big_endian, alignment, compress):
    arrays = sample_arrays()
    prefix = write(tmp_path, arrays, big_endian=big_endian, alignment=alignment,
                   compress=compress)
    with tfshard.open(prefix) as ckpt:
        assert ckpt.big_endian == big_endian
        assert sorted(ckpt) == sorted(arrays)
        for name, expected in arrays.items():
            assert_same(ckpt[name], expected)
            assert ckpt.info(name).shape == np.shape(expected)


def test_fixed_size_reads_are_read_only_views_of_the_map(tmp_path):
    prefix = write(tmp_path, {"w": np.arange(1000, dtype=np.float32).reshape(100, 10)})
    ckpt = tfshard.open(prefix)
    w = ckpt["w"]
    assert not w.flags.writeable
    base = w
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert isinstance(base, (mmap.mmap, memoryview)) or isinstance(getattr(base, "obj", None),
                                                                   mmap.mmap)
    rows = ckpt.read("w", index=np.s_[10:12])
    assert np.shares_memory(rows, w)
    np.testing.assert_array_equal(rows, np.arange(100, 120, dtype=np.float32).reshape(2, 10))
    ckpt.close()
    ckpt.close()  # idempotent
    # Views outlive the checkpoint object.
    assert float(w[99, 9]) == 999.0 and float(rows[1, 0]) == 110.0
    with pytest.raises(ValueError):
        ckpt["w"]


@pytest.mark.parametrize("index", [np.s_[3], np.s_[-2:], np.s_[1:4, 2], np.s_[::2],
                                   np.s_[[0, 5]], np.s_[..., 1], np.s_[7:3]])
def test_partial_reads_match_numpy_indexing(tmp_path, index):
    full = np.arange(80, dtype=np.int64).reshape(8, 10)
    b = bb.Bundle()
    b.add("plain", full)
    b.add("strings", full.astype(str).astype(object).astype(bytes).astype(object))
    b.add_slice("part", (8, 10), [(0, 3), (0, -1)], full[:3])
    b.add_slice("part", (8, 10), [(3, 5), (0, 4)], full[3:, :4])
    b.add_slice("part", (8, 10), [(3, 5), (4, 6)], full[3:, 4:])
    prefix = b.write(str(tmp_path / "c"))
    with tfshard.open(prefix) as ckpt:
        for name in ["plain", "part"]:
            np.testing.assert_array_equal(ckpt.read(name, index=index), full[index])
        expected = full.astype(str).astype(object).astype(bytes).astype(object)[index]
        assert np.asarray(ckpt.read("strings", index=index)).tolist() == \
            np.asarray(expected).tolist()


def test_partitioned_tensor_is_listed_once_with_full_shape(tmp_path):
    full = RNG.normal(size=(10, 4)).astype(np.float16)  # a dtype TF cannot cut
    b = bb.Bundle()
    for start, length in [(0, 4), (4, 3), (7, 3)]:
        b.add_slice("dense/kernel", (10, 4), [(start, length), (0, 4)], full[start:start + length])
    b.add("bias", np.zeros(4, np.float32))
    prefix = b.write(str(tmp_path / "c"))
    with tfshard.open(prefix) as ckpt:
        assert sorted(ckpt) == ["bias", "dense/kernel"]
        assert len(ckpt) == 2
        info = ckpt.info("dense/kernel")
        assert info.shape == (10, 4) and info.dtype == "float16" and info.shard is None
        assert info.slices == (((0, 4), (0, 4)), ((4, 3), (0, 4)), ((7, 3), (0, 4)))
        assert info.nbytes == full.nbytes
        assert_same(ckpt["dense/kernel"], full)
    assert tfshard.list_variables(prefix) == [("bias", [4]), ("dense/kernel", [10, 4])]


def test_multi_shard_bundle(tmp_path):
    b = bb.Bundle()
    b.add("a", np.arange(5, dtype=np.int32), shard=0)
    b.add("b", np.arange(7, dtype=np.int16), shard=2)
    b.add("c", np.array([b"x"], dtype=object), shard=1)
    prefix = b.write(str(tmp_path / "c"), num_shards=3)
    with tfshard.open(str(prefix) + ".data-00002-of-00003") as ckpt:
        assert ckpt.num_shards == 3
        assert ckpt.info("b").shard == 2
        np.testing.assert_array_equal(ckpt["b"], np.arange(7, dtype=np.int16))
        assert ckpt["c"].tolist() == [b"x"]


def test_checksums(tmp_path):
    prefix = write(tmp_path, {"w": np.arange(64, dtype=np.float32), "s": np.array([b"abc"], object)})
    with tfshard.open(prefix) as ckpt:
        offset_w, offset_s = ckpt.info("w").offset, ckpt.info("s").offset
    data = tmp_path / "ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[offset_w + 10] ^= 0x40
    raw[offset_s + 6] ^= 0x01          # a string byte
    data.write_bytes(bytes(raw))
    with tfshard.open(prefix) as ckpt:
        with pytest.raises(ChecksumMismatchError) as err:
            ckpt["w"]
        assert err.value.key == "w" and "checksum" in str(err.value)
        with pytest.raises(ChecksumMismatchError):
            ckpt["s"]
        # A row-range read does not verify by default, but can be asked to.
        assert ckpt.read("w", index=np.s_[:2]).tolist() == [0.0, 1.0]
        with pytest.raises(ChecksumMismatchError):
            ckpt.read("w", index=np.s_[:2], verify=True)
        assert [name for name, _ in ckpt.verify_all()] == ["s", "w"]
    with tfshard.open(prefix, verify=False) as ckpt:
        assert ckpt["w"][2] != 2.0   # the flipped value is returned unchecked
        assert ckpt["s"].tolist() == [b"acc"]


def test_string_length_checksum(tmp_path):
    prefix = write(tmp_path, {"s": np.array([b"hello", b"world"], object)})
    data = tmp_path / "ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[0] = 4          # claim "hell" + "oworld"... lengths no longer add up
    raw[1] = 6
    data.write_bytes(bytes(raw))
    with tfshard.open(prefix) as ckpt, pytest.raises(ChecksumMismatchError, match="length checksum"):
        ckpt["s"]


def test_subbyte_high_bits_are_ignored(tmp_path):
    b = bb.Bundle()
    stored = b"\xff\xfe\x07"  # -1, -2, 7 with the high bits set, as other producers may
    b.add_raw_entry(b"i4", bb.encode_entry(29, (3,), size=3, crc=bb.mask(crc32c.crc32c(stored))))
    prefix = b.write(str(tmp_path / "c"))
    (tmp_path / "c.data-00000-of-00001").write_bytes(stored)
    with tfshard.open(prefix) as ckpt:
        assert ckpt["i4"].tolist() == [-1, -2, 7]
        assert ckpt["i4"].dtype == ml_dtypes.int4


def test_missing_tensor_error_is_a_key_error_with_suggestions(tmp_path):
    prefix = write(tmp_path, {"dense/kernel": np.zeros(2, np.float32)})
    with tfshard.open(prefix) as ckpt:
        with pytest.raises(KeyError) as err:
            ckpt["dense/kernal"]
        assert isinstance(err.value, TensorNotFoundError)
        assert "dense/kernel" in str(err.value) and err.value.key == "dense/kernal"
        assert "dense/kernal" not in ckpt and 3 not in ckpt
        with pytest.raises(TensorNotFoundError):
            ckpt.info(b"dense/kernel")


def test_odd_names(tmp_path):
    names = ["a/../b", "/lead", "sp ace", "uni\u00e9", "\x00nul-first", "x" * 5000]
    b = bb.Bundle()
    for i, n in enumerate(names):
        b.add(n, np.array([i], np.int32))
    # A key that is not UTF-8, sharing the bytes of names[0] (the int32 value 0).
    zero = np.array([0], np.int32).tobytes()
    b.add_raw_entry(b"bad\xffutf8", bb.encode_entry(3, (1,), size=4, crc=bb.mask(crc32c.crc32c(zero))))
    prefix = b.write(str(tmp_path / "c"))
    with tfshard.open(prefix) as ckpt:
        listed = list(ckpt)
        assert sorted(listed) == sorted(names + ["bad\udcffutf8"])
        for i, n in enumerate(names):
            assert ckpt[n].tolist() == [i]
        assert ckpt["bad\udcffutf8"].tolist() == [0]


@pytest.mark.parametrize("header,match", [
    (dict(producer=-1), "producer version"),
    (dict(min_consumer=2), "needs a reader of version 2"),
    (dict(bad_consumers=[1]), "disallows"),
])
def test_version_rules(tmp_path, header, match):
    b = bb.Bundle()
    b.add("a", np.zeros(1, np.float32))
    prefix = b.write(str(tmp_path / "c"), header=bb.encode_header(**header))
    with pytest.raises(tfshard.IncompatibleVersionError, match=match):
        tfshard.open(prefix)


def test_variant_golden_is_exposed_as_raw_protos():
    from pathlib import Path
    prefix = Path(__file__).parent / "data" / "golden" / "variant" / "ckpt"
    if not Path(str(prefix) + ".index").exists():
        pytest.skip("variant golden not generated")
    with tfshard.open(prefix) as ckpt:
        variants = [n for n in ckpt if ckpt.info(n).dtype == "variant"]
        assert variants
        for n in variants:
            value = ckpt[n]
            assert value.dtype == object
            assert all(isinstance(v, bytes) and v for v in value.reshape(-1))


def test_concurrent_readers_agree(tmp_path):
    arrays = {f"t{i}": RNG.normal(size=(64, 64)).astype(np.float32) for i in range(16)}
    prefix = write(tmp_path, arrays)
    ckpt = tfshard.open(prefix)
    errors = []

    def work(seed):
        r = np.random.default_rng(seed)
        try:
            for _ in range(50):
                n = f"t{r.integers(16)}"
                assert ckpt[n].tobytes() == arrays[n].tobytes()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ckpt.close()
    assert errors == []


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "snappy"])
def test_lookup_in_many_small_blocks(tmp_path, compress):
    """Every key is found through the block and restart-point search; absent keys are not."""
    rng = np.random.default_rng(11)
    alphabet = np.array(list(b"ab/_\x00\xff"), dtype=np.uint8)
    names = set()
    while len(names) < 3000:
        names.add(bytes(rng.choice(alphabet, size=rng.integers(1, 12))).decode("latin-1"))
    names = sorted(names)
    b = bb.Bundle()
    for i, n in enumerate(names):
        b.add(n, np.array([i], np.int32))
    header = bb.encode_header()
    items = [(b"", header)]
    data = bytearray()
    for i, n in enumerate(names):
        raw = np.array([i], np.int32).tobytes()
        items.append((n.encode(), bb.encode_entry(3, (1,), 0, len(data), 4,
                                                  bb.mask(crc32c.crc32c(raw)))))
        data += raw
    items.sort()
    (tmp_path / "t.index").write_bytes(bb.build_table(items, compress=compress, block_size=512))
    (tmp_path / "t.data-00000-of-00001").write_bytes(bytes(data))
    with tfshard.open(tmp_path / "t") as ckpt:
        assert len(ckpt._table.handles()) == len(names)
        assert list(ckpt) == [k.decode("utf-8", "surrogateescape") for k, _ in items[1:]]
        for i, n in enumerate(names):
            key = n.encode().decode("utf-8", "surrogateescape")
            if not key.startswith("\x00"):   # keys starting with NUL may read as slice keys
                assert ckpt[key].tolist() == [i]
        for probe in ["", "zzz", "a" * 20, "\x00", "b/\xff_"]:
            if probe.encode() not in {k for k, _ in items}:
                assert probe not in ckpt


# ---- writable reads ------------------------------------------------------------------------

GOLDEN = __import__("pathlib").Path(__file__).parent / "data" / "golden"
WRITABLE_SOURCES = [GOLDEN / "dtypes" / "ckpt", GOLDEN / "strings" / "ckpt",
                    GOLDEN / "partitioned" / "model.ckpt", GOLDEN / "sharded" / "model.ckpt",
                    GOLDEN.parent / "v1" / "partitioned" / "model.ckpt"]


@pytest.mark.parametrize("prefix", WRITABLE_SOURCES, ids=lambda p: p.parent.name)
def test_writable_reads_are_independent_copies_of_the_values(prefix):
    with tfshard.open(prefix) as ckpt:
        for name in ckpt:
            expected = np.array(ckpt[name])
            first = ckpt.read(name, writable=True)
            second = ckpt.read(name, writable=True)
            assert first.flags.writeable and second.flags.writeable, name
            if first.dtype == object:
                assert first.tolist() == second.tolist() == expected.tolist(), name
                continue
            assert first.tobytes() == second.tobytes() == expected.tobytes(), name
            if first.size:
                first.reshape(-1).view(np.uint8)[0] ^= 1  # a write reaches no one else
                assert second.tobytes() == ckpt[name].tobytes() == expected.tobytes(), name


def test_writable_rows_are_writable_and_leave_the_rest(tmp_path):
    values = np.arange(40, dtype=np.float32).reshape(10, 4)
    prefix = tfshard.save(tmp_path / "ckpt", {"m": values})
    with tfshard.open(prefix) as ckpt:
        rows = ckpt.read("m", index=np.s_[2:4], writable=True)
        rows[:] = -1
        np.testing.assert_array_equal(ckpt["m"], values)
        np.testing.assert_array_equal(ckpt.read("m", writable=True), values)


def test_writable_reads_copy_where_the_os_refuses_a_private_map(tmp_path, monkeypatch):
    values = np.arange(1000, dtype=np.int32)
    prefix = tfshard.save(tmp_path / "ckpt", {"v": values})
    class RefusingPrivate(mmap.mmap):  # as under strict overcommit accounting
        def __new__(cls, fileno, length, *args, access=mmap.ACCESS_DEFAULT, **kwargs):
            if access == mmap.ACCESS_COPY:
                raise OSError(12, "Cannot allocate memory")
            return super().__new__(cls, fileno, length, *args, access=access, **kwargs)

    monkeypatch.setattr(mmap, "mmap", RefusingPrivate)
    with tfshard.open(prefix) as ckpt:
        a = ckpt.read("v", writable=True)
        a += 1
        np.testing.assert_array_equal(ckpt.read("v", writable=True), values)
    np.testing.assert_array_equal(tfshard.load(prefix)["v"], values)
