"""tfshard.jax.load into sharded jax.Array values, against real JAX shardings.

In-process tests use a 2x4 mesh of the 8 host devices that
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (set in conftest.py) makes.  The
multi-process test starts two JAX processes with ``jax.distributed.initialize`` on a
coordinator at 127.0.0.1 (4 CPU devices each, one 2x4 mesh over both) and checks that each
reads only its own shards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import tfshard  # noqa: E402
import tfshard._jax_sharding as jax_sharding  # noqa: E402
import tfshard.jax  # noqa: E402

TESTS = Path(__file__).resolve().parent
GOLDEN = TESTS / "data" / "golden"
SPECS = [P("a", "b"), P("b", "a"), P(None, "b"), P("a"), P(("a", "b")), P(None, ("b", "a")), P()]


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.skip(f"JAX started with {jax.device_count()} device(s) before conftest.py could "
                    f"set XLA_FLAGS=--xla_force_host_platform_device_count=8")
    return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("a", "b"))


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(5)
    tensors = {
        "w": rng.standard_normal((16, 8), dtype=np.float32),
        "emb": rng.standard_normal((8, 16), dtype=np.float32).astype("bfloat16"),
        "bias": rng.standard_normal(8, dtype=np.float32),
        "ids": np.arange(24, dtype=np.int32).reshape(8, 3),
    }
    prefix = tmp_path_factory.mktemp("jax") / "model"
    tfshard.save(prefix, tensors)
    return prefix, tensors


@pytest.fixture
def regions(monkeypatch):
    """Record every (tensor, region) the loader reads and the bytes it got."""
    seen = []
    original = jax_sharding._read_region

    def recording(ckpt, info, index, verify):
        value = original(ckpt, info, index, verify)
        seen.append((info.name, tuple(s.indices(d)[:2] for s, d in zip(index, info.shape)),
                     value.nbytes))
        return value

    monkeypatch.setattr(jax_sharding, "_read_region", recording)
    return seen


def _fits(spec, shape, mesh):
    for axes, dim in zip(spec, shape):
        names = axes if isinstance(axes, tuple) else (axes,) if axes else ()
        if dim % int(np.prod([mesh.shape[n] for n in names])):
            return False
    return len(spec) <= len(shape)


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_load_gives_exactly_the_sharding_and_values(spec, mesh, model, regions):
    prefix, tensors = model
    sharding = NamedSharding(mesh, spec)
    names = [n for n, t in tensors.items() if _fits(spec, t.shape, mesh)]
    out = tfshard.jax.load(prefix, {n: sharding for n in names})
    assert sorted(out) == sorted(names)
    for name in names:
        arr = out[name]
        assert arr.sharding == sharding and arr.dtype == tensors[name].dtype
        assert np.asarray(arr).tobytes() == tensors[name].tobytes()
        for shard in arr.addressable_shards:
            assert np.asarray(shard.data).tobytes() == tensors[name][shard.index].tobytes()
        # Each distinct device range is read once, and nothing else.
        want = {tuple(s.indices(d)[:2] for s, d in zip(idx, tensors[name].shape))
                for idx in sharding.devices_indices_map(tensors[name].shape).values()}
        got = [region for n, region, _ in regions if n == name]
        assert sorted(got) == sorted(want)


def test_callable_chooses_per_tensor_and_may_leave_out(mesh, model):
    prefix, tensors = model

    def choose(name, shape, dtype):
        assert shape == tensors[name].shape and dtype == tensors[name].dtype
        if name == "ids":
            return None
        return NamedSharding(mesh, P(None, "b") if len(shape) == 2 else P("b"))

    out = tfshard.jax.load(prefix, choose)
    assert sorted(out) == ["bias", "emb", "w"]
    assert out["w"].sharding.spec == P(None, "b") and out["bias"].sharding.spec == P("b")


def test_one_sharding_for_all(mesh, model):
    prefix, tensors = model
    out = tfshard.jax.load(prefix, NamedSharding(mesh, P("a")))
    assert sorted(out) == sorted(tensors)
    for name, value in tensors.items():
        assert np.asarray(out[name]).tobytes() == value.tobytes()


@pytest.mark.parametrize("path", [GOLDEN / "partitioned" / "model.ckpt",
                                  TESTS / "data" / "v1" / "partitioned"], ids=["v2", "v1"])
@pytest.mark.parametrize("spec", [P("a", None), P(None, "a"), P(None, "b"), P()], ids=str)
def test_tf1_partitioned_variables_read_by_region(spec, path, mesh, x64, regions):
    ref = tfshard.load(path)
    sharding = NamedSharding(mesh, spec)
    names = [n for n in ("dense/kernel", "cols") if _fits(spec, ref[n].shape, mesh)]
    assert names
    out = tfshard.jax.load(path, {n: sharding for n in names})
    for name in names:
        assert out[name].sharding == sharding
        assert np.array_equal(np.asarray(out[name]), ref[name])
    # Only the selected elements are copied: the bytes read add up to one copy of each
    # distinct range.
    for name in names:
        want = sum(ref[name][idx].nbytes for idx in
                   {tuple(s.indices(d) for s, d in zip(i, ref[name].shape)): i for i in
                    sharding.devices_indices_map(ref[name].shape).values()}.values())
        assert sum(b for n, _, b in regions if n == name) == want


def test_every_dtype_and_scalar(mesh, x64):
    path = GOLDEN / "dtypes" / "ckpt"
    ref = tfshard.load(path)
    out = tfshard.jax.load(path, NamedSharding(mesh, P()), skip_unsupported=True)
    assert sorted(out) == sorted(n for n in ref if "qint" not in n and "quint" not in n)
    for name, value in out.items():
        assert value.dtype == ref[name].dtype, name
        assert np.asarray(value).tobytes() == ref[name].tobytes(), name


def test_unsupported_types_are_refused_before_reading(mesh, x64):
    with pytest.raises(tfshard.UnsupportedError, match="t_qint8"):
        tfshard.jax.load(GOLDEN / "dtypes" / "ckpt", NamedSharding(mesh, P()))


def test_without_x64_64_bit_types_are_refused_not_truncated(mesh):
    path = GOLDEN / "partitioned" / "model.ckpt"
    with pytest.raises(tfshard.UnsupportedError, match="global_step.*|jax_enable_x64"):
        tfshard.jax.load(path, {"global_step": NamedSharding(mesh, P())})
    out = tfshard.jax.load(path, NamedSharding(mesh, P()), skip_unsupported=True)
    assert sorted(out) == ["dense/bias", "dense/kernel"]     # float64 cols and int64 left out


def test_rename_rules(mesh, model):
    prefix, tensors = model
    out = tfshard.jax.load(prefix, NamedSharding(mesh, P()), rename=["^(.*)$=params/\\1"])
    assert sorted(out) == sorted(f"params/{n}" for n in tensors)


def test_unknown_name_in_mapping_is_refused(mesh, model):
    with pytest.raises(tfshard.TensorNotFoundError, match="nope"):
        tfshard.jax.load(model[0], {"nope": NamedSharding(mesh, P())})


def test_sharding_that_does_not_divide_is_refused(mesh, model):
    with pytest.raises(tfshard.InvalidTensorError, match="'ids'.*evenly divide"):
        tfshard.jax.load(model[0], {"ids": NamedSharding(mesh, P(None, "b"))})   # 3 over 4
    with pytest.raises(tfshard.InvalidTensorError, match="'bias'"):
        tfshard.jax.load(model[0], {"bias": NamedSharding(mesh, P("a", "b"))})   # rank 1


def test_callable_returning_no_sharding_is_refused(model):
    with pytest.raises(tfshard.InvalidTensorError, match="expected a jax.sharding.Sharding"):
        tfshard.jax.load(model[0], lambda n, s, d: "replicated")


def test_strings_are_refused_or_skipped(mesh):
    path = GOLDEN / "strings" / "ckpt"
    with pytest.raises(tfshard.UnsupportedError, match="string"):
        tfshard.jax.load(path, NamedSharding(mesh, P()))
    assert tfshard.jax.load(path, NamedSharding(mesh, P()), skip_unsupported=True) == {}
    with pytest.raises(tfshard.UnsupportedError, match="scalar"):
        tfshard.jax.load(path, {"scalar": NamedSharding(mesh, P())}, skip_unsupported=False)


def test_object_graph_is_left_out(mesh, x64):
    path = GOLDEN / "keras_adam" / "ckpt-2"
    out = tfshard.jax.load(path, NamedSharding(mesh, P()))
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" not in out and out


def test_corrupt_data_is_reported(tmp_path, mesh):
    prefix = tmp_path / "c"
    tfshard.save(prefix, {"x": np.arange(16, dtype=np.float32)})
    data = Path(f"{prefix}.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(tfshard.ChecksumMismatchError):
        tfshard.jax.load(prefix, NamedSharding(mesh, P()))     # a whole read checks the CRC


# ---- two JAX processes ------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_read_only_their_own_shards(tmp_path, model):
    prefix, tensors = model
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
                   p for p in (str(TESTS.parent), os.environ.get("PYTHONPATH")) if p))
    procs = [subprocess.Popen([sys.executable, str(TESTS / "jax_worker.py"), str(i), str(port),
                               str(prefix), str(GOLDEN / "partitioned" / "model.ckpt"),
                               str(tmp_path / f"p{i}.json")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=180)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    results = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
    for r in results:
        assert r["process_count"] == 2 and r["local_devices"] == 4 and r["devices"] == 8
        assert all(v is True for v in r["checks"].values()), r["checks"]
        for case, s in r["bytes"].items():
            assert s["read"] == s["expected"], (r["process"], case, s)
    # Sharded across the processes: each reads half.
    total = tensors["w"].nbytes
    for r in results:
        assert r["bytes"]["w P('a', 'b')"]["read"] == total // 2
        assert r["bytes"]["w P(None, 'b')"]["read"] == total    # replicated across processes
