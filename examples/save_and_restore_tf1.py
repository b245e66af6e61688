"""Save and restore TF1 graph-mode variables with tfshard and with TF's Saver.

The classic TF1 workflow keeps variables in a graph and moves their values
through a ``tf.compat.v1.train.Saver``.  tfshard writes the same checkpoint
format without TensorFlow, and ``tfshard.tf.restore`` assigns checkpoint values
to the variables of a live session, so the two can be mixed freely:

(a) values read from a session and written with ``tfshard.save`` /
    ``tfshard.CheckpointWriter`` (a partitioned variable as its slices with
    ``add_slice``, or as one full tensor) restore with ``Saver.restore``;
(b) a subset saved under chosen names, the ``Saver({"v2": v2})`` idiom, written
    with tfshard and restored both with ``Saver({"v2": ...})`` and with
    ``tfshard.tf.restore(path, {"v2": ...}, session=sess)``;
(c) checkpoints written by ``Saver`` (all variables, and a dict subset)
    restored with ``tfshard.tf.restore``;
(d) a strict restore that cannot find every variable raises
    ``tfshard.RestoreError`` and assigns nothing.

Every restore is checked: the restored values must equal the saved ones
exactly (``np.array_equal``).

Run::

    python examples/save_and_restore_tf1.py [--workdir DIR]
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

NUM_PARTITIONS = 3


def build_model(seed: int) -> dict:
    """Create the variables of a small model in the current default graph.

    ``seed`` changes the initial values, so a fresh graph never starts out
    holding the values a restore is supposed to bring back.
    """
    init = v1.random_normal_initializer(seed=seed)
    kernel = v1.get_variable("dense/kernel", [6, 4], initializer=init)
    bias = v1.get_variable("dense/bias", [4], initializer=v1.random_uniform_initializer(seed=seed))
    # A partitioned variable: three variables "embedding/part_0..2" that
    # checkpoints store as slices of one tensor named "embedding".
    embedding = v1.get_variable("embedding", [10, 3], initializer=init,
                                partitioner=v1.fixed_size_partitioner(NUM_PARTITIONS))
    step = v1.train.get_or_create_global_step()
    return {"kernel": kernel, "bias": bias, "embedding": embedding, "global_step": step}


def new_session(seed: int):
    """A fresh graph with the model's variables, and a session on it."""
    graph = tf.Graph()
    with graph.as_default():
        model = build_model(seed)
    return graph, v1.Session(graph=graph), model


def values(sess, model: dict) -> dict:
    """``{checkpoint name: value}`` of every variable, partitioned ones whole."""
    out = {}
    for var in model.values():
        if not isinstance(var, tf.Variable):
            # A PartitionedVariable (no tf.Variable itself): its partitions,
            # in order, cut dimension 0 of the full value.
            out[var.name] = np.concatenate(sess.run(list(var)), axis=0)
        else:
            out[var.op.name] = sess.run(var)
    return out


def partitions(var) -> list:
    """``[(partition variable, slice spec), ...]`` of a partitioned variable.

    ``fixed_size_partitioner`` cuts dimension 0; the slice spec says which rows
    each partition holds, in TF's ``"start,length:-"`` form (``-``: the whole
    dimension).
    """
    parts, start = [], 0
    for part in var:
        rows = part.shape[0]
        spec = ":".join([f"{start},{rows}"] + ["-"] * (len(part.shape) - 1))
        parts.append((part, spec))
        start += rows
    return parts


def check_equal(restored: dict, saved: dict, what: str) -> None:
    for name, value in saved.items():
        if not np.array_equal(restored[name], value):
            raise AssertionError(f"{what}: {name} differs after restore")


def section(title: str) -> None:
    print(f"\n== {title}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="where checkpoints are written (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tfshard-tf1-") as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        run(workdir)
    print("\nall TF1 save/restore round trips matched")
    return 0


def run(workdir: str) -> None:
    # The "trained" model: its values are what every restore must bring back.
    graph, sess, model = new_session(seed=1)
    with graph.as_default():
        sess.run(v1.global_variables_initializer())
        sess.run(v1.assign(model["global_step"], 1234))
    saved = values(sess, model)
    print("trained model:", ", ".join(f"{k} {list(np.shape(v))}" for k, v in saved.items()))

    # ---- (a) tfshard writes, Saver restores ---------------------------------
    section("(a) save everything with tfshard, restore with tf.compat.v1.train.Saver")

    # As slices: one add_slice per partition, exactly what Saver itself writes.
    sliced = os.path.join(workdir, "tfshard_sliced", "model.ckpt")
    with tfshard.CheckpointWriter(sliced) as w:
        for name in ("dense/kernel", "dense/bias", "global_step"):
            w.add(name, saved[name])
        emb = model["embedding"]
        for part, spec in partitions(emb):
            w.add_slice(emb.name, emb.shape.as_list(), spec, sess.run(part))
    with tfshard.open(sliced) as ckpt:
        print(f"tfshard wrote {sliced}: {len(ckpt)} tensors; 'embedding' stored as "
              f"{len(ckpt.info('embedding').slices)} slices")

    # As full tensors: tfshard.save with the partitioned variable whole; Saver
    # cuts the partitions out of it on restore.
    whole = tfshard.save(os.path.join(workdir, "tfshard_whole", "model.ckpt"), saved)

    for prefix, how in ((sliced, "sliced"), (whole, "whole")):
        g2, s2, m2 = new_session(seed=2)
        with g2.as_default():
            v1.train.Saver().restore(s2, prefix)
        check_equal(values(s2, m2), saved, f"Saver.restore of {how}")
        print(f"Saver.restore({how} tfshard checkpoint): all {len(saved)} variables equal")
        s2.close()

    # ---- (b) a subset under chosen names, written by tfshard ---------------
    section("(b) save a subset under chosen names with tfshard (the Saver({'v2': v2}) idiom)")
    # Saver({"v2": kernel, ...}) stores kernel's value under the key "v2"; the
    # same checkpoint written with tfshard is just a dict of those keys.
    subset = {"v2": saved["dense/kernel"], "table": saved["embedding"],
              "step": saved["global_step"]}
    subset_prefix = tfshard.save(os.path.join(workdir, "tfshard_subset", "subset.ckpt"), subset)
    print(f"tfshard wrote {subset_prefix}: {sorted(subset)}")

    def subset_restore(restore_fn, label):
        g2, s2, m2 = new_session(seed=3)
        var_map = {"v2": m2["kernel"], "table": m2["embedding"], "step": m2["global_step"]}
        with g2.as_default():
            s2.run(v1.global_variables_initializer())   # dense/bias is not in the subset
            bias_before = s2.run(m2["bias"])
            restore_fn(g2, s2, var_map)
            got = values(s2, m2)
        check_equal({"v2": got["dense/kernel"], "table": got["embedding"],
                     "step": got["global_step"]}, subset, label)
        assert np.array_equal(got["dense/bias"], bias_before), "a variable outside the map changed"
        print(f"{label}: v2, table (partitioned), step equal; dense/bias untouched")
        s2.close()

    subset_restore(lambda g, s, m: v1.train.Saver(m).restore(s, subset_prefix),
                   "Saver({'v2': kernel, ...}).restore")

    def tfshard_subset(g, s, m):
        report = tfshard.tf.restore(subset_prefix, m, session=s)
        assert report.ok and not report.unexpected, str(report)
        print(f"  report: {str(report).splitlines()[0]}")

    subset_restore(tfshard_subset, "tfshard.tf.restore(path, {'v2': kernel, ...})")

    # ---- (c) Saver writes, tfshard.tf.restore restores ----------------------
    section("(c) save with tf.compat.v1.train.Saver, restore with tfshard.tf.restore")
    with graph.as_default():
        tf_all = v1.train.Saver().save(sess, os.path.join(workdir, "tf_all", "model.ckpt"),
                                       write_meta_graph=False)
        tf_subset = v1.train.Saver({"v2": model["kernel"]}).save(
            sess, os.path.join(workdir, "tf_subset", "subset.ckpt"), write_meta_graph=False)
    print(f"Saver wrote {tf_all} and {tf_subset}")

    g2, s2, m2 = new_session(seed=4)
    # No initializer run: restoring every global variable initializes them all.
    report = tfshard.tf.restore(tf_all, session=s2)
    check_equal(values(s2, m2), saved, "tfshard.tf.restore of a Saver checkpoint")
    print(f"tfshard.tf.restore(path, session=sess): {str(report).splitlines()[0]}")
    s2.close()

    g2, s2, m2 = new_session(seed=5)
    report = tfshard.tf.restore(tf_subset, {"v2": m2["kernel"]}, session=s2)
    got = s2.run(m2["kernel"])
    check_equal({"v2": got}, {"v2": saved["dense/kernel"]}, "tfshard.tf.restore of a subset")
    print(f"tfshard.tf.restore(path, {{'v2': kernel}}, session=sess): "
          f"{str(report).splitlines()[0]}")
    s2.close()

    # ---- (d) strict restores are all or nothing ----------------------------
    section("(d) a strict restore that cannot find every variable assigns nothing")
    g2, s2, m2 = new_session(seed=6)
    try:
        tfshard.tf.restore(tf_subset, session=s2)  # the subset lacks most variables
    except tfshard.RestoreError as exc:
        missing = sorted(var for var, _ in exc.report.missing)
        print(f"RestoreError as expected; missing: {', '.join(missing)}")
    else:
        raise AssertionError("restoring every variable from a subset checkpoint succeeded")
    with g2.as_default():
        uninitialized = s2.run(v1.report_uninitialized_variables())
        assert len(uninitialized) == len(v1.global_variables()), uninitialized
    print(f"all {len(uninitialized)} variables still uninitialized: nothing was assigned")
    s2.close()
    sess.close()


if __name__ == "__main__":
    sys.exit(main())
