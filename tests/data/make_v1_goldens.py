"""Regenerate the legacy V1 ("TensorSlice") golden checkpoints under ``tests/data/v1/``.

Run with TensorFlow 2.21 installed (it prints V1 deprecation warnings)::

    .venv/bin/python tests/data/make_v1_goldens.py

Every case directory is deleted and rewritten from fixed values and seeds. Afterwards each
tensor is read back with TensorFlow's own V1 reader (the ``Restore`` op, which assembles
partitioned tensors, unlike ``CheckpointReader.get_tensor``) and must equal the value that
was saved; then ``v1/manifest.json`` is written::

    {"<prefix relative to v1/>": {"<name>": {"dtype": TF dtype name, "shape": [dims],
                                             "sha256": hex (tests/helpers.py:tensor_sha256),
                                             "numpy_dtype": numpy dtype tfshard returns}}}

The hashes are of the values given to TensorFlow (quantized types as their integer
storage type), i.e. what a reader must return.

Cases (prefixes relative to ``v1/``):

``dtypes/model.ckpt``
    ``tf.compat.v1.train.Saver(write_version=SaverDef.V1)`` over one variable per dtype
    TF 2.21 can save in V1 (float16/32/64, int8/16/32/64, uint8, uint16, bool, complex64,
    complex128, string): ``t_<dtype>`` [2,3] with extreme values (inf/nan/-0.0, integer
    min/max), ``scalar_<dtype>`` [] and ``empty_<dtype>`` [0,3]; strings include empty
    elements, NUL and non-UTF-8 bytes. bfloat16, uint32, uint64 and the float8/int4 types
    cannot be saved in V1 by TF 2.21 ("not yet supported"), so they are absent.

``misc/model.ckpt``
    ``tf.raw_ops.Save`` (the V1 save op; Saver cannot hold non-variable tensors):
    qint8, quint8, qint32 tensors (TF saves these in V1 but ``CheckpointReader`` cannot
    return them) and names with slashes, spaces and non-ASCII characters.

``large/model.ckpt``
    A float32 [256,300] tensor (307 200 bytes of values: the SSTable spans several data
    blocks, asserted), an int64 [4000] tensor of mixed-size values (varints of 1-10
    bytes), and a small tensor whose key sorts after both.

``partitioned/model.ckpt``
    Saver V1 with partitioned variables: ``dense/kernel`` float32 [10,4] in 3 row slices,
    ``cols`` float64 [4,10] in 2 column slices, ``ids`` int64 [7] in 2 slices, and plain
    ``dense/bias`` and ``global_step``; ``save_relative_paths=True`` so the ``checkpoint``
    state file names ``model.ckpt``.

``sharded/model.ckpt``
    ``Saver(sharded=True, write_version=V1)`` over variables on two logical CPU devices:
    files ``model.ckpt-00000-of-00002`` and ``model.ckpt-00001-of-00002``; ``emb`` float32
    [6,2] is partitioned so that its two slices live in different files. The state file
    names the pattern ``model.ckpt-?????-of-00002`` (as TF writes it).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
V1 = HERE / "v1"
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))
from helpers import tensor_sha256  # noqa: E402  (tests/helpers.py)

SEED = 20250202
MAX_TREE_BYTES = 1024 * 1024
STORAGE = {"qint8": "int8", "quint8": "uint8", "qint32": "int32"}


def log(msg: str) -> None:
    print(f"[make_v1_goldens] {msg}", flush=True)


def fresh_dir(name: str) -> Path:
    d = V1 / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def obj(values) -> np.ndarray:
    """An object array of bytes (np.array would make a fixed-width 'S' array)."""
    flat = list(np.asarray(values, dtype=object).ravel())
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(np.shape(np.asarray(values, dtype=object)))


def dtype_values(name: str):
    """(t [2,3], scalar []) for one dtype name."""
    inf, nan = np.inf, np.nan
    if name in ("float16", "float32", "float64"):
        dt = np.dtype(name)
        return np.array([[1.5, -2.25, 1e-3], [-0.0, inf, nan]], dt), np.array(-3.75, dt)
    if name in ("complex64", "complex128"):
        dt = np.dtype(name)
        return (np.array([[1 + 2j, -3.5 - 0.5j, 0j], [-1j, 2.25, complex(inf, -1)]], dt),
                np.array(-1.5 + 0.25j, dt))
    if name == "bool":
        return np.array([[True, False, True], [False, False, True]]), np.array(True)
    if name.startswith("int"):
        ii = np.iinfo(name)
        return np.array([[1, -2, ii.min], [ii.max, 0, -1]], name), np.array(-7, name)
    if name.startswith("uint"):
        ii = np.iinfo(name)
        return np.array([[1, 2, ii.max], [0, ii.max // 2, 7]], name), np.array(200, name)
    if name == "string":
        return (obj([[b"", b"a\x00b", b"\xff\xfe non-utf8"],
                     ["h\u00e9llo \u540d\u524d".encode(), bytes(range(256)), b""]]),
                np.array(b"hello, v1", dtype=object))
    raise ValueError(name)


SAVER_DTYPES = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                "uint16", "bool", "complex64", "complex128", "string"]


def saver_save(tf, directory: Path, arrays: dict, *, partitioned=None, sharded=False,
               devices=None) -> str:
    """Save ``arrays`` as TF1 variables with Saver(write_version=V1); returns Saver.save's
    result. ``partitioned`` maps name -> (num_parts, axis); ``devices`` name -> device."""
    v1 = tf.compat.v1
    partitioned = partitioned or {}
    devices = devices or {}
    graph = tf.Graph()
    with graph.as_default():
        for name, value in arrays.items():
            with tf.device(devices.get(name, "/device:CPU:0")):
                if name in partitioned:
                    parts, axis = partitioned[name]
                    var = v1.get_variable(
                        name, shape=value.shape, dtype=tf.as_dtype(value.dtype),
                        initializer=slice_initializer(tf, value),
                        partitioner=v1.fixed_size_partitioner(parts, axis=axis))
                    assert len(list(var)) == parts, name
                else:
                    dtype = tf.string if value.dtype == object else tf.as_dtype(value.dtype)
                    v1.get_variable(name, initializer=tf.constant(value, dtype=dtype))
        saver = v1.train.Saver(sharded=sharded, write_version=v1.train.SaverDef.V1,
                               save_relative_paths=True)
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            return saver.save(sess, str(directory / "model.ckpt"), write_meta_graph=False)


def slice_initializer(tf, full: np.ndarray):
    """An initializer giving each part of a partitioned variable its slice of ``full``."""

    def init(shape, dtype=None, partition_info=None):
        offset = partition_info.var_offset if partition_info is not None else [0] * full.ndim
        index = tuple(slice(o, o + n) for o, n in zip(offset, shape))
        return tf.constant(full[index], dtype=dtype)

    return init


def make_dtypes(tf) -> dict:
    d = fresh_dir("dtypes")
    arrays = {}
    for name in SAVER_DTYPES:
        t, scalar = dtype_values(name)
        arrays[f"t_{name}"] = t
        arrays[f"scalar_{name}"] = scalar
        arrays[f"empty_{name}"] = np.zeros((0, 3), t.dtype)
    saver_save(tf, d, arrays)
    assert sorted(os.listdir(d)) == ["checkpoint", "model.ckpt"], os.listdir(d)
    return {"dtypes/model.ckpt": {k: (v, "string" if v.dtype == object else str(v.dtype))
                                  for k, v in arrays.items()}}


def make_misc(tf) -> dict:
    d = fresh_dir("misc")
    values = {
        "q/qint8": (np.array([[1, -2, -128], [127, 0, -1]], np.int8), "qint8"),
        "q/quint8": (np.array([0, 7, 255], np.uint8), "quint8"),
        "q/qint32": (np.array([-(2**31), 2**31 - 1, 5], np.int32), "qint32"),
        "names/\u00fcn\u00efc\u00f6d\u00e9 \u540d\u524d": (np.array([1.0, -1.0], np.float32),
                                                          "float32"),
        "a/b/c d": (np.array([[3]], np.int32), "int32"),
    }
    tensors = [tf.constant(v, dtype=tf.as_dtype(dt)) for v, dt in values.values()]
    tf.raw_ops.Save(filename=str(d / "model.ckpt"), tensor_names=list(values), data=tensors)
    return {"misc/model.ckpt": values}


def make_large(tf) -> dict:
    from tfshard import _index

    d = fresh_dir("large")
    rng = np.random.default_rng(SEED)
    big = rng.standard_normal((256, 300)).astype(np.float32)
    ints = (rng.integers(-(2**62), 2**62, 4000) >> rng.integers(0, 63, 4000)).astype(np.int64)
    arrays = {"big": big, "ints": ints, "zz_after": np.array([1.0, 2.0, 3.0], np.float32)}
    saver_save(tf, d, arrays)
    table = _index.IndexTable((d / "model.ckpt").read_bytes())
    blocks = {h >> 32 for h in table.handles()}
    assert len(blocks) >= 2, f"only {len(blocks)} data block(s)"
    log(f"large: {len(blocks)} data blocks")
    return {"large/model.ckpt": {k: (v, str(v.dtype)) for k, v in arrays.items()}}


def make_partitioned(tf) -> dict:
    d = fresh_dir("partitioned")
    rng = np.random.default_rng(SEED + 1)
    arrays = {
        "dense/kernel": rng.standard_normal((10, 4)).astype(np.float32),
        "dense/bias": np.array([0.5, -0.25, 0.125, -1.0], np.float32),
        "cols": rng.standard_normal((4, 10)),
        "ids": np.array([5, -6, 7, -(2**40), 9, 10, 2**62], np.int64),
        "global_step": np.array(42, np.int64),
    }
    saver_save(tf, d, arrays, partitioned={"dense/kernel": (3, 0), "cols": (2, 1),
                                           "ids": (2, 0)})
    assert sorted(os.listdir(d)) == ["checkpoint", "model.ckpt"], os.listdir(d)
    assert '"model.ckpt"' in (d / "checkpoint").read_text()
    return {"partitioned/model.ckpt": {k: (v, str(v.dtype)) for k, v in arrays.items()}}


def make_sharded(tf) -> dict:
    d = fresh_dir("sharded")
    arrays = {
        "a": np.array([1.0, -2.0], np.float32),
        "c": np.array([7, -8, 9], np.int32),
        "b": np.array([3, -4], np.int64),
        "emb": np.arange(12, dtype=np.float32).reshape(6, 2) - 5.5,
    }
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        with tf.device("/device:CPU:0"):
            v1.get_variable("a", initializer=tf.constant(arrays["a"]))
            v1.get_variable("c", initializer=tf.constant(arrays["c"]))
        with tf.device("/device:CPU:1"):
            v1.get_variable("b", initializer=tf.constant(arrays["b"]))
        n_vars = [0]

        def alternate(op):
            if op.type in ("VarHandleOp", "VariableV2"):
                n_vars[0] += 1
                return f"/device:CPU:{(n_vars[0] - 1) % 2}"
            return op.device

        with graph.device(alternate):
            e = v1.get_variable("emb", shape=[6, 2], dtype=tf.float32,
                                initializer=slice_initializer(tf, arrays["emb"]),
                                partitioner=v1.fixed_size_partitioner(2))
        assert sorted(p.device for p in e) == ["/device:CPU:0", "/device:CPU:1"]
        saver = v1.train.Saver(sharded=True, write_version=v1.train.SaverDef.V1,
                               save_relative_paths=True)
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            path = saver.save(sess, str(d / "model.ckpt"), write_meta_graph=False)
    assert path.endswith("model.ckpt-?????-of-00002"), path
    files = sorted(os.listdir(d))
    assert files == ["checkpoint", "model.ckpt-00000-of-00002", "model.ckpt-00001-of-00002"], \
        files
    return {"sharded/model.ckpt": {k: (v, str(v.dtype)) for k, v in arrays.items()}}


def tf_pattern(prefix: Path) -> str:
    """What TF's V1 reader is given: the file itself, or the shard pattern."""
    if prefix.is_file():
        return str(prefix)
    shards = sorted(prefix.parent.glob(prefix.name + "-?????-of-?????"))
    return f"{prefix}-?????-of-{shards[0].name[-5:]}"


def check_with_tf(tf, rel: str, values: dict) -> None:
    """TF's Restore op must return exactly the saved values; its listing must agree."""
    pattern = tf_pattern(V1 / rel)
    reader = tf.train.load_checkpoint(pattern)
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    assert sorted(shapes) == sorted(values), (rel, sorted(shapes))
    for name, (value, dtype) in values.items():
        assert dtypes[name].name == dtype and list(shapes[name]) == list(value.shape), name
        got = tf.raw_ops.Restore(file_pattern=pattern, tensor_name=name, dt=dtypes[name])
        if dtype == "string":
            assert list(np.asarray(got.numpy(), dtype=object).ravel()) == \
                list(value.ravel()), name
        else:
            raw = got.numpy()
            if dtype in STORAGE:  # TF returns quantized values as a structured numpy type
                raw = raw.view(STORAGE[dtype])
            assert raw.tobytes() == np.ascontiguousarray(value).tobytes(), name


def main() -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    cases = {}
    for make in (make_dtypes, make_misc, make_large, make_partitioned, make_sharded):
        cases.update(make(tf))
    manifest = {}
    for rel, values in sorted(cases.items()):
        check_with_tf(tf, rel, values)
        manifest[rel] = {
            name: {"dtype": dtype, "shape": list(value.shape), "sha256": tensor_sha256(value),
                   "numpy_dtype": "object" if dtype == "string" else str(value.dtype)}
            for name, (value, dtype) in sorted(values.items())}
        log(f"{rel}: {len(values)} tensors, read back by TF")
    with open(V1 / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(p.stat().st_size for p in V1.rglob("*") if p.is_file())
    assert total < MAX_TREE_BYTES, f"v1 goldens are {total} bytes"
    log(f"wrote {V1 / 'manifest.json'}; {total} bytes in all")


if __name__ == "__main__":
    main()
