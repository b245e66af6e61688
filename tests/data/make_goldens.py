"""Regenerate the golden checkpoints under ``tests/data/golden/`` with real TensorFlow.

Run (needs TensorFlow 2.21, numpy, ml_dtypes; keras 3 for the Keras case)::

    .venv/bin/python tests/data/make_goldens.py            # all cases
    .venv/bin/python tests/data/make_goldens.py strings    # only some cases; the manifest
                                                           # is rebuilt from what is on disk

Each case directory is deleted and rewritten; values come from fixed seeds, so the tensor
bytes, ``.index`` and data files are reproducible with the same TF version. Afterwards the
script reads every checkpoint back with TensorFlow's own reader (``tf.train.load_checkpoint``,
``tf.train.list_variables``) and writes ``golden/manifest.json`` in the format of
``shared/corpus/tf-serving/manifest.json``::

    {"<prefix relative to golden/>": {"<name>": {"dtype": TF dtype name,
                                                 "shape": [dims],
                                                 "sha256": hex (tests/helpers.py:tensor_sha256),
                                                 "numpy_dtype": str(get_tensor(name).dtype)}}}

Names are exactly those of ``tf.train.list_variables`` (a partitioned variable appears once,
with its full shape). For DT_VARIANT tensors TF's reader cannot produce a numpy value
("Tensorflow type 21 not convertible to numpy dtype"), so their records carry only
``"dtype": "variant"`` and ``"shape"`` (no sha256, no numpy_dtype). The manifest is written
with one tensor record per line (``many/ckpt`` alone has 20 001 records) — same JSON
structure as the tf-serving one, which is pretty-printed.

Cases (prefixes are relative to ``golden/``):

``dtypes/ckpt``
    ``tf.raw_ops.SaveV2`` of every dtype TF 2.21 can save: float32, float64, float16,
    bfloat16, int8, int16, int32, int64, uint8, uint16, uint32, uint64, bool, complex64,
    complex128, qint8, quint8, qint16, quint16, qint32, float8_e5m2, float8_e4m3fn,
    float8_e4m3fnuz, float8_e4m3b11fnuz, float8_e5m2fnuz, int4, uint4, int2, uint2,
    float4_e2m1fn (all 30 requested dtypes could be saved; none skipped). For each dtype:
    ``t_<dtype>`` [2,3] with negatives / extreme values / inf / nan / -0.0 where the type has
    them (8-bit floats include raw bit patterns: subnormal, 0x80, max finite, 0xff),
    ``scalar_<dtype>`` [], ``empty_<dtype>`` [0,3] and ``empty3d_<dtype>`` [2,0,4].
    TF stores sub-byte types (int4, uint4, int2, uint2, float4_e2m1fn) one element per byte
    with zero high bits; TF's reader returns the quantized types (qint8, ...) as plain
    integer numpy arrays (numpy_dtype "int8", ...).
    Tensors are saved in dtype order (t_, scalar_, empty_, empty3d_ for each dtype), so data
    offsets do not follow key order.

``strings/ckpt``
    DT_STRING: ``empty`` [0], ``empty_2d`` [3,0], ``scalar`` [], ``mixed`` [2,3] (empty
    strings, NUL/0xff bytes, all 256 byte values, non-ASCII UTF-8), ``varint_edges`` [6]
    (lengths 0, 1, 127, 128, 16383, 16384 — varint length boundaries), ``long`` [2] (a
    100 000-byte element and a short one), ``many`` [1000] (random bytes, random lengths
    0..159), and ``names/ünïcödé 名前`` [2] (a non-ASCII tensor *name*).

``partitioned/model.ckpt``
    TF1 graph mode ``tf.compat.v1.train.Saver(save_relative_paths=True)``:
    ``dense/kernel`` float32 [10,4] with ``fixed_size_partitioner(3)`` (row slices 4/3/3),
    ``cols`` float64 [4,10] with ``fixed_size_partitioner(2, axis=1)`` (column slices),
    plain ``dense/bias`` float32 [4] and ``global_step`` int64 []. Written by one
    BundleWriter: one data file; the index holds one full entry plus one slice entry per
    part for each partitioned variable. ``save_relative_paths=True`` makes TF write the
    ``checkpoint`` state file with the relative path ``model.ckpt`` (TF1's default would be
    the absolute path of this machine). No ``.meta`` (``write_meta_graph=False``).

``sharded/model.ckpt``
    TF1 ``Saver(sharded=True, save_relative_paths=True)`` over variables on two logical
    CPU devices (/device:CPU:0 and /device:CPU:1, made with
    ``tf.config.set_logical_device_configuration`` at start-up): ``a`` float32 [2] and
    ``c`` int32 [3] on CPU:0, ``b`` int64 [2] on CPU:1, and ``emb`` float32 [6,2]
    partitioned in 2 row slices, one per device. Result: ``model.ckpt.index`` +
    ``model.ckpt.data-00000-of-00002`` + ``model.ckpt.data-00001-of-00002`` (merged by
    MergeV2Checkpoints; the ``model.ckpt_temp`` directory is gone), header num_shards 2,
    and ``emb``'s two slices live in different data files. The script asserts the shard
    count and the data file sizes.

``many/ckpt``
    ``SaveV2`` of 20 001 float32 [2] tensors ``layer_00000/kernel`` .. ``layer_20000/kernel``;
    the ``.index`` is asserted to exceed 256 KiB, so it spans several SSTable data blocks.

``keras_adam/ckpt-1``, ``keras_adam/ckpt-2``
    TF2 object-based checkpoints: a Keras 3 ``Sequential`` (input 3 -> Dense(4, relu) ->
    Dense(2)) and its Adam optimizer, ``tf.train.Checkpoint(model=..., optimizer=...)``
    managed by ``tf.train.CheckpointManager(..., max_to_keep=2)``: one training step, save
    (ckpt-1), another step, save (ckpt-2) — so the two differ and the directory's
    ``checkpoint`` file names ckpt-2 as latest (relative paths, as TF2 writes them).
    The real timestamps in that state file are replaced by fixed ones (parsed and
    re-serialized with TF's own ``CheckpointState`` proto + ``text_format``, i.e. the same
    formatting) so regeneration is byte-stable. Note the keys: with Keras 3 the model's
    weights appear only as ``optimizer/_trainable_variables/<i>/...`` (the object graph
    saves each variable once, under the first path found breadth-first), Adam's slots as
    ``optimizer/_variables/<i>/...``, plus ``_CHECKPOINTABLE_OBJECT_GRAPH`` and
    ``save_counter/.ATTRIBUTES/VARIABLE_VALUE``; there is no ``model/...`` key.

``variant/ckpt``
    DT_VARIANT via ``SaveV2``: ``list`` [] (a TensorList of two float32 [2] elements from
    ``TensorListFromTensor``), ``lists`` [2] (that list and an empty TensorList of strings,
    packed), alongside ``x`` float32 [2]. TF saves and lists them, but
    ``CheckpointReader.get_tensor`` fails for variants, hence no sha256 in the manifest.

Nothing outside ``golden/`` is touched except that ``tests/`` is put on ``sys.path`` to
import ``helpers.tensor_sha256`` (the single definition of the hash convention).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
sys.path.insert(0, str(HERE.parent))
from helpers import tensor_sha256  # noqa: E402  (tests/helpers.py)

SEED = 20250101
INDEX_BLOCK_SIZE = 256 * 1024
MAX_TREE_BYTES = 6 * 1024 * 1024

DTYPE_NAMES = [
    "float32", "float64", "float16", "bfloat16",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "bool", "complex64", "complex128",
    "qint8", "quint8", "qint16", "quint16", "qint32",
    "float8_e5m2", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e4m3b11fnuz", "float8_e5m2fnuz",
    "int4", "uint4", "int2", "uint2", "float4_e2m1fn",
]  # fmt: skip

# Storage (numpy) type of TF's quantized types; TF's reader returns these.
QUANTIZED_STORAGE = {
    "qint8": np.int8, "quint8": np.uint8, "qint16": np.int16,
    "quint16": np.uint16, "qint32": np.int32,
}  # fmt: skip


def log(msg: str) -> None:
    print(f"[make_goldens] {msg}", flush=True)


def fresh_dir(name: str) -> Path:
    d = GOLDEN / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


# --------------------------------------------------------------------------------------
# dtypes


def dtype_values(name: str):
    """(t [2,3], scalar []) numpy arrays of the storage dtype for one TF dtype name."""
    import ml_dtypes

    inf, nan = np.inf, np.nan
    if name in ("float32", "float64", "float16"):
        dt = np.dtype(name)
        return (np.array([[1.5, -2.25, 1e-3], [-0.0, inf, nan]], dt), np.array(-3.75, dt))
    if name == "bfloat16":
        dt = np.dtype(ml_dtypes.bfloat16)
        return (np.array([[1.5, -2.25, 1e-3], [-0.0, -inf, nan]], dt), np.array(-3.75, dt))
    if name in ("complex64", "complex128"):
        dt = np.dtype(name)
        t = np.array([[1 + 2j, -3.5 - 0.5j, 0j], [-1j, 2.25, complex(inf, -1)]], dt)
        return t, np.array(-1.5 + 0.25j, dt)
    if name == "bool":
        return np.array([[True, False, True], [False, False, True]]), np.array(True)
    if name in ("int8", "int16", "int32", "int64") or name in ("qint8", "qint16", "qint32"):
        dt = np.dtype(QUANTIZED_STORAGE.get(name, name))
        ii = np.iinfo(dt)
        return np.array([[1, -2, ii.min], [ii.max, 0, -1]], dt), np.array(-7, dt)
    if name in ("uint8", "uint16", "uint32", "uint64") or name in ("quint8", "quint16"):
        dt = np.dtype(QUANTIZED_STORAGE.get(name, name))
        ii = np.iinfo(dt)
        return np.array([[1, 2, ii.max], [0, ii.max // 2, 7]], dt), np.array(200, dt)
    if name.startswith("float8_"):
        dt = np.dtype(getattr(ml_dtypes, name))
        # 1.0, -2.5, then raw bit patterns: smallest subnormal (0x01), 0x80 (-0.0, or NaN in
        # the fnuz types), the largest finite value, 0xff (NaN or -max depending on type).
        u8 = lambda v: np.array(v, dt).view(np.uint8)  # noqa: E731
        bits = np.array(
            [[u8(1.0), u8(-2.5), 0x01], [0x80, u8(ml_dtypes.finfo(dt).max), 0xFF]], np.uint8
        )
        return bits.view(dt), np.array(-0.75, dt)
    if name == "float4_e2m1fn":
        dt = np.dtype(ml_dtypes.float4_e2m1fn)
        return np.array([[0.5, -1.5, 6.0], [-6.0, 0.0, -0.0]], dt), np.array(-3.0, dt)
    if name in ("int4", "int2"):
        dt = np.dtype(getattr(ml_dtypes, name))
        lo, hi = (-8, 7) if name == "int4" else (-2, 1)
        return np.array([[1, -2, lo], [hi, 0, -1]], dt), np.array(-1, dt)
    if name in ("uint4", "uint2"):
        dt = np.dtype(getattr(ml_dtypes, name))
        hi = 15 if name == "uint4" else 3
        return np.array([[1, 2, hi], [0, hi // 2, 1]], dt), np.array(hi, dt)
    raise ValueError(name)


def save_v2(tf, prefix: Path, names, tensors) -> None:
    """Write one unsliced bundle with TF's own SaveV2 op."""
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=list(names),
                      shape_and_slices=[""] * len(names), tensors=list(tensors))


def make_dtypes(tf) -> None:
    from tensorflow.python.framework import dtypes as tf_dtypes

    d = fresh_dir("dtypes")
    names, tensors, expected = [], [], {}
    for dname in DTYPE_NAMES:
        tf_dtype = getattr(tf_dtypes, dname)
        t, scalar = dtype_values(dname)
        arrays = {
            f"t_{dname}": t,
            f"scalar_{dname}": scalar,
            f"empty_{dname}": np.zeros((0, 3), t.dtype),
            f"empty3d_{dname}": np.zeros((2, 0, 4), t.dtype),
        }
        for key, arr in arrays.items():
            tensor = tf.constant(arr, dtype=tf_dtype)
            assert tensor.dtype == tf_dtype, (key, tensor.dtype)
            names.append(key)
            tensors.append(tensor)
            expected[key] = arr
    save_v2(tf, d / "ckpt", names, tensors)
    # Read back: TF must return exactly the bytes we gave it (bit patterns included).
    reader = tf.train.load_checkpoint(str(d / "ckpt"))
    for key, arr in expected.items():
        got = reader.get_tensor(key)
        assert got.shape == arr.shape, key
        assert got.tobytes() == np.ascontiguousarray(arr).tobytes(), key
    log(f"dtypes: {len(names)} tensors, {len(DTYPE_NAMES)} dtypes")


# --------------------------------------------------------------------------------------
# strings


def make_strings(tf) -> None:
    d = fresh_dir("strings")
    rng = np.random.default_rng(SEED + 1)
    every_byte = bytes(range(256))
    values = {
        "empty": np.array([], dtype=object),
        "empty_2d": np.zeros((3, 0), dtype=object),
        "scalar": np.array(b"hello, checkpoint", dtype=object),
        "mixed": np.array(
            [
                [b"", b"\x00", b"ab\x00cd\xff"],
                ["h\u00e9llo w\u00f6rld \u2713 \u540d\u524d \U0001f600".encode(), b"", every_byte],
            ],
            dtype=object,
        ),
        "varint_edges": np.array(
            [rng.bytes(n) for n in (0, 1, 127, 128, 16383, 16384)], dtype=object
        ),
        "long": np.array([rng.bytes(100_000), b"short"], dtype=object),
        "many": np.array([rng.bytes(int(n)) for n in rng.integers(0, 160, 1000)], dtype=object),
        "names/\u00fcn\u00efc\u00f6d\u00e9 \u540d\u524d": np.array([b"x", b"yz"], dtype=object),
    }
    names = list(values)
    tensors = [tf.constant(v, dtype=tf.string) for v in values.values()]
    for name, t, v in zip(names, tensors, values.values()):
        assert tuple(t.shape) == v.shape, name
    save_v2(tf, d / "ckpt", names, tensors)
    reader = tf.train.load_checkpoint(str(d / "ckpt"))
    for name, v in values.items():
        got = as_array(reader.get_tensor(name))
        assert got.shape == v.shape and got.dtype == object, name
        assert list(got.ravel()) == list(v.ravel()), name
    log(f"strings: {len(names)} tensors")


# --------------------------------------------------------------------------------------
# TF1 partitioned / sharded


def slice_initializer(tf, full: np.ndarray):
    """An initializer for ``get_variable(partitioner=...)`` giving each part its slice of
    ``full`` (constant_initializer does not understand partition_info)."""

    def init(shape, dtype=None, partition_info=None):
        offset = partition_info.var_offset if partition_info is not None else [0] * full.ndim
        index = tuple(slice(o, o + n) for o, n in zip(offset, shape))
        return tf.constant(full[index], dtype=dtype)

    return init


def make_partitioned(tf) -> None:
    v1 = tf.compat.v1
    d = fresh_dir("partitioned")
    rng = np.random.default_rng(SEED + 2)
    kernel = rng.standard_normal((10, 4)).astype(np.float32)
    cols = rng.standard_normal((4, 10))  # float64
    bias = np.array([0.5, -0.25, 0.125, -1.0], np.float32)
    graph = tf.Graph()
    with graph.as_default():
        with v1.variable_scope("dense"):
            k = v1.get_variable(
                "kernel", shape=[10, 4], dtype=tf.float32,
                initializer=slice_initializer(tf, kernel),
                partitioner=v1.fixed_size_partitioner(3),
            )  # fmt: skip
            v1.get_variable("bias", initializer=tf.constant(bias))
        c = v1.get_variable(
            "cols", shape=[4, 10], dtype=tf.float64,
            initializer=slice_initializer(tf, cols),
            partitioner=v1.fixed_size_partitioner(2, axis=1),
        )  # fmt: skip
        v1.get_variable("global_step", initializer=tf.constant(42, tf.int64))
        assert len(list(k)) == 3 and len(list(c)) == 2
        saver = v1.train.Saver(save_relative_paths=True)
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            saver.save(sess, str(d / "model.ckpt"), write_meta_graph=False)
    files = sorted(os.listdir(d))
    assert files == ["checkpoint", "model.ckpt.data-00000-of-00001", "model.ckpt.index"], files
    reader = tf.train.load_checkpoint(str(d / "model.ckpt"))
    np.testing.assert_array_equal(reader.get_tensor("dense/kernel"), kernel)
    np.testing.assert_array_equal(reader.get_tensor("cols"), cols)
    log(f"partitioned: {files}")


def make_sharded(tf) -> None:
    v1 = tf.compat.v1
    d = fresh_dir("sharded")
    emb = np.arange(12, dtype=np.float32).reshape(6, 2) - 5.5
    graph = tf.Graph()
    with graph.as_default():
        with tf.device("/device:CPU:0"):
            v1.get_variable("a", initializer=tf.constant([1.0, -2.0]))
            v1.get_variable("c", initializer=tf.constant([7, -8, 9], tf.int32))
        with tf.device("/device:CPU:1"):
            v1.get_variable("b", initializer=tf.constant([3, -4], tf.int64))
        # Put the partitions of `emb` on alternating devices, so its two slices end up in
        # different data shards of the merged bundle.
        n_vars = [0]

        def alternate(op):
            if op.type in ("VarHandleOp", "VariableV2"):
                n_vars[0] += 1
                return f"/device:CPU:{(n_vars[0] - 1) % 2}"
            return op.device

        with graph.device(alternate):
            e = v1.get_variable(
                "emb", shape=[6, 2], dtype=tf.float32, initializer=slice_initializer(tf, emb),
                partitioner=v1.fixed_size_partitioner(2),
            )  # fmt: skip
        assert sorted(p.device for p in e) == ["/device:CPU:0", "/device:CPU:1"]
        saver = v1.train.Saver(sharded=True, save_relative_paths=True)
        with v1.Session(graph=graph) as sess:
            assert len(sess.list_devices()) >= 2, sess.list_devices()
            sess.run(v1.global_variables_initializer())
            saver.save(sess, str(d / "model.ckpt"), write_meta_graph=False)
    files = sorted(os.listdir(d))
    expected_files = [
        "checkpoint",
        "model.ckpt.data-00000-of-00002",
        "model.ckpt.data-00001-of-00002",
        "model.ckpt.index",
    ]
    assert files == expected_files, files
    # CPU:0 holds a (8 B) + c (12 B) + emb rows 0-2 (24 B); CPU:1 holds b (16 B) + rows 3-5.
    sizes = [(d / f).stat().st_size for f in expected_files[1:3]]
    assert sizes == [44, 40], sizes
    reader = tf.train.load_checkpoint(str(d / "model.ckpt"))
    np.testing.assert_array_equal(reader.get_tensor("emb"), emb)
    log(f"sharded: {files}, data sizes {sizes}")


# --------------------------------------------------------------------------------------
# many


def make_many(tf) -> None:
    d = fresh_dir("many")
    n = 20001
    rng = np.random.default_rng(SEED + 3)
    values = rng.standard_normal((n, 2)).astype(np.float32)
    names = [f"layer_{i:05d}/kernel" for i in range(n)]
    tensors = [tf.constant(v) for v in values]
    save_v2(tf, d / "ckpt", names, tensors)
    size = (d / "ckpt.index").stat().st_size
    assert size > INDEX_BLOCK_SIZE, f"index only {size} bytes; must span several blocks"
    reader = tf.train.load_checkpoint(str(d / "ckpt"))
    np.testing.assert_array_equal(reader.get_tensor(names[-1]), values[-1])
    log(f"many: {n} tensors, index {size} bytes")


# --------------------------------------------------------------------------------------
# keras + adam (TF2 object-based)


def normalize_state_timestamps(tf, path: Path) -> None:
    """Replace the wall-clock timestamps CheckpointManager writes with fixed ones, using TF's
    own CheckpointState proto and text_format (the formatting TF uses)."""
    from google.protobuf import text_format
    from tensorflow.python.training import checkpoint_state_pb2

    state = text_format.Parse(path.read_text(), checkpoint_state_pb2.CheckpointState())
    n = len(state.all_model_checkpoint_timestamps)
    del state.all_model_checkpoint_timestamps[:]
    state.all_model_checkpoint_timestamps.extend(1700000000.5 + i for i in range(n))
    if state.last_preserved_timestamp:
        state.last_preserved_timestamp = 1700000000.25
    path.write_text(text_format.MessageToString(state))


def make_keras_adam(tf) -> None:
    import keras

    d = fresh_dir("keras_adam")
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)]
    )
    optimizer = keras.optimizers.Adam(learning_rate=0.01)
    model.compile(optimizer=optimizer, loss="mse")
    x = (np.arange(24, dtype=np.float32).reshape(8, 3) - 12.0) / 10.0
    y = np.stack([np.sin(np.arange(8)), np.cos(np.arange(8))], axis=1).astype(np.float32)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, str(d), max_to_keep=2)
    saved = []
    for _ in range(2):
        model.train_on_batch(x, y)
        saved.append(manager.save())
    assert [Path(p).name for p in saved] == ["ckpt-1", "ckpt-2"], saved
    normalize_state_timestamps(tf, d / "checkpoint")
    assert tf.train.latest_checkpoint(str(d)) == str(d / "ckpt-2")
    files = sorted(os.listdir(d))
    log(f"keras_adam: {files}")
    log("keras_adam state file:\n" + (d / "checkpoint").read_text())


# --------------------------------------------------------------------------------------
# variant


def make_variant(tf) -> None:
    d = fresh_dir("variant")
    lst = tf.raw_ops.TensorListFromTensor(
        tensor=tf.constant([[1.0, 2.0], [3.0, 4.0]]), element_shape=tf.constant([2], tf.int32)
    )
    empty = tf.raw_ops.EmptyTensorList(
        element_shape=tf.constant([], tf.int32), max_num_elements=-1, element_dtype=tf.string
    )
    packed = tf.raw_ops.Pack(values=[lst, empty])
    assert lst.dtype == tf.variant and packed.shape == (2,)
    save_v2(tf, d / "ckpt", ["list", "lists", "x"], [lst, packed, tf.constant([0.5, -0.5])])
    log(f"variant: {sorted(os.listdir(d))}")


# --------------------------------------------------------------------------------------
# manifest


def as_array(value) -> np.ndarray:
    """TF's reader returns a bare ``bytes`` for a scalar DT_STRING; make it the 0-d object
    array the rest of the pipeline (and tfshard) uses."""
    if isinstance(value, bytes):
        out = np.empty((), dtype=object)
        out[()] = value
        return out
    return np.asarray(value)


def find_prefixes() -> list[str]:
    """All checkpoint prefixes under GOLDEN (relative, '/'-separated), sorted."""
    out = []
    for index in GOLDEN.rglob("*.index"):
        out.append(index.relative_to(GOLDEN).as_posix()[: -len(".index")])
    return sorted(out)


def manifest_for(tf, prefix: Path) -> dict[str, dict]:
    reader = tf.train.load_checkpoint(str(prefix))
    dtypes = reader.get_variable_to_dtype_map()
    listed = tf.train.list_variables(str(prefix))
    assert sorted(n for n, _ in listed) == sorted(dtypes), prefix
    records = {}
    for name, shape in listed:
        dtype = dtypes[name].name
        record = {"dtype": dtype, "shape": [int(s) for s in shape]}
        if dtype == "variant":
            # TF: "Tensorflow type 21 not convertible to numpy dtype" -- no value to hash.
            try:
                reader.get_tensor(name)
            except Exception as exc:  # noqa: BLE001 - any failure means "no value"
                log(f"  {prefix.name}:{name}: variant not readable by TF ({type(exc).__name__})")
            else:
                raise AssertionError("TF can now read variants; hash them")
        else:
            value = as_array(reader.get_tensor(name))
            assert list(value.shape) == record["shape"], (prefix, name)
            record["sha256"] = tensor_sha256(value)
            record["numpy_dtype"] = str(value.dtype)
        records[name] = record
    return records


def dump_manifest(manifest: dict[str, dict[str, dict]], path: Path) -> None:
    """JSON, keys sorted like the tf-serving manifest, but one tensor record per line to
    keep the 20 001-record many/ckpt section small."""
    lines = ["{"]
    prefixes = sorted(manifest)
    for i, prefix in enumerate(prefixes):
        lines.append(f" {json.dumps(prefix)}: {{")
        names = sorted(manifest[prefix])
        for j, name in enumerate(names):
            record = json.dumps(manifest[prefix][name], sort_keys=True, ensure_ascii=False)
            comma = "," if j < len(names) - 1 else ""
            lines.append(f"  {json.dumps(name, ensure_ascii=False)}: {record}{comma}")
        lines.append(" }" + ("," if i < len(prefixes) - 1 else ""))
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == manifest
    path.write_text(text, encoding="utf-8")


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


CASES = {
    "dtypes": make_dtypes,
    "strings": make_strings,
    "partitioned": make_partitioned,
    "sharded": make_sharded,
    "many": make_many,
    "keras_adam": make_keras_adam,
    "variant": make_variant,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "cases", nargs="*", metavar="CASE", help=f"any of {list(CASES)}; default: all"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # Must happen before TF initializes its devices: two logical CPUs for the sharded case.
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
    tf.config.experimental.enable_op_determinism()
    assert tf.__version__.startswith("2.21"), f"goldens are made with TF 2.21, not {tf.__version__}"

    GOLDEN.mkdir(parents=True, exist_ok=True)
    for name in args.cases or CASES:
        CASES[name](tf)

    manifest = {p: manifest_for(tf, GOLDEN / p) for p in find_prefixes()}
    dump_manifest(manifest, GOLDEN / "manifest.json")
    log(f"manifest: {len(manifest)} prefixes, {sum(map(len, manifest.values()))} tensors")

    total = tree_size(GOLDEN)
    for d in sorted(p for p in GOLDEN.iterdir() if p.is_dir()):
        log(f"  {d.name:12s} {tree_size(d):>9d} bytes")
    log(f"  manifest.json {(GOLDEN / 'manifest.json').stat().st_size:>8d} bytes")
    log(f"total {total} bytes")
    assert total < MAX_TREE_BYTES, f"golden tree is {total} bytes (limit {MAX_TREE_BYTES})"
    return 0


if __name__ == "__main__":
    sys.exit(main())
