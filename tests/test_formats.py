"""Format adapters (tfshard.formats): round trips through every format, interop
with the safetensors and torch libraries, hostile inputs, safe npy file names,
atomic outputs and the errors raised before anything is written."""

from __future__ import annotations

import json
import os
import struct
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tfshard
from tfshard import formats
from tfshard.formats import FORMATS, create_sink, detect_format, open_source

RNG = np.random.default_rng(1234)

# One tensor of each dtype the round trips cover; values exercise every byte.
TENSORS = {
    "dense/kernel": RNG.standard_normal((3, 5)).astype(np.float32),
    "dense/bias": RNG.standard_normal(5).astype(np.float16),
    "emb/bf16": RNG.standard_normal((4, 2)).astype(ml_dtypes.bfloat16),
    "quant/int8": RNG.integers(-128, 128, (2, 3, 2), dtype=np.int8),
    "step/int64": np.array([2**62 + 17, -5], dtype=np.int64),
    "mask": np.array([[True, False, True]]),
    "fp8/e4m3": RNG.standard_normal(6).astype(ml_dtypes.float8_e4m3fn),
    "fp8/e5m2": RNG.standard_normal(6).astype(ml_dtypes.float8_e5m2),
    "scalar": np.array(3.25, dtype=np.float32),
    "empty": np.zeros((0, 4), dtype=np.float32),
}
TF_NAMES = {name: tfshard.dtypes.by_name(
    "bool" if a.dtype == np.bool_ else a.dtype.name).name for name, a in TENSORS.items()}

OUTPUTS = {  # format -> output path relative to a test's folder
    "tf": "out/ckpt",
    "safetensors": "out/model.safetensors",
    "npz": "out/model.npz",
    "npy": "out/arrays",
    "torch": "out/model.pt",
}
NUMPY_ONLY = {"bfloat16", "float8_e4m3fn", "float8_e5m2"}  # not in npz/npy


def needs(fmt):
    if fmt == "torch":
        pytest.importorskip("torch")


def held(fmt):
    """The TENSORS names format ``fmt`` can hold."""
    return [n for n in TENSORS if fmt not in ("npz", "npy") or TF_NAMES[n] not in NUMPY_ONLY]


def copy(source, dst, fmt=None, names=None, **kwargs):
    """Copy ``names`` (all by default) from an open source to ``dst``; return the files."""
    names = source.names() if names is None else names
    plan = [(n, *source.info(n)) for n in names]
    with create_sink(dst, fmt, plan=plan, **kwargs) as sink:
        for name, dtype, _ in plan:
            sink.add(name, source.read(name), dtype)
        return sink.commit()


def snapshot(folder):
    """Every path under ``folder``, for 'nothing else was written' checks."""
    out = set()
    for root, dirs, files in os.walk(folder):
        for entry in dirs + files:
            out.add(os.path.relpath(os.path.join(root, entry), folder))
    return out


@pytest.fixture
def src_ckpt(tmp_path):
    return tfshard.save(str(tmp_path / "src" / "ckpt"), TENSORS)


def assert_same(source, names):
    for name in names:
        arr = source.read(name)
        want = TENSORS[name]
        assert source.info(name) == (TF_NAMES[name], want.shape), name
        assert arr.dtype == want.dtype and arr.shape == want.shape, name
        assert np.ascontiguousarray(arr).tobytes() == want.tobytes(), name
        assert source.nbytes(name) == want.nbytes, name


# ---- round trips ------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_through_each_format_is_exact(tmp_path, src_ckpt, fmt):
    needs(fmt)
    out = str(tmp_path / OUTPUTS[fmt])
    names = held(fmt)
    with open_source(src_ckpt) as src:
        files = copy(src, out, fmt, names=names)
    assert files and all(os.path.isfile(f) for f in files)
    assert detect_format(out) == fmt
    with open_source(out) as mid:
        assert mid.format == fmt
        assert mid.names() == sorted(names)
        assert_same(mid, names)
        back = str(tmp_path / "back" / "ckpt")
        copy(mid, back, "tf")
    with open_source(back) as again:
        assert again.names() == sorted(names)
        assert_same(again, names)


def test_sources_return_read_only_views_of_the_file(tmp_path, src_ckpt):
    with open_source(src_ckpt) as src:
        copy(src, str(tmp_path / "m.safetensors"))
        copy(src, str(tmp_path / "m.npz"), names=held("npz"))
        copy(src, str(tmp_path / "arrays"), "npy", names=held("npy"))
    for path in ("m.safetensors", "m.npz", "arrays"):
        with open_source(str(tmp_path / path)) as s:
            arr = s.read("dense/kernel")
            assert not arr.flags.writeable
            assert arr.base is not None  # a view, not a fresh copy
            assert arr.ctypes.data % arr.dtype.itemsize == 0  # laid out aligned
        # Views outlive the source.
        assert np.array_equal(arr, TENSORS["dense/kernel"])


def test_npz_members_are_aligned_to_64_bytes(tmp_path, src_ckpt):
    out = str(tmp_path / "m.npz")
    with open_source(src_ckpt) as src:
        copy(src, out, names=held("npz"))
    with open_source(out) as s:
        for name in s.names():
            if s.nbytes(name):
                assert s.read(name).ctypes.data % 64 == 0, name


def test_tf_to_tf_keeps_quantized_and_string_dtypes(tmp_path):
    src = str(tmp_path / "src" / "ckpt")
    with tfshard.CheckpointWriter(src) as w:
        w.add("q", np.array([1, -2, 3], dtype=np.int8), dtype="qint8")
        w.add("vocab", np.array([b"a", b"\x00b\x00", b""], dtype=object))
    with open_source(src) as s:
        assert s.info("q") == ("qint8", (3,))
        assert s.info("vocab") == ("string", (3,))
        copy(s, str(tmp_path / "out" / "ckpt"))
    with tfshard.open(str(tmp_path / "out" / "ckpt")) as c:
        assert c.info("q").dtype == "qint8"
        assert c["vocab"].tolist() == [b"a", b"\x00b\x00", b""]


def test_sink_converts_to_the_planned_dtype(tmp_path):
    out = str(tmp_path / "m.safetensors")
    with create_sink(out, plan=[("w", "bfloat16", (3,))]) as sink:
        sink.add("w", np.array([1.0, 2.5, -3.0], dtype=np.float64))
    with open_source(out) as s:
        assert s.read("w").dtype == ml_dtypes.bfloat16
        assert s.read("w").astype(np.float32).tolist() == [1.0, 2.5, -3.0]


def test_empty_model_round_trips(tmp_path):
    for fmt in ("safetensors", "npz", "npy", "tf"):
        out = str(tmp_path / fmt / OUTPUTS[fmt])
        with create_sink(out, fmt, plan=[]):
            pass
        with open_source(out, fmt) as s:
            assert s.names() == []


# ---- safetensors interop ----------------------------------------------------------

def test_safetensors_library_reads_our_files(tmp_path, src_ckpt):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    out = str(tmp_path / "m.safetensors")
    plain = [n for n in TENSORS if TF_NAMES[n] not in NUMPY_ONLY]
    with open_source(src_ckpt) as src:
        copy(src, out, names=plain)
    loaded = load_file(out)
    assert set(loaded) == set(plain)
    for name in plain:
        assert loaded[name].dtype == TENSORS[name].dtype
        assert loaded[name].tobytes() == TENSORS[name].tobytes()
    with safe_open(out, framework="np") as f:
        assert sorted(f.keys()) == sorted(plain)
        assert f.get_slice("dense/kernel")[1:2].tobytes() == TENSORS["dense/kernel"][1:2].tobytes()


def test_safetensors_torch_api_reads_our_bfloat16_and_float8(tmp_path, src_ckpt):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    out = str(tmp_path / "m.safetensors")
    with open_source(src_ckpt) as src:
        copy(src, out)
    loaded = load_file(out)
    assert loaded["emb/bf16"].dtype == torch.bfloat16
    assert loaded["fp8/e4m3"].dtype == torch.float8_e4m3fn
    assert loaded["fp8/e5m2"].dtype == torch.float8_e5m2
    for name in ("emb/bf16", "fp8/e4m3", "fp8/e5m2", "dense/kernel", "mask", "empty"):
        t = loaded[name]
        raw = t.view(torch.uint8) if t.dtype.itemsize == 1 and t.dtype != torch.bool else t
        if t.dtype == torch.bfloat16:
            raw = t.view(torch.int16)
        assert raw.numpy().tobytes() == TENSORS[name].tobytes(), name


def test_we_read_files_the_safetensors_library_wrote(tmp_path):
    from safetensors.numpy import save_file

    arrays = {
        "a": RNG.standard_normal((2, 3)).astype(np.float64),
        "b": np.arange(7, dtype=np.uint16),
        "c": np.array([1 + 2j], dtype=np.complex64),
        "d": np.array([], dtype=np.int32),
        "e/ü": np.array(True),
    }
    out = str(tmp_path / "lib.safetensors")
    save_file(arrays, out, metadata={"format": "np", "note": "x"})
    with open_source(out) as s:
        assert s.metadata == {"format": "np", "note": "x"}
        assert s.names() == sorted(arrays)
        for name, want in arrays.items():
            got = s.read(name)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes()
        assert s.info("c") == ("complex64", (1,))
        assert s.info("e/ü") == ("bool", ())


def test_we_read_bfloat16_and_float8_the_torch_api_wrote(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    values = torch.randn(3, 4)
    out = str(tmp_path / "lib.safetensors")
    save_file({"bf": values.to(torch.bfloat16), "f8": values.to(torch.float8_e4m3fn),
               "f5": values.to(torch.float8_e5m2), "u32": torch.arange(5).to(torch.uint32)},
              out)
    with open_source(out) as s:
        assert s.info("bf") == ("bfloat16", (3, 4))
        assert s.info("f8") == ("float8_e4m3fn", (3, 4))
        assert s.read("bf").view(np.int16).tobytes() == \
            values.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
        assert s.read("f8").view(np.uint8).tobytes() == \
            values.to(torch.float8_e4m3fn).view(torch.uint8).numpy().tobytes()
        assert s.read("u32").tolist() == list(range(5))


def test_sharded_safetensors_with_index_load_in_the_library(tmp_path, src_ckpt):
    from safetensors import safe_open

    out = str(tmp_path / "hf" / "model.safetensors")
    plain = [n for n in TENSORS if TF_NAMES[n] not in NUMPY_ONLY]
    with open_source(src_ckpt) as src:
        files = copy(src, out, names=plain, max_shard_size=20)
    index_path = str(tmp_path / "hf" / "model.safetensors.index.json")
    shards = [f for f in files if f.endswith(".safetensors")]
    assert files[-1] == index_path and len(shards) > 2
    assert not os.path.exists(out)  # sharded: no single file of that name
    n = len(shards)
    assert [os.path.basename(f) for f in shards] == [
        f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.load(open(index_path))
    assert set(index["weight_map"]) == set(plain)
    assert index["metadata"]["total_size"] == sum(TENSORS[k].nbytes for k in plain)
    # How Hugging Face loads a sharded checkpoint: through the weight map.
    for name, file in index["weight_map"].items():
        with safe_open(str(tmp_path / "hf" / file), framework="np") as f:
            assert f.get_tensor(name).tobytes() == TENSORS[name].tobytes()
    for path in (index_path, str(tmp_path / "hf")):
        with open_source(path) as s:
            assert s.names() == sorted(plain)
            assert_same(s, plain)


def test_sharded_safetensors_into_a_directory(tmp_path, src_ckpt):
    out = str(tmp_path / "hfdir")
    with open_source(src_ckpt) as src:
        files = copy(src, out, "safetensors", max_shard_size=10**9)
        assert files == [os.path.join(out, "model.safetensors")]  # one shard: no index
        files = copy(src, str(tmp_path / "hfdir2"), "safetensors", max_shard_size=100)
    assert os.path.basename(files[-1]) == "model.safetensors.index.json"
    with open_source(str(tmp_path / "hfdir2")) as s:
        assert_same(s, list(TENSORS))


def test_resharding_with_overwrite_removes_stale_shards(tmp_path, src_ckpt):
    out = str(tmp_path / "model.safetensors")
    with open_source(src_ckpt) as src:
        many = copy(src, out, max_shard_size=40)
        fewer = copy(src, out, max_shard_size=90, overwrite=True)
        assert 2 < len(fewer) < len(many)
        assert sorted(os.listdir(tmp_path)) == sorted(
            [os.path.basename(f) for f in fewer] + ["src"])  # the old shards are gone
        copy(src, out, overwrite=True)  # back to one file: index and shards go
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "src"]
    with open_source(out) as s:
        assert_same(s, list(TENSORS))


# ---- hostile safetensors ------------------------------------------------------------

def st_bytes(header, data=b"", length=None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "U8", "shape": [3], "data_offsets": [8, 11]}}


def with_entry(name, **changes):
    header = json.loads(json.dumps(GOOD))
    header[name].update(changes)
    return header


HOSTILE = {
    "huge_length": st_bytes(GOOD, bytes(11), length=2**63 + 5),
    "length_past_eof": st_bytes(GOOD, bytes(11), length=10_000),
    "length_2_pow_40": st_bytes(b"{}", length=2**40),
    "too_short": b"\x05\x00\x00",
    "offsets_past_eof": st_bytes(with_entry("b", data_offsets=[8, 1 << 40],
                                            shape=[(1 << 40) - 8]), bytes(11)),
    "overlapping": st_bytes(with_entry("b", data_offsets=[4, 7]), bytes(11)),
    "gap": st_bytes(with_entry("b", data_offsets=[9, 12]), bytes(12)),
    "trailing_bytes": st_bytes(GOOD, bytes(12)),
    "missing_bytes": st_bytes(GOOD, bytes(10)),
    "bad_json": st_bytes(b'{"a": {"dtype": "F32",', bytes(8)),
    "not_utf8": st_bytes(b'{"\xff": 1}', b""),
    "not_an_object": st_bytes(b"[1, 2]", b""),
    "deep_nesting": st_bytes(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", b""),
    "unknown_dtype": st_bytes(with_entry("a", dtype="F128"), bytes(11)),
    "dtype_not_string": st_bytes(with_entry("a", dtype=7), bytes(11)),
    "shape_mismatch": st_bytes(with_entry("a", shape=[3]), bytes(11)),
    "negative_dim": st_bytes(with_entry("a", shape=[-2, -1]), bytes(11)),
    "bool_dim": st_bytes(with_entry("b", shape=[True, 3]), bytes(11)),
    "float_dim": st_bytes(with_entry("a", shape=[2.0]), bytes(11)),
    "huge_dims_zero_bytes": st_bytes(with_entry("a", shape=[2**64, 0]), bytes(11)),
    "reversed_offsets": st_bytes(with_entry("a", data_offsets=[8, 0]), bytes(11)),
    "three_offsets": st_bytes(with_entry("a", data_offsets=[0, 8, 8]), bytes(11)),
    "entry_not_object": st_bytes({"a": [1]}, b""),
    "duplicate_key": st_bytes(b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
                              b'"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}',
                              bytes(2)),
    "metadata_not_strings": st_bytes({"__metadata__": {"k": 1}}, b""),
    "no_brace": st_bytes(b' {"a": 1}', b""),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_safetensors_headers_are_corrupt_errors(tmp_path, case):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(HOSTILE[case])
    with pytest.raises(tfshard.CorruptCheckpointError) as info:
        open_source(str(path))
    assert str(path) in str(info.value)


def test_hostile_fixture_baseline_is_valid(tmp_path):
    path = tmp_path / "good.safetensors"
    path.write_bytes(st_bytes(GOOD, struct.pack("<2f", 1.5, -2) + b"\x01\x02\x03"))
    with open_source(str(path)) as s:
        assert s.read("a").tolist() == [1.5, -2.0]
        assert s.read("b").tolist() == [1, 2, 3]


def test_zero_size_tensor_with_a_huge_dimension(tmp_path):
    path = tmp_path / "z.safetensors"
    path.write_bytes(st_bytes({"z": {"dtype": "F32", "shape": [2**62, 0],
                                     "data_offsets": [0, 0]}}))
    with open_source(str(path)) as s:
        assert s.info("z") == ("float32", (2**62, 0))
        with pytest.raises(tfshard.UnsupportedError, match="cannot represent"):
            s.read("z")


def test_safetensors_truncated_after_open(tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_bytes(st_bytes(GOOD, bytes(11)))
    with open_source(str(path)) as s:
        os.truncate(path, len(path.read_bytes()) - 5)
        with pytest.raises(tfshard.CorruptCheckpointError, match="truncated"):
            s.read("b")


def test_safetensors_dtype_without_tf_equivalent_is_listed_but_unsupported(tmp_path):
    path = tmp_path / "e8.safetensors"
    path.write_bytes(st_bytes({"s": {"dtype": "F8_E8M0", "shape": [4], "data_offsets": [0, 4]},
                               "w": {"dtype": "F16", "shape": [1], "data_offsets": [4, 6]}},
                              bytes(6)))
    with open_source(str(path)) as s:
        assert s.names() == ["s", "w"]
        assert s.read("w").tolist() == [0.0]
        with pytest.raises(tfshard.UnsupportedError, match="F8_E8M0"):
            s.info("s")


def test_safetensors_index_cannot_point_outside_its_directory(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    with pytest.raises(tfshard.CorruptCheckpointError, match="beside the index"):
        open_source(str(tmp_path / "model.safetensors.index.json"))


def test_safetensors_index_naming_a_tensor_its_shard_lacks(tmp_path):
    (tmp_path / "s.safetensors").write_bytes(st_bytes(GOOD, bytes(11)))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "s.safetensors", "zz": "s.safetensors"}}))
    with pytest.raises(tfshard.CorruptCheckpointError, match="zz"):
        open_source(str(tmp_path))


def read_everything(path, fmt):
    with open_source(path, fmt) as s:
        for name in s.names():
            s.info(name)
            s.nbytes(name)
            np.asarray(s.read(name)).tobytes()


def valid_file(fmt) -> bytes:
    import io

    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(3, dtype=np.uint8)}
    if fmt == "safetensors":
        from safetensors.numpy import save

        return save(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_mutated_files_raise_only_tfshard_errors(tmp_path_factory, fmt, data):
    raw = bytearray(valid_file(fmt))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    path = tmp_path_factory.mktemp("fuzz") / f"m.{fmt}"
    path.write_bytes(bytes(raw[:cut] if data.draw(st.booleans()) else raw))
    try:
        read_everything(str(path), fmt)
    except tfshard.TFShardError:
        pass


# ---- npz and npy inputs from elsewhere -------------------------------------------------

def test_npz_written_by_numpy_savez_and_savez_compressed(tmp_path):
    arrays = {"f": np.asfortranarray(RNG.standard_normal((3, 4))),
              "be": np.arange(5, dtype=">i4"),
              "s": np.array([b"ab", b"c"]),
              "u": np.array(["x", "ÿz"]),
              "z": np.zeros((2, 0))}
    for save in (np.savez, np.savez_compressed):
        path = str(tmp_path / f"{save.__name__}.npz")
        save(path, **arrays)
        with open_source(path) as s:
            assert s.names() == sorted(arrays)
            assert np.array_equal(s.read("f"), arrays["f"])
            assert s.info("be") == ("int32", (5,))
            assert s.read("be").dtype == np.dtype("=i4")
            assert s.read("be").tolist() == list(range(5))
            assert s.info("s") == ("string", (2,))
            assert s.read("s").tolist() == [b"ab", b"c"]
            assert s.read("u").tolist() == [b"x", "ÿz".encode()]
            assert s.read("z").shape == (2, 0)


def test_npz_with_pickled_objects_is_unsupported(tmp_path):
    path = str(tmp_path / "o.npz")
    np.savez(path, o=np.array([{"a": 1}], dtype=object), ok=np.ones(2))
    with open_source(path) as s:
        assert s.read("ok").tolist() == [1, 1]
        with pytest.raises(tfshard.UnsupportedError, match="unpickles"):
            s.read("o")


def test_hostile_npz(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(tfshard.CorruptCheckpointError):
        open_source(str(bad))
    # A member whose .npy header claims far more data than it holds.
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(16)
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as z:
        z.writestr("x.npy", npy)
    with open_source(str(tmp_path / "lie.npz")) as s:
        with pytest.raises(tfshard.CorruptCheckpointError, match="follow its header"):
            s.read("x")
    # Negative dimensions (numpy's header parser accepts them).
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (-1, 2), }"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(16)
    with zipfile.ZipFile(tmp_path / "neg.npz", "w") as z:
        z.writestr("x.npy", npy)
        z.writestr("y.npy", npy[:9])
    with open_source(str(tmp_path / "neg.npz")) as s:
        for name in ("x", "y"):
            with pytest.raises(tfshard.CorruptCheckpointError):
                s.info(name)


def test_npy_directory_table_cannot_point_outside(tmp_path):
    d = tmp_path / "arrays"
    d.mkdir()
    np.save(tmp_path / "secret.npy", np.ones(2))
    (d / "names.json").write_text(json.dumps({"../secret.npy": "x"}))
    with pytest.raises(tfshard.CorruptCheckpointError):
        open_source(str(d))


# ---- npy output names ------------------------------------------------------------------

HOSTILE_NAMES = ["../escape", "../../etc/passwd", "/abs/path", "a\0b", "..", ".", ".hidden",
                 "dense/kernel", "dense__kernel", "Dense/Kernel", "ünïcode/名前", "CON",
                 "x" * 400, "y\\z", "new\nline", "\udcff\udcfe", "names", "a:b*c?"]


def test_npy_names_never_escape_the_output_directory(tmp_path):
    out = tmp_path / "deep" / "arrays"
    plan = [(n, "int32", (1,)) for n in HOSTILE_NAMES]
    with create_sink(str(out), "npy", plan=plan) as sink:
        for i, name in enumerate(HOSTILE_NAMES):
            sink.add(name, np.array([i], dtype=np.int32))
        files = sink.commit()
    assert snapshot(tmp_path) == {"deep", "deep/arrays"} | {
        f"deep/arrays/{f}" for f in os.listdir(out)}
    assert len(os.listdir(out)) == len(HOSTILE_NAMES) + 1
    assert all(os.path.dirname(f) == str(out) for f in files)
    assert "dense__kernel.npy" in os.listdir(out)
    assert max(len(f.encode()) for f in os.listdir(out)) < 255
    with open_source(str(out)) as s:
        assert s.names() == sorted(HOSTILE_NAMES)
        for i, name in enumerate(HOSTILE_NAMES):
            assert s.read(name).tolist() == [i]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=80), min_size=1, max_size=12, unique=True))
def test_npy_file_names_are_plain_distinct_and_bounded(names):
    files = formats._npy_filenames(names)
    folded = {f.casefold() for f in files.values()}
    assert len(folded) == len(names)
    for f in files.values():
        assert formats._is_plain_filename(f) and f.endswith(".npy")
        assert not f.startswith(".") and len(f.encode("utf-8", "surrogatepass")) < 255
        assert not any(ord(c) < 32 for c in f)


# ---- atomicity, overwrite, unsupported dtypes ------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_exception_inside_the_block_leaves_nothing(tmp_path, fmt):
    needs(fmt)
    out = str(tmp_path / "new" / "sub" / OUTPUTS[fmt])
    plan = [("a", "float32", (4,)), ("b", "float32", (2,))]
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with create_sink(out, fmt, plan=plan, max_shard_size=8 if fmt in ("tf", "safetensors")
                         else None) as sink:
            sink.add("a", np.ones(4, np.float32))
            raise RuntimeError("boom")
    assert snapshot(tmp_path) == before  # no output, no temporary, no new folder


@pytest.mark.parametrize("fmt", FORMATS)
def test_commit_with_missing_tensors_writes_nothing(tmp_path, fmt):
    needs(fmt)
    out = str(tmp_path / OUTPUTS[fmt])
    with pytest.raises(tfshard.InvalidTensorError, match="never added"):
        with create_sink(out, fmt, plan=[("a", "int8", (1,)), ("b", "int8", (1,))]) as sink:
            sink.add("a", np.ones(1, np.int8))
    assert snapshot(tmp_path) == set()


@pytest.mark.parametrize("fmt", FORMATS)
def test_existing_output_needs_overwrite(tmp_path, fmt):
    needs(fmt)
    out = str(tmp_path / OUTPUTS[fmt])
    for value, overwrite in ((1, False), (2, True)):
        with create_sink(out, fmt, plan=[("v", "int64", ())], overwrite=overwrite) as sink:
            sink.add("v", np.int64(value))
    before = {p: os.path.getmtime(tmp_path / p) for p in snapshot(tmp_path)}
    with pytest.raises(tfshard.OutputExistsError) as info:
        create_sink(out, fmt, plan=[("v", "int64", ())])
    assert isinstance(info.value, FileExistsError)
    assert {p: os.path.getmtime(tmp_path / p) for p in snapshot(tmp_path)} == before
    with open_source(out, fmt) as s:
        assert s.read("v") == 2


def test_npy_overwrite_refuses_a_directory_that_is_not_an_npy_output(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.txt").write_text("keep")
    with pytest.raises(tfshard.OutputExistsError, match="not an npy output"):
        create_sink(str(tmp_path / "home"), "npy", plan=[], overwrite=True)
    assert (tmp_path / "home" / "precious.txt").read_text() == "keep"


def test_output_appearing_before_commit_is_not_replaced(tmp_path):
    out = tmp_path / "m.npz"
    with pytest.raises(tfshard.OutputExistsError):
        with create_sink(str(out), plan=[("a", "int8", ())]) as sink:
            sink.add("a", np.int8(1))
            out.write_bytes(b"someone else's")
    assert out.read_bytes() == b"someone else's"
    assert snapshot(tmp_path) == {"m.npz"}


UNSUPPORTED = [
    ("safetensors", "string"), ("safetensors", "variant"), ("safetensors", "complex128"),
    ("safetensors", "int4"), ("safetensors", "qint8"), ("npz", "bfloat16"),
    ("npz", "float8_e4m3fn"), ("npz", "string"), ("npz", "qint8"), ("npy", "bfloat16"),
    ("npy", "variant"), ("npy", "uint4"), ("torch", "string"), ("torch", "int4"),
    ("torch", "qint32"),
]


@pytest.mark.parametrize("fmt,dtype", UNSUPPORTED)
def test_unsupported_dtypes_are_refused_before_writing(tmp_path, fmt, dtype):
    needs(fmt)
    plan = [("fine", "float32", (2,)), ("odd/one", dtype, (3,))]
    with pytest.raises(tfshard.UnsupportedError) as info:
        create_sink(str(tmp_path / "x" / OUTPUTS[fmt]), fmt, plan=plan)
    message = str(info.value)
    assert "'odd/one'" in message and dtype in message and "tf" in message
    assert info.value.key == "odd/one"
    assert snapshot(tmp_path) == set()


@pytest.mark.parametrize("fmt,name", [("safetensors", "__metadata__"),
                                      ("safetensors", "bad\udcff"), ("npz", "nul\0name")])
def test_names_a_format_cannot_store_are_refused(tmp_path, fmt, name):
    with pytest.raises(tfshard.UnsupportedError):
        create_sink(str(tmp_path / OUTPUTS[fmt]), fmt, plan=[(name, "int8", ())])
    assert snapshot(tmp_path) == set()


def test_max_shard_size_only_for_sharded_formats(tmp_path):
    with pytest.raises(tfshard.UnsupportedError, match="max_shard_size"):
        create_sink(str(tmp_path / "m.npz"), plan=[], max_shard_size=10)
    with pytest.raises(tfshard.InvalidTensorError):
        create_sink(str(tmp_path / "m.safetensors"), plan=[], max_shard_size=0)


def test_tf_output_is_sharded_by_max_shard_size(tmp_path, src_ckpt):
    with open_source(src_ckpt) as src:
        files = copy(src, str(tmp_path / "out" / "ckpt"), max_shard_size=40)
    assert files[-1].endswith("ckpt.index") and len(files) > 3
    with open_source(str(tmp_path / "out")) as s:  # found through the directory too
        assert_same(s, list(TENSORS))


def test_add_validates_against_the_plan(tmp_path):
    sink = create_sink(str(tmp_path / "m.safetensors"),
                       plan=[("a", "float32", (2,)), ("b", "int8", ())])
    with pytest.raises(tfshard.InvalidTensorError, match="not in the plan"):
        sink.add("zz", np.ones(2))
    with pytest.raises(tfshard.InvalidTensorError, match="shape"):
        sink.add("a", np.ones(3))
    with pytest.raises(tfshard.InvalidTensorError, match="planned as float32"):
        sink.add("a", np.ones(2), "float16")
    with pytest.raises(tfshard.InvalidTensorError, match="cannot store"):
        sink.add("a", np.array(["x", "y"]))
    sink.add("b", np.int8(3))  # out of plan order is fine
    with pytest.raises(tfshard.InvalidTensorError, match="already added"):
        sink.add("b", np.int8(3))
    sink.add("a", [1.0, 2.0])
    assert sink.commit() == [str(tmp_path / "m.safetensors")]
    with pytest.raises(tfshard.WriterClosedError):
        sink.add("a", np.ones(2))
    with pytest.raises(tfshard.InvalidTensorError):
        create_sink(str(tmp_path / "n.npz"), plan=[("a", "int8", ()), ("a", "int8", ())])
    with pytest.raises(tfshard.InvalidTensorError, match="unknown dtype"):
        create_sink(str(tmp_path / "n.npz"), plan=[("a", "float", ())])


# ---- torch ---------------------------------------------------------------------------------

def test_torch_state_dict_is_flattened_and_non_tensors_skipped(tmp_path):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "sd.pt")
    weight = torch.randn(3, 2)
    torch.save({"model": {"fc": {"weight": weight.to(torch.bfloat16)},
                          "scale": torch.tensor(2.0, dtype=torch.float64)},
                "epoch": 7, "names": ["a", "b"],
                "tied": weight.t()}, path)  # a non-contiguous view
    with pytest.warns(UserWarning, match="skipped 2"):
        s = open_source(path)
    with s:
        assert s.names() == ["model.fc.weight", "model.scale", "tied"]
        assert {name for name, _ in s.skipped} == {"epoch", "names"}
        assert s.info("model.fc.weight") == ("bfloat16", (3, 2))
        assert s.read("model.fc.weight").view(np.int16).tobytes() == \
            weight.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
        assert np.array_equal(s.read("tied"), weight.t().numpy())
        assert s.nbytes("model.scale") == 8


def test_torch_legacy_format_and_unsafe_pickles(tmp_path):
    torch = pytest.importorskip("torch")
    legacy = str(tmp_path / "old.pt")
    torch.save({"w": torch.arange(4)}, legacy, _use_new_zipfile_serialization=False)
    with open_source(legacy) as s:
        assert s.read("w").tolist() == [0, 1, 2, 3]
    unsafe = str(tmp_path / "unsafe.pt")
    torch.save({"w": torch.ones(1), "obj": zipfile.ZipInfo("x")}, unsafe)
    with pytest.raises(tfshard.UnsupportedError, match="weights_only"):
        open_source(unsafe)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(tfshard.CorruptCheckpointError):
        open_source(str(junk))


def test_torch_output_loads_in_torch(tmp_path, src_ckpt):
    torch = pytest.importorskip("torch")
    out = str(tmp_path / "m.pt")
    with open_source(src_ckpt) as src:
        copy(src, out)
    loaded = torch.load(out, weights_only=True)
    assert list(loaded) == sorted(TENSORS)
    assert loaded["emb/bf16"].dtype == torch.bfloat16
    assert loaded["fp8/e5m2"].dtype == torch.float8_e5m2
    assert torch.equal(loaded["dense/kernel"], torch.from_numpy(TENSORS["dense/kernel"]))


def test_missing_torch_is_an_unsupported_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    (tmp_path / "m.pt").write_bytes(b"")
    with pytest.raises(tfshard.UnsupportedError, match="install torch"):
        open_source(str(tmp_path / "m.pt"))
    with pytest.raises(tfshard.UnsupportedError, match="install torch"):
        create_sink(str(tmp_path / "o.pt"), plan=[])
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]


# ---- detect_format ---------------------------------------------------------------------------

def test_detect_format(tmp_path, src_ckpt):
    d = str(tmp_path)
    prefix = src_ckpt
    assert detect_format(prefix) == "tf"
    assert detect_format(prefix + ".index") == "tf"
    assert detect_format(prefix + ".data-00000-of-00001") == "tf"
    with open_source(prefix) as src:
        copy(src, os.path.join(d, "arrays"), "npy", names=["mask"])
        copy(src, os.path.join(d, "hf"), "safetensors", names=["mask"], max_shard_size=1)
    assert detect_format(os.path.join(d, "arrays")) == "npy"
    assert detect_format(os.path.join(d, "arrays"), for_output=True) == "npy"
    assert detect_format(os.path.join(d, "hf")) == "safetensors"
    assert detect_format(os.path.join(d, "hf", "model.safetensors.index.json")) == "safetensors"
    for name, fmt in [("m.safetensors", "safetensors"), ("m.npz", "npz"), ("m.pt", "torch"),
                      ("pytorch_model.bin", "torch"), ("m.pth", "torch"), ("M.SafeTensors",
                                                                            "safetensors")]:
        assert detect_format(os.path.join(d, name), for_output=True) == fmt
        assert detect_format(os.path.join(d, name)) == fmt  # by name, existing or not
    assert detect_format(os.path.join(d, "out", "model.ckpt-100"), for_output=True) == "tf"
    with pytest.raises(tfshard.CheckpointNotFoundError):
        detect_format(os.path.join(d, "nothing", "here"))
    for bad in ("m.h5", "m.onnx", "m.gguf", "x.npy"):
        with pytest.raises(tfshard.UnsupportedError, match="accepted"):
            detect_format(os.path.join(d, bad), for_output=True)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(tfshard.UnsupportedError, match="accepted"):
        detect_format(str(tmp_path / "notes.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(tfshard.UnsupportedError, match="fmt='npy'"):
        detect_format(str(tmp_path / "empty"), for_output=True)
    with pytest.raises(tfshard.UnsupportedError):
        detect_format(str(tmp_path / "empty"))
    with pytest.raises(tfshard.UnsupportedError, match="prefix"):
        detect_format(os.path.dirname(prefix), for_output=True)
    with pytest.raises(tfshard.UnsupportedError, match="directory"):
        detect_format(os.path.join(d, "newdir") + os.sep, for_output=True)
    with pytest.raises(tfshard.UnsupportedError, match="unknown format"):
        open_source(prefix, "keras")
