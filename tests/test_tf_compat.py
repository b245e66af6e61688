"""Live cross-checks against TensorFlow (run in CI, where TensorFlow is installed).

TensorFlow writes checkpoints here; tfshard must list and read exactly what
``tf.train.load_checkpoint`` returns.  Files tfshard's tests hand-build
(big-endian, Snappy blocks, unusual slices) are also read by TensorFlow to
prove they are valid checkpoints.
"""

import numpy as np
import pytest

import bundle_builder as bb
import tfshard
from helpers import random_savev2_checkpoint, tensor_sha256

tf = pytest.importorskip("tensorflow")


def assert_matches_tensorflow(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    with tfshard.open(prefix) as ckpt:
        assert sorted(ckpt) == sorted(shapes)
        assert tfshard.list_variables(prefix) == [(n, list(s)) for n, s in
                                                  tf.train.list_variables(str(prefix))]
        for name in shapes:
            info = ckpt.info(name)
            assert info.dtype == dtypes[name].name, name
            assert list(info.shape) == list(shapes[name]), name
            if info.dtype == "variant":
                continue
            assert tensor_sha256(ckpt[name]) == tensor_sha256(reader.get_tensor(name)), name


@pytest.mark.parametrize("seed", range(6))
def test_random_savev2_checkpoints(tmp_path, seed):
    prefix = str(tmp_path / "ckpt")
    random_savev2_checkpoint(tf, np.random.default_rng(seed), prefix)
    assert_matches_tensorflow(prefix)


def test_tf2_checkpoint_with_optimizer_slots(tmp_path):
    model = tf.keras.Sequential([tf.keras.Input((5,)), tf.keras.layers.Dense(3),
                                 tf.keras.layers.Dense(2)])
    opt = tf.keras.optimizers.Adam()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(tf.ones((4, 5))))
    opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                            model.trainable_variables))
    path = tf.train.Checkpoint(model=model, optimizer=opt).save(str(tmp_path / "ck"))
    assert_matches_tensorflow(path)
    assert tfshard.latest_checkpoint(tmp_path) == tf.train.latest_checkpoint(str(tmp_path))


def test_tf1_partitioned_and_sharded(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.get_variable(
            "rows", shape=[11, 3], initializer=tf.compat.v1.random_normal_initializer(),
            partitioner=tf.compat.v1.fixed_size_partitioner(4))
        tf.compat.v1.get_variable(
            "cols", shape=[3, 9], dtype=tf.int64,
            initializer=tf.compat.v1.random_uniform_initializer(-100, 100, dtype=tf.int64),
            partitioner=tf.compat.v1.fixed_size_partitioner(2, axis=1))
        tf.compat.v1.get_variable("plain", shape=[2])
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            path = saver.save(sess, str(tmp_path / "model.ckpt"))
    assert_matches_tensorflow(path)
    with tfshard.open(path) as ckpt:
        assert len(ckpt.info("rows").slices) == 4
        np.testing.assert_array_equal(ckpt.read("rows", index=np.s_[5:9]),
                                      tf.train.load_checkpoint(path).get_tensor("rows")[5:9])


@pytest.mark.parametrize("big_endian,compress", [(True, False), (False, True), (True, True)])
def test_tensorflow_reads_hand_built_bundles(tmp_path, big_endian, compress):
    """Our big-endian and Snappy test inputs are checkpoints TF itself reads identically."""
    rng = np.random.default_rng(3)
    b = bb.Bundle(big_endian=big_endian)
    b.add("f32", rng.normal(size=(3, 4)).astype(np.float32))
    b.add("c128", (rng.normal(size=3) + 1j).astype(np.complex128))
    b.add("i64", rng.integers(-2**40, 2**40, size=(5,)))
    b.add("u16", rng.integers(0, 2**16, size=(2, 2)).astype(np.uint16))
    b.add("s", np.array([b"alpha", b"", b"\x00\xff" * 40], dtype=object))
    full = rng.normal(size=(6, 2)).astype(np.float32)
    b.add_slice("part", (6, 2), [(0, 2), (0, -1)], full[:2])
    b.add_slice("part", (6, 2), [(2, 4), (0, -1)], full[2:])
    for i in range(400):  # enough keys for several small blocks when compressed
        b.add(f"many/{i:04d}", np.array([i], np.int32))
    prefix = b.write(str(tmp_path / "hand"), compress=compress)
    assert_matches_tensorflow(prefix)
