"""tfshard.torch.DCPReader / DCPWriter against real torch.distributed.checkpoint.

The distributed tests launch ``torchrun --standalone --nproc_per_node=2`` and ``=4`` (gloo, CPU)
on tests/dcp_worker.py, which loads TensorFlow-written golden checkpoints into plain tensors and
DTensors and saves a state dict of DTensors; the checkpoint it saves is read back here with
TensorFlow's own reader.  The single-process tests call dcp.load / dcp.save without a process
group (DCP's no-dist mode).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")

import tfshard  # noqa: E402
from tfshard.formats._torch import tensor_to_numpy  # noqa: E402
from tfshard.torch import DCPReader, DCPWriter  # noqa: E402

TESTS = Path(__file__).resolve().parent
GOLDEN = TESTS / "data" / "golden"
sys.path.insert(0, str(TESTS))
from dcp_cases import SAVE_CASES, full_tensor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

WORKER_CHECKS = ("load_partitioned_rows", "load_partitioned_cols", "load_dtypes", "save",
                 "load_back", "failing_rank", "non_tensor_refused")
LAUNCH_TIMEOUT = 240  # seconds for one torchrun launch (about 10 s with 2 ranks, 25 s with 4)


# ---- torchrun launches --------------------------------------------------------------------

_launches: dict = {}


def _launch(nproc: int, tmp_path_factory) -> tuple[Path, list]:
    """Run the worker once per rank count (shared by the tests below); the ranks' JSON."""
    if nproc not in _launches:
        out = tmp_path_factory.mktemp(f"dcp{nproc}")
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
            p for p in (str(TESTS.parent), os.environ.get("PYTHONPATH")) if p))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", str(TESTS / "dcp_worker.py"), str(out), str(GOLDEN)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                              env=env, cwd=out)
        ranks = []
        for r in range(nproc):
            f = out / f"rank{r}.json"
            ranks.append(json.loads(f.read_text()) if f.exists() else None)
        _launches[nproc] = (out, ranks, proc)
    out, ranks, proc = _launches[nproc]
    assert proc.returncode == 0 and all(ranks), (
        f"torchrun exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return out, ranks


@pytest.mark.parametrize("check", WORKER_CHECKS)
@pytest.mark.parametrize("nproc", [2, 4])
def test_torchrun_rank_checks(nproc, check, tmp_path_factory):
    _, ranks = _launch(nproc, tmp_path_factory)
    for r in ranks:
        assert r["world"] == nproc
        assert r["checks"].get(check) is True, f"rank {r['rank']}: {r['checks'].get(check)}"


def test_torchrun_2d_mesh_load(tmp_path_factory):
    _, ranks = _launch(4, tmp_path_factory)
    for r in ranks:
        assert r["checks"].get("load_2d_mesh") is True, r["checks"].get("load_2d_mesh")


@pytest.mark.parametrize("nproc", [2, 4])
def test_each_rank_reads_only_its_shards(nproc, tmp_path_factory):
    _, ranks = _launch(nproc, tmp_path_factory)
    full = {"load_partitioned_rows": 160 + 320 + 16 + 8}   # the four tensors, whole
    for r in ranks:
        for case, s in r["stats"].items():
            if "bytes_read" in s:
                assert s["bytes_read"] == s["expected"], (r["rank"], case, s)
        rows = r["stats"]["load_partitioned_rows"]["bytes_read"]
        assert rows < full["load_partitioned_rows"], rows   # the Shard(0) tensors were split
    # Shard(0) parts add up to each sharded tensor once; the plain ones count once per rank.
    total = sum(r["stats"]["load_partitioned_rows"]["bytes_read"] for r in ranks)
    assert total == 160 + 320 + nproc * (16 + 8)


def _tf():
    tf = pytest.importorskip("tensorflow")
    return tf


@pytest.mark.parametrize("nproc", [2, 4])
def test_dcp_save_from_ranks_reads_in_tensorflow(nproc, tmp_path_factory):
    out, _ = _launch(nproc, tmp_path_factory)
    prefix = str(out / "saved" / "ckpt-1")
    tf = _tf()
    reader = tf.train.load_checkpoint(prefix)
    expected = {name: tensor_to_numpy(full_tensor(name, shape, dtype))
                for name, (shape, dtype, placements) in SAVE_CASES.items()
                if placements != "2d" or nproc == 4}
    assert sorted(reader.get_variable_to_shape_map()) == sorted(expected)
    for name, want in expected.items():
        got = np.asarray(reader.get_tensor(name))
        assert got.shape == want.shape, name
        assert got.tobytes() == np.ascontiguousarray(want).tobytes(), name


@pytest.mark.parametrize("nproc", [2, 4])
def test_dcp_save_stores_shards_as_tf_slices(nproc, tmp_path_factory):
    out, _ = _launch(nproc, tmp_path_factory)
    with tfshard.open(out / "saved" / "ckpt-1") as ckpt:
        # DTensor shards like torch.chunk: 9 columns over 4 ranks make 3 + 3 + 3 + 0.
        assert len(ckpt.info("rows").slices) == len(torch.arange(10).chunk(nproc))
        assert len(ckpt.info("cols").slices) == len(torch.arange(9).chunk(nproc))
        assert ckpt.info("cols").slices[0][0] == (0, 4)            # cut along dim 1
        assert ckpt.info("plain").slices == ()                     # written once, whole
        assert ckpt.info("repl").slices == ()                      # replicas deduplicated
        assert ckpt.info("one_row").slices == ()                   # one rank held it all
        if nproc == 4:
            assert len(ckpt.info("tiles").slices) == 4
        for name, (shape, dtype, placements) in SAVE_CASES.items():
            if placements == "2d" and nproc != 4:
                continue
            want = tensor_to_numpy(full_tensor(name, shape, dtype))
            assert ckpt[name].tobytes() == np.ascontiguousarray(want).tobytes(), name
    assert not [p for p in (out / "saved").iterdir() if ".tempstate" in p.name]


# ---- single process (DCP without a process group) -----------------------------------------

def test_metadata_chunks_are_the_stored_slices():
    md = DCPReader(GOLDEN / "partitioned" / "model.ckpt").read_metadata()
    chunks = {k: [(tuple(c.offsets), tuple(c.sizes)) for c in v.chunks]
              for k, v in md.state_dict_metadata.items()}
    assert chunks == {
        "dense/kernel": [((0, 0), (4, 4)), ((4, 0), (3, 4)), ((7, 0), (3, 4))],
        "cols": [((0, 0), (4, 5)), ((0, 5), (4, 5))],
        "dense/bias": [((0,), (4,))],
        "global_step": [((), ())],
    }
    assert md.state_dict_metadata["cols"].properties.dtype == torch.float64
    assert md.state_dict_metadata["global_step"].properties.dtype == torch.int64


def test_metadata_leaves_out_what_torch_cannot_hold():
    reader = DCPReader(GOLDEN / "strings" / "ckpt")
    assert reader.read_metadata().state_dict_metadata == {}
    assert {name for name, _ in reader.skipped} == set(tfshard.open(GOLDEN / "strings" / "ckpt"))
    reader = DCPReader(GOLDEN / "dtypes" / "ckpt")
    keys = reader.read_metadata().state_dict_metadata
    assert "t_bfloat16" in keys and "t_uint64" in keys and "t_float8_e5m2" in keys
    skipped = dict(reader.skipped)
    for name in ("t_int4", "t_qint8", "t_float8_e4m3b11fnuz"):
        assert name not in keys and skipped[name].startswith(name[2:] + ": "), skipped


def _empty_state(reader):
    return {k: torch.full(tuple(v.size), 7).to(v.properties.dtype)
            for k, v in reader.read_metadata().state_dict_metadata.items()}


@pytest.mark.parametrize("case", ["partitioned/model.ckpt", "sharded/model.ckpt", "dtypes/ckpt",
                                  "keras_adam/ckpt-2"])
def test_dcp_load_single_process_equals_checkpoint(case):
    reader = DCPReader(GOLDEN / case)
    sd = _empty_state(reader)
    dcp.load(sd, storage_reader=reader)
    ref = tfshard.load(GOLDEN / case)
    for key, value in sd.items():
        got = tensor_to_numpy(value)
        assert got.tobytes() == np.ascontiguousarray(ref[key]).tobytes(), key
    assert reader.bytes_read == sum(ref[k].nbytes for k in sd)


def test_dcp_load_from_a_legacy_v1_checkpoint():
    path = TESTS / "data" / "v1" / "partitioned"
    reader = DCPReader(path)
    md = reader.read_metadata()
    assert len(md.state_dict_metadata["dense/kernel"].chunks) == 3    # V1 slices, as stored
    sd = _empty_state(reader)
    dcp.load(sd, storage_reader=reader)
    ref = tfshard.load(path)
    for key, value in sd.items():
        assert np.array_equal(value.numpy(), ref[key]), key


def test_dcp_load_into_nested_state_dict_with_rename_rules():
    reader = DCPReader(GOLDEN / "partitioned" / "model.ckpt",
                       rename=[r"^dense/(.*)$=model.dense.\1", r"^global_step$=step"])
    sd = {"model": {"dense": {"kernel": torch.zeros(10, 4), "bias": torch.zeros(4)}},
          "step": torch.zeros((), dtype=torch.int64)}
    dcp.load(sd, storage_reader=reader, planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
    ref = tfshard.load(GOLDEN / "partitioned" / "model.ckpt")
    assert np.array_equal(sd["model"]["dense"]["kernel"].numpy(), ref["dense/kernel"])
    assert np.array_equal(sd["model"]["dense"]["bias"].numpy(), ref["dense/bias"])
    assert int(sd["step"]) == int(ref["global_step"])


def test_rename_callable_may_leave_tensors_out():
    reader = DCPReader(GOLDEN / "partitioned" / "model.ckpt",
                       rename=lambda n: None if n == "cols" else n.replace("/", "."))
    assert sorted(reader.read_metadata().state_dict_metadata) == [
        "dense.bias", "dense.kernel", "global_step"]


def test_rename_that_merges_two_tensors_is_refused():
    with pytest.raises(tfshard.InvalidTensorError, match="dense/bias"):
        DCPReader(GOLDEN / "partitioned" / "model.ckpt", rename=["^dense/.*$=x"])
    with pytest.raises(tfshard.InvalidTensorError, match="returned"):
        DCPReader(GOLDEN / "partitioned" / "model.ckpt", rename=lambda n: 3)


def test_load_from_keys_builds_the_whole_state_dict():
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd = _load_state_dict_from_keys(storage_reader=DCPReader(GOLDEN / "sharded" / "model.ckpt"))
    ref = tfshard.load(GOLDEN / "sharded" / "model.ckpt")
    assert sorted(sd) == sorted(ref)
    for k in ref:
        assert np.array_equal(sd[k].numpy(), ref[k])


def test_target_of_another_dtype_gets_converted_values():
    sd = {"cols": torch.zeros(4, 10, dtype=torch.float32)}    # stored as float64
    dcp.load(sd, storage_reader=DCPReader(GOLDEN / "partitioned" / "model.ckpt"),
             planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
    want = tfshard.load(GOLDEN / "partitioned" / "model.ckpt")["cols"].astype(np.float32)
    assert np.array_equal(sd["cols"].numpy(), want)


def test_missing_checkpoint_fails_when_the_reader_is_made(tmp_path):
    with pytest.raises(tfshard.CheckpointNotFoundError, match="nothing"):
        DCPReader(tmp_path / "nothing")
    assert not DCPReader.validate_checkpoint_id(tmp_path / "nothing")
    assert DCPReader.validate_checkpoint_id(GOLDEN / "partitioned" / "model.ckpt")


def test_partitioned_tensor_with_a_gap_is_refused(tmp_path):
    with tfshard.CheckpointWriter(tmp_path / "gap") as w:
        w.add_slice("t", [6, 2], "0,2:-", np.ones((2, 2), np.float32))
        w.add_slice("t", [6, 2], "4,2:-", np.ones((2, 2), np.float32))   # rows 2..3 missing
    with pytest.raises(tfshard.CorruptCheckpointError, match="do not cover"):
        DCPReader(tmp_path / "gap")


def test_checkpoint_id_given_to_dcp_load_replaces_the_path():
    reader = DCPReader(GOLDEN / "partitioned" / "model.ckpt")
    sd = {"a": torch.zeros(2)}
    dcp.load(sd, checkpoint_id=str(GOLDEN / "sharded" / "model.ckpt"), storage_reader=reader,
             planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
    assert np.array_equal(sd["a"].numpy(), tfshard.load_variable(GOLDEN / "sharded" / "model.ckpt",
                                                                 "a"))


def test_single_process_save_reads_in_tensorflow(tmp_path):
    sd = {"w": torch.randn(3, 5), "b": torch.randn(5).to(torch.bfloat16),
          "n": torch.tensor(12, dtype=torch.int64), "mask": torch.tensor([True, False])}
    prefix = tmp_path / "out" / "ckpt"
    dcp.save(sd, storage_writer=DCPWriter(prefix))
    assert sorted(os.listdir(tmp_path / "out")) == ["ckpt.data-00000-of-00001", "ckpt.index"]
    tf = _tf()
    reader = tf.train.load_checkpoint(str(prefix))
    for name, value in sd.items():
        want = tensor_to_numpy(value)
        got = np.asarray(reader.get_tensor(name))
        assert got.shape == want.shape and got.tobytes() == want.tobytes(), name


def test_save_replaces_an_existing_checkpoint(tmp_path):
    prefix = tmp_path / "ckpt"
    tfshard.save(prefix, {"old": np.zeros(3)}, num_shards=3)
    dcp.save({"new": torch.ones(2)}, storage_writer=DCPWriter(prefix))
    assert list(tfshard.open(prefix)) == ["new"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt.data-00000-of-00001", "ckpt.index"]


def _raised_on_rank0(call):
    """The exception a storage method raised, as DCP wraps it (CheckpointException, a
    BaseException, even without a process group)."""
    from torch.distributed.checkpoint.api import CheckpointException

    with pytest.raises(CheckpointException) as info:
        call()
    return info.value.failures[0][0]


def test_save_of_non_tensors_is_refused_or_skipped(tmp_path):
    exc = _raised_on_rank0(lambda: dcp.save({"w": torch.ones(2), "lr": 0.1},
                                            storage_writer=DCPWriter(tmp_path / "a")))
    assert isinstance(exc, tfshard.UnsupportedError) and "'lr'" in str(exc)
    assert not os.listdir(tmp_path)
    dcp.save({"w": torch.ones(2), "lr": 0.1},
             storage_writer=DCPWriter(tmp_path / "b", non_tensors="skip"))
    assert list(tfshard.open(tmp_path / "b")) == ["w"]


def test_save_of_a_dtype_tensorflow_lacks_is_refused(tmp_path):
    exc = _raised_on_rank0(lambda: dcp.save({"x": torch.zeros(2, dtype=torch.float8_e8m0fnu)},
                                            storage_writer=DCPWriter(tmp_path / "c")))
    assert isinstance(exc, tfshard.UnsupportedError) and "float8_e8m0fnu" in str(exc)
    assert not os.listdir(tmp_path)


def test_writer_refuses_a_bad_prefix(tmp_path):
    with pytest.raises(tfshard.InvalidTensorError):
        DCPWriter(str(tmp_path) + os.sep)
    with pytest.raises(tfshard.InvalidTensorError):
        DCPWriter(tmp_path / "x", non_tensors="pickle")
