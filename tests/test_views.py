"""The reader's C fast paths (tfshard/_views.pyx): ckpt[name], load and verify_all in one pass.

Whatever path a tensor takes, the values, dtypes, errors and their order must be what the
general path gives; these tests mix tensors the fast paths serve with those they leave to
the general path, and corrupt tensors of every size class.
"""

import os

import ml_dtypes
import numpy as np
import pytest

import tfshard
from tfshard import ChecksumMismatchError, CorruptCheckpointError

RNG = np.random.default_rng(11)


def mixed():
    """Small and large fixed-size tensors, strings, a sub-byte type, an empty tensor."""
    return {
        "a/small": RNG.standard_normal((3, 4)).astype(np.float32),
        "b/bf16": RNG.standard_normal(7).astype(ml_dtypes.bfloat16),
        "c/big": RNG.standard_normal((9 << 20) // 8),          # 9 MiB: CRC in pieces
        "d/mid": RNG.integers(0, 100, 600_000, dtype=np.int32),  # 2.4 MB
        "e/strings": np.array([b"x", b"yz"], dtype=object),
        "f/int4": np.array([-8, 7, 0], dtype=ml_dtypes.int4),
        "g/empty": np.zeros((0, 5), np.float16),
        "h/scalar": np.float64(2.5),
        "i/bool": np.array([True, False]),
    }


def _flip(prefix, name, at=0):
    """Flip one byte of tensor ``name``'s stored bytes (at ``at`` within the tensor)."""
    with tfshard.open(prefix) as ckpt:
        info = ckpt.info(name)
    path = f"{prefix}.data-{info.shard:05d}-of-{len(_shards(prefix)):05d}"
    with open(path, "r+b") as f:
        f.seek(info.offset + at)
        byte = f.read(1)
        f.seek(info.offset + at)
        f.write(bytes([byte[0] ^ 0x40]))


def _same(a, b):
    if a.dtype == object:
        return a.tolist() == b.tolist()
    return a.tobytes() == b.tobytes()


def _shards(prefix):
    d, base = os.path.split(prefix)
    return [n for n in os.listdir(d) if n.startswith(os.path.basename(base) + ".data-")]


@pytest.mark.parametrize("num_shards", [1, 3])
@pytest.mark.parametrize("threads", [None, 1, 2, 5])
def test_load_matches_reading_each_tensor(tmp_path, num_shards, threads):
    tensors = mixed()
    prefix = tfshard.save(tmp_path / "m", tensors, num_shards=num_shards)
    got = tfshard.load(prefix, threads=threads)
    assert list(got) == sorted(tensors)  # key order, as the checkpoint lists them
    for name, want in tensors.items():
        want = np.asarray(want)
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        assert _same(got[name], want), name
    with tfshard.open(prefix) as ckpt:
        for name in tensors:
            one = ckpt[name]
            assert one.dtype == got[name].dtype and _same(one, got[name]), name
    assert tfshard.open(prefix).verify_all(threads=threads) == []


def test_views_are_read_only_and_share_the_map(tmp_path):
    a = np.arange(1000, dtype=np.int64)
    prefix = tfshard.save(tmp_path / "v", {"a": a, "b": a[:10]})
    with tfshard.open(prefix) as ckpt:
        x, y = ckpt["a"], ckpt["a"]
        assert not x.flags.writeable and x.flags.c_contiguous and x.flags.aligned
        assert np.shares_memory(x, y)  # both view the one map: no copy
        with pytest.raises(ValueError):
            x[0] = 5
    # Views outlive close(), and a closed checkpoint refuses new reads.
    assert x[999] == 999
    with pytest.raises(ValueError, match="closed"):
        ckpt["a"]


@pytest.mark.parametrize("name,at", [("a/small", 5), ("c/big", (9 << 20) - 3),
                                     ("c/big", 5 << 20), ("d/mid", 1), ("b/bf16", 0)])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_flipped_byte_is_found_by_every_path(tmp_path, name, at, threads):
    prefix = tfshard.save(tmp_path / "m", mixed())
    _flip(prefix, name, at)
    bad = tfshard.open(prefix).verify_all(threads=threads)
    assert [n for n, _ in bad] == [name]
    assert isinstance(bad[0][1], ChecksumMismatchError)
    with pytest.raises(ChecksumMismatchError, match=name):
        tfshard.load(prefix, threads=threads)
    with tfshard.open(prefix) as ckpt, pytest.raises(ChecksumMismatchError, match=name):
        ckpt[name]
    with tfshard.open(prefix, verify=False) as ckpt:
        ckpt[name]  # not checked: no error
    assert len(tfshard.load(prefix, verify=False)) == len(mixed())


def test_verify_all_reports_every_bad_tensor_in_key_order(tmp_path):
    tensors = {f"t{i:03d}": np.full(50, i, np.float32) for i in range(300)}
    prefix = tfshard.save(tmp_path / "many", tensors)
    for name in ("t250", "t007", "t100"):
        _flip(prefix, name, 3)
    with tfshard.open(prefix) as ckpt:
        assert [n for n, _ in ckpt.verify_all()] == ["t007", "t100", "t250"]


def test_truncated_data_file_is_an_error_not_a_crash(tmp_path):
    prefix = tfshard.save(tmp_path / "t", {"a": np.ones(1000, np.float32),
                                           "z": np.ones(1000, np.float32)})
    ckpt = tfshard.open(prefix)
    ckpt["a"]
    os.truncate(f"{prefix}.data-00000-of-00001", 4100)
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        ckpt["z"]
    bad = ckpt.verify_all(threads=2)
    assert [n for n, _ in bad] == ["z"]
    ckpt.close()
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        tfshard.load(prefix)


def test_tensors_out_of_offset_order_without_overlap_pass(tmp_path):
    """Key order and file order differ (the one-pass overlap check then sorts)."""
    import bundle_builder as bb
    import crc32c

    data = np.arange(32, dtype=np.float32).tobytes()

    def entry(offset, count):
        part = data[offset:offset + 4 * count]
        return bb.encode_entry(1, (count,), 0, offset, len(part), bb.mask(crc32c.crc32c(part)))

    items = [(b"", bb.encode_header(1)), (b"a", entry(64, 16)), (b"b", entry(0, 8)),
             (b"c", entry(32, 8))]
    (tmp_path / "x.index").write_bytes(bb.build_table(items))
    (tmp_path / "x.data-00000-of-00001").write_bytes(data)
    with tfshard.open(tmp_path / "x") as ckpt:
        assert ckpt.verify_all() == []
        assert ckpt["b"].tolist() == list(range(8))


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2", True])
def test_threads_must_be_a_positive_integer(tmp_path, threads):
    prefix = tfshard.save(tmp_path / "x", {"a": np.ones(3)})
    with pytest.raises(ValueError, match="threads"):
        tfshard.load(prefix, threads=threads)
    with pytest.raises(ValueError, match="threads"):
        tfshard.open(prefix).verify_all(threads=threads)


def test_a_shard_that_is_not_a_map_is_read_by_the_general_path(tmp_path):
    """An empty data file is no mmap: the fast paths hand its tensors back."""
    prefix = tfshard.save(tmp_path / "e", {"e": np.zeros((0, 3), np.float32),
                                           "s": np.array([b""], dtype=object)},
                          num_shards=1, alignment=1)
    with tfshard.open(prefix) as ckpt:
        assert ckpt["e"].shape == (0, 3)
        assert ckpt.verify_all() == []
    got = tfshard.load(prefix)
    assert got["e"].shape == (0, 3) and got["s"].tolist() == [b""]
