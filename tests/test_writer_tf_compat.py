"""Checkpoints written by tfshard, checked with real TensorFlow (run in CI, where TensorFlow
is installed; ``conftest.py`` makes CI fail rather than skip when it is missing).

* random tensors of every common dtype, names, shapes, shard layouts and alignments written
  by tfshard read back exactly by ``tf.train.load_checkpoint``;
* with ``alignment=1`` tfshard's ``.index`` and data file are byte-identical to what
  ``tf.raw_ops.SaveV2`` writes for the same tensors in the same order (plain and sliced);
* a TF1 graph ``Saver`` restores plain and partitioned variables from tfshard's files;
* a TF2 ``tf.train.Checkpoint`` read by tfshard, edited and written back is restored by TF
  (object graph passed through unchanged, ``assert_consumed``);
* the golden TF checkpoints survive a tfshard load + save with TF seeing the same values;
* plain Python ``bytes`` values (strings, serialized variants) are stored verbatim.
"""

import os
import tempfile
from pathlib import Path

import ml_dtypes
import crc32c
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tfshard
from helpers import tensor_sha256

tf = pytest.importorskip("tensorflow")

GOLDEN_DIR = Path(__file__).parent / "data" / "golden"
DATA1 = ".data-00000-of-00001"


# ---- helpers ---------------------------------------------------------------------------


def obj_array(items, shape=None):
    """An object array of ``bytes`` (np.array would make an ``S`` array or nest lists)."""
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out.reshape(shape if shape is not None else (len(items),))


def tf_value(reader, name):
    """``reader.get_tensor(name)`` as an array (TF returns a bare ``bytes`` for a scalar
    string and numpy scalars for some scalars)."""
    value = reader.get_tensor(name)
    if isinstance(value, bytes):
        return obj_array([value], ())
    return np.asarray(value)


def tf_dtype_name(array) -> str:
    return "string" if array.dtype == object else array.dtype.name


def assert_same_tensor(got, expected, name):
    """``got`` (from TF) equals ``expected`` exactly: dtype, shape and bytes."""
    assert got.shape == expected.shape, name
    if expected.dtype == object:
        assert got.dtype == object, name
        assert got.ravel().tolist() == [bytes(b) for b in expected.ravel().tolist()], name
        return
    assert got.dtype == expected.dtype, (name, got.dtype, expected.dtype)
    if expected.dtype in (np.dtype(ml_dtypes.int4), np.dtype(ml_dtypes.uint4)):
        # Sub-byte values: compare the numbers (ml_dtypes' in-memory high bits are not part
        # of the value).
        np.testing.assert_array_equal(got.astype(np.int8), expected.astype(np.int8), err_msg=name)
    else:
        # Raw bytes: bit-exact for NaN payloads, -0.0, bfloat16 and float8 patterns.
        assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(expected).tobytes(), name


def assert_tf_reads(prefix, expected: dict):
    """TensorFlow lists and reads exactly ``expected`` ({name: array}) from ``prefix``."""
    prefix = str(prefix)
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    shapes = reader.get_variable_to_shape_map()
    assert sorted(dtypes) == sorted(expected)
    assert tf.train.list_variables(prefix) == sorted(
        (name, list(a.shape)) for name, a in expected.items())
    for name, array in expected.items():
        assert dtypes[name].name == tf_dtype_name(array), name
        assert list(shapes[name]) == list(array.shape), name
        assert_same_tensor(tf_value(reader, name), array, name)


def files_of(prefix):
    """{file name suffix: bytes} of every file of a checkpoint prefix."""
    prefix = str(prefix)
    d, base = os.path.split(prefix)
    out = {}
    for f in sorted(os.listdir(d)):
        if f.startswith(base + "."):
            with open(os.path.join(d, f), "rb") as fh:
                out[f[len(base):]] = fh.read()
    return out


def assert_byte_identical(tf_prefix, ours_prefix):
    theirs, ours = files_of(tf_prefix), files_of(ours_prefix)
    assert ".index" in theirs and DATA1 in theirs
    assert sorted(theirs) == sorted(ours)
    for suffix in theirs:
        a, b = theirs[suffix], ours[suffix]
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            pytest.fail(f"{suffix} differs: TF {len(a)} bytes, tfshard {len(b)} bytes, "
                        f"first difference at byte {first}")


# ---- 1. property test: anything tfshard writes, TensorFlow reads identically -------------

FIXED = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8,
         np.uint16, np.uint32, np.uint64, np.bool_, np.complex64, np.complex128]

names = st.text(st.one_of(st.sampled_from("/. "), st.characters(codec="utf-8")),
                min_size=1, max_size=24)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def tensors(draw):
    shape = draw(shapes)
    kind = draw(st.sampled_from(["fixed", "fixed", "bfloat16", "float8_e5m2", "int4",
                                 "string"]))
    if kind == "fixed":
        return draw(hnp.arrays(draw(st.sampled_from(FIXED)), shape))
    if kind in ("bfloat16", "float8_e5m2"):
        # Any bit pattern, NaNs and infinities included.
        storage = np.uint16 if kind == "bfloat16" else np.uint8
        return draw(hnp.arrays(storage, shape)).view(getattr(ml_dtypes, kind))
    if kind == "int4":
        return draw(hnp.arrays(np.int8, shape, elements=st.integers(-8, 7))).astype(
            ml_dtypes.int4)
    n = int(np.prod(shape))
    flat = draw(st.lists(st.one_of(st.binary(max_size=8), st.binary(min_size=120, max_size=300)),
                         min_size=n, max_size=n))
    return obj_array(flat, shape)


layouts = st.one_of(st.builds(dict, num_shards=st.integers(1, 4)),
                    st.builds(dict, max_shard_size=st.integers(1, 600)))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(contents=st.dictionaries(names, tensors(), min_size=1, max_size=8), layout=layouts,
       alignment=st.sampled_from([1, 8, 64, 4096]), one_by_one=st.booleans())
def test_tensorflow_reads_random_tfshard_checkpoints(contents, layout, alignment, one_by_one):
    with tempfile.TemporaryDirectory() as d:
        prefix = os.path.join(d, "sub dir", "ckpt")
        if one_by_one:  # CheckpointWriter.add, one tensor at a time
            with tfshard.CheckpointWriter(prefix, alignment=alignment, **layout) as w:
                for name, array in contents.items():
                    w.add(name, array)
        else:  # save() -> add_all (parallel shard writes)
            assert tfshard.save(prefix, contents, alignment=alignment, **layout) == prefix
        assert_tf_reads(prefix, contents)


# ---- 2. byte identity with TensorFlow's SaveV2 ---------------------------------------------


def mixed_tensors():
    """Name -> numpy array, deliberately not in key order."""
    rng = np.random.default_rng(7)
    out = {
        "zz/last_key_first_written": np.arange(6, dtype=np.int32).reshape(2, 3),
        "big/kernel": rng.standard_normal((400, 400)).astype(np.float32),  # 640 000 bytes
        "f64": rng.standard_normal((3, 5)),
        "f16": rng.standard_normal(7).astype(np.float16),
        "bf16": rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
        "f8": np.array([1.0, -0.5, 448.0, 0.0], ml_dtypes.float8_e4m3fn),
        "i4": np.array([[-8, 7, -1], [0, 3, -2]], ml_dtypes.int4),
        "i8": rng.integers(-128, 128, 9, dtype=np.int8),
        "i16": rng.integers(-2**15, 2**15, 5, dtype=np.int16),
        "i64": rng.integers(-2**62, 2**62, (2, 2), dtype=np.int64),
        "u8": rng.integers(0, 256, 11, dtype=np.uint8),
        "u16": rng.integers(0, 2**16, 3, dtype=np.uint16),
        "u32": rng.integers(0, 2**32, 3, dtype=np.uint32),
        "u64": rng.integers(0, 2**63, 3, dtype=np.uint64) * 2 + 1,
        "bool": np.array([True, False, True]),
        "c64": (rng.standard_normal(4) + 1j * rng.standard_normal(4)).astype(np.complex64),
        "c128": rng.standard_normal((2, 1)) + 0.5j,
        "scalar_f32": np.array(3.25, np.float32),
        "scalar_i64": np.array(-12345678901, np.int64),
        "scalar_str": obj_array([b"hello, checkpoint"], ()),
        "strings": obj_array([b"", b"a", bytes(range(256)), b"\x00\xff" * 100,
                              "h\u00e9llo \u540d\u524d".encode(), rng.bytes(20000)], (2, 3)),
        "empty_str": obj_array([], (0,)),
        "empty_f32": np.zeros((0, 4), np.float32),
        "empty_3d": np.zeros((2, 0, 3), np.int64),
        "names/\u00fcn\u00efc\u00f6d\u00e9 \u540d\u524d": np.array([1.5], np.float32),
        "a": np.array([1, 2], np.uint8),
        "a/b": np.array([3], np.uint8),
        "a.b": np.array([4], np.uint8),
        # A leading NUL looks like a slice key's first byte; NUL inside; the last code point.
        "\x00lead": np.array([5], np.uint8),
        "a\x00b": np.array([6], np.uint8),
        "\U0010ffff": np.array([7], np.uint8),
    }
    # 3000 small tensors with long distinct names: the index spans several 256 KiB blocks.
    for i in range(3000):
        out[f"layer_{i:04d}/{rng.bytes(90).hex()}/kernel"] = rng.standard_normal(2).astype(
            np.float32)
    return out


def tf_constant(array):
    if array.dtype == object:
        return tf.constant(array, dtype=tf.string)
    return tf.constant(array, dtype=tf.as_dtype(array.dtype))


def test_byte_identical_to_savev2(tmp_path):
    tensors = mixed_tensors()
    tf_prefix = str(tmp_path / "tf" / "ckpt")
    tf.raw_ops.SaveV2(prefix=tf_prefix, tensor_names=list(tensors),
                      shape_and_slices=[""] * len(tensors),
                      tensors=[tf_constant(a) for a in tensors.values()])
    assert os.path.getsize(tf_prefix + ".index") > 2 * 256 * 1024  # >= 3 data blocks
    ours = tfshard.save(str(tmp_path / "ours" / "ckpt"), tensors, alignment=1)
    assert_byte_identical(tf_prefix, ours)
    # The same through CheckpointWriter.add, one tensor at a time.
    with tfshard.CheckpointWriter(str(tmp_path / "ours_add" / "ckpt"), alignment=1) as w:
        for name, array in tensors.items():
            w.add(name, array)
    assert_byte_identical(tf_prefix, w.prefix)


def test_byte_identical_to_savev2_dtype_overrides(tmp_path):
    """Quantized dtypes (given as their integer storage + ``dtype=``) and S/U string arrays."""
    rng = np.random.default_rng(11)
    items = [
        ("q8", rng.integers(-128, 128, 5, dtype=np.int8), "qint8", tf.qint8),
        ("qu8", rng.integers(0, 256, 5, dtype=np.uint8), "quint8", tf.quint8),
        ("q16", rng.integers(-999, 999, 3, dtype=np.int16), "qint16", tf.qint16),
        ("qu16", rng.integers(0, 999, 3, dtype=np.uint16), "quint16", tf.quint16),
        ("q32", rng.integers(-2**31, 2**31, (2, 2), dtype=np.int32), "qint32", tf.qint32),
        ("bf_from_f32", np.array([1.0, -2.5, 3.140625], np.float32), "bfloat16", tf.bfloat16),
    ]
    tf_prefix = str(tmp_path / "tf" / "ckpt")
    tf_tensors = [tf.bitcast(tf.constant(a), t) if t.is_quantized else tf.cast(a, t)
                  for _, a, _, t in items]
    names = [n for n, *_ in items] + ["s_bytes", "u_text"]
    tf_tensors += [tf.constant([b"ab", b"", b"xyz"]), tf.constant(["\u00e9t\u00e9", "x"])]
    tf.raw_ops.SaveV2(prefix=tf_prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=tf_tensors)
    with tfshard.CheckpointWriter(str(tmp_path / "ours" / "ckpt"), alignment=1) as w:
        for name, array, dtype, _ in items:
            w.add(name, array, dtype=dtype)
        w.add("s_bytes", np.array([b"ab", b"", b"xyz"]))         # numpy S array
        w.add("u_text", np.array(["\u00e9t\u00e9", "x"]))        # numpy U array (UTF-8)
    assert_byte_identical(tf_prefix, w.prefix)


def _four_bytes_with_crc(target: int) -> bytes:
    """Four bytes whose CRC-32C is ``target``: CRC-32C of a 4-byte input is affine over
    GF(2), so solve for the bits by Gaussian elimination."""
    base = crc32c.crc32c(bytes(4))
    columns = [crc32c.crc32c((1 << i).to_bytes(4, "little")) ^ base for i in range(32)]
    rows = [(columns[i], 1 << i) for i in range(32)]  # (image, preimage) pairs
    want, x = target ^ base, 0
    for bit in reversed(range(32)):
        pivot = next((r for r in rows if r[0] >> bit & 1), None)
        if pivot is None:
            continue
        rows = [(a ^ pivot[0], b ^ pivot[1]) if a >> bit & 1 and (a, b) != pivot else (a, b)
                for a, b in rows if (a, b) != pivot]
        if want >> bit & 1:
            want ^= pivot[0]
            x ^= pivot[1]
    assert want == 0 and crc32c.crc32c(x.to_bytes(4, "little")) == target
    return x.to_bytes(4, "little")


def test_byte_identical_when_the_masked_crc_is_zero(tmp_path):
    # TF writes no crc32c field when the masked CRC is 0 (proto3 drops zero values).
    unmasked = ((0 - 0xA282EAD8) & 0xFFFFFFFF)  # masked = rotr(crc, 15) + delta == 0
    crc = ((unmasked << 15) | (unmasked >> 17)) & 0xFFFFFFFF
    value = np.frombuffer(_four_bytes_with_crc(crc), np.int32).copy()
    tf_prefix = str(tmp_path / "tf" / "ckpt")
    tf.raw_ops.SaveV2(prefix=tf_prefix, tensor_names=["zero_crc"], shape_and_slices=[""],
                      tensors=[tf.constant(value)])
    ours = tfshard.save(str(tmp_path / "ours" / "ckpt"), {"zero_crc": value}, alignment=1)
    assert_byte_identical(tf_prefix, ours)
    with tfshard.open(ours) as ckpt:
        assert ckpt["zero_crc"].tolist() == value.tolist()  # absent field: checked as 0
        assert ckpt.verify_all() == []


PARTITIONED = [
    # (name, full shape, slice spec, slice values) in write order
    ("dense/kernel", [10, 4], "0,4:0,4", lambda f: f[0:4]),
    ("dense/kernel", [10, 4], "4,6:0,4", lambda f: f[4:10]),
    ("emb", [6, 3], "2,4:-", lambda f: f[2:6]),
    ("emb", [6, 3], "0,2:-", lambda f: f[0:2]),
    ("cols", [3, 8], "-:5,3", lambda f: f[:, 5:8]),
    ("cols", [3, 8], "0,3:0,5", lambda f: f[:, 0:5]),   # explicit full rows, part of cols
    ("whole_explicit", [5, 2], "0,5:0,2", lambda f: f),  # covers all: stored plain
    ("whole_dash", [4], "-", lambda f: f),               # covers all: stored plain
    ("big_offsets", [70000, 1], "69936,64:-", lambda f: f[69936:]),
    ("big_offsets", [70000, 1], "0,100:0,1", lambda f: f[:100]),
]


def test_partitioned_byte_identical_to_savev2(tmp_path):
    rng = np.random.default_rng(5)
    full = {"dense/kernel": rng.standard_normal((10, 4)).astype(np.float32),
            "emb": rng.integers(-100, 100, (6, 3)).astype(np.int64),
            "cols": rng.standard_normal((3, 8)),
            "whole_explicit": rng.standard_normal((5, 2)).astype(np.float32),
            "whole_dash": np.arange(4, dtype=np.int32),
            "big_offsets": np.arange(70000, dtype=np.float32).reshape(70000, 1)}
    tf_prefix = str(tmp_path / "tf" / "ckpt")
    names, specs, tensors = ["plain"], [""], [tf.constant([1.0, 2.0])]
    for name, shape, sl, part in PARTITIONED:
        names.append(name)
        specs.append(" ".join(map(str, shape)) + " " + sl)
        tensors.append(tf.constant(part(full[name])))
    tf.raw_ops.SaveV2(prefix=tf_prefix, tensor_names=names, shape_and_slices=specs,
                      tensors=tensors)
    with tfshard.CheckpointWriter(str(tmp_path / "ours" / "ckpt"), alignment=1) as w:
        w.add("plain", np.array([1.0, 2.0], np.float32))
        for i, (name, shape, sl, part) in enumerate(PARTITIONED):
            # Alternate the two spellings of a slice spec.
            extents = sl if i % 2 else [(0, -1) if e == "-" else tuple(map(int, e.split(",")))
                                        for e in sl.split(":")]
            w.add_slice(name, shape, extents, part(full[name]))
    assert_byte_identical(tf_prefix, w.prefix)
    reader = tf.train.load_checkpoint(w.prefix)
    np.testing.assert_array_equal(reader.get_tensor("dense/kernel"), full["dense/kernel"])
    np.testing.assert_array_equal(reader.get_tensor("emb"), full["emb"])


def test_huge_index_entry_byte_identical(tmp_path):
    """A key + entry of at least 2 x 256 KiB makes TF's table builder start a new block."""
    names = ["a_small", "k" * (530 * 1024), "z_small"]
    arrays = [np.array([1], np.int32), np.array([2.0], np.float32), np.array([3], np.int8)]
    tf_prefix = str(tmp_path / "tf" / "ckpt")
    tf.raw_ops.SaveV2(prefix=tf_prefix, tensor_names=names, shape_and_slices=[""] * 3,
                      tensors=[tf.constant(a) for a in arrays])
    ours = tfshard.save(str(tmp_path / "ours" / "ckpt"), dict(zip(names, arrays)), alignment=1)
    assert_byte_identical(tf_prefix, ours)
    assert_tf_reads(ours, dict(zip(names, arrays)))


# ---- 3. TF1 graph-mode Saver restores what tfshard wrote -----------------------------------


@pytest.mark.parametrize("partitioned_as", ["slices", "full"])
@pytest.mark.parametrize("num_shards", [1, 3])
def test_tf1_saver_restores_tfshard_checkpoint(tmp_path, partitioned_as, num_shards):
    v1 = tf.compat.v1
    rng = np.random.default_rng(13)
    values = {
        "dense/kernel": rng.standard_normal((5, 3)).astype(np.float32),
        "dense/bias": rng.standard_normal(3).astype(np.float32),
        "global_step": np.array(987654321012, np.int64),
        "vocab_file": obj_array([b"/path/to/vocab \xff.txt"], ()),
        "emb": rng.standard_normal((10, 4)).astype(np.float32),          # 3 row parts
        "cols": rng.integers(-2**40, 2**40, (4, 7), dtype=np.int64),   # 2 column parts
    }
    graph = tf.Graph()
    with graph.as_default():
        with v1.variable_scope("dense"):
            kernel = v1.get_variable("kernel", shape=[5, 3], initializer=v1.zeros_initializer())
            bias = v1.get_variable("bias", shape=[3], initializer=v1.zeros_initializer())
        step = v1.get_variable("global_step", shape=[], dtype=tf.int64,
                               initializer=v1.zeros_initializer())
        vocab = tf.Variable(b"initial", name="vocab_file")
        emb = v1.get_variable("emb", shape=[10, 4], initializer=v1.zeros_initializer(),
                              partitioner=v1.fixed_size_partitioner(3))
        cols = v1.get_variable("cols", shape=[4, 7], dtype=tf.int64,
                               initializer=v1.zeros_initializer(),
                               partitioner=v1.fixed_size_partitioner(2, axis=1))
        plain = {"dense/kernel": kernel, "dense/bias": bias, "global_step": step,
                 "vocab_file": vocab}
        for key, var in plain.items():
            assert var.op.name == key  # the TF1 checkpoint key (FORMAT.md 13.2)
        parts = {"emb": list(emb), "cols": list(cols)}
        assert [len(p) for p in parts.values()] == [3, 2]
        saver = v1.train.Saver()

        prefix = str(tmp_path / "model.ckpt")
        with tfshard.CheckpointWriter(prefix, num_shards=num_shards) as w:
            for key in plain:
                w.add(key, values[key])
            for key, part_vars in parts.items():
                if partitioned_as == "full":
                    w.add(key, values[key])
                    continue
                for i, p in enumerate(part_vars):
                    info = p._get_save_slice_info()
                    assert info.full_name == key
                    region = tuple(slice(o, o + n) for o, n in zip(info.var_offset,
                                                                     info.var_shape))
                    # TF1's own spec string for one part, the (start, length) pairs for the other.
                    extents = (info.spec.split(" ")[-1] if i % 2 else
                               list(zip(info.var_offset, info.var_shape)))
                    w.add_slice(key, info.full_shape, extents, values[key][region])
        if partitioned_as == "slices":
            with tfshard.open(prefix) as ck:
                assert len(ck.info("emb").slices) == 3 and len(ck.info("cols").slices) == 2

        with v1.Session(graph=graph) as sess:
            saver.restore(sess, prefix)
            got = sess.run({**plain, "emb": emb.as_tensor(), "cols": cols.as_tensor()})
    for key, expected in values.items():
        got_key = got[key]
        if expected.dtype == object:
            assert got_key == expected[()]
        else:
            assert got_key.dtype == expected.dtype, key
            np.testing.assert_array_equal(got_key, expected, err_msg=key)


# ---- 4. TF2 object-based checkpoint: read, edit, write back, restore ------------------------


class Net(tf.Module):
    def __init__(self, seed):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w = tf.Variable(rng.standard_normal((3, 2)).astype(np.float32))
        self.b = tf.Variable(rng.standard_normal(2))  # float64
        self.inner = tf.Module()
        self.inner.scale = tf.Variable(rng.standard_normal(4).astype(ml_dtypes.bfloat16))
        self.inner.tag = tf.Variable(b"tag-%d" % seed)


def make_tf2_checkpoint(seed):
    return tf.train.Checkpoint(model=Net(seed), step=tf.Variable(seed, dtype=tf.int64))


@pytest.mark.parametrize("layout", [{}, {"num_shards": 2}, {"alignment": 1}])
def test_tf2_checkpoint_pass_through(tmp_path, layout):
    src = make_tf2_checkpoint(1)
    tf_path = src.save(str(tmp_path / "tf" / "ckpt"))
    loaded = tfshard.load(tf_path)
    key = "{}/.ATTRIBUTES/VARIABLE_VALUE".format
    assert set(loaded) == {"_CHECKPOINTABLE_OBJECT_GRAPH", key("model/w"), key("model/b"),
                           key("model/inner/scale"), key("model/inner/tag"), key("step"),
                           key("save_counter")}
    graph = loaded["_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert graph.dtype == object and graph.shape == ()
    new = {key("model/w"): np.arange(6, dtype=np.float32).reshape(3, 2) - 2.5,
           key("model/b"): np.array([1e300, -0.0]),
           key("model/inner/scale"): np.array([1.5, -2, 0.25, 8], ml_dtypes.bfloat16),
           key("model/inner/tag"): obj_array([b"replaced \x00\xff tag"], ()),
           key("step"): np.array(123456789012, np.int64)}
    edited = {**loaded, **new}  # keeps the object graph and save_counter unchanged
    out = tfshard.save(str(tmp_path / "edited" / "ckpt-7"), edited, **layout)

    dst = make_tf2_checkpoint(2)
    status = dst.restore(out)
    status.assert_consumed()
    status.assert_existing_objects_matched()
    m = dst.model
    assert_same_tensor(m.w.numpy(), new[key("model/w")], "w")
    assert_same_tensor(m.b.numpy(), new[key("model/b")], "b")
    assert_same_tensor(m.inner.scale.numpy(), new[key("model/inner/scale")], "scale")
    assert m.inner.tag.numpy() == b"replaced \x00\xff tag"
    assert dst.step.numpy() == 123456789012
    assert dst.save_counter.numpy() == 1
    # The object graph went through unchanged, and TF reads everything else identically.
    assert_tf_reads(out, edited)
    assert tf.train.load_checkpoint(out).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH") == graph[()]


# ---- 5. golden TF checkpoints: tfshard load -> save -> TF reads the same ---------------------

GOLDENS = ["dtypes/ckpt", "strings/ckpt", "keras_adam/ckpt-1", "keras_adam/ckpt-2",
           "variant/ckpt", "partitioned/model.ckpt", "sharded/model.ckpt", "many/ckpt"]


def resave(src, dst, order=None, **kw):
    """Copy a checkpoint with tfshard, keeping each tensor's TF dtype (quantized, variant)."""
    with tfshard.open(src) as ck, tfshard.CheckpointWriter(dst, **kw) as w:
        for name in order or ck:
            w.add(name, ck[name], dtype=ck.info(name).dtype)
    return w.prefix


def restore_variants(prefix, names):
    """TF restores variant tensors (CRCs checked) and turns TensorLists back into values."""
    return tf.raw_ops.RestoreV2(prefix=str(prefix), tensor_names=names,
                                shape_and_slices=[""] * len(names),
                                dtypes=[tf.variant] * len(names))


def assert_tf_sees_same(original, copy):
    r0, r1 = tf.train.load_checkpoint(str(original)), tf.train.load_checkpoint(str(copy))
    dtypes = r0.get_variable_to_dtype_map()
    assert r1.get_variable_to_dtype_map() == dtypes
    assert r1.get_variable_to_shape_map() == r0.get_variable_to_shape_map()
    assert tf.train.list_variables(str(copy)) == tf.train.list_variables(str(original))
    variants = sorted(n for n, d in dtypes.items() if d == tf.variant)
    for name in sorted(set(dtypes) - set(variants)):
        a, b = tf_value(r0, name), tf_value(r1, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert tensor_sha256(b) == tensor_sha256(a), name
    return variants


@pytest.mark.parametrize("rel", GOLDENS)
def test_tfshard_resaves_golden_checkpoints(tmp_path, rel):
    src = str(GOLDEN_DIR / rel)
    out = resave(src, str(tmp_path / "dtyped" / "ckpt"))
    variants = assert_tf_sees_same(src, out)
    if variants:
        before, after = restore_variants(src, variants), restore_variants(out, variants)
        assert "list" in variants  # TensorList of two float32 [2] elements (make_goldens.py)
        i = variants.index("list")
        stack = lambda handle: tf.raw_ops.TensorListStack(  # noqa: E731
            input_handle=handle, element_shape=[2], element_dtype=tf.float32).numpy()
        assert stack(before[i]).shape == (2, 2)
        np.testing.assert_array_equal(stack(after[i]), stack(before[i]))
        with tfshard.open(src) as a, tfshard.open(out) as b:
            for name in variants:
                assert b[name].tolist() == a[name].tolist()

    with tfshard.open(src) as ck:
        special = {ck.info(n).dtype for n in ck} & {"variant", "qint8", "quint8", "qint16",
                                                    "quint16", "qint32"}
        # Where nothing needs a dtype override, the one-liner from the docs works as is.
        if not special:
            plain = tfshard.save(str(tmp_path / "plain" / "ckpt"), tfshard.load(src),
                                 num_shards=2)
            assert_tf_sees_same(src, plain)
        # Single-writer, unpartitioned bundles: re-saved densely in TF's data order the
        # files come out byte-identical to TensorFlow's.
        infos = ck.infos()
        if ck.num_shards == 1 and not any(i.slices for i in infos):
            # Zero-size tensors share the offset of the next tensor and were written first.
            order = [i.name for i in sorted(infos, key=lambda i: (i.offset, i.nbytes > 0))]
            dense = resave(src, str(tmp_path / "dense" / "ckpt"), order=order, alignment=1)
            assert files_of(dense) == {".index": Path(src + ".index").read_bytes(),
                                       DATA1: Path(src + DATA1).read_bytes()}


# ---- bytes given as plain Python values ------------------------------------------------------


def test_python_bytes_values_saved_verbatim(tmp_path):
    """A bare ``bytes`` or a list of ``bytes`` is stored exactly, trailing NUL bytes included,
    as ``tf.constant`` keeps them (numpy's ``S`` dtype would drop them)."""
    elements = tf.constant([[1.0, 2.0], [3.0, 0.0]])  # the proto ends in 0.0's zero bytes
    handle = tf.raw_ops.TensorListFromTensor(tensor=elements, element_shape=[2])
    tf_prefix = str(tmp_path / "tf" / "ckpt")
    tf.raw_ops.SaveV2(prefix=tf_prefix, tensor_names=["list"], shape_and_slices=[""],
                      tensors=[handle])
    proto = tfshard.load(tf_prefix)["list"][()]
    assert proto.endswith(b"\x00")

    prefix = str(tmp_path / "ours" / "ckpt")
    with tfshard.CheckpointWriter(prefix) as w:
        w.add("scalar", b"x\x00")
        w.add("list", [b"a\x00\x00", b"", b"\x00"])
        w.add("variant", proto, dtype="variant")
        w.add("variants", [proto, proto], dtype="variant")
    reader = tf.train.load_checkpoint(prefix)
    assert reader.get_tensor("scalar") == b"x\x00"
    assert reader.get_tensor("list").tolist() == [b"a\x00\x00", b"", b"\x00"]
    for name in ("variant", "variants"):
        (restored,) = tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[name],
                                           shape_and_slices=[""], dtypes=[tf.variant])
        one = restored if name == "variant" else restored[1]
        stacked = tf.raw_ops.TensorListStack(input_handle=one, element_shape=[2],
                                             element_dtype=tf.float32)
        np.testing.assert_array_equal(stacked, elements)
    # The same values through save() / add_all().
    again = tfshard.save(str(tmp_path / "save" / "ckpt"),
                         {"scalar": b"x\x00", "list": [b"a\x00\x00", b"", b"\x00"]})
    reader = tf.train.load_checkpoint(again)
    assert reader.get_tensor("scalar") == b"x\x00"
    assert reader.get_tensor("list").tolist() == [b"a\x00\x00", b"", b"\x00"]


def test_saving_again_over_the_same_shard_count_restores_in_tf(tmp_path):
    """A save over a checkpoint of the same shard count writes one empty data file more
    (the old files' names stay the old checkpoint's until the new index replaces it);
    TensorFlow reads and restores every version, and merge_parts does the same."""
    prefix = str(tmp_path / "model.ckpt")
    for version in range(4):
        value = np.full((3, 4), version, np.float32)
        tfshard.save(prefix, {"v": value, "step": np.int64(version)}, num_shards=2)
        reader = tf.train.load_checkpoint(prefix)
        assert reader.get_tensor("step") == version
        np.testing.assert_array_equal(reader.get_tensor("v"), value)
        shards = sorted(p.name for p in tmp_path.glob("model.ckpt.data-*"))
        assert len(shards) == (2 if version % 2 == 0 else 3), shards
    with tf.Graph().as_default():
        v = tf.compat.v1.get_variable("v", shape=[3, 4], dtype=tf.float32)
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.train.Saver({"v": v}).restore(sess, prefix)
            assert (sess.run(v) == 3).all()
    parts = []
    for i in range(2):
        parts.append(tfshard.save(str(tmp_path / f"part-{i}"), {f"p{i}": np.float32(i)}))
    merged = str(tmp_path / "merged")
    tfshard.merge_parts(parts, merged)
    again = [tfshard.save(str(tmp_path / f"again-{i}"), {f"p{i}": np.float32(10 + i)})
             for i in range(2)]
    tfshard.merge_parts(again, merged)  # 2 shards over 2: written as 3
    reader = tf.train.load_checkpoint(merged)
    assert (reader.get_tensor("p0"), reader.get_tensor("p1")) == (10, 11)
    assert len(list(tmp_path.glob("merged.data-*-of-00003"))) == 3
