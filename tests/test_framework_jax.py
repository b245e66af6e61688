"""tfshard.jax: load_file gives every checkpoint's tensors as JAX arrays equal to what
tfshard's reader returns, refuses what JAX would truncate, hands aligned bytes over without
a copy and never lets JAX change the file; save_file writes checkpoints TF reads back bit for
bit; the accelerator path (asynchronous transfers, pages dropped after) runs on a CPU device."""

import hashlib
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from helpers import GOLDEN_DIR, corpus_checkpoints

import tfshard

jax = pytest.importorskip("jax", reason="tfshard.jax needs jax")
import tfshard.jax as tj  # noqa: E402

CHECKPOINTS, MISSING = corpus_checkpoints()
PARAMS = [pytest.param(prefix, kind, id=cid) for cid, prefix, kind in CHECKPOINTS] + [
    pytest.param(None, None, id="corpus", marks=pytest.mark.skip(reason=r)) for r in MISSING]

NARROW = ["float32", "float16", "bfloat16", "int8", "int16", "int32", "uint8", "uint16",
          "uint32", "bool", "complex64", "float8_e5m2", "float8_e4m3fn", "float8_e4m3fnuz",
          "float8_e5m2fnuz", "float8_e4m3b11fnuz", "int4", "uint4", "int2", "uint2",
          "float4_e2m1fn"]
WIDE = ["float64", "int64", "uint64", "complex128"]


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


def _digest(prefix):
    h = hashlib.sha256()
    for p in sorted(Path(prefix).parent.glob(Path(prefix).name + ".*")):
        h.update(p.read_bytes())
    return h.hexdigest()


def _check_against_reader(prefix, loaded):
    with tfshard.open(prefix) as ckpt:
        expected = [i for i in ckpt.infos() if i.name != "_CHECKPOINTABLE_OBJECT_GRAPH"
                    and tj.FRAMEWORK.unsupported(tfshard.dtypes.by_name(i.dtype)) is None]
        assert list(loaded) == [i.name for i in expected]
        for info in expected:
            x, arr = loaded[info.name], ckpt[info.name]
            assert isinstance(x, jax.Array) and x.dtype == arr.dtype and x.shape == info.shape
            assert np.asarray(x).tobytes() == np.ascontiguousarray(arr).tobytes(), info.name


@pytest.mark.parametrize("prefix,kind", PARAMS)
def test_load_file_matches_the_reader_on_real_checkpoints(prefix, kind):
    if kind == "index-only":
        with pytest.raises(tfshard.CheckpointNotFoundError):
            tj.load_file(prefix, skip_unsupported=True)
        return
    _check_against_reader(prefix, tj.load_file(prefix, skip_unsupported=True))


def test_load_file_with_x64_takes_64_bit_tensors(x64):
    prefix = GOLDEN_DIR / "dtypes" / "ckpt"
    loaded = tj.load_file(prefix, skip_unsupported=True)
    assert loaded["scalar_int64"].dtype == np.int64 and loaded["scalar_int64"] == -7
    assert loaded["scalar_complex128"].dtype == np.complex128
    _check_against_reader(prefix, loaded)


def test_64_bit_tensors_without_x64_are_refused_not_truncated(monkeypatch):
    reads = []
    real_read = tfshard.Checkpoint.read
    monkeypatch.setattr(tfshard.Checkpoint, "read",
                        lambda self, name, *a, **k: reads.append(name) or
                        real_read(self, name, *a, **k))
    with pytest.raises(tfshard.UnsupportedError, match="jax_enable_x64") as info:
        tj.load_file(GOLDEN_DIR / "keras_adam" / "ckpt-1")
    assert "save_counter/.ATTRIBUTES/VARIABLE_VALUE" in str(info.value) and reads == []
    loaded = tj.load_file(GOLDEN_DIR / "keras_adam" / "ckpt-1",
                          exclude=lambda n: n.startswith(("save_counter", "optimizer/_iter")))
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" not in loaded and len(loaded) == 13


def _mapped(path, pointer):
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == str(path):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                if lo <= pointer < hi:
                    return True
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps")
def test_aligned_bytes_are_not_copied_and_jax_never_changes_the_file(tmp_path):
    values = np.arange(1 << 16, dtype=np.float32)
    prefix = tfshard.save(tmp_path / "ckpt", {"a": values, "b": values[:3] * 2})  # 64-aligned
    before = _digest(prefix)
    loaded = tj.load_file(prefix)
    data = Path(prefix + ".data-00000-of-00001").resolve()
    assert _mapped(data, loaded["a"].unsafe_buffer_pointer())
    # A donated input may have its memory reused for the output.
    doubled = jax.jit(lambda x: x * 2, donate_argnums=0)(loaded.pop("a"))
    np.testing.assert_array_equal(np.asarray(doubled), values * 2)
    assert _digest(prefix) == before
    np.testing.assert_array_equal(np.asarray(tj.load_file(prefix)["a"]), values)


def _random(dtype, shape, rng):
    """Random values of ``dtype``: every bit pattern for 8+ bit types, every value for
    the narrower ones."""
    if dtype in ("int4", "uint4", "int2", "uint2"):
        info = ml_dtypes.iinfo(getattr(ml_dtypes, dtype))
        return rng.integers(int(info.min), int(info.max) + 1, size=shape).astype(
            getattr(ml_dtypes, dtype))
    if dtype == "float4_e2m1fn":
        return rng.choice([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.5, -1, -6], size=shape).astype(
            ml_dtypes.float4_e2m1fn)
    dt = np.dtype(getattr(ml_dtypes, dtype, None) or dtype)
    raw = np.frombuffer(rng.bytes(int(np.prod(shape)) * dt.itemsize), np.uint8)
    if dtype == "bool":
        return (raw & 1).astype(bool).reshape(shape)
    return raw.view(dt).reshape(shape)


def _save_and_compare_in_tf(tmp_path, names):
    tf = pytest.importorskip("tensorflow", reason="TF must read the file back")
    rng = np.random.default_rng(11)
    arrays = {f"{d}/{i}": _random(d, shape, rng) for d in names
              for i, shape in enumerate([(), (4, 3), (2, 0)])}
    tensors = {n: jax.device_put(a) for n, a in arrays.items()}
    prefix = tj.save_file(tensors, str(tmp_path / "model.ckpt"))
    reader = tf.train.load_checkpoint(prefix)
    assert sorted(reader.get_variable_to_shape_map()) == sorted(tensors)
    for name, x in tensors.items():
        assert reader.get_variable_to_dtype_map()[name].name == str(x.dtype), name
        got = np.asarray(reader.get_tensor(name))
        assert got.shape == x.shape and got.tobytes() == np.asarray(x).tobytes(), name
    back = tj.load_file(prefix)
    assert all(np.asarray(back[n]).tobytes() == np.asarray(x).tobytes()
               for n, x in tensors.items())


def test_save_file_is_read_back_bit_for_bit_by_tensorflow(tmp_path):
    _save_and_compare_in_tf(tmp_path, NARROW)


def test_save_file_with_x64_is_read_back_bit_for_bit_by_tensorflow(tmp_path, x64):
    _save_and_compare_in_tf(tmp_path, WIDE)


def test_save_file_refuses_what_tf_cannot_hold(tmp_path):
    for bad in ({"x": jax.numpy.zeros(2, jax.numpy.float8_e8m0fnu)}, {"x": object()}):
        with pytest.raises(tfshard.InvalidTensorError):
            tj.save_file(bad, str(tmp_path / "bad"))
    assert list(tmp_path.iterdir()) == []


def test_accelerator_path_keeps_every_value(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    arrays = {f"t{i}": rng.standard_normal(n).astype(np.float32)
              for i, n in enumerate([5000, 1, 0, 3000, 9000])}
    prefix = tfshard.save(tmp_path / "ckpt", arrays, alignment=1)
    monkeypatch.setattr(tj, "_IN_FLIGHT", 8 << 10)  # a few tensors in flight at a time
    released = []
    real_release = tfshard.Checkpoint.release
    monkeypatch.setattr(tfshard.Checkpoint, "release",
                        lambda self, name: released.append(name) or real_release(self, name))
    with tfshard.open(prefix) as ckpt:
        infos = tfshard.frameworks.select(ckpt, tj.FRAMEWORK)
        out = tj._load_to_accelerator(ckpt, infos, jax.devices("cpu")[0], verify=True)
    assert sorted(released) == sorted(arrays)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(np.asarray(out[name]), arr)


def test_devices_by_name():
    prefix = GOLDEN_DIR / "sharded" / "model.ckpt"
    cpu = jax.devices("cpu")[0]
    for device in ("cpu", "cpu:0", cpu, None):
        loaded = tj.load_file(prefix, device=device, skip_unsupported=True)
        assert all(x.devices() == {cpu} for x in loaded.values())
    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(tfshard.UnsupportedError, match="gpu"):
            tj.load_file(prefix, device="gpu:0")
    with pytest.raises(tfshard.UnsupportedError):
        tj.load_file(prefix, device="cpu:99")


def test_without_jax_the_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)  # makes `import jax` fail
    monkeypatch.delitem(sys.modules, "tfshard.jax")
    with pytest.raises(ImportError, match=r"pip install tfshard\[jax\]"):
        import tfshard.jax  # noqa: F401
