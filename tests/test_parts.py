"""merge_parts: several independently written parts become one checkpoint.

TensorFlow's MergeV2Checkpoints is the reference: for the same parts the
merged index must be byte-identical, and TF must read every merged tensor.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import tfshard

SLICED = np.arange(8, dtype=np.float32).reshape(4, 2)


def _write_parts(directory, packed=True):
    """Two parts as a two-device TF save lays them out: a plain tensor each and
    one slice each of a partitioned tensor."""
    os.makedirs(directory, exist_ok=True)
    p0 = os.path.join(directory, "part-00000-of-00002")
    p1 = os.path.join(directory, "part-00001-of-00002")
    align = 1 if packed else 64
    with tfshard.CheckpointWriter(p0, alignment=align) as w:
        w.add("x", np.float32(1))
        w.add_slice("sl", [4, 2], "0,2:-", SLICED[:2])
    with tfshard.CheckpointWriter(p1, alignment=align) as w:
        w.add("y", np.ones(3, np.int64))
        w.add_slice("sl", [4, 2], "2,2:-", SLICED[2:])
    return [p0, p1]


def test_merge_assembles_and_cleans_up(tmp_path):
    parts = _write_parts(tmp_path / "ckpt_temp")
    out = tfshard.merge_parts(parts, tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ckpt.data-00000-of-00002",
                                            "ckpt.data-00001-of-00002", "ckpt.index"]
    with tfshard.open(out) as ckpt:
        assert ckpt.num_shards == 2
        assert ckpt.info("y").shard == 1
        np.testing.assert_array_equal(ckpt["sl"], SLICED)
        assert ckpt["x"] == 1 and list(ckpt["y"]) == [1, 1, 1]
        assert ckpt.verify_all() == []


def test_empty_part_contributes_no_shard(tmp_path):
    d = tmp_path / "parts"
    d.mkdir()
    tfshard.save(d / "a", {"a": np.ones(2)})
    tfshard.save(d / "b", {})
    tfshard.save(d / "c", {"c": np.zeros(2)}, num_shards=3)  # two of its shards unused
    tfshard.merge_parts([d / "a", d / "b", d / "c"], tmp_path / "m")
    with tfshard.open(tmp_path / "m") as ckpt:
        assert ckpt.num_shards == 2
        assert sorted(ckpt) == ["a", "c"]
        assert ckpt.verify_all() == []
    assert not d.exists()  # every part file moved or removed, scratch directory gone


def test_all_parts_empty(tmp_path):
    tfshard.save(tmp_path / "a", {})
    tfshard.merge_parts([tmp_path / "a"], tmp_path / "m")
    with tfshard.open(tmp_path / "m") as ckpt:
        assert len(ckpt) == 0 and ckpt.num_shards == 1


def test_conflicts_change_nothing(tmp_path):
    tfshard.save(tmp_path / "a", {"w": np.ones(2)})
    tfshard.save(tmp_path / "b", {"w": np.zeros(2)})
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(tfshard.InvalidTensorError, match="'w' is in part"):
        tfshard.merge_parts([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert sorted(os.listdir(tmp_path)) == before


def test_partitioned_disagreement_and_plain_clash(tmp_path):
    with tfshard.CheckpointWriter(tmp_path / "a") as w:
        w.add_slice("p", [4, 2], "0,2:-", np.ones((2, 2)))
    with tfshard.CheckpointWriter(tmp_path / "b") as w:
        w.add_slice("p", [6, 2], "2,2:-", np.ones((2, 2)))
    tfshard.save(tmp_path / "c", {"p": np.ones((4, 2))})
    with pytest.raises(tfshard.InvalidTensorError, match="another dtype or shape"):
        tfshard.merge_parts([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    with pytest.raises(tfshard.InvalidTensorError, match="plain tensor|twice"):
        tfshard.merge_parts([tmp_path / "a", tmp_path / "c"], tmp_path / "m")


def test_missing_part_or_data(tmp_path):
    tfshard.save(tmp_path / "a", {"a": np.ones(2)})
    with pytest.raises(tfshard.CheckpointNotFoundError):
        tfshard.merge_parts([tmp_path / "a", tmp_path / "nope"], tmp_path / "m")
    os.unlink(tmp_path / "a.data-00000-of-00001")
    with pytest.raises(tfshard.CheckpointNotFoundError, match="missing"):
        tfshard.merge_parts([tmp_path / "a"], tmp_path / "m")
    assert not (tmp_path / "m.index").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(tfshard.InvalidTensorError):
        tfshard.merge_parts([], tmp_path / "m")
    tfshard.save(tmp_path / "a", {"a": np.ones(2)})
    with pytest.raises(tfshard.InvalidTensorError):
        tfshard.merge_parts([tmp_path / "a"], tmp_path / "a")


_PART_WRITER = r"""
import sys, numpy as np, tfshard
rank, prefix = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(rank)
tfshard.save(prefix, {f"rank{rank}/w{i}": rng.standard_normal((64, 8)).astype(np.float32)
                      for i in range(20)}, num_shards=2)
"""


def test_parts_from_separate_processes(tmp_path):
    parts = [str(tmp_path / "scratch" / f"part-{r}") for r in range(3)]
    procs = [subprocess.Popen([sys.executable, "-c", _PART_WRITER, str(r), p])
             for r, p in enumerate(parts)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    tfshard.merge_parts(parts, tmp_path / "model")
    with tfshard.open(tmp_path / "model") as ckpt:
        assert len(ckpt) == 60 and ckpt.num_shards == 6
        assert ckpt.verify_all() == []
        for r in range(3):
            rng = np.random.default_rng(r)
            for i in range(20):
                np.testing.assert_array_equal(ckpt[f"rank{r}/w{i}"],
                                              rng.standard_normal((64, 8)).astype(np.float32))


def test_merge_matches_tensorflow(tmp_path):
    tf = pytest.importorskip("tensorflow")
    # TF writes and merges its parts...
    tf_dir = tmp_path / "tf_temp"
    tf_dir.mkdir()
    t0, t1 = str(tf_dir / "part-00000-of-00002"), str(tf_dir / "part-00001-of-00002")
    tf.raw_ops.SaveV2(prefix=t0, tensor_names=["x", "sl"], shape_and_slices=["", "4 2 0,2:-"],
                      tensors=[tf.constant(np.float32(1)), tf.constant(SLICED[:2])])
    tf.raw_ops.SaveV2(prefix=t1, tensor_names=["y", "sl"], shape_and_slices=["", "4 2 2,2:-"],
                      tensors=[tf.constant(np.ones(3, np.int64)), tf.constant(SLICED[2:])])
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=[t0, t1],
                                  destination_prefix=str(tmp_path / "tf"))
    # ...and tfshard writes and merges the same parts.
    tfshard.merge_parts(_write_parts(tmp_path / "ts_temp"), tmp_path / "ts")
    for suffix in (".index", ".data-00000-of-00002", ".data-00001-of-00002"):
        assert (tmp_path / f"tf{suffix}").read_bytes() == (tmp_path / f"ts{suffix}").read_bytes()

    # TF reads a merge of tfshard's aligned parts, empty part included.
    parts = _write_parts(tmp_path / "al_temp", packed=False)
    tfshard.save(tmp_path / "al_temp" / "empty", {})
    tfshard.merge_parts(parts[:1] + [str(tmp_path / "al_temp" / "empty")] + parts[1:],
                        tmp_path / "al")
    reader = tf.train.load_checkpoint(str(tmp_path / "al"))
    np.testing.assert_array_equal(reader.get_tensor("sl"), SLICED)
    assert reader.get_tensor("x") == 1
    assert list(reader.get_tensor("y")) == [1, 1, 1]
