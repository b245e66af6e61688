"""tfshard.graph against TensorFlow's own parse of the same files, field for field.

The files: the TF 2.21-written fixtures under tests/data/graph (see make_graph_fixtures.py)
and, made here by TF in a child process, a Keras SavedModel with several signatures, a
tf.Module SavedModel and a TF1 Saver ``.meta``.  Each is parsed with TF's
``meta_graph_pb2`` / ``saved_model_pb2`` and every field tfshard decodes is compared:
meta info, collections (VariableDefs through ``variable_pb2``), SaverDef, signatures,
assets, every node of the graph and of its function library (name, op, inputs, device,
every attribute; Const values against ``tf.make_ndarray``), op counts and the TF2
object graph.
"""

import collections
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
from tensorflow.core.framework import variable_pb2  # noqa: E402
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2  # noqa: E402

import tfshard  # noqa: E402
from tfshard import graph  # noqa: E402

DATA = Path(__file__).parent / "data" / "graph"
FIXTURES = ["tf1/model.ckpt-3.meta", "legacy/export.meta", "tf2_module/saved_model.pb",
            "builder/saved_model.pb"]


# ---- TF's parse, as tfshard should give it ---------------------------------------------

def tf_dtype(code):
    return None if code == 0 else tf.as_dtype(code).name


def tf_shape(proto, present=True):
    if not present:
        return []
    return None if proto.unknown_rank else [d.size for d in proto.dim]


def tf_info(info):
    which = info.WhichOneof("encoding")
    out = {"name": info.name if which == "name" else None, "dtype": tf_dtype(info.dtype),
           "shape": tf_shape(info.tensor_shape, info.HasField("tensor_shape")),
           "coo": None, "components": None, "spec": None}
    if which == "coo_sparse":
        c = info.coo_sparse
        out["coo"] = (c.values_tensor_name, c.indices_tensor_name, c.dense_shape_tensor_name)
    if which == "composite_tensor":
        out["components"] = [tf_info(c) for c in info.composite_tensor.components]
        out["spec"] = info.composite_tensor.type_spec.type_spec_class_name
    return out


def our_info(info):
    return {"name": info.name, "dtype": info.dtype, "shape": info.shape, "coo": info.coo_sparse,
            "components": None if info.components is None else [our_info(c)
                                                                 for c in info.components],
            "spec": info.type_spec}


def assert_tensor_value(ours, proto):
    assert ours.dtype == tf_dtype(proto.dtype)
    assert ours.shape == tf_shape(proto.tensor_shape, proto.HasField("tensor_shape"))
    try:
        expected = tf.make_ndarray(proto)
    except TypeError:   # resource, variant: TF has no numpy value either
        with pytest.raises(tfshard.UnsupportedError):
            ours.value()
        return
    got = ours.value()
    assert got.shape == expected.shape
    if expected.dtype == object:
        assert got.dtype == object and list(got.ravel()) == list(expected.ravel())
    else:
        assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()


_LIST_FIELDS = ("s", "i", "f", "b", "type", "shape", "tensor", "func")


def assert_attr(ours, av):
    kind = av.WhichOneof("value")
    if kind is None:
        assert ours is None
    elif kind in ("s", "i", "b", "placeholder"):
        assert ours == getattr(av, kind) and type(ours) is type(getattr(av, kind))
    elif kind == "f":
        assert ours == av.f or (math.isnan(ours) and math.isnan(av.f))
    elif kind == "type":
        assert ours == tf_dtype(av.type)
    elif kind == "shape":
        assert ours == tf_shape(av.shape)
    elif kind == "tensor":
        assert_tensor_value(ours, av.tensor)
    elif kind == "func":
        assert_func(ours, av.func)
    else:   # list: the first kind given, in field order
        lst = av.list
        given = [f for f in _LIST_FIELDS if len(getattr(lst, f))]
        if not given:
            assert ours == []
            return
        items = getattr(lst, given[0])
        assert isinstance(ours, list) and len(ours) == len(items)
        for o, item in zip(ours, items):
            if given[0] == "type":
                assert o == tf_dtype(item)
            elif given[0] == "shape":
                assert o == tf_shape(item)
            elif given[0] == "tensor":
                assert_tensor_value(o, item)
            elif given[0] == "func":
                assert_func(o, item)
            elif given[0] == "f":
                assert o == item or (math.isnan(o) and math.isnan(item))
            else:
                assert o == item


def assert_func(ours, func):
    assert isinstance(ours, graph.FuncAttr) and ours.name == func.name
    assert sorted(ours.attrs) == sorted(func.attr)
    for key, av in func.attr.items():
        assert_attr(ours.attrs[key], av)


def assert_node(ours, proto, function=None):
    assert (ours.name, ours.op, ours.inputs, ours.device, ours.function) == \
        (proto.name, proto.op, list(proto.input), proto.device, function)
    assert sorted(ours.attrs) == sorted(proto.attr)
    for key, av in proto.attr.items():
        assert_attr(ours.attrs[key], av)


def assert_meta_graph(ours, proto):
    """Every part of one meta graph as tfshard decodes it, against TF's parse."""
    info = proto.meta_info_def
    assert ours.tags == list(info.tags)
    assert ours.tensorflow_version == info.tensorflow_version
    assert ours.tensorflow_git_version == info.tensorflow_git_version
    assert ours.meta_graph_version == info.meta_graph_version
    assert ours.stripped_default_attrs == info.stripped_default_attrs
    assert ours.stripped_op_list == [op.name for op in info.stripped_op_list.op]
    assert ours.function_aliases == dict(info.function_aliases)
    assert ours.any_info == (graph.Any(info.any_info.type_url, info.any_info.value)
                             if info.HasField("any_info") else None)

    # protobuf maps: TF's parse does not keep their order
    assert sorted(ours.collections) == sorted(proto.collection_def)
    for name, c in proto.collection_def.items():
        mine = ours.collections[name]
        kind = c.WhichOneof("kind")
        assert mine.kind == kind
        if kind == "any_list":
            assert mine.value == [graph.Any(a.type_url, a.value) for a in c.any_list.value]
        elif kind is not None:
            expected = list(getattr(c, kind).value)
            assert len(mine.value) == len(expected)
            for a, b in zip(mine.value, expected):
                assert a == b or (math.isnan(a) and math.isnan(b))
                assert type(a) is type(b)
        if kind == "bytes_list" and name in graph.VARIABLE_COLLECTIONS:
            for mine_def, data in zip(mine.variables, c.bytes_list.value):
                v = variable_pb2.VariableDef()
                v.ParseFromString(data)
                s = v.save_slice_info_def
                assert mine_def == graph.VariableDef(
                    v.variable_name, v.initial_value_name, v.initializer_name, v.snapshot_name,
                    graph.SliceInfo(s.full_name, tuple(s.full_shape), tuple(s.var_offset),
                                    tuple(s.var_shape)) if v.HasField("save_slice_info_def")
                    else None, v.is_resource, v.trainable, v.synchronization, v.aggregation)
        else:
            assert mine.variables is None

    if proto.HasField("saver_def"):
        s = proto.saver_def
        assert ours.saver == graph.SaverDef(
            s.filename_tensor_name, s.save_tensor_name, s.restore_op_name, s.max_to_keep,
            s.sharded, s.keep_checkpoint_every_n_hours, s.version)
    else:
        assert ours.saver is None

    assert sorted(ours.signatures) == sorted(proto.signature_def)
    for key, sig in proto.signature_def.items():
        mine = ours.signatures[key]
        assert mine.method_name == sig.method_name
        for side in ("inputs", "outputs"):
            expected = getattr(sig, side)
            assert sorted(getattr(mine, side)) == sorted(expected)
            for k, v in expected.items():
                assert our_info(getattr(mine, side)[k]) == tf_info(v)
        assert sorted(mine.defaults) == sorted(sig.defaults)
        for k, v in sig.defaults.items():
            assert_tensor_value(mine.defaults[k], v)

    assets = [(tf_info(a.tensor_info) if a.HasField("tensor_info") else None, a.filename)
              for a in proto.asset_file_def]
    if not assets and "saved_model_assets" in proto.collection_def:
        for packed in proto.collection_def["saved_model_assets"].any_list.value:
            a = meta_graph_pb2.AssetFileDef()
            packed.Unpack(a)
            assets.append((tf_info(a.tensor_info), a.filename))
    assert [(None if a.tensor is None else our_info(a.tensor), a.filename)
            for a in ours.asset_files] == assets

    # Every node of the graph and of its functions.
    g = proto.graph_def
    assert ours.num_nodes == len(g.node)
    assert ours.producer == g.versions.producer
    assert [tuple(h) for h in ours.nodes()] == [(n.name, n.op, n.device) for n in g.node]
    for node in g.node:
        assert_node(ours.node(node.name), node)
    functions = {f.signature.name: f for f in g.library.function}
    assert [(f.name, f.num_nodes) for f in ours.functions()] == \
        [(name, len(f.node_def)) for name, f in functions.items()]
    for name, f in functions.items():
        decoded = ours.function_nodes(name)
        assert len(decoded) == len(f.node_def)
        for mine, node in zip(decoded, f.node_def):
            assert_node(mine, node, name)
    counts = collections.Counter(n.op for n in g.node)
    counts.update(n.op for f in g.library.function for n in f.node_def)
    assert ours.op_counts() == dict(sorted(counts.items()))

    assert ours.has_object_graph == proto.HasField("object_graph_def")
    objects = proto.object_graph_def.nodes
    mine = ours.saved_objects()
    assert len(mine) == len(objects)
    for o, p in zip(mine, objects):
        kind = p.WhichOneof("kind")
        assert o.kind == kind and o.registered_name == p.registered_name
        assert o.children == [(c.local_name, c.node_id) for c in p.children]
        detail = getattr(p, kind) if kind else None
        if kind == "variable":
            v = o.detail
            assert (v.dtype, v.shape, v.trainable, v.name, v.device) == (
                tf_dtype(detail.dtype), tf_shape(detail.shape, detail.HasField("shape")),
                detail.trainable, detail.name, detail.device)
        elif kind == "function":
            assert o.detail == list(detail.concrete_functions)
        elif kind == "bare_concrete_function":
            assert o.detail == (detail.concrete_function_name, list(detail.argument_keywords),
                                detail.allowed_positional_arguments)
        elif kind == "user_object":
            assert o.detail == detail.identifier
        elif kind == "asset":
            assert o.detail == detail.asset_file_def_index
        elif kind == "constant":
            assert o.detail == detail.operation
        elif kind == "resource":
            assert o.detail == detail.device
        elif kind == "captured_tensor":
            assert o.detail == (detail.name, detail.concrete_function)
    assert ours.concrete_functions() == {
        k: list(v.bound_inputs) for k, v in proto.object_graph_def.concrete_functions.items()}


def tf_parse(path: Path):
    data = path.read_bytes()
    if path.name == "saved_model.pb":
        model = saved_model_pb2.SavedModel()
        model.ParseFromString(data)
        return model.saved_model_schema_version, list(model.meta_graphs)
    meta = meta_graph_pb2.MetaGraphDef()
    meta.ParseFromString(data)
    return None, [meta]


def assert_file(path: Path):
    version, metas = tf_parse(path)
    with graph.open(path) as f:
        assert f.schema_version == version
        assert len(f.meta_graphs) == len(metas)
        for ours, proto in zip(f.meta_graphs, metas):
            assert_meta_graph(ours, proto)
        return graph.summary(f)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_decodes_as_tensorflow_parses_it(name):
    assert_file(DATA / name)


# ---- files made here by TF ------------------------------------------------------------

_MAKE = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tensorflow as tf
    import keras
    out = sys.argv[1]
    # Keras: a functional model, three signatures.
    inputs = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, name="logits")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((8, 4), np.float32), np.zeros((8, 3), np.float32), verbose=0)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features")])
    def serve(x):
        return {"logits": model(x)}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features")])
    def probabilities(x):
        return {"probs": tf.nn.softmax(model(x)), "top": tf.argmax(model(x), axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features"),
                                  tf.TensorSpec([], tf.float32, name="temperature")])
    def tempered(x, t):
        return {"probs": tf.nn.softmax(model(x) / t)}

    tf.saved_model.save(model, os.path.join(out, "keras"),
                        signatures={"serving_default": serve, "probabilities": probabilities,
                                    "tempered": tempered})

    # tf.Module with tf.functions, one without an input signature.
    class Counter(tf.Module):
        def __init__(self):
            super().__init__()
            self.count = tf.Variable(0, dtype=tf.int64)
            self.table = tf.Variable(tf.zeros([5, 2], tf.float16), name="table")

        @tf.function(input_signature=[tf.TensorSpec([], tf.int64)])
        def add(self, n):
            self.count.assign_add(n)
            return self.count

        @tf.function
        def lookup(self, ids):
            return tf.gather(self.table, ids)

    m = Counter()
    m.lookup(tf.constant([1, 2]))
    tf.saved_model.save(m, os.path.join(out, "module"), signatures={"add": m.add})

    # TF1 Saver.
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        w = v1.get_variable("w", [2, 2], dtype=tf.float64)
        v1.add_to_collection("hyperparameters", tf.constant([1.5, 2.5], name="lrs"))
        step = v1.train.get_or_create_global_step()
        with v1.Session() as s:
            s.run(v1.global_variables_initializer())
            v1.train.Saver().save(s, os.path.join(out, "tf1", "m"), global_step=step)
""")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("made")
    proc = subprocess.run([sys.executable, "-c", _MAKE, str(out)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("name", ["keras/saved_model.pb", "module/saved_model.pb",
                                  "tf1/m-0.meta"])
def test_fresh_file_decodes_as_tensorflow_parses_it(made, name):
    doc = assert_file(made / name)
    assert list(doc) == ["meta_graphs"]


def test_keras_signatures_and_variables(made):
    with graph.open(made / "keras") as f:
        g = f.meta_graph("serve")
        assert set(g.signatures) >= {"serving_default", "probabilities", "tempered"}
        probs = g.signatures["probabilities"]
        assert probs.method_name == "tensorflow/serving/predict"
        assert probs.inputs["features"].dtype == "float32"
        assert probs.inputs["features"].shape == [-1, 4]
        assert probs.outputs["top"].dtype == "int64"
        assert set(g.signatures["tempered"].inputs) == {"features", "temperature"}
        # The object graph's variables are those the checkpoint holds, under their keys.
        keys = dict(tf.train.list_variables(str(made / "keras" / "variables" / "variables")))
        saved = g.saved_variables()
        assert {tuple(v.shape) for v in saved if v.path.endswith("kernel")} >= {(4, 8), (8, 3)}
        for v in saved:
            assert keys[v.checkpoint_key] == v.shape, v
        check = graph.check_restore(f)
        assert check.ok and check.source == "object_graph", check


def test_module_functions_and_float16_variable(made):
    with graph.open(made / "module") as f:
        g = f.meta_graph()
        saved = {v.path: v for v in g.saved_variables()}
        assert saved["table"].dtype == "float16" and saved["table"].shape == [5, 2]
        assert saved["count"].dtype == "int64"
        paths = {fn.path: fn for fn in g.saved_functions()}
        assert paths["lookup"].kind == "function" and paths["add"].concrete_functions
        assert g.signatures["add"].outputs["output_0"].dtype == "int64"


def test_tf1_variables_match_the_imported_graph(made):
    meta = made / "tf1" / "m-0.meta"
    with graph.open(meta) as f:
        g = f.meta_graph()
        ours = [(v.name, v.dtype, v.shape, v.trainable) for v in g.variables()]
        assert g.tensor("lrs:0").value().tolist() == [1.5, 2.5]
    with tf.Graph().as_default():
        tf.compat.v1.train.import_meta_graph(str(meta))
        trainable = {v.op.name for v in tf.compat.v1.trainable_variables()}
        theirs = [(v.op.name, v.dtype.base_dtype.name, v.shape.as_list(),
                   v.op.name in trainable) for v in tf.compat.v1.global_variables()]
    assert ours == theirs


def test_fixture_variables_match_the_imported_graph():
    """variables(): the variables collection in order, then trainable-only ones, each with
    the dtype and shape TF gives the imported variable."""
    meta = DATA / "tf1" / "model.ckpt-3.meta"
    with graph.open(meta) as f:
        ours = [(v.name, v.dtype, v.shape, v.trainable) for v in f.meta_graph().variables()]
    with tf.Graph().as_default():
        tf.compat.v1.train.import_meta_graph(str(meta))
        v1 = tf.compat.v1
        trainable = [v.op.name for v in v1.trainable_variables()]
        names = [v.op.name for v in v1.global_variables()]
        names += [n for n in trainable if n not in names]
        every = {v.op.name: v for v in v1.global_variables() + v1.trainable_variables()}
        theirs = [(n, every[n].dtype.base_dtype.name, every[n].shape.as_list(), n in trainable)
                  for n in names]
    assert ours == theirs


def test_tensor_values_of_hyperparameters_match_tensorflow():
    meta = DATA / "tf1" / "model.ckpt-3.meta"
    with graph.open(meta) as f:
        g = f.meta_graph()
        names = g.collections["hyperparameters"].value
        ours = {n: g.tensor(n).value() for n in names}
        shapes = {n: (g.tensor(n).dtype, g.tensor(n).shape) for n in names}
    with tf.Graph().as_default():
        tf.compat.v1.train.import_meta_graph(str(meta))
        with tf.compat.v1.Session() as sess:
            for name in names:
                t = tf.compat.v1.get_default_graph().get_tensor_by_name(name)
                value = sess.run(t)
                assert shapes[name] == (t.dtype.name, t.shape.as_list())
                assert np.array_equal(ours[name], value), name


def test_legacy_bundle_signatures_decode():
    with graph.open(DATA / "legacy" / "export.meta") as f:
        default, named = f.meta_graph().serving_signatures()
    assert default == graph.BundleSignature("regression", {"input": "x:0", "output": "y:0"})
    assert named == {"inputs": graph.BundleSignature("generic", {"x": "x:0", "y": "y:0"})}


_RISKY = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tensorflow as tf
    out = sys.argv[1]
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        x = v1.placeholder(tf.float32, [2], name="x")
        y = v1.py_func(lambda a: a * 2, [x], tf.float32, name="doubler")
        data = tf.io.read_file(tf.constant("/etc/hostname"), name="read_it")
        tf.io.write_file(tf.constant(os.path.join(out, "dump")), data, name="write_it")
        v = v1.get_variable("v", [2])
        with v1.Session() as s:
            s.run(v1.global_variables_initializer())
            v1.train.Saver().save(s, os.path.join(out, "tf1", "m"))

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def load(self, path):
            return tf.io.read_file(path)

    tf.saved_model.save(M(), os.path.join(out, "tf2"))
""")


def test_risky_ops_of_graphs_tf_wrote(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _RISKY, str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with graph.open(tmp_path / "tf1" / "m.meta") as f:
        risky = {(r.node, r.op) for r in graph.risky_ops(f.meta_graph())}
    assert risky == {("doubler", "PyFunc"), ("read_it", "ReadFile"), ("write_it", "WriteFile")}
    with graph.open(tmp_path / "tf2") as f:
        risky = graph.risky_ops(f.meta_graph())
    # The ReadFile inside the function; the saver's own SaveV2/RestoreV2 (in the traced
    # save and restore functions) are not flagged.
    assert [(r.op, r.function.startswith("__inference_load")) for r in risky] == [
        ("ReadFile", True)]
