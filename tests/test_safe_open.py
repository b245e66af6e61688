"""tfshard.safe_open: safetensors' interface over TF checkpoints, in numpy, torch, JAX and
TensorFlow; get_slice reads only the bytes it needs.  Also: importing tfshard imports no
framework."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import crc32c
import numpy as np
import pytest
from helpers import GOLDEN_DIR

import bundle_builder as bb
import tfshard
from tfshard.frameworks import FRAMEWORKS, get_framework

FRAMEWORK_NAMES = ["np", "numpy", "pt", "torch", "jax", "flax", "tf", "tensorflow"]
NEEDS = {"pt": "torch", "torch": "torch", "jax": "jax", "flax": "jax", "tf": "tensorflow",
         "tensorflow": "tensorflow"}
PARTITIONED = GOLDEN_DIR / "partitioned" / "model.ckpt"
KERAS = GOLDEN_DIR / "keras_adam" / "ckpt-1"


def _need(framework):
    if framework in NEEDS:
        pytest.importorskip(NEEDS[framework], reason=f"framework={framework!r} needs it")


def _as_numpy(value):
    if isinstance(value, np.ndarray):
        return value
    mod = type(value).__module__
    if mod.startswith("torch"):
        return value.numpy()
    return np.asarray(value)  # jax.Array, tf.Tensor


def _array_type(framework):
    module = FRAMEWORKS[framework]
    if module == "numpy":
        return np.ndarray
    if module == "torch":
        return sys.modules["torch"].Tensor
    if module == "jax":
        return sys.modules["jax"].Array
    return sys.modules["tensorflow"].Tensor


@pytest.mark.parametrize("framework", FRAMEWORK_NAMES)
def test_keys_and_tensors_in_every_framework(framework):
    _need(framework)
    kind = _array_type(framework)
    for prefix in (KERAS, PARTITIONED, GOLDEN_DIR / "sharded" / "model.ckpt"):
        with tfshard.open(prefix) as ckpt, tfshard.safe_open(prefix, framework) as f:
            assert f.keys() == list(ckpt)
            assert f.metadata() is None
            for name in f.keys():
                dt = tfshard.dtypes.by_name(ckpt.info(name).dtype)
                if get_framework(framework).unsupported(dt):  # strings; int64 in JAX
                    with pytest.raises(tfshard.UnsupportedError, match=repr(name)):
                        f.get_tensor(name)
                    continue
                value = f.get_tensor(name)
                assert isinstance(value, kind), (name, type(value))
                expected = ckpt[name]
                got = _as_numpy(value)
                if expected.dtype == object:
                    assert got.tolist() == expected.tolist(), name
                else:
                    assert got.dtype == expected.dtype and got.shape == expected.shape, name
                    assert got.tobytes() == expected.tobytes(), name


INDEXES = [np.s_[1:3], np.s_[:, 1:3], np.s_[2], np.s_[-1, ::2], np.s_[...], np.s_[..., 0],
           np.s_[3:1], np.s_[::-1], np.s_[1, 2]]


@pytest.fixture
def jax_x64():
    """JAX with 64-bit types (the partitioned golden has a float64 tensor)."""
    jax = pytest.importorskip("jax", reason="framework='jax' needs it")
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("framework", ["np", "pt", "jax", "tf"])
def test_get_slice_matches_numpy_indexing(framework, request):
    _need(framework)
    if framework == "jax":
        request.getfixturevalue("jax_x64")
    with tfshard.open(PARTITIONED) as ckpt, tfshard.safe_open(PARTITIONED, framework) as f:
        for name in ("dense/kernel", "cols"):  # partitioned by rows and by columns
            full = ckpt[name]
            s = f.get_slice(name)
            assert s.get_shape() == list(full.shape) and len(s) == full.shape[0]
            assert s.get_dtype() == ckpt.info(name).dtype
            for index in INDEXES:
                got = _as_numpy(s[index])
                np.testing.assert_array_equal(got, full[index], err_msg=f"{name}{index}")
                assert got.shape == np.shape(full[index])


def test_get_slice_refuses_fancy_indexes():
    with tfshard.safe_open(PARTITIONED) as f:
        s = f.get_slice("dense/bias")
        for index in ([0, 1], np.array([1]), None, True, "x"):
            with pytest.raises(tfshard.UnsupportedError, match="basic"):
                s[index]
        with pytest.raises(IndexError):
            s[99]


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="measures RSS via /proc")
def test_get_slice_reads_only_the_bytes_it_needs(tmp_path):
    # A 4 GiB float32 tensor in a sparse data file: reading all of it would take seconds
    # and gigabytes of memory; rows 1000:1010 are 40 KiB.
    shape, nbytes = (1 << 20, 1024), 4 << 30
    small = np.arange(4, dtype=np.float32).tobytes()
    b = bb.Bundle()
    b.add_raw_entry(b"huge", bb.encode_entry(1, shape, 0, 0, nbytes, 0))
    b.add_raw_entry(b"small", bb.encode_entry(1, (4,), 0, nbytes, len(small),
                                              bb.mask(crc32c.crc32c(small))))
    prefix = b.write(str(tmp_path / "ckpt"))  # an index and an empty data file
    with open(prefix + ".data-00000-of-00001", "r+b") as fh:
        fh.truncate(nbytes)  # sparse: no disk blocks, reads as zeros
        fh.seek(nbytes)
        fh.write(small)
    with tfshard.safe_open(prefix) as f:
        np.testing.assert_array_equal(f.get_tensor("small"), np.arange(4, dtype=np.float32))
        before = _rss()
        rows = f.get_slice("huge")[1000:1010]
        cols = f.get_slice("huge")[5, 100:200]
        grown = _rss() - before
    assert rows.shape == (10, 1024) and not rows.any() and cols.shape == (100,)
    assert grown < 64 << 20, f"RSS grew by {grown} bytes"


@pytest.mark.parametrize("framework", ["np", "pt"])
def test_tensors_are_writable_independent_and_the_file_never_changes(tmp_path, framework):
    _need(framework)
    prefix = tfshard.save(tmp_path / "ckpt", {"w": np.arange(5000, dtype=np.float32)})

    def digest():
        return hashlib.sha256(Path(prefix + ".data-00000-of-00001").read_bytes()).hexdigest()

    before = digest()
    with tfshard.safe_open(prefix, framework) as f:
        a, b = f.get_tensor("w"), f.get_tensor("w")
        a += 1
        assert _as_numpy(b)[0] == 0 and _as_numpy(a)[0] == 1
        part = f.get_slice("w")[10:20]
        part *= 0
    assert digest() == before


def test_unknown_framework_and_devices_are_clear_errors():
    with pytest.raises(tfshard.UnsupportedError, match="unknown framework"):
        tfshard.safe_open(KERAS, "mxnet")
    with pytest.raises(tfshard.UnsupportedError, match="CPU"):
        tfshard.safe_open(KERAS, "np", device="cuda:0")


def test_tf_framework_holds_strings_and_quantized_types():
    tf = pytest.importorskip("tensorflow", reason="framework='tf' needs it")
    with tfshard.safe_open(GOLDEN_DIR / "dtypes" / "ckpt", "tf") as f:
        q = f.get_tensor("scalar_qint8")
        assert q.dtype == tf.qint8
    with tfshard.safe_open(GOLDEN_DIR / "strings" / "ckpt", "tf") as f:
        assert f.get_tensor("scalar").numpy() == b"hello, checkpoint"
    with tfshard.safe_open(GOLDEN_DIR / "variant" / "ckpt", "tf") as f:
        with pytest.raises(tfshard.UnsupportedError, match="variant"):
            f.get_tensor("list")
    if not tf.config.list_logical_devices("GPU"):
        with pytest.raises(tfshard.UnsupportedError, match="no device"):
            tfshard.safe_open(KERAS, "tf", device="gpu:0")


def test_importing_tfshard_imports_no_framework():
    code = ("import sys, tfshard\n"
            "r = tfshard.load_checkpoint(sys.argv[1]); r.get_variable_to_shape_map()\n"
            "f = tfshard.safe_open(sys.argv[1], 'np'); f.get_tensor(f.keys()[-1])\n"
            "print(sorted(m for m in ('torch', 'jax', 'tensorflow', 'fsspec') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code, str(KERAS)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
