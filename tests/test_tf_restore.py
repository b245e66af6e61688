"""tfshard.tf.restore: checkpoint values into live TensorFlow variables.

Every case compares against TensorFlow itself: checkpoints are written by TF (Saver,
tf.train.Checkpoint) or by tfshard, and restored values are read back from the variables.
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import tfshard  # noqa: E402
import tfshard.tf  # noqa: E402
from tfshard.objectgraph import OBJECT_GRAPH_KEY  # noqa: E402

v1 = tf.compat.v1


def _rand(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---- TF1 graphs and sessions ------------------------------------------------------------

@pytest.fixture(scope="module")
def tf1_checkpoint(tmp_path_factory):
    """A TF1 Saver checkpoint with a kernel, a bias, a partitioned table saved in three
    slices, a string variable and global_step; returns (prefix, expected values)."""
    d = tmp_path_factory.mktemp("tf1")
    graph = tf.Graph()
    with graph.as_default():
        v1.get_variable("dense/kernel", initializer=_rand((4, 3), 1))
        v1.get_variable("dense/bias", initializer=_rand((3,), 2))
        emb = v1.get_variable("emb", shape=[10, 2], partitioner=v1.fixed_size_partitioner(3))
        v1.Variable([b"a", b"\xff"], name="words")
        v1.train.get_or_create_global_step()
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            sess.run(v1.assign(v1.train.get_global_step(), 42))
            for part in emb:
                start, rows = part._save_slice_info.var_offset[0], part.shape[0]
                sess.run(part.assign(_rand((10, 2), 3)[start:start + rows]))
            prefix = v1.train.Saver().save(sess, str(d / "model.ckpt"))
    expected = {"dense/kernel": _rand((4, 3), 1), "dense/bias": _rand((3,), 2),
                "emb": _rand((10, 2), 3), "words": np.array([b"a", b"\xff"], object),
                "global_step": np.int64(42)}
    with tfshard.open(prefix) as ckpt:
        assert ckpt.info("emb").slices, "the table should be stored as slices"
    return prefix, expected


def _tf1_graph(partitions=2, scope=""):
    variables = {
        "dense/kernel": v1.get_variable(f"{scope}dense/kernel", shape=[4, 3]),
        "dense/bias": v1.get_variable(f"{scope}dense/bias", shape=[3]),
        "emb": v1.get_variable(f"{scope}emb", shape=[10, 2],
                               partitioner=v1.fixed_size_partitioner(partitions)),
        "words": v1.Variable([b"", b""], name=f"{scope}words"),
        "global_step": v1.get_variable(f"{scope}global_step", shape=[], dtype=tf.int64,
                                       initializer=v1.zeros_initializer()),
    }
    return variables


def _values(sess, variables):
    out = {}
    for name, v in variables.items():
        out[name] = sess.run(v.as_tensor() if hasattr(v, "as_tensor") else v)
    return out


def _assert_equal(got, want):
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("partitions", [1, 2, 4])
def test_tf1_all_globals_finalized_graph(tf1_checkpoint, partitions):
    """var_list=None restores every global variable, partitioned ones from the sliced
    checkpoint whatever the new partitioning, into a finalized graph (nothing is added)."""
    prefix, expected = tf1_checkpoint
    graph = tf.Graph()
    with graph.as_default():
        variables = _tf1_graph(partitions)
        reads = {n: (v.as_tensor() if hasattr(v, "as_tensor") else v.read_value())
                 for n, v in variables.items()}
        graph.finalize()
        with v1.Session() as sess:
            report = tfshard.tf.restore(prefix, session=sess)
            got = sess.run(reads)
    _assert_equal(got, expected)
    assert report.ok and not report.missing and not report.unexpected
    assert len(report.restored) == 4 + partitions


def test_tf1_default_session_and_subset_dict(tf1_checkpoint):
    prefix, expected = tf1_checkpoint
    graph = tf.Graph()
    with graph.as_default():
        other = v1.get_variable("w", shape=[4, 3])
        with v1.Session().as_default() as sess:
            sess.run(v1.global_variables_initializer())
            report = tfshard.tf.restore(prefix, {"dense/kernel": other})
            np.testing.assert_array_equal(sess.run(other), expected["dense/kernel"])
    assert report.restored == [("w", "dense/kernel")]
    assert sorted(report.unexpected) == ["dense/bias", "emb", "global_step", "words"]


def test_tf1_assignment_map_scopes(tf1_checkpoint):
    """init_from_checkpoint semantics: a checkpoint scope into a graph scope, one name,
    a variable object, the root; variables outside the map keep their values."""
    prefix, expected = tf1_checkpoint
    graph = tf.Graph()
    with graph.as_default():
        student = _tf1_graph(3, scope="student/")
        extra = v1.get_variable("student/head", initializer=np.ones(5, np.float32))
        lone = v1.get_variable("lone", shape=[3])
        reads = {n: (v.as_tensor() if hasattr(v, "as_tensor") else v.read_value())
                 for n, v in student.items()}
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            report = tfshard.tf.restore(prefix, session=sess, assignment_map={
                "dense/": "student/dense/", "emb": "student/emb", "words": "student/words",
                "global_step": student["global_step"], "dense/bias": lone})
            got = sess.run(reads)
            np.testing.assert_array_equal(sess.run(extra), np.ones(5, np.float32))
            np.testing.assert_array_equal(sess.run(lone), expected["dense/bias"])
    _assert_equal(got, expected)
    assert report.ok and report.unexpected == []

    graph = tf.Graph()
    with graph.as_default():
        everything = _tf1_graph(1, scope="copy/")
        with v1.Session() as sess:
            tfshard.tf.restore(prefix, session=sess, assignment_map={"/": "copy/"})
            _assert_equal(_values(sess, everything), expected)


def test_one_variable_from_two_tensors_is_refused(tf1_checkpoint):
    prefix, _ = tf1_checkpoint
    with tf.Graph().as_default():
        w = v1.get_variable("w", shape=[3])
        with v1.Session() as sess:
            with pytest.raises(tfshard.RestoreError, match="both 'dense/bias' and 'x/y'"):
                tfshard.tf.restore(prefix, {"dense/bias": w, "x/y": w}, session=sess)


def test_tf1_assignment_map_errors(tf1_checkpoint):
    prefix, _ = tf1_checkpoint
    with tf.Graph().as_default():
        v1.get_variable("x", shape=[3])
        with v1.Session() as sess:
            with pytest.raises(tfshard.RestoreError, match="no variable of that name"):
                tfshard.tf.restore(prefix, session=sess, assignment_map={"dense/bias": "y"})
            with pytest.raises(tfshard.RestoreError, match="no scope"):
                tfshard.tf.restore(prefix, session=sess, assignment_map={"dense/": "x"})


def test_tf1_strict_lists_everything_and_assigns_nothing(tf1_checkpoint):
    prefix, expected = tf1_checkpoint
    with tf.Graph().as_default():
        kernel = v1.get_variable("dense/kernel", initializer=np.zeros((4, 3), np.float32))
        bias = v1.get_variable("dense/bias", initializer=np.zeros((5,), np.float32))
        step = v1.get_variable("global_step", initializer=np.int32(0))
        new = v1.get_variable("brand/new", shape=[2])
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            with pytest.raises(tfshard.RestoreError) as info:
                tfshard.tf.restore(prefix, session=sess)
            report = info.value.report
            assert report.missing == [("brand/new", "brand/new")]
            assert {m[0] for m in report.mismatched} == {"dense/bias", "global_step"}
            why = dict((m[0], m[2]) for m in report.mismatched)
            assert "shape [5]" in why["dense/bias"] and "int32" in why["global_step"]
            assert report.restored == []
            message = str(info.value)
            for word in ("brand/new", "dense/bias", "global_step", "nothing was assigned"):
                assert word in message
            np.testing.assert_array_equal(sess.run(kernel), np.zeros((4, 3)))  # untouched
            # strict=False restores what matches and reports the rest.
            report = tfshard.tf.restore(prefix, session=sess, strict=False)
            assert not report.ok and report.restored == [("dense/kernel", "dense/kernel")]
            np.testing.assert_array_equal(sess.run(kernel), expected["dense/kernel"])
            np.testing.assert_array_equal(sess.run(bias), np.zeros(5))
            assert sess.run(step) == 0 and sess.run(new).shape == (2,)


@pytest.mark.parametrize("stored", ["slices", "full"])
def test_tf1_saver_reads_tfshard_partitions(tmp_path, stored):
    """The other direction: a table tfshard wrote in two slices (add_slice), or whole,
    restores into a variable of three partitions with TF's Saver and with
    tfshard.tf.restore alike."""
    table = _rand((9, 4), 7)
    prefix = str(tmp_path / "parts")
    with tfshard.CheckpointWriter(prefix) as w:
        if stored == "slices":
            w.add_slice("table", [9, 4], "0,5:-", table[:5])
            w.add_slice("table", [9, 4], "5,4:-", table[5:])
        else:
            w.add("table", table)
    for use_saver in (True, False):
        with tf.Graph().as_default():
            pv = v1.get_variable("table", shape=[9, 4],
                                 partitioner=v1.fixed_size_partitioner(3))
            full = pv.as_tensor()
            with v1.Session() as sess:
                if use_saver:
                    v1.train.Saver().restore(sess, prefix)
                else:
                    tfshard.tf.restore(prefix, [pv], session=sess)
                np.testing.assert_array_equal(sess.run(full), table)


def test_graph_mode_needs_a_session(tf1_checkpoint):
    prefix, _ = tf1_checkpoint
    with tf.Graph().as_default():
        v1.get_variable("dense/bias", shape=[3])
        with pytest.raises(TypeError, match="session"):
            tfshard.tf.restore(prefix)


def test_eager_needs_var_list(tf1_checkpoint):
    with pytest.raises(TypeError, match="var_list"):
        tfshard.tf.restore(tf1_checkpoint[0])


# ---- TF2 eager ----------------------------------------------------------------------------

class _Net(tf.Module):
    def __init__(self, scale=0.0):
        super().__init__()
        self.dense = tf.Module()
        self.dense.kernel = tf.Variable(np.full((3, 2), scale, np.float32))
        self.dense.bias = tf.Variable(np.full((2,), scale, np.float32))
        # Same default names on purpose: only the object graph tells them apart.
        self.a = tf.Variable(np.full((2,), scale, np.float64))
        self.b = tf.Variable(np.full((2,), scale, np.float64))
        self.odd = {"x.y/z": tf.Variable(np.int64(0))}
        self.half = tf.Variable(np.zeros(4, np.float16))
        self.bf16 = tf.Variable(tf.zeros([4], tf.bfloat16))
        self.flag = tf.Variable(False)
        self.text = tf.Variable(b"")
        self.c64 = tf.Variable(np.zeros(2, np.complex64))


def _net_values(net):
    return {"kernel": net.dense.kernel.numpy(), "bias": net.dense.bias.numpy(),
            "a": net.a.numpy(), "b": net.b.numpy(), "odd": net.odd["x.y/z"].numpy(),
            "half": net.half.numpy(), "bf16": net.bf16.numpy(), "flag": net.flag.numpy(),
            "text": net.text.numpy(), "c64": net.c64.numpy()}


@pytest.fixture(scope="module")
def tf2_checkpoint(tmp_path_factory):
    net = _Net()
    net.dense.kernel.assign(_rand((3, 2), 11))
    net.dense.bias.assign(_rand((2,), 12))
    net.a.assign([1.5, -2.5])
    net.b.assign([3.25, 4.75])
    net.odd["x.y/z"].assign(-9)
    net.half.assign(np.array([0.5, 1, 2, 65504], np.float16))
    net.bf16.assign(tf.constant([1.5, -3, 7, 0.125], tf.bfloat16))
    net.flag.assign(True)
    net.text.assign(b"caf\xc3\xa9\x00")
    net.c64.assign(np.array([1 + 2j, -3j], np.complex64))
    prefix = tf.train.Checkpoint(model=net).save(str(tmp_path_factory.mktemp("tf2") / "ckpt"))
    return prefix, _net_values(net)


@pytest.mark.parametrize("root", ["module", "checkpoint"])
def test_tf2_object_graph_restore(tf2_checkpoint, root):
    prefix, expected = tf2_checkpoint
    net = _Net(scale=5.0)
    target = net if root == "module" else tf.train.Checkpoint(model=net)
    report = tfshard.tf.restore(prefix, target)
    got = _net_values(net)
    for name in expected:
        assert np.asarray(got[name]).dtype == np.asarray(expected[name]).dtype, name
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    counter = "save_counter/.ATTRIBUTES/VARIABLE_VALUE"
    # A Checkpoint creates its save_counter only when it saves (TF's restore defers the
    # value until then); tfshard assigns only variables that exist, and says so.
    assert report.ok and len(report.restored) == 10 and report.unexpected == [counter]
    labels = dict(report.restored)
    label = "odd/x..y.Sz" if root == "module" else "model/odd/x..y.Sz"
    assert labels[label] == "model/odd/x..y.Sz/.ATTRIBUTES/VARIABLE_VALUE"


def test_tf2_missing_and_mismatched(tf2_checkpoint):
    prefix, _ = tf2_checkpoint
    net = _Net(scale=5.0)
    net.extra = tf.Variable([1.0, 2.0])
    net.dense.bias = tf.Variable(np.zeros(3, np.float32))
    with pytest.raises(tfshard.RestoreError) as info:
        tfshard.tf.restore(prefix, net)
    report = info.value.report
    assert report.missing == [("extra", "extra/.ATTRIBUTES/VARIABLE_VALUE")]
    assert [m[0] for m in report.mismatched] == ["dense/bias"]
    np.testing.assert_array_equal(net.dense.kernel.numpy(), np.full((3, 2), 5.0))
    report = tfshard.tf.restore(prefix, net, strict=False)
    assert len(report.restored) == 9
    np.testing.assert_array_equal(net.extra.numpy(), [1.0, 2.0])


def test_tf2_list_by_name_through_the_graph(tf2_checkpoint):
    """Variables given as a list are found by the names the object graph records."""
    prefix, expected = tf2_checkpoint
    with tfshard.open(prefix) as ckpt:
        assert OBJECT_GRAPH_KEY in ckpt
    kernel = tf.Variable(np.zeros((3, 2), np.float32), name="k")
    with pytest.raises(tfshard.RestoreError):
        tfshard.tf.restore(prefix, [kernel])
    tfshard.tf.restore(prefix, {"model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE": kernel})
    np.testing.assert_array_equal(kernel.numpy(), expected["kernel"])


def test_tf2_restore_into_keras_model_matches_tf(tmp_path):
    """A Keras model trained one step and saved with its optimizer by tf.train.Checkpoint:
    tfshard restores the same weights and optimizer state as tf.train.Checkpoint.restore."""
    keras = pytest.importorskip("keras")

    def build():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"),
                                  keras.layers.Dense(2, name="d2")])
        model.compile(keras.optimizers.Adam(0.01), "mse")
        return model

    keras.utils.set_random_seed(0)
    trained = build()
    x, y = np.ones((8, 4), np.float32), np.ones((8, 2), np.float32)
    trained.fit(x, y, verbose=0, epochs=2)
    prefix = tf.train.Checkpoint(model=trained, optimizer=trained.optimizer).save(
        str(tmp_path / "ckpt"))
    by_tf, by_tfshard = build(), build()
    for m in (by_tf, by_tfshard):
        m.optimizer.build(m.trainable_variables)
    tf.train.Checkpoint(model=by_tf, optimizer=by_tf.optimizer).restore(prefix)
    report = tfshard.tf.restore(prefix, tf.train.Checkpoint(model=by_tfshard,
                                                            optimizer=by_tfshard.optimizer))
    assert report.ok
    for a, b, c in zip(trained.weights, by_tf.weights, by_tfshard.weights):
        np.testing.assert_array_equal(c.numpy(), a.numpy())
        np.testing.assert_array_equal(c.numpy(), b.numpy())
    for b, c in zip(by_tf.optimizer.variables, by_tfshard.optimizer.variables):
        np.testing.assert_array_equal(c.numpy(), b.numpy(), err_msg=c.path)
    # Restoring the model alone from the same checkpoint: weights only, slots unused.
    alone = build()
    report = tfshard.tf.restore(prefix, alone, strict=False)
    for a, c in zip(trained.weights, alone.weights):
        np.testing.assert_array_equal(c.numpy(), a.numpy())


def test_tf2_tfshard_written_checkpoint_by_name(tmp_path):
    """A checkpoint tfshard wrote (no object graph) restores a list of TF2 variables by
    their names, with every dtype kept exactly."""
    values = {"w": _rand((5, 5), 3), "scope/step": np.int64(7),
              "bf": np.array([1, 2.5], dtype=tf.bfloat16.as_numpy_dtype),
              "s": np.array([b"x", b""], object)}
    prefix = tfshard.save(str(tmp_path / "c"), values)
    variables = [tf.Variable(np.zeros((5, 5), np.float32), name="w"),
                 tf.Variable(np.int64(0), name="scope/step"),
                 tf.Variable(tf.zeros([2], tf.bfloat16), name="bf"),
                 tf.Variable([b"", b""], name="s")]
    report = tfshard.tf.restore(prefix, variables)
    assert report.ok and len(report.restored) == 4
    for v, name in zip(variables, values):
        got = v.numpy()
        assert got.dtype == np.asarray(values[name]).dtype
        np.testing.assert_array_equal(got, values[name])


def test_corrupt_checkpoint_is_a_tfshard_error(tf2_checkpoint, tmp_path):
    import shutil
    prefix, _ = tf2_checkpoint
    copy = tmp_path / "ckpt-1"
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(prefix + suffix, str(copy) + suffix)
    with tfshard.open(prefix) as ckpt:
        at = ckpt.info("model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE").offset
    data = bytearray(open(str(copy) + ".data-00000-of-00001", "rb").read())
    data[at + 1] ^= 0xFF
    open(str(copy) + ".data-00000-of-00001", "wb").write(bytes(data))
    with pytest.raises(tfshard.TFShardError):
        tfshard.tf.restore(str(copy), _Net())


def test_legacy_v1_checkpoint_restores_into_a_graph():
    """A V1 checkpoint TF's Saver(write_version=V1) wrote (a golden) restores through the
    same call, partitioned tensors included, and agrees with TF's own V1 restore."""
    from pathlib import Path

    prefix = str(Path(__file__).parent / "data" / "v1" / "partitioned" / "model.ckpt")
    names = [name for name, _ in tfshard.list_variables(prefix)]
    with tfshard.open(prefix) as ckpt:
        infos = {n: ckpt.info(n) for n in names}
    results = []
    for use_saver in (True, False):
        with tf.Graph().as_default():
            variables = {n: v1.get_variable(n.replace("/", "_"), shape=infos[n].shape,
                                            dtype=tf.as_dtype(infos[n].dtype))
                         for n in names}
            with v1.Session() as sess:
                if use_saver:
                    v1.train.Saver(variables).restore(sess, prefix)
                else:
                    report = tfshard.tf.restore(prefix, variables, session=sess)
                    assert report.ok and not report.unexpected
                results.append(sess.run(variables))
    assert any(infos[n].slices for n in names), "the golden should hold a sliced tensor"
    _assert_equal(results[1], results[0])
