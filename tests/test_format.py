"""Byte-level checks of tfshard's parsing against FORMAT.md vectors and TF-written files."""

import hashlib
from pathlib import Path

import crc32c
import numpy as np
import pytest

import bundle_builder as bb
import tfshard
from tfshard import _data, _index

GOLDEN = Path(__file__).parent / "data" / "golden"

# FORMAT.md §3.8: SaveV2(prefix, ["x"], [""], [float32 [1.0, 2.0]])
X_INDEX = bytes.fromhex(
    "000006" "08011a020801"
    + "00010f78" "0801120412020802280835593ce535"
    + "0000000001000000" "0091364233"
    + "0000000001000000" "00c0f2a1b0"
    + "000102790024" "0000000001000000" "0008121017"
    + "2908360e" + "00" * 36 + "57fb808b247547db"
)
X_DATA = bytes.fromhex("0000803f00000040")


def test_crc32c_vectors_and_mask():
    assert crc32c.crc32c(b"123456789") == 0xE3069283
    for value in (0, 1, 0xE3069283, 0xFFFFFFFF):
        assert _data.unmask_crc(_data.mask_crc(value)) == value
        assert _data.mask_crc(value) != value
    assert _data.mask_crc(0) == 0xA282EAD8
    assert _data.mask_crc(crc32c.crc32c(X_DATA)) == 0x35E53C59


def test_format_golden_index_is_read(tmp_path):
    (tmp_path / "x.index").write_bytes(X_INDEX)
    (tmp_path / "x.data-00000-of-00001").write_bytes(X_DATA)
    with tfshard.open(tmp_path / "x") as ckpt:
        assert list(ckpt) == ["x"]
        np.testing.assert_array_equal(ckpt["x"], np.array([1.0, 2.0], np.float32))
        info = ckpt.info("x")
        assert (info.dtype, info.shape, info.nbytes, info.shard, info.offset) == \
            ("float32", (2,), 8, 0, 0)


def test_builder_reproduces_format_golden():
    items = [(b"", bb.encode_header()),
             (b"x", bb.encode_entry(1, (2,), size=8, crc=0x35E53C59))]
    assert bb.build_table(items) == X_INDEX


ORDERED_CODE = {
    0: "80", 5: "85", 63: "bf", 64: "c040", 100: "c064", 8127: "dfbf", 8191: "dfff",
    8192: "e02000", 10000: "e02710", 60000: "e0ea60", 69936: "e11130", -1: "7f",
    -65: "3fbf", -8192: "2000", -8193: "1fdfff", 2**40: "fd0000000000",
    2**62: "ffc04000000000000000", 2**63 - 1: "ffc07fffffffffffffff",
    -(2**63): "003f8000000000000000",
}


@pytest.mark.parametrize("value,encoded", ORDERED_CODE.items())
def test_slice_key_signed_numbers(value, encoded):
    assert bb._oc_int(value).hex() == encoded
    # Decoding accepts any int64; encoding is reachable for starts >= 0.
    key = b"\x00t\x00\x01" + b"\x01\x01" + bytes.fromhex(encoded) + b"\x81"
    assert _index.decode_slice_key(key) == (b"t", [(value, 1)])
    if value >= 0:
        assert _index.slice_key(b"t", [(value, 1)]) == key


def test_slice_key_format_examples():
    assert _index.slice_key(b"part", [(0, 5), (3, 1)]) == bytes.fromhex("00") + b"part" + \
        bytes.fromhex("0001010280858381")
    assert _index.slice_key(b"sl", [(2, 2), (0, -1)]) == b"\x00sl" + bytes.fromhex("000101028282807f")
    name = b"a\x00b\xffc"
    key = _index.slice_key(name, [(1, 2)])
    assert b"a\x00\xffb\xff\x00c\x00\x01" in key
    assert _index.decode_slice_key(key) == (name, [(1, 2)])
    with pytest.raises(ValueError):
        _index.decode_slice_key(b"plain/name")


def test_string_encoding_examples(tmp_path):
    # FORMAT.md §7.3 special cases.
    assert bb.encode_strings([b"hi"])[0] == bytes.fromhex("02d8d810736869")
    data, crc = bb.encode_strings([b"ab", b""])
    assert data == bytes.fromhex("020078270b346162") and crc == 0x4DB08891
    assert bb.encode_strings([])[0] == bytes.fromhex("d8ea82a2")
    out = _data.decode_strings(data, 2, False, crc, True)
    assert list(out) == [b"ab", b""]


def _golden_prefixes():
    return [GOLDEN / "dtypes" / "ckpt", GOLDEN / "strings" / "ckpt",
            GOLDEN / "partitioned" / "model.ckpt", GOLDEN / "sharded" / "model.ckpt",
            GOLDEN / "many" / "ckpt", GOLDEN / "keras_adam" / "ckpt-2",
            GOLDEN / "variant" / "ckpt"]


@pytest.mark.parametrize("prefix", _golden_prefixes(), ids=lambda p: p.parent.name)
def test_reencoded_index_is_byte_identical_to_tensorflow(prefix):
    """Every field tfshard parses, re-encoded by the independent builder, gives TF's exact
    .index bytes: nothing in TF's entries is lost or misread (multi-block tables included)."""
    if not Path(str(prefix) + ".index").exists():
        pytest.skip(f"golden {prefix} not generated")
    with tfshard.open(prefix) as ckpt:
        table = ckpt._table
        items = [(b"", table.header_value)]
        for i in table.handles():
            code, shape, shard, offset, size, crc, nslices, _ = table.entry(i)
            slices = table.slices(i) if nslices else ()
            items.append((table.key(i), bb.encode_entry(code, shape, shard, offset, size, crc,
                                                        slices)))
        h = ckpt._table.header()
        header = bb.encode_header(h["num_shards"], h["endianness"], h["producer"],
                                  h["min_consumer"])
    assert header == items[0][1]
    original = Path(str(prefix) + ".index").read_bytes()
    rebuilt = bb.build_table(items)
    assert hashlib.sha256(rebuilt).hexdigest() == hashlib.sha256(original).hexdigest()
