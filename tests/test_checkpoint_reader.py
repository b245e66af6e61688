"""tfshard.load_checkpoint against tf.train.load_checkpoint: the same names, shapes, dtype
objects and values, of the same Python types, on the goldens, the shared corpus and random
checkpoints TF's SaveV2 writes.  The writability and independence of the arrays it returns
are checked without TF."""

import hashlib
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from helpers import GOLDEN_DIR, corpus_checkpoints, random_savev2_checkpoint

import tfshard
from tfshard.checkpoint_reader import DType

CHECKPOINTS, MISSING = corpus_checkpoints()
PARAMS = [pytest.param(prefix, kind, id=cid) for cid, prefix, kind in CHECKPOINTS] + [
    pytest.param(None, None, id="corpus", marks=pytest.mark.skip(reason=r)) for r in MISSING]


def _tf():
    return pytest.importorskip("tensorflow", reason="the comparison needs TensorFlow")


def _same_value(ours, theirs, name):
    assert type(ours) is type(theirs), (name, type(ours), type(theirs))
    if isinstance(theirs, bytes):
        assert ours == theirs, name
        return
    assert ours.dtype == theirs.dtype, (name, ours.dtype, theirs.dtype)
    assert np.shape(ours) == np.shape(theirs), name
    if isinstance(theirs, np.ndarray) and theirs.dtype == object:
        assert ours.tolist() == theirs.tolist(), name
    else:  # bytes, so NaNs and -0.0 compare exactly
        assert np.asarray(ours).tobytes() == np.asarray(theirs).tobytes(), name


def assert_reader_matches_tensorflow(prefix):
    tf = _tf()
    theirs = tf.train.load_checkpoint(prefix)
    with tfshard.load_checkpoint(prefix) as ours:
        shapes = theirs.get_variable_to_shape_map()
        assert ours.get_variable_to_shape_map() == shapes
        their_dtypes = theirs.get_variable_to_dtype_map()
        our_dtypes = ours.get_variable_to_dtype_map()
        assert our_dtypes.keys() == their_dtypes.keys()
        for name, t in their_dtypes.items():
            d = our_dtypes[name]
            assert d.name == t.name and d.as_datatype_enum == t.as_datatype_enum, name
            if t.name == "variant":  # TF's as_numpy_dtype raises for it
                with pytest.raises(tfshard.UnsupportedError):
                    d.as_numpy_dtype  # noqa: B018
            else:
                assert d.as_numpy_dtype == t.as_numpy_dtype, (name, d.as_numpy_dtype)
            assert d == t and t == d and tf.as_dtype(d) == t, name
            assert d.is_quantized == t.is_quantized and d.is_floating == t.is_floating, name
            assert (d.is_integer, d.is_complex, d.is_bool, d.is_unsigned, d.size) == \
                (t.is_integer, t.is_complex, t.is_bool, t.is_unsigned, t.size), name
        for name in shapes:
            assert ours.has_tensor(name) and name in ours
            try:
                expected = theirs.get_tensor(name)
            except tf.errors.OpError:
                # Variants (TF cannot make numpy values of them) and missing data files.
                with pytest.raises((tfshard.UnsupportedError, tfshard.CheckpointNotFoundError)):
                    ours.get_tensor(name)
                continue
            _same_value(ours.get_tensor(name), expected, name)
        assert not ours.has_tensor("no/such/tensor") and "no/such/tensor" not in ours


@pytest.mark.parametrize("prefix,kind", PARAMS)
def test_reader_matches_tensorflow_on_real_checkpoints(prefix, kind):
    assert_reader_matches_tensorflow(prefix)


@pytest.mark.parametrize("seed", range(8))
def test_reader_matches_tensorflow_on_random_savev2_checkpoints(tmp_path, seed):
    prefix = str(tmp_path / "ckpt")
    random_savev2_checkpoint(_tf(), np.random.default_rng(100 + seed), prefix)
    assert_reader_matches_tensorflow(prefix)


def test_reader_matches_tensorflow_on_a_tf2_checkpoint_at_unaligned_offsets(tmp_path):
    tf = _tf()
    # A bool and a string first push the complex128 and float64 tensors off alignment
    # (TF packs tensors densely), as in real TF2 checkpoints.
    ckpt = tf.train.Checkpoint(a=tf.Variable(True), b=tf.Variable(np.arange(6.0) + 1j),
                               c=tf.Variable(np.ones((3, 5))), s=tf.Variable(b"text"))
    prefix = ckpt.write(str(tmp_path / "ck"))
    with tfshard.open(prefix) as c:
        assert any(i.offset % np.dtype(i.dtype).itemsize for i in c.infos()
                   if i.dtype in ("complex128", "float64")), "the test needs an unaligned tensor"
    assert_reader_matches_tensorflow(prefix)
    with tfshard.load_checkpoint(prefix) as r:
        for name in r.get_variable_to_shape_map():
            v = r.get_tensor(name)
            if isinstance(v, np.ndarray) and v.dtype != object:
                assert v.flags.aligned, name


def test_reader_takes_bytes_names_as_tf_does():
    with tfshard.load_checkpoint(GOLDEN_DIR / "dtypes" / "ckpt") as r:
        assert r.has_tensor(b"scalar_int8") and b"scalar_int8" in r
        assert r.get_tensor(b"scalar_int8") == np.int8(-7)


def test_reader_returns_numpy_scalars_and_bytes_for_scalars():
    with tfshard.load_checkpoint(GOLDEN_DIR / "dtypes" / "ckpt") as r:
        assert type(r.get_tensor("scalar_float32")) is np.float32
        assert type(r.get_tensor("scalar_bfloat16")) is ml_dtypes.bfloat16
        assert type(r.get_tensor("scalar_qint8")) is np.int8  # TF's storage type
    with tfshard.load_checkpoint(GOLDEN_DIR / "strings" / "ckpt") as r:
        assert r.get_tensor("scalar") == b"hello, checkpoint"


def test_missing_tensor_is_a_key_error_naming_it():
    with tfshard.load_checkpoint(GOLDEN_DIR / "strings" / "ckpt") as r:
        with pytest.raises(KeyError) as info:
            r.get_tensor("nope")
    assert isinstance(info.value, tfshard.TensorNotFoundError) and "'nope'" in str(info.value)


def test_variant_tensor_is_unsupported_as_in_tf():
    with tfshard.load_checkpoint(GOLDEN_DIR / "variant" / "ckpt") as r:
        assert r.get_variable_to_dtype_map()["list"] == "variant"
        with pytest.raises(tfshard.UnsupportedError, match="variant"):
            r.get_tensor("list")


def _digest(prefix):
    h = hashlib.sha256()
    for p in sorted(Path(prefix).parent.glob(Path(prefix).name + ".*")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_arrays_are_writable_independent_and_leave_the_file_alone(tmp_path):
    prefix = tfshard.save(tmp_path / "ckpt", {"w": np.arange(4096, dtype=np.float32),
                                              "b": np.ones(3, np.int64)})
    before = _digest(prefix)
    with tfshard.load_checkpoint(prefix) as r:
        first = r.get_tensor("w")
        assert first.flags.writeable and not np.shares_memory(first, r.get_tensor("w"))
        first += 1
        second = r.get_tensor("w")
        np.testing.assert_array_equal(second, np.arange(4096, dtype=np.float32))
        second[:] = -1
        assert first[0] == 1
    assert _digest(prefix) == before
    with tfshard.load_checkpoint(prefix) as r:
        np.testing.assert_array_equal(r.get_tensor("w"), np.arange(4096, dtype=np.float32))


def test_dtype_objects_compare_and_hash_like_their_names():
    with tfshard.load_checkpoint(GOLDEN_DIR / "dtypes" / "ckpt") as r:
        dm = r.get_variable_to_dtype_map()
    assert dm["scalar_float32"] == "float32" and dm["scalar_float32"] != "float64"
    assert dm["scalar_float32"] == np.float32 and dm["scalar_float32"] == np.dtype("float32")
    assert dm["scalar_bfloat16"] == ml_dtypes.bfloat16 and dm["scalar_qint8"] != np.int8
    assert {dm["scalar_float32"]: 1}.get("float32") == 1
    assert dm["scalar_qint8"].as_numpy_dtype == np.dtype([("qint8", "i1")])
    assert dm["scalar_bfloat16"].as_numpy_dtype is ml_dtypes.bfloat16
    assert isinstance(dm["scalar_uint4"], DType) and dm["scalar_uint4"].is_unsigned
    assert not dm["scalar_quint8"].is_unsigned and dm["scalar_quint8"].is_quantized
    assert repr(dm["scalar_int4"]) == "<dtype: 'int4'>"


def test_reader_verifies_checksums(tmp_path):
    prefix = tfshard.save(tmp_path / "ckpt", {"w": np.arange(64, dtype=np.float32)})
    data = Path(prefix + ".data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    with tfshard.load_checkpoint(prefix) as r, pytest.raises(tfshard.ChecksumMismatchError):
        r.get_tensor("w")
    with tfshard.load_checkpoint(prefix, verify=False) as r:
        assert r.get_tensor("w").shape == (64,)


def test_load_checkpoint_takes_a_directory():
    d = GOLDEN_DIR / "keras_adam"
    with tfshard.load_checkpoint(d) as r:
        assert os.path.basename(r.prefix) == "ckpt-2"
