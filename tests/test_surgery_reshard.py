"""tfshard.conversion.reshard and ``tfshard reshard``: data shards, merged and cut
partitions, each result restored by TensorFlow (TF1 Saver, tf.train.Checkpoint)."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import tfshard
from tfshard import cli, conversion
from tfshard.surgery.partitions import split_extents

GOLDEN = Path(__file__).parent / "data" / "golden"
PARTITIONED = GOLDEN / "partitioned" / "model.ckpt"  # TF1 Saver; see make_goldens.py


def _copy_golden(tmp_path, name):
    shutil.copytree(GOLDEN / name, tmp_path / name)
    return tmp_path / name


def _tf1_restore(tf, prefix, partitioners):
    """Restore the partitioned golden's four variables with a TF1 Saver into variables
    cut by ``partitioners`` ({name: partitioner or None}); returns their values."""
    shapes = {"dense/kernel": ([10, 4], tf.float32), "cols": ([4, 10], tf.float64),
              "dense/bias": ([4], tf.float32), "global_step": ([], tf.int64)}
    g = tf.Graph()
    with g.as_default():
        made = {name: tf.compat.v1.get_variable(name, shape, dtype,
                                                partitioner=partitioners.get(name))
                for name, (shape, dtype) in shapes.items()}
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as session:
            saver.restore(session, str(prefix))
            return {name: session.run(v.as_tensor() if partitioners.get(name) else v)
                    for name, v in made.items()}


def _tf_values(tf, prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}


def test_reshard_to_more_shards_keeps_tensors_and_slices(tmp_path):
    tf = pytest.importorskip("tensorflow")
    report = conversion.reshard(PARTITIONED, tmp_path / "out" / "model.ckpt", num_shards=3)
    assert report.num_shards == 3 and report.tensors == 4
    assert report.partitioned == {"cols": 2, "dense/kernel": 3}
    with tfshard.open(PARTITIONED) as src, tfshard.open(tmp_path / "out" / "model.ckpt") as out:
        assert out.num_shards == 3
        for info in src.infos():
            assert out.info(info.name).slices == info.slices
            assert out.info(info.name).dtype == info.dtype
    want, got = _tf_values(tf, PARTITIONED), _tf_values(tf, tmp_path / "out" / "model.ckpt")
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    restored = _tf1_restore(tf, tmp_path / "out" / "model.ckpt", {
        "dense/kernel": tf.compat.v1.fixed_size_partitioner(3),
        "cols": tf.compat.v1.fixed_size_partitioner(2, axis=1)})
    for name in want:
        np.testing.assert_array_equal(restored[name], want[name])
    # By size: every data file but ones holding a single larger tensor stays below it.
    sized = conversion.reshard(PARTITIONED, tmp_path / "sized" / "model.ckpt",
                               max_shard_size=200)
    assert sized.num_shards > 1
    for path in sized.outputs[:-1]:
        assert os.path.getsize(path) <= 200 + 64 * 4  # at most alignment padding beyond
    got = _tf_values(tf, tmp_path / "sized" / "model.ckpt")
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_merge_partitions_writes_tf1_partitioned_variables_whole(tmp_path):
    tf = pytest.importorskip("tensorflow")
    report = conversion.reshard(PARTITIONED, tmp_path / "whole", merge_partitions=True)
    assert report.merged == {"cols": ["2 slices"], "dense/kernel": ["3 slices"]}
    with tfshard.open(tmp_path / "whole") as out:
        assert all(not info.slices for info in out.infos())
    want = _tf_values(tf, PARTITIONED)
    restored = _tf1_restore(tf, tmp_path / "whole", {})  # plain variables
    for name in want:
        np.testing.assert_array_equal(restored[name], want[name])


def test_partition_cuts_like_tfs_fixed_size_partitioner(tmp_path):
    tf = pytest.importorskip("tensorflow")
    conversion.reshard(PARTITIONED, tmp_path / "whole", merge_partitions=True)
    report = conversion.reshard(tmp_path / "whole", tmp_path / "cut",
                                partition=["dense/kernel=0:3", "cols=1:2", "dense/bias=0:4"])
    assert report.partitioned == {"cols": 2, "dense/bias": 4, "dense/kernel": 3}
    with tfshard.open(PARTITIONED) as tf_made, tfshard.open(tmp_path / "cut") as cut:
        # The very slices TF's Saver wrote for fixed_size_partitioner(3) and (2, axis=1).
        assert cut.info("dense/kernel").slices == tf_made.info("dense/kernel").slices
        assert cut.info("cols").slices == tf_made.info("cols").slices
        assert cut.info("dense/bias").slices == (((0, 1),), ((1, 1),), ((2, 1),), ((3, 1),))
    want = _tf_values(tf, PARTITIONED)
    for partitioners in ({"dense/kernel": tf.compat.v1.fixed_size_partitioner(3),
                          "cols": tf.compat.v1.fixed_size_partitioner(2, axis=1),
                          "dense/bias": tf.compat.v1.fixed_size_partitioner(4)},
                         {"dense/kernel": tf.compat.v1.fixed_size_partitioner(2)}, {}):
        restored = _tf1_restore(tf, tmp_path / "cut", partitioners)
        for name in want:
            np.testing.assert_array_equal(restored[name], want[name])
    assert split_extents((10, 4), 0, 3) == [[(0, 4), (0, 4)], [(4, 3), (0, 4)],
                                            [(7, 3), (0, 4)]]


def test_sharded_variable_merges_into_a_plain_variable(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from tensorflow.python.distribute.sharded_variable import ShardedVariable

    values = np.arange(30, dtype=np.float32).reshape(10, 3)

    class Model(tf.Module):
        pass

    model = Model()
    model.emb = ShardedVariable([tf.Variable(values[a:b], name=f"emb/part_{i}")
                                 for i, (a, b) in enumerate([(0, 4), (4, 7), (7, 10)])],
                                name="emb")
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "sv" / "ckpt"))
    key = "model/emb/.ATTRIBUTES/VARIABLE_VALUE"
    with tfshard.open(path) as ckpt:
        assert len(ckpt.info(key).slices) == 3  # TF 2.21 saves one key, in slices
    report = conversion.reshard(path, tmp_path / "whole" / "ckpt", merge_partitions=True)
    assert report.merged == {key: ["3 slices"]}
    fresh = Model()
    fresh.emb = tf.Variable(tf.zeros([10, 3]))
    tf.train.Checkpoint(model=fresh).restore(str(tmp_path / "whole" / "ckpt")).assert_consumed()
    np.testing.assert_array_equal(fresh.emb.numpy(), values)


def _part_k_checkpoint(tf, prefix):
    """A TF2 checkpoint whose ``emb`` object tracks its three shards as children part_0,
    part_1, part_2, with tf.compat.v1 Adam slots for each shard."""
    rng = np.random.default_rng(9)
    values = rng.standard_normal((10, 3)).astype(np.float32)

    class Model(tf.Module):
        pass

    model, shards = Model(), tf.Module()
    parts = [tf.Variable(values[a:b], name=f"emb/part_{i}")
             for i, (a, b) in enumerate([(0, 4), (4, 7), (7, 10)])]
    for i, part in enumerate(parts):
        setattr(shards, f"part_{i}", part)
    model.emb = shards
    model.w = tf.Variable([1.0, 2.0])
    opt = tf.compat.v1.train.AdamOptimizer(0.1)
    grads = [tf.constant(rng.standard_normal(p.shape).astype(np.float32)) for p in parts]
    opt.apply_gradients(list(zip(grads, parts)) + [(tf.ones([2]), model.w)])
    path = tf.train.Checkpoint(model=model, optimizer=opt).save(str(prefix))
    slots = {s: np.concatenate([opt.get_slot(p, s).numpy() for p in parts]) for s in "mv"}
    return Model, path, np.concatenate([p.numpy() for p in parts]), slots


def test_part_k_keys_merge_and_tf_restores_whole_variables_and_slots(tmp_path):
    tf = pytest.importorskip("tensorflow")
    Model, path, emb, slots = _part_k_checkpoint(tf, tmp_path / "pk" / "ckpt")
    with tfshard.open(path) as ckpt:
        assert "model/emb/part_2/.ATTRIBUTES/VARIABLE_VALUE" in ckpt
    report = conversion.reshard(path, tmp_path / "merged" / "ckpt", merge_partitions=True)
    base = "model/emb/"
    assert sorted(report.merged) == [
        base + ".ATTRIBUTES/VARIABLE_VALUE",
        base + ".OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE",
        base + ".OPTIMIZER_SLOT/optimizer/v/.ATTRIBUTES/VARIABLE_VALUE"]
    with tfshard.open(tmp_path / "merged" / "ckpt") as out:
        assert not any("part_" in name for name in out)
        np.testing.assert_array_equal(out[base + ".ATTRIBUTES/VARIABLE_VALUE"], emb)

    fresh = Model()
    fresh.emb = tf.Variable(tf.zeros([10, 3]))
    fresh.w = tf.Variable([0.0, 0.0])
    opt = tf.compat.v1.train.AdamOptimizer(0.1)
    status = tf.train.Checkpoint(model=fresh, optimizer=opt).restore(
        str(tmp_path / "merged" / "ckpt"))
    np.testing.assert_array_equal(fresh.emb.numpy(), emb)
    opt._create_slots([fresh.emb, fresh.w])  # slots take their checkpointed values on creation
    for name in "mv":
        np.testing.assert_array_equal(opt.get_slot(fresh.emb, name).numpy(), slots[name])
    status.assert_consumed()


def test_reshard_refusals(tmp_path):
    src = _copy_golden(tmp_path, "partitioned") / "model.ckpt"
    with pytest.raises(tfshard.InvalidTensorError, match="not both"):
        conversion.reshard(src, tmp_path / "o", num_shards=2, max_shard_size=100)
    with pytest.raises(tfshard.InvalidTensorError, match="is the input"):
        conversion.reshard(src, src, num_shards=2, overwrite=True)
    with pytest.raises(tfshard.InvalidTensorError, match="matches the partition pattern"):
        conversion.reshard(src, tmp_path / "o", partition=["nope*=0:2"])
    with pytest.raises(tfshard.InvalidTensorError, match="cannot be cut into 5 slices"):
        conversion.reshard(src, tmp_path / "o", partition=["dense/bias=0:5"])
    with pytest.raises(tfshard.InvalidTensorError, match="along axis 1"):
        conversion.reshard(src, tmp_path / "o", partition=["dense/bias=1:2"])
    for bad in ("emb", "emb=0", "emb=a:2", "emb=0:0", "=0:2"):
        with pytest.raises(tfshard.InvalidTensorError):
            conversion.reshard(src, tmp_path / "o", partition=[bad])
    assert not os.path.exists(tmp_path / "o.index")
    conversion.reshard(src, tmp_path / "o")
    with pytest.raises(tfshard.OutputExistsError):
        conversion.reshard(src, tmp_path / "o")
    conversion.reshard(src, tmp_path / "o", num_shards=2, overwrite=True)
    # The old single data file is gone with the new sharding.
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("o.")) == [
        "o.data-00000-of-00002", "o.data-00001-of-00002", "o.index"]


def test_reshard_cli(tmp_path, capsys):
    assert cli.main(["reshard", str(PARTITIONED), str(tmp_path / "a"), "--num-shards", "2",
                     "--merge-partitions", "--partition", "dense/bias=0:2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["num_shards"] == 2 and doc["partitioned"] == {"dense/bias": 2}
    assert sorted(doc["merged"]) == ["cols", "dense/kernel"]
    assert cli.main(["reshard", str(PARTITIONED), str(tmp_path / "b"),
                     "--max-shard-size", "1KiB"]) == 0
    out = capsys.readouterr().out
    assert "partitioned dense/kernel into 3 slices" in out and "resharded 4 tensors" in out
    assert cli.main(["reshard", str(PARTITIONED), str(tmp_path / "c"), "--num-shards", "2",
                     "--max-shard-size", "1KiB"]) == 2
    assert cli.main(["reshard", str(PARTITIONED), str(tmp_path / "c"),
                     "--partition", "x"]) == 2
    assert cli.main(["reshard", str(PARTITIONED), str(tmp_path / "a")]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_a_corrupt_input_leaves_no_output(tmp_path):
    src = tfshard.save(tmp_path / "in" / "ckpt", {"a": np.arange(64, dtype=np.float32),
                                                  "z": np.arange(64, dtype=np.float32)})
    data = tmp_path / "in" / "ckpt.data-00000-of-00001"
    with tfshard.open(src) as ckpt:
        offset = ckpt.info("z").offset
    raw = bytearray(data.read_bytes())
    raw[offset + 3] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(tfshard.ChecksumMismatchError):
        conversion.reshard(src, tmp_path / "out" / "ckpt", num_shards=2)
    with pytest.raises(tfshard.ChecksumMismatchError):
        conversion.average(tmp_path / "out" / "ckpt", [src, src])
    assert not (tmp_path / "out").exists()
