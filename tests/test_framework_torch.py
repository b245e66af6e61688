"""tfshard.torch: load_file gives every checkpoint's tensors as torch tensors equal to what
tfshard's reader returns (itself checked against TF), writable without touching the file,
zero-copy only where aligned; save_file writes checkpoints TF reads back bit for bit; the
staged device path keeps every byte with a copier that copies late, as a DMA engine does."""

import hashlib
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import GOLDEN_DIR, corpus_checkpoints

import tfshard

torch = pytest.importorskip("torch", reason="tfshard.torch needs torch")
import tfshard.torch as tt  # noqa: E402

CHECKPOINTS, MISSING = corpus_checkpoints()
PARAMS = [pytest.param(prefix, kind, id=cid) for cid, prefix, kind in CHECKPOINTS] + [
    pytest.param(None, None, id="corpus", marks=pytest.mark.skip(reason=r)) for r in MISSING]

TORCH_DTYPES = ["float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64",
                "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128",
                "float8_e5m2", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2fnuz"]


def _bytes(t):
    """A tensor's raw bytes (any dtype)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _digest(prefix):
    h = hashlib.sha256()
    for p in sorted(Path(prefix).parent.glob(Path(prefix).name + ".*")):
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("prefix,kind", PARAMS)
def test_load_file_matches_the_reader_on_real_checkpoints(prefix, kind):
    if kind == "index-only":
        with pytest.raises(tfshard.CheckpointNotFoundError):
            tt.load_file(prefix, skip_unsupported=True)
        return
    loaded = tt.load_file(prefix, skip_unsupported=True)
    with tfshard.open(prefix) as ckpt:
        expected = [i for i in ckpt.infos() if i.name != "_CHECKPOINTABLE_OBJECT_GRAPH"
                    and tt.FRAMEWORK.unsupported(tfshard.dtypes.by_name(i.dtype)) is None]
        assert list(loaded) == [i.name for i in expected]
        for info in expected:
            t, arr = loaded[info.name], ckpt[info.name]
            assert t.dtype == getattr(torch, info.dtype) and tuple(t.shape) == info.shape
            assert _bytes(t) == np.ascontiguousarray(arr).tobytes(), info.name


def test_object_graph_is_left_out():
    prefix = GOLDEN_DIR / "keras_adam" / "ckpt-1"
    with tfshard.open(prefix) as ckpt:
        assert "_CHECKPOINTABLE_OBJECT_GRAPH" in ckpt
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" not in tt.load_file(prefix)


def test_unsupported_types_are_refused_before_anything_is_read(monkeypatch):
    reads = []
    real_read = tfshard.Checkpoint.read
    monkeypatch.setattr(tfshard.Checkpoint, "read",
                        lambda self, name, *a, **k: reads.append(name) or
                        real_read(self, name, *a, **k))
    with pytest.raises(tfshard.UnsupportedError) as info:
        tt.load_file(GOLDEN_DIR / "dtypes" / "ckpt")
    message = str(info.value)
    for name in ("scalar_qint8", "scalar_int4", "scalar_float8_e4m3b11fnuz"):
        assert name in message
    assert "exclude" in message and reads == []
    with pytest.raises(tfshard.UnsupportedError, match="string"):
        tt.load_file(GOLDEN_DIR / "strings" / "ckpt")


def test_exclude_and_skip_unsupported():
    prefix = GOLDEN_DIR / "dtypes" / "ckpt"
    with tfshard.open(prefix) as ckpt:
        bad = [i.name for i in ckpt.infos()
               if tt.FRAMEWORK.unsupported(tfshard.dtypes.by_name(i.dtype))]
        names = list(ckpt)
    by_list = tt.load_file(prefix, exclude=bad + ["scalar_float32"])
    assert sorted(by_list) == sorted(set(names) - set(bad) - {"scalar_float32"})
    by_callable = tt.load_file(prefix, exclude=lambda n: n in bad)
    assert sorted(by_callable) == sorted(set(names) - set(bad))
    assert list(tt.load_file(prefix, skip_unsupported=True)) == list(by_callable)


def test_tensors_are_writable_and_the_file_never_changes(tmp_path):
    prefix = tfshard.save(tmp_path / "ckpt", {"w": np.arange(10000, dtype=np.float32),
                                              "i": np.arange(7, dtype=np.int64)})
    before = _digest(prefix)
    first = tt.load_file(prefix)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on read-only buffers
        first["w"].add_(1)
        first["i"].mul_(3)
    second = tt.load_file(prefix)
    assert torch.equal(second["w"], torch.arange(10000, dtype=torch.float32))
    assert torch.equal(first["w"], torch.arange(10000, dtype=torch.float32) + 1)
    assert _digest(prefix) == before


def _mapped_ranges(path):
    """Address ranges of ``path`` mapped into this process (Linux)."""
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == str(path):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((lo, hi))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps")
def test_aligned_tensors_share_the_map_and_unaligned_ones_are_copied(tmp_path):
    tf = pytest.importorskip("tensorflow", reason="TF writes the unaligned checkpoint")
    prefix = str(tmp_path / "ckpt")
    # TF packs densely: the bool puts the complex128 at byte 1, the float32 stays at 4k+1...
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["a", "b", "c"], shape_and_slices=[""] * 3,
                      tensors=[tf.constant([True]), tf.constant(np.arange(512) + 2j),
                               tf.constant(np.ones(3, np.float32))])
    with tfshard.open(prefix) as ckpt:
        offsets = {i.name: i.offset for i in ckpt.infos()}
    assert offsets["b"] % 16 and offsets["c"] % 4, offsets
    aligned = tfshard.save(tmp_path / "aligned", {"b": np.arange(512) + 2j})
    loaded = tt.load_file(prefix)
    data = Path(prefix + ".data-00000-of-00001").resolve()
    ranges = _mapped_ranges(data)
    assert ranges, "the data file should be mapped while its tensors live"

    def in_map(t):
        return any(lo <= t.data_ptr() < hi for lo, hi in ranges)

    assert not in_map(loaded["b"]) and loaded["b"].data_ptr() % 16 == 0
    assert not in_map(loaded["c"])
    loaded["b"].mul_(2)  # torch faults writing a misaligned complex view; a copy is fine
    assert torch.equal(loaded["b"], torch.from_numpy((np.arange(512) + 2j) * 2))
    good = tt.load_file(aligned)
    assert any(lo <= good["b"].data_ptr() < hi
               for lo, hi in _mapped_ranges(Path(aligned + ".data-00000-of-00001").resolve()))


def _random(dtype, shape, gen):
    """Random bits of ``dtype`` (NaN and infinity patterns included for floats)."""
    n = int(np.prod(shape))
    if n == 0:
        return torch.empty(shape, dtype=getattr(torch, dtype))
    size = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    raw = torch.from_numpy(np.frombuffer(gen.bytes(n * size), np.uint8).copy())
    if dtype == "bool":
        return (raw & 1).bool().reshape(shape)
    return raw.view(getattr(torch, dtype)).reshape(shape)


def test_save_file_is_read_back_bit_for_bit_by_tensorflow(tmp_path):
    tf = pytest.importorskip("tensorflow", reason="TF must read the file back")
    gen = np.random.default_rng(7)
    tensors = {f"{d}/{i}": _random(d, shape, gen) for d in TORCH_DTYPES
               for i, shape in enumerate([(), (3, 5), (0, 2)])}
    tensors["strided"] = torch.arange(20.0).reshape(4, 5)[:, ::2]
    tensors["conj"] = torch.tensor([1 + 2j, 3 - 1j]).conj()
    prefix = tt.save_file(tensors, str(tmp_path / "model.ckpt"))
    reader = tf.train.load_checkpoint(prefix)
    assert sorted(reader.get_variable_to_shape_map()) == sorted(tensors)
    for name, t in tensors.items():
        value = np.asarray(reader.get_tensor(name))
        assert reader.get_variable_to_dtype_map()[name].name == str(t.dtype)[6:], name
        assert value.shape == tuple(t.shape), name
        assert value.tobytes() == _bytes(t.resolve_conj()), name
    back = tt.load_file(prefix)
    assert all(_bytes(back[n]) == _bytes(t.resolve_conj()) for n, t in tensors.items())


def test_save_file_refuses_what_tf_cannot_hold(tmp_path):
    for bad in ({"x": torch.zeros(2, dtype=torch.float8_e8m0fnu)}, {"x": [1, 2]},
                {"x": torch.zeros(2).to_sparse()}):
        with pytest.raises(tfshard.InvalidTensorError):
            tt.save_file(bad, str(tmp_path / "bad"))
    assert list(tmp_path.iterdir()) == []


class LateCopier:
    """Stands in for the CUDA copier: copies run only when waited for (or at finish), in
    order, as a stream runs them, so a staging buffer refilled before its copy was waited
    for hands the device the wrong bytes."""

    def __init__(self, chunk, count, honest=True):
        self.pinned = [torch.empty(chunk, dtype=torch.uint8) for _ in range(count)]
        self.queue, self.honest, self.copies = [], honest, 0

    def empty(self, shape, dtype):
        return torch.empty(shape, dtype=dtype)

    def start(self, dst, src):
        self.queue.append((dst, src))
        self.copies += 1
        return len(self.queue) + self.copies  # any token

    def _run(self, upto):
        while self.queue and upto > 0:
            dst, src = self.queue.pop(0)
            dst.copy_(src)
            upto -= 1

    def wait(self, token):
        if self.honest:
            self._run(len(self.queue))

    def finish(self):
        self._run(len(self.queue))


def _staged(prefix, copier):
    with tfshard.open(prefix) as ckpt:
        infos = tfshard.frameworks.select(ckpt, tt.FRAMEWORK)
        return tt._load_staged(ckpt, infos, copier, verify=True)


def test_staged_device_load_keeps_every_byte(tmp_path):
    gen = np.random.default_rng(3)
    arrays = {f"t{i}": gen.standard_normal(size).astype(np.float32)
              for i, size in enumerate([1000, 3, 0, 2500, 77, 4096])}
    arrays["bf"] = arrays["t0"].astype(tfshard.dtypes.by_name("bfloat16").numpy)
    prefix = tfshard.save(tmp_path / "ckpt", arrays, alignment=1)
    copier = LateCopier(chunk=1024, count=2)
    out = _staged(prefix, copier)
    assert copier.copies > len(copier.pinned) * 4  # the buffers went round many times
    for name, arr in arrays.items():
        assert _bytes(out[name]) == arr.tobytes(), name
    # The check can fail: a loop that refilled buffers without waiting corrupts the copy.
    broken = _staged(prefix, LateCopier(chunk=1024, count=2, honest=False))
    assert any(_bytes(broken[n]) != a.tobytes() for n, a in arrays.items())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(tfshard.UnsupportedError, match="CUDA"):
        tt.load_file(GOLDEN_DIR / "sharded" / "model.ckpt", device="cuda:0")


def test_without_torch_the_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    monkeypatch.delitem(sys.modules, "tfshard.torch")
    with pytest.raises(ImportError, match=r"pip install tfshard\[torch\]"):
        import tfshard.torch  # noqa: F401
