"""Regenerate the graph fixtures under ``tests/data/graph/`` with real TensorFlow.

Run (needs TensorFlow 2.21)::

    .venv/bin/python tests/data/make_graph_fixtures.py           # all cases
    .venv/bin/python tests/data/make_graph_fixtures.py legacy    # some cases

Each case directory is deleted and rewritten.  Every file is written by TensorFlow
(graphs by ``Saver``/``export_meta_graph``/``saved_model.save``/the SavedModel builder;
where a case needs a feature TF 2.21 no longer writes, the ``MetaGraphDef`` is edited
with TF's own ``meta_graph_pb2`` and serialized by it).  The tests compare tfshard's
decoding of these files with TF's own parse of them, field for field.

Cases:

``tf1/model.ckpt-3`` (``.meta`` + checkpoint)
    A TF1 graph-mode model saved by ``tf.compat.v1.train.Saver`` (V2 format) after
    three training steps: reference variables (``VariableV2``) and resource variables
    (``VarHandleOp``), ``emb`` partitioned in 3 row slices, a non-trainable ``counts``,
    a local variable, ``global_step``; v1 control flow (``tf.cond`` and
    ``tf.while_loop``, so ``cond_context`` / ``while_context`` collections of binary
    protos that are not UTF-8); custom collections of every kind: ``hyperparameters``
    (node_list of Const tensors: a float32 learning rate, an int64 batch size, a string
    name, a float32 [3, 4] of zeros stored as one value, an int32 [5] of values that
    TF stores as a prefix), ``my_bytes`` (bytes_list with non-UTF-8 bytes), ``my_ints``
    (int64_list with negatives and 2**62), ``my_floats`` (float_list with inf and nan),
    and ``my_any`` (any_list: an Any packing a TensorShapeProto, added with
    meta_graph_pb2 because the Saver writes none).

``legacy/export`` (``export.meta`` + a V1 checkpoint ``export``)
    A graph in the style of TF 0.12 SessionBundle exports: two scalar variables of the
    legacy ``Variable`` op named ``Variable`` and ``Variable_1`` (y = Variable * x +
    Variable_1: the ``half_plus_two`` model), a Saver of format V1 made of
    ``SaveSlices`` and ``RestoreSlice`` ops (what Savers before TF 1.0 built), no
    ``tensorflow_version``, VariableDefs without the ``trainable`` flag, and a
    ``serving_signatures`` collection holding a ``tensorflow.serving.Signatures`` Any
    (a default regression signature and a named generic one).  The values saved are
    0.5 and 2.0, as in the 2016 export of ``shared/corpus/realworld/
    v1-serving-export-2016/export``, which the same graph restores.

``tf2_module`` (a SavedModel directory)
    ``tf.saved_model.save`` of a ``tf.Module`` holding a nested module, trainable and
    non-trainable variables, an asset (a vocabulary file), a ``tf.function`` with two
    concrete functions, and three signatures (``serving_default``, ``scores``, and
    ``ragged`` with a RaggedTensor output: a composite tensor info).

``builder`` (a SavedModel directory)
    ``tf.compat.v1.saved_model.Builder`` as Estimator exports used it (Estimators are
    gone from TF 2.21): two meta graphs (``serve`` and ``train``), classification,
    regression and predict signatures (one input a SparseTensor: a coo_sparse tensor
    info; one with a default value), an asset collection, a main op.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE / "graph"
sys.path.insert(0, str(HERE.parent))   # tests/, for bundle_builder's protobuf encoder
CASES = ("tf1", "legacy", "tf2_module", "builder")


def log(msg: str) -> None:
    print(f"[make_graph_fixtures] {msg}", flush=True)


def fresh_dir(name: str) -> Path:
    path = ROOT / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _rewrite_meta(path: Path, edit) -> None:
    from tensorflow.core.protobuf import meta_graph_pb2

    meta = meta_graph_pb2.MetaGraphDef()
    meta.ParseFromString(path.read_bytes())
    edit(meta)
    path.write_bytes(meta.SerializeToString(deterministic=True))


def make_tf1(tf) -> None:
    out = fresh_dir("tf1")
    v1 = tf.compat.v1
    v1.disable_control_flow_v2()
    with tf.Graph().as_default():
        v1.set_random_seed(1)
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        labels = v1.placeholder(tf.float32, [None, 2], name="labels")
        with v1.variable_scope("dense"):
            kernel = v1.get_variable("kernel", [3, 2], use_resource=False)
            bias = v1.get_variable("bias", [2], initializer=v1.zeros_initializer(),
                                   use_resource=True)
        emb = v1.get_variable("emb", [10, 4], partitioner=v1.fixed_size_partitioner(3),
                              use_resource=False)
        counts = v1.get_variable("counts", [4], dtype=tf.int32, trainable=False,
                                 initializer=v1.zeros_initializer(), use_resource=False)
        v1.get_variable("local_acc", [], collections=[v1.GraphKeys.LOCAL_VARIABLES],
                        initializer=v1.zeros_initializer(), use_resource=False)
        step = v1.train.get_or_create_global_step()
        ids = tf.constant([1, 5, 9], name="ids")
        looked_up = tf.reduce_sum(tf.nn.embedding_lookup(emb, ids))
        logits = tf.matmul(x, kernel) + bias + looked_up
        logits = tf.cond(tf.reduce_sum(logits) > 0, lambda: logits * 2.0, lambda: logits,
                         name="cond")
        _, total = tf.while_loop(lambda i, acc: i < 3, lambda i, acc: (i + 1, acc * 1.5),
                                 [tf.constant(0), tf.reduce_sum(logits)], name="while")
        loss = tf.reduce_mean(tf.square(logits - labels)) + 0.0 * total
        with v1.name_scope("hp"):
            hyper = [tf.constant(0.05, name="learning_rate"),
                     tf.constant(32, dtype=tf.int64, name="batch_size"),
                     tf.constant("adam-ish", name="run_name"),
                     tf.zeros([3, 4], name="zeros"),
                     tf.constant([7, 8, 8, 8, 8], dtype=tf.int32, name="repeated")]
        for t in hyper:
            v1.add_to_collection("hyperparameters", t)
        for value in (b"plain", b"\xff\x00\xfe not utf-8", "ünïcödé".encode()):
            v1.add_to_collection("my_bytes", value)
        for value in (-3, 0, 2**62):
            v1.add_to_collection("my_ints", value)
        for value in (0.25, float("inf"), float("nan"), -1e-30):
            v1.add_to_collection("my_floats", value)
        lr = hyper[0]
        train = v1.train.GradientDescentOptimizer(lr).minimize(loss, global_step=step)
        with tf.control_dependencies([train]):
            train = v1.assign_add(counts, tf.ones([4], tf.int32))
        v1.add_to_collection(v1.GraphKeys.TRAIN_OP, train)
        saver = v1.train.Saver(max_to_keep=3, save_relative_paths=True)
        rng = np.random.default_rng(0)
        feed = {x: rng.normal(size=(4, 3)).astype(np.float32),
                labels: rng.normal(size=(4, 2)).astype(np.float32)}
        with v1.Session() as sess:
            sess.run([v1.global_variables_initializer(), v1.local_variables_initializer()])
            for _ in range(3):
                sess.run(train, feed)
            saver.save(sess, str(out / "model.ckpt"), global_step=step)
    v1.enable_control_flow_v2()

    def add_any(meta):
        from tensorflow.core.framework import tensor_shape_pb2

        shape = tensor_shape_pb2.TensorShapeProto()
        shape.dim.add(size=3)
        shape.dim.add(size=-1)
        entry = meta.collection_def["my_any"].any_list.value.add()
        entry.Pack(shape)

    _rewrite_meta(out / "model.ckpt-3.meta", add_any)


SIGNATURES_URL = "type.googleapis.com/tensorflow.serving.Signatures"


def _serving_signatures() -> bytes:
    """A serialized tensorflow.serving.Signatures (session_bundle/manifest.proto:
    Signatures 1 default_signature, 2 named_signatures; Signature 1 regression, 3 generic;
    RegressionSignature 1 input, 2 output; GenericSignature 1 map; TensorBinding 1
    tensor_name), built field by field with tests/bundle_builder.py: TF 2.21 no longer
    ships that proto."""
    from bundle_builder import field as encode

    def field(number, payload):
        return encode(number, 2, payload)

    def binding(name):
        return field(1, name.encode())

    regression = field(1, field(1, binding("x:0")) + field(2, binding("y:0")))
    generic = field(3, field(1, field(1, b"x") + field(2, binding("x:0")))
                    + field(1, field(1, b"y") + field(2, binding("y:0"))))
    return field(1, regression) + field(2, field(1, b"inputs") + field(2, generic))


def make_legacy(tf) -> None:
    from tensorflow.core.protobuf import saver_pb2

    out = fresh_dir("legacy")
    v1 = tf.compat.v1
    with tf.Graph().as_default() as graph:
        a = v1.Variable(0.5, name="Variable", use_resource=False)
        b = v1.Variable(2.0, name="Variable_1", use_resource=False)
        x = v1.placeholder(tf.float32, name="x")
        tf.add(tf.multiply(a, x), b, name="y")
        with v1.name_scope("save"):
            filename = v1.placeholder_with_default("model", [], name="Const")
            names = tf.constant(["Variable", "Variable_1"], name="save/tensor_names")
            slices = tf.constant(["", ""], name="save/shapes_and_slices")
            save = tf.raw_ops.SaveSlices(filename=filename, tensor_names=names,
                                         shapes_and_slices=slices, data=[a, b], name="save")
            with tf.control_dependencies([save]):
                done = tf.identity(filename, name="control_dependency")
            assigns = []
            for i, var in enumerate((a, b)):
                value = tf.raw_ops.RestoreSlice(
                    file_pattern=filename, tensor_name=tf.constant(var.op.name,
                                                                   name=f"tensor_name_{i}"),
                    shape_and_slice=tf.constant("", name=f"shape_and_slice_{i}"),
                    dt=tf.float32, name=f"RestoreSlice_{i}" if i else "RestoreSlice")
                assigns.append(v1.assign(var, value, name=f"Assign_{i}" if i else "Assign"))
            restore = tf.group(*assigns, name="restore_all")
        saver_def = saver_pb2.SaverDef(
            filename_tensor_name=filename.name, save_tensor_name=done.name,
            restore_op_name=restore.name, max_to_keep=5, sharded=False,
            keep_checkpoint_every_n_hours=10000.0, version=saver_pb2.SaverDef.V1)
        saver = v1.train.Saver(saver_def=saver_def)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            saver.save(sess, str(out / "export"), write_meta_graph=False,
                       write_state=False)
        meta = v1.train.export_meta_graph(saver_def=saver_def, graph=graph)
    assert (out / "export").is_file(), "a V1 save writes the prefix itself"

    from tensorflow.core.framework import variable_pb2

    # TF 0.12 wrote the `Variable` op, no version strings, VariableDefs without the
    # trainable flag and SessionBundle's serving signatures.
    for node in meta.graph_def.node:
        if node.op == "VariableV2":
            node.op = "Variable"
    for op in meta.meta_info_def.stripped_op_list.op:
        if op.name == "VariableV2":
            op.name = "Variable"
    meta.meta_info_def.ClearField("tensorflow_version")
    meta.meta_info_def.ClearField("tensorflow_git_version")
    for key in ("variables", "trainable_variables"):
        values = meta.collection_def[key].bytes_list.value
        for i, data in enumerate(values):
            definition = variable_pb2.VariableDef()
            definition.ParseFromString(data)
            definition.ClearField("trainable")
            values[i] = definition.SerializeToString()
    entry = meta.collection_def["serving_signatures"].any_list.value.add()
    entry.type_url = SIGNATURES_URL
    entry.value = _serving_signatures()
    (out / "export.meta").write_bytes(meta.SerializeToString(deterministic=True))


def make_tf2_module(tf) -> None:
    out = ROOT / "tf2_module"
    if out.exists():
        shutil.rmtree(out)
    vocab = ROOT / "vocab.txt"
    vocab.write_text("a\nb\nc\n")

    class Inner(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.reshape(tf.range(6, dtype=tf.float32), [3, 2]),
                                      name="kernel")

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()
            self.bias = tf.Variable([0.5, -0.5], name="bias")
            self.calls = tf.Variable(0, dtype=tf.int64, trainable=False, name="calls")
            self.vocab = tf.saved_model.Asset(str(vocab))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": tf.matmul(x, self.inner.kernel) + self.bias}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                      tf.TensorSpec([], tf.float32, name="scale")])
        def scores(self, x, scale):
            return {"scores": tf.nn.softmax(self(x)["y"] * scale),
                    "count": tf.identity(self.calls)}

        @tf.function(input_signature=[tf.RaggedTensorSpec([None, None], tf.int32)])
        def ragged(self, x):
            return {"sums": tf.reduce_sum(x, axis=1), "doubled": x * 2}

        @tf.function
        def double(self, v):
            return v * 2

    model = Model()
    model.double(tf.constant(1.0))
    model.double(tf.constant([1, 2]))
    tf.saved_model.save(model, str(out), signatures={
        "serving_default": model.__call__, "scores": model.scores, "ragged": model.ragged})
    vocab.unlink()


def make_builder(tf) -> None:
    out = ROOT / "builder"
    if out.exists():
        shutil.rmtree(out)
    v1 = tf.compat.v1
    vocab = ROOT / "labels.txt"
    vocab.write_text("cat\ndog\n")
    builder = v1.saved_model.Builder(str(out))
    utils = v1.saved_model.utils
    for tags in (["serve"], ["train"]):
        with tf.Graph().as_default():
            serialized = v1.placeholder(tf.string, [None], name="tf_example")
            features = v1.placeholder(tf.float32, [None, 4], name="features")
            sparse = v1.sparse_placeholder(tf.int64, [None, 10], name="sparse_ids")
            w = v1.get_variable("linear/w", [4, 2])
            b = v1.get_variable("linear/b", [2], initializer=v1.zeros_initializer())
            extra = tf.cast(tf.sparse.reduce_sum(sparse, axis=1), tf.float32)
            logits = tf.matmul(features, w) + b + tf.expand_dims(extra, 1)
            probs = tf.nn.softmax(logits, name="probabilities")
            classes = tf.constant([[b"cat", b"dog"]], name="class_names")
            asset = tf.constant(str(vocab), name="asset_path")
            v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, asset)
            info = utils.build_tensor_info
            signatures = {
                "classify": v1.saved_model.classification_signature_def(
                    serialized, tf.tile(classes, [tf.shape(probs)[0], 1]), probs),
                "regress": v1.saved_model.regression_signature_def(
                    serialized, tf.reduce_max(probs, axis=1, keepdims=True)),
                "serving_default": v1.saved_model.build_signature_def(
                    inputs={"features": info(features), "sparse_ids": info(sparse)},
                    outputs={"probabilities": info(probs), "logits": info(logits)},
                    method_name="tensorflow/serving/predict"),
            }
            with v1.Session() as sess:
                sess.run(v1.global_variables_initializer())
                assets = v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS)
                if tags == ["serve"]:
                    builder.add_meta_graph_and_variables(
                        sess, tags, signature_def_map=signatures, assets_collection=assets,
                        main_op=v1.tables_initializer(), strip_default_attrs=True)
                else:
                    builder.add_meta_graph(tags, signature_def_map={
                        "train": signatures["serving_default"]}, assets_collection=assets)
    builder.save()
    vocab.unlink()

    def add_default(model_meta):
        from tensorflow.core.framework import tensor_pb2, types_pb2

        default = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
        default.tensor_shape.dim.add(size=1)
        default.tensor_shape.dim.add(size=4)
        default.float_val.extend([1.0])
        model_meta.signature_def["serving_default"].defaults["features"].CopyFrom(default)

    from tensorflow.core.protobuf import saved_model_pb2

    path = out / "saved_model.pb"
    model = saved_model_pb2.SavedModel()
    model.ParseFromString(path.read_bytes())
    add_default(model.meta_graphs[0])
    path.write_bytes(model.SerializeToString(deterministic=True))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", choices=[[], *CASES], default=[])
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    ROOT.mkdir(exist_ok=True)
    for name in args.cases or CASES:
        log(name)
        globals()[f"make_{name}"](tf)
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    log(f"{total} bytes under {ROOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
