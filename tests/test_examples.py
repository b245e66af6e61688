"""Run the scripts in examples/ as a user would: each in its own process."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tfshard

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 300


def run_example(script, *args, cwd):
    """Run ``examples/<script>`` from ``cwd`` (not the repository root, so the
    scripts cannot lean on the working directory)."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    return proc


def assert_ok(proc):
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


# ---- save_and_restore_tf1.py -----------------------------------------------

def test_save_and_restore_tf1(tmp_path):
    pytest.importorskip("tensorflow")
    out = assert_ok(run_example("save_and_restore_tf1.py", "--workdir", tmp_path / "w",
                                cwd=tmp_path))
    for line in [
        "'embedding' stored as 3 slices",
        "Saver.restore(sliced tfshard checkpoint): all 4 variables equal",
        "Saver.restore(whole tfshard checkpoint): all 4 variables equal",
        "Saver({'v2': kernel, ...}).restore: v2, table (partitioned), step equal; "
        "dense/bias untouched",
        "tfshard.tf.restore(path, {'v2': kernel, ...}): v2, table (partitioned), step equal; "
        "dense/bias untouched",
        # 6 = kernel, bias, three embedding partitions, global_step
        "tfshard.tf.restore(path, session=sess): restored 6 variable(s)",
        "RestoreError as expected; missing: dense/bias, dense/kernel, embedding[0:4,0:3], "
        "embedding[4:7,0:3], embedding[7:10,0:3], global_step",
        "all 6 variables still uninitialized: nothing was assigned",
        "all TF1 save/restore round trips matched",
    ]:
        assert line in out, f"missing {line!r} in:\n{out}"
    # --workdir keeps the checkpoints: the tfshard-written one holds the
    # partitioned variable as slices, the TF-written subset only "v2".
    sliced = tmp_path / "w" / "tfshard_sliced" / "model.ckpt"
    with tfshard.open(sliced) as ckpt:
        assert sorted(ckpt) == ["dense/bias", "dense/kernel", "embedding", "global_step"]
        assert ckpt.info("embedding").slices == (((0, 4), (0, -1)), ((4, 3), (0, -1)),
                                                 ((7, 3), (0, -1)))
        assert int(ckpt["global_step"]) == 1234
    assert [n for n, _ in tfshard.list_variables(tmp_path / "w" / "tf_subset" / "subset.ckpt")
            ] == ["v2"]


# ---- mix_models.py -----------------------------------------------------------

def test_mix_models(tmp_path):
    pytest.importorskip("tensorflow")
    out = assert_ok(run_example("mix_models.py", "--workdir", tmp_path / "w", cwd=tmp_path))
    for i in (1, 2, 3):
        for p in ("kernel", "bias"):
            assert f"student/features/conv{i}/{p} <- vgg/conv{i}/{p}" in out, out
    assert "restored 6 variable(s)" in out, out
    assert "bit-identical to the checkpoint after loading" in out, out
    assert "bit-identical to the checkpoint after training the head" in out, out
    m = re.search(r"mean loss of the first 5 steps ([\d.]+), of the last 5 ([\d.]+)", out)
    assert m is not None, out
    assert float(m.group(2)) < float(m.group(1))
    assert "loaded features stayed frozen and the new head learned" in out
    # The teacher checkpoint the script wrote with TF's Saver.
    names = dict(tfshard.list_variables(tmp_path / "w" / "vgg" / "model.ckpt-30"))
    assert names["vgg/conv1/kernel"] == [3, 3, 3, 8]
    assert names["vgg/fc/kernel"] == [2 * 2 * 16, 4]


# ---- read_without_tf.py ------------------------------------------------------

def test_read_without_tf_defaults(tmp_path):
    """The default checkpoints ship with the repository: no TensorFlow needed."""
    out = assert_ok(run_example("read_without_tf.py", "--workdir", tmp_path, cwd=tmp_path))
    assert "global_step: int64 [] = 42" in out, out
    assert "step: 42 (from global_step)" in out, out
    assert "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE: int64 [] = 2" in out, out
    assert "step: 2 (from optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE)" in out, out
    assert out.rstrip().endswith("TensorFlow was not imported"), out
    # The extracted state was written as checkpoints of its own.
    assert tfshard.load(tmp_path / "state-0" / "state.ckpt") == {"global_step": 42}


_MAKE_TF1_CHECKPOINT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    v1 = tf.compat.v1
    prefix, expected = sys.argv[1], sys.argv[2]
    with tf.Graph().as_default():
        v1.set_random_seed(0)
        x = v1.placeholder(tf.float32, [None, 5])
        kernel = v1.get_variable("dense/kernel", [5, 4])
        h = tf.matmul(x, kernel)
        # Batch normalization as TF1's layers name it: moving averages are
        # non-trainable variables updated alongside each training step.
        with v1.variable_scope("batch_normalization"):
            mean_var = v1.get_variable("moving_mean", [4], trainable=False,
                                       initializer=v1.zeros_initializer())
            var_var = v1.get_variable("moving_variance", [4], trainable=False,
                                      initializer=v1.ones_initializer())
            gamma = v1.get_variable("gamma", [4], initializer=v1.ones_initializer())
            beta = v1.get_variable("beta", [4], initializer=v1.zeros_initializer())
        mean, variance = tf.nn.moments(h, [0])
        h = tf.nn.batch_normalization(h, mean, variance, beta, gamma, 1e-3)
        updates = [v1.assign(mean_var, 0.9 * mean_var + 0.1 * mean),
                   v1.assign(var_var, 0.9 * var_var + 0.1 * variance)]
        loss = tf.reduce_mean(tf.square(h - 1.0))
        step = v1.train.get_or_create_global_step()
        with tf.control_dependencies(updates):
            train = v1.train.AdamOptimizer(0.1).minimize(loss, global_step=step)
        data = np.random.default_rng(0).normal(size=(16, 5)).astype(np.float32)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            for _ in range(7):
                sess.run(train, {x: data})
            path = v1.train.Saver().save(sess, prefix, global_step=step,
                                         write_meta_graph=False)
            names = ["global_step", "batch_normalization/moving_mean",
                     "batch_normalization/moving_variance", "beta1_power", "beta2_power"]
            graph_vars = {v.op.name: v for v in v1.global_variables()}
            np.savez(expected, **{n.replace("/", "|"): sess.run(graph_vars[n]) for n in names})
    print(path)
""")


def test_read_without_tf_tf1_batchnorm_adam(tmp_path):
    """A TF1 checkpoint with BatchNorm moving averages and Adam's beta powers,
    written by TensorFlow in another process; the example reads it without TF
    and its extracted values equal what TF held in its session."""
    pytest.importorskip("tensorflow")
    expected_file = tmp_path / "expected.npz"
    made = subprocess.run([sys.executable, "-c", _MAKE_TF1_CHECKPOINT,
                           str(tmp_path / "tf1" / "model.ckpt"), str(expected_file)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert made.returncode == 0, made.stderr
    prefix = made.stdout.strip().splitlines()[-1]
    assert prefix.endswith("model.ckpt-7")

    # The directory: its `checkpoint` state file names model.ckpt-7.
    out = assert_ok(run_example("read_without_tf.py", tmp_path / "tf1", "--workdir",
                                tmp_path / "w", cwd=tmp_path))
    assert "global_step: int64 [] = 7" in out, out
    assert "step: 7 (from global_step)" in out, out
    for name in ("batch_normalization/moving_mean: float32 [4]",
                 "batch_normalization/moving_variance: float32 [4]",
                 "beta1_power: float32 [] = ", "beta2_power: float32 [] = "):
        assert name in out, out
    assert out.rstrip().endswith("TensorFlow was not imported"), out

    expected = {k.replace("|", "/"): v for k, v in np.load(expected_file).items()}
    state = tfshard.load(tmp_path / "w" / "state-0" / "state.ckpt")
    assert sorted(state) == sorted(expected)
    for name, value in expected.items():
        assert np.array_equal(state[name], value), name
    # Adam's beta1_power starts at beta1 and is multiplied by it on each step.
    assert np.isclose(state["beta1_power"], 0.9 ** 8, rtol=1e-5)


def test_read_without_tf_no_step_counter(tmp_path):
    """A checkpoint without any step counter: said so, exit code 1."""
    prefix = tfshard.save(tmp_path / "plain" / "ckpt", {"dense/kernel": np.ones((2, 2))})
    proc = run_example("read_without_tf.py", prefix, "--workdir", tmp_path / "w", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no step counter found" in proc.stdout


# ---- read_meta_graph.py ------------------------------------------------------

def test_read_meta_graph_defaults(tmp_path):
    """The default .meta ships with the repository: no TensorFlow needed."""
    out = assert_ok(run_example("read_meta_graph.py", cwd=tmp_path))
    for line in [
        "12 collections:",
        "hyperparameters        node_list   hp/learning_rate:0, hp/batch_size:0",
        "my_ints                int64_list  -3, 0, 4611686018427387904",
        "global_step collection: global_step:0 (VarHandleOp, resource)",
        "global_step = 3 (int64, read from ",
        "hp/learning_rate:0 = 0.05000000074505806 (float32 [])",
        "hp/batch_size:0 = 32 (int64 [])",
        "hp/run_name:0 = b'adam-ish' (string [])",
        "hp/repeated:0 = [7, 8, 8, 8, 8] (int32 [5])",
        "emb/part_1       float32  [3, 4]   trainable  part of emb  checkpoint emb [10, 4]",
        "local_acc        float32  []       trainable  a local variable: not saved",
    ]:
        assert line in out, f"missing {line!r} in:\n{out}"
    assert out.rstrip().endswith("TensorFlow was not imported"), out


_MAKE_TF1_META = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    v1 = tf.compat.v1
    prefix = sys.argv[1]
    with tf.Graph().as_default():
        step = v1.train.get_or_create_global_step()
        w = v1.get_variable("model/w", [3, 3])
        loss = tf.reduce_sum(tf.square(w))
        lr = tf.constant(0.125, name="hyper/learning_rate")
        decay = tf.constant([0.9, 0.999], name="hyper/betas")
        for t in (lr, decay):
            v1.add_to_collection("hyperparameters", t)
        train = v1.train.AdamOptimizer(lr, *tf.unstack(decay)).minimize(loss, global_step=step)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            for _ in range(5):
                sess.run(train)
            path = v1.train.Saver().save(sess, prefix, global_step=step)
            print(json.dumps({"path": path, "step": int(sess.run(step)),
                              "hyper": [sess.run(t).tolist() for t in (lr, decay)],
                              "variables": [v.op.name for v in v1.global_variables()]}))
""")


def test_read_meta_graph_of_a_tf1_saver(tmp_path):
    """A .meta written by TensorFlow's Saver in another process (Adam slots, a
    hyperparameters collection): the example reads the same step, hyperparameters and
    variables TF held, without importing TF."""
    pytest.importorskip("tensorflow")
    import json

    made = subprocess.run([sys.executable, "-c", _MAKE_TF1_META, str(tmp_path / "m" / "ckpt")],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert made.returncode == 0, made.stderr
    expected = json.loads(made.stdout.strip().splitlines()[-1])
    out = assert_ok(run_example("read_meta_graph.py", expected["path"], cwd=tmp_path))
    assert f"global_step = {expected['step']} (int64" in out, out
    assert f"hyper/learning_rate:0 = {expected['hyper'][0]!r} (float32 [])" in out, out
    assert f"hyper/betas:0 = {expected['hyper'][1]!r} (float32 [2])" in out, out
    assert f"{len(expected['variables'])} variables:" in out, out
    for name in expected["variables"]:
        assert f"  {name} " in out, (name, out)
    assert "MISSING" not in out
    assert out.rstrip().endswith("TensorFlow was not imported"), out
