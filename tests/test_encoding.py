"""The writer's encoders (tfshard._build) against FORMAT.md vectors and against the
independent test-side builder, which tests/test_format.py proves byte-identical to TF."""

import os
from concurrent.futures import ThreadPoolExecutor

import crc32c
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bundle_builder as bb
import tfshard
from tfshard import _build, _data, _index
from test_format import X_INDEX


def test_format_golden_example():
    # FORMAT.md §3.8: the whole 121-byte index of SaveV2(["x"], [float32 [1, 2]]).
    entry = _build.encode_entry(1, (2,), 0, 0, 8, _data.mask_crc(0x28C0C9B1))
    assert _build.build_table([b"", b"x"], [_build.encode_header(1), entry]) == X_INDEX
    assert _build.encode_header(1) == bytes.fromhex("08011a020801")
    assert _build.encode_header(2, 1) == bytes.fromhex("080210011a020801")


def test_entry_examples():
    # FORMAT.md §6 observed entries.
    assert _build.encode_entry(1, (2, 3), 0, 0, 24, 0x173DDBC0) == bytes.fromhex(
        "0801120812020802120208032818" "35c0db3d17")
    assert _build.encode_entry(9, (), 0, 66, 8, 0x119FD7BB) == bytes.fromhex(
        "0809120020422808" "35bbd79f11")
    assert _build.encode_entry(1, (0, 3), 0, 74, 0, 0xA282EAD8) == bytes.fromhex(
        "08011206120012020803204a" "35d8ea82a2")
    assert _build.encode_partitioned_entry(1, (5, 10), [[(0, 5), (3, 1)]]) == bytes.fromhex(
        "08011208120208051202080a" "3a0a0a0210050a0408031001")
    assert _build.encode_partitioned_entry(1, (4, 2), [[(2, 2), (0, -1)]]) == \
        bb.encode_entry(1, (4, 2), slices=[[(2, 2), (0, -1)]])


def test_string_and_variant_examples():
    assert _build.encode_strings([b"hi"])[0] == bytes.fromhex("02d8d810736869")
    assert _build.encode_strings([b"ab", b""]) == (bytes.fromhex("020078270b346162"),
                                                   0x4DB08891)
    assert _build.encode_strings([]) == bb.encode_strings([])
    data, crc = _build.encode_strings([b"hello", b"", b"\x01"])
    assert _data.decode_strings(data, 3, False, crc, True).tolist() == [b"hello", b"", b"\x01"]
    items = [b"", b"\x0a\x03abc", b"x" * 300]
    data, crc = _build.encode_variants(items)
    assert _data.decode_variants(data, 3, crc, True).tolist() == items


keys = st.lists(st.binary(min_size=1, max_size=40), min_size=0, max_size=300, unique=True)


@settings(max_examples=60, deadline=None)
@given(keys=keys, sizes=st.lists(st.integers(0, 3000), min_size=300, max_size=300),
       huge=st.sets(st.integers(0, 299), max_size=3))
def test_table_matches_reference_builder(keys, sizes, huge):
    """Random keys (0x00 and 0xff bytes make the separator rules bite), value sizes that
    fill several 256 KiB blocks, and >= 512 KiB values that force a block of their own."""
    keys = [b""] + sorted(keys)
    values = [bytes([i % 251]) * (600_000 if i in huge else sizes[i % 300])
              for i in range(len(keys))]
    table = _build.build_table(keys, values)
    assert table == bb.build_table(list(zip(keys, values)))
    parsed = _index.IndexTable(table)
    assert parsed.count == len(keys) - 1


@settings(max_examples=100, deadline=None)
@given(shape=st.lists(st.integers(0, 2**40), max_size=6), shard=st.integers(0, 2**31 - 1),
       offset=st.integers(0, 2**62), size=st.integers(0, 2**62),
       crc=st.none() | st.integers(0, 2**32 - 1), code=st.integers(1, 133))
def test_entry_matches_reference(shape, shard, offset, size, crc, code):
    assert _build.encode_entry(code, shape, shard, offset, size, crc) == \
        bb.encode_entry(code, shape, shard, offset, size, crc)


@settings(max_examples=100, deadline=None)
@given(slices=st.lists(st.lists(st.tuples(st.integers(0, 2**40), st.integers(-1, 2**40)),
                                min_size=2, max_size=2), max_size=4))
def test_partitioned_entry_matches_reference(slices):
    slices = [[(0 if n < 0 else s, n) for s, n in ext] for ext in slices]
    assert _build.encode_partitioned_entry(1, (2**41, 2**41), slices) == \
        bb.encode_entry(1, (2**41, 2**41), slices=slices)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=50))
def test_strings_match_reference(items):
    assert _build.encode_strings(items) == bb.encode_strings(items)


def test_keys_must_increase():
    import pytest

    for bad in ([b"", b"b", b"a"], [b"", b"a", b"a"]):
        with pytest.raises(ValueError, match="strictly increasing"):
            _build.build_table(bad, [b""] * 3)


def test_data_file_alignment_and_crc(tmp_path):
    import os

    import crc32c

    path = tmp_path / "d"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    sink = _build.DataFile(fd, 64, str(path))
    small, big = b"abc", np.arange(600_000, dtype=np.float32)  # staged / written directly
    assert sink.append(small) == (0, 3, _data.mask_crc(crc32c.crc32c(small)))
    assert sink.append(big) == (64, big.nbytes, _data.mask_crc(crc32c.crc32c(big)))
    assert sink.append(b"", False) == (64 + big.nbytes, 0, None)
    sink.flush()
    os.close(fd)
    raw = path.read_bytes()
    assert len(raw) == 64 + big.nbytes and raw[:3] == small and raw[3:64] == bytes(61)
    assert raw[64:] == big.tobytes()


@settings(max_examples=60, deadline=None)
@given(a=st.binary(max_size=200), b=st.binary(max_size=200))
def test_crc_combine_equals_the_crc_of_the_concatenation(a, b):
    assert _data.crc32c_combine(crc32c.crc32c(a), crc32c.crc32c(b), len(b)) == \
        crc32c.crc32c(a + b)


def test_check_crc_in_pieces_finds_every_flipped_byte():
    data = bytearray(os.urandom(5 * _data.PARALLEL_PIECE + 123))
    masked = _data.mask_crc(crc32c.crc32c(bytes(data)))
    with ThreadPoolExecutor(3) as pool:
        _data.check_crc(data, masked, pool=pool, pieces=4)
        for where in (0, _data.PARALLEL_PIECE + 1, len(data) // 2, len(data) - 1):
            data[where] ^= 0x40
            with pytest.raises(tfshard.ChecksumMismatchError):
                _data.check_crc(data, masked, pool=pool, pieces=4)
            data[where] ^= 0x40
