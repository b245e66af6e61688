"""Reuse a trained network's layers in a new model, under another name scope.

A small VGG-style CNN (three blocks of conv 3x3 + ReLU + 2x2 max-pool, and a
dense classifier) is trained for a few steps on a synthetic task in a TF1
graph and saved with ``tf.compat.v1.train.Saver``: its variables are named
``vgg/conv1/kernel`` ... ``vgg/fc/bias``, next to Adam's slots and
``global_step``.

A new model then builds the same conv blocks under ``student/features/`` and a
new head under ``student/head/`` for a different task (another number of
classes).  ``tfshard.tf.restore`` with an ``assignment_map`` loads the
checkpoint's ``vgg/`` variables into ``student/features/`` (the semantics of
``tf.compat.v1.train.init_from_checkpoint``): only the variables under the
mapped scope are restored, so the old classifier, the optimizer slots and the
head are left alone.  ``tf.stop_gradient`` after the features freezes them, and
only the new head trains.

The script checks that the head's loss goes down and that the loaded conv
weights are bit-identical to the checkpoint's (read back with
``tfshard.load_variable``) both right after loading and after training.

Run::

    python examples/mix_models.py [--workdir DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ logging quiet

import tensorflow as tf  # noqa: E402

import tfshard  # noqa: E402
import tfshard.tf  # noqa: E402

v1 = tf.compat.v1

IMAGE = 16                 # 16x16 RGB inputs
FILTERS = (8, 16, 16)      # one conv block per entry
CONV_VARIABLES = [f"conv{i + 1}/{p}" for i in range(len(FILTERS)) for p in ("kernel", "bias")]


def conv_blocks(images):
    """Conv 3x3 + ReLU + 2x2 max-pool per block, variables in the current scope."""
    x = images
    for i, filters in enumerate(FILTERS):
        with v1.variable_scope(f"conv{i + 1}"):
            kernel = v1.get_variable("kernel", [3, 3, x.shape[-1], filters],
                                     initializer=v1.glorot_uniform_initializer())
            bias = v1.get_variable("bias", [filters], initializer=v1.zeros_initializer())
            x = tf.nn.relu(tf.nn.conv2d(x, kernel, strides=1, padding="SAME") + bias)
            x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")
    return tf.reshape(x, [-1, int(np.prod(x.shape[1:]))])


def dense(x, units: int, name: str):
    with v1.variable_scope(name):
        kernel = v1.get_variable("kernel", [x.shape[-1], units],
                                 initializer=v1.glorot_uniform_initializer())
        bias = v1.get_variable("bias", [units], initializer=v1.zeros_initializer())
    return tf.matmul(x, kernel) + bias


def blob_images(rng, n: int):
    """Teacher task (4 classes): which quadrant holds a bright square."""
    images = rng.normal(0.0, 0.1, (n, IMAGE, IMAGE, 3)).astype(np.float32)
    labels = rng.integers(0, 4, n)
    h = IMAGE // 2
    for img, label in zip(images, labels):
        r, c = (label // 2) * h, (label % 2) * h
        img[r + 2:r + h - 2, c + 2:c + h - 2, :] += 1.0
    return images, labels


def color_images(rng, n: int):
    """Student task (3 classes): which colour channel is brightest."""
    images = rng.normal(0.0, 0.2, (n, IMAGE, IMAGE, 3)).astype(np.float32)
    labels = rng.integers(0, 3, n)
    images[np.arange(n), :, :, labels] += 0.6
    return images, labels


def train(sess, train_op, loss, feed, steps: int) -> list:
    return [sess.run([train_op, loss], feed)[1] for _ in range(steps)]


def train_teacher(prefix: str, steps: int, seed: int) -> str:
    """Train the VGG-style classifier for a few steps and save it with Saver."""
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        images = v1.placeholder(tf.float32, [None, IMAGE, IMAGE, 3])
        labels = v1.placeholder(tf.int64, [None])
        with v1.variable_scope("vgg"):
            logits = dense(conv_blocks(images), 4, "fc")
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=logits))
        step = v1.train.get_or_create_global_step()
        train_op = v1.train.AdamOptimizer(0.01).minimize(loss, global_step=step)
        saver = v1.train.Saver()
        x, y = blob_images(np.random.default_rng(seed), 256)
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            losses = train(sess, train_op, loss, {images: x, labels: y}, steps)
            path = saver.save(sess, prefix, global_step=step, write_meta_graph=False)
    print(f"teacher: {steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, saved {path}")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="where the checkpoint is written (default: a temp dir)")
    parser.add_argument("--steps", type=int, default=60, help="training steps of the new head")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 10:
        parser.error("--steps must be at least 10 (the first and last 5 losses are compared)")
    with tempfile.TemporaryDirectory(prefix="tfshard-mix-") as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        run(workdir, args.steps, args.seed)
    print("\nloaded features stayed frozen and the new head learned")
    return 0


def run(workdir: str, steps: int, seed: int) -> None:
    ckpt = train_teacher(os.path.join(workdir, "vgg", "model.ckpt"), steps=30, seed=seed)
    names = [name for name, _ in tfshard.list_variables(ckpt)]
    print(f"checkpoint holds {len(names)} tensors, e.g. {', '.join(names[:4])}, ...")
    # The reference values: what the student's features must hold.
    saved = {name: tfshard.load_variable(ckpt, f"vgg/{name}") for name in CONV_VARIABLES}

    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed + 1)
        images = v1.placeholder(tf.float32, [None, IMAGE, IMAGE, 3])
        labels = v1.placeholder(tf.int64, [None])
        with v1.variable_scope("student"):
            with v1.variable_scope("features"):
                features = conv_blocks(images)
            # Frozen: no gradient reaches the loaded layers.
            logits = dense(tf.stop_gradient(features), 3, "head")
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=logits))
        head_vars = v1.trainable_variables("student/head")
        # var_list: Adam creates slots only for the head.
        train_op = v1.train.AdamOptimizer(0.02).minimize(loss, var_list=head_vars)
        feature_vars = {v.op.name[len("student/features/"):]: v
                        for v in v1.global_variables("student/features")}
        assert sorted(feature_vars) == sorted(CONV_VARIABLES), sorted(feature_vars)

        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            fresh = sess.run(feature_vars)
            assert not np.array_equal(fresh["conv1/kernel"], saved["conv1/kernel"])

            report = tfshard.tf.restore(ckpt, session=sess,
                                        assignment_map={"vgg/": "student/features/"})
            print(f"tfshard.tf.restore with assignment_map {{'vgg/': 'student/features/'}}:\n"
                  f"  {str(report).splitlines()[0]}")
            for var, key in report.restored:
                print(f"  {var} <- {key}")
            assert len(report.restored) == len(CONV_VARIABLES), report
            # The old classifier and Adam's slots stay in the checkpoint, unused.
            assert {"vgg/fc/kernel", "vgg/conv1/kernel/Adam"} <= set(report.unexpected), report

            def assert_features_match(when: str):
                now = sess.run(feature_vars)
                for name in CONV_VARIABLES:
                    if not np.array_equal(now[name], saved[name]):
                        raise AssertionError(f"student/features/{name} differs from the "
                                             f"checkpoint's vgg/{name} {when}")
                print(f"all {len(CONV_VARIABLES)} conv variables bit-identical to the "
                      f"checkpoint {when}")

            assert_features_match("after loading")
            head_before = sess.run(head_vars)
            x, y = color_images(np.random.default_rng(seed + 1), 256)
            losses = train(sess, train_op, loss, {images: x, labels: y}, steps)
            first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
            print(f"new head: {steps} steps, mean loss of the first 5 steps {first:.3f}, "
                  f"of the last 5 {last:.3f}")
            assert last < first, f"the head's loss did not go down ({first:.3f} -> {last:.3f})"
            head_after = sess.run(head_vars)
            assert not any(np.array_equal(a, b) for a, b in zip(head_before, head_after))
            assert_features_match("after training the head")


if __name__ == "__main__":
    sys.exit(main())
