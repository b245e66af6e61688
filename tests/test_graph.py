"""tfshard.graph and ``tfshard graph`` on the TF-written fixtures of tests/data/graph
(without TensorFlow): what each part decodes to, the JSON shape, the command line, and
the paths (SavedModel directories, .meta files) the other commands accept or point away
from.  test_graph_tf_compat.py checks the same files against TF's own parse."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import tfshard
from tfshard import graph, paths
from tfshard.cli import main as cli

from bundle_builder import field, varint

DATA = Path(__file__).parent / "data" / "graph"
TF1 = DATA / "tf1" / "model.ckpt-3.meta"
LEGACY = DATA / "legacy" / "export.meta"
MODULE = DATA / "tf2_module"
BUILDER = DATA / "builder"
CORPUS_EXPORT = (Path(__file__).parents[2] / "shared" / "corpus" / "realworld"
                 / "v1-serving-export-2016" / "export")


def run_cli(capsys, *argv):
    code = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- meta info, collections, saver -----------------------------------------------------

def test_tf1_meta_info_and_collections_of_every_kind():
    with graph.open(TF1) as f:
        assert f.kind == "meta_graph" and f.schema_version is None and len(f.meta_graphs) == 1
        g = f.meta_graph()
        assert g.tags == [] and g.tensorflow_version == "2.21.0"
        assert "VariableV2" in g.stripped_op_list and "VarHandleOp" in g.stripped_op_list
        c = g.collections
        assert c["hyperparameters"] == graph.Collection(
            "hyperparameters", "node_list", ["hp/learning_rate:0", "hp/batch_size:0",
                                             "hp/run_name:0", "hp/zeros:0", "hp/repeated:0"])
        assert c["my_bytes"].kind == "bytes_list"
        assert c["my_bytes"].value == [b"plain", b"\xff\x00\xfe not utf-8",
                                       "ünïcödé".encode()]
        assert c["my_ints"] == graph.Collection("my_ints", "int64_list", [-3, 0, 2**62])
        floats = c["my_floats"].value
        assert c["my_floats"].kind == "float_list" and floats[0] == 0.25
        assert floats[1] == float("inf") and np.isnan(floats[2])
        assert floats[3] == float(np.float32(-1e-30))     # a float: stored as 32 bits
        assert c["my_any"].kind == "any_list"
        assert c["my_any"].value[0].type_url == "type.googleapis.com/tensorflow.TensorShapeProto"
        # TensorShapeProto {dim {size: 3} dim {size: -1}}, as protobuf packs it
        assert c["my_any"].value[0].value == (field(2, 2, field(1, 0, 3))
                                              + field(2, 2, field(1, 0, -1)))
        # v1 control flow contexts are binary protos, not UTF-8 text
        assert c["cond_context"].kind == "bytes_list" and len(c["cond_context"].value) == 2
        with pytest.raises(UnicodeDecodeError):
            for value in c["cond_context"].value + c["while_context"].value:
                value.decode("utf-8")
        # VariableDef entries decoded as variables
        names = [v.variable_name for v in c["variables"].variables]
        assert names == ["dense/kernel:0", "dense/bias:0", "emb/part_0:0", "emb/part_1:0",
                         "emb/part_2:0", "counts:0", "global_step:0"]
        step, = c["global_step"].variables
        assert step.variable_name == "global_step:0" and not step.trainable
        assert c["hyperparameters"].variables is None and c["my_bytes"].variables is None
        assert g.saver == graph.SaverDef("save/Const:0", "save/control_dependency:0",
                                         "save/restore_all", 3, False, 10000.0, 2)


def test_tf1_variables_in_collection_order_with_partitions_and_keys():
    with graph.open(TF1) as f:
        variables = f.meta_graph().variables()
    rows = [(v.name, v.dtype, v.shape, v.trainable, v.checkpoint_key, v.op) for v in variables]
    assert rows == [
        ("dense/kernel", "float32", [3, 2], True, "dense/kernel", "VariableV2"),
        ("dense/bias", "float32", [2], True, "dense/bias", "VarHandleOp"),
        ("emb/part_0", "float32", [4, 4], True, "emb", "VariableV2"),
        ("emb/part_1", "float32", [3, 4], True, "emb", "VariableV2"),
        ("emb/part_2", "float32", [3, 4], True, "emb", "VariableV2"),
        ("counts", "int32", [4], False, "counts", "VariableV2"),
        ("global_step", "int64", [], False, "global_step", "VarHandleOp"),
        # only in trainable_variables (a local variable TF1 also marks trainable)
        ("local_acc", "float32", [], True, "local_acc", "VariableV2"),
    ]
    info = variables[3].slice_info
    assert info == graph.SliceInfo("emb", (10, 4), (4, 0), (3, 4))
    assert info.spec == "10 4 4,3:0,4"
    # The keys are those the checkpoint holds (a partitioned variable once, whole).
    keys = dict(tfshard.list_variables(DATA / "tf1" / "model.ckpt-3"))
    for v in variables[:-1]:
        assert v.checkpoint_key in keys
    assert keys["emb"] == [10, 4]


def test_hyperparameter_constants_and_tensor_lookup():
    with graph.open(TF1) as f:
        g = f.meta_graph()
        lr = g.tensor("hp/learning_rate:0")
        assert (lr.op, lr.dtype, lr.shape, lr.index) == ("Const", "float32", [], 0)
        value = lr.value()
        assert value.dtype == np.float32 and value == np.float32(0.05)
        assert g.tensor("hp/batch_size").value() == 32
        assert g.tensor("hp/batch_size").value().dtype == np.int64
        assert g.tensor("hp/run_name:0").value()[()] == b"adam-ish"
        zeros = g.tensor("hp/zeros:0").value()   # one value stored for 12 elements
        assert zeros.shape == (3, 4) and not zeros.any()
        assert g.tensor("hp/repeated:0").value().tolist() == [7, 8, 8, 8, 8]
        # Other nodes: a reference variable, a resource handle, a placeholder.
        kernel = g.tensor("dense/kernel:0")
        assert (kernel.op, kernel.dtype, kernel.shape) == ("VariableV2", "float32_ref", [3, 2])
        assert g.tensor("dense/bias").dtype == "resource"
        x = g.tensor("x:0")
        assert (x.op, x.dtype, x.shape) == ("Placeholder", "float32", [-1, 3])
        with pytest.raises(tfshard.UnsupportedError, match="Placeholder"):
            x.value()
        with pytest.raises(tfshard.NodeNotFoundError, match="use tensor"):
            g.node("x:0")
        with pytest.raises(KeyError):
            g.tensor("no/such:0")
        node = g.node("dense/kernel")
        assert node.attrs["dtype"] == "float32" and node.attrs["shape"] == [3, 2]


def test_op_counts_cover_graph_and_functions():
    with graph.open(MODULE) as f:
        g = f.meta_graph()
        counts = g.op_counts()
        assert sum(counts.values()) == g.num_nodes + sum(fn.num_nodes for fn in g.functions())
        assert counts["VarHandleOp"] >= 3 and counts["SaveV2"] == 1
        heads = g.nodes()
        assert len(heads) == g.num_nodes and heads[0].name
        fn = g.functions()[0]
        assert len(g.function_nodes(fn.name)) == fn.num_nodes
        assert all(n.function == fn.name for n in g.function_nodes(fn.name))
        with pytest.raises(tfshard.NodeNotFoundError):
            g.nodes("no_such_function")


# ---- SavedModels -----------------------------------------------------------------------

def test_tf2_module_object_graph_variables_functions_assets():
    with graph.open(MODULE) as f:
        assert f.kind == "saved_model" and f.schema_version == 1
        assert f.variables_prefix == str(MODULE / "variables" / "variables")
        g = f.meta_graph()
        assert g.tags == ["serve"] and g.has_object_graph
        saved = [(v.path, v.name, v.dtype, v.shape, v.trainable, v.checkpoint_key)
                 for v in g.saved_variables()]
        assert saved == [
            ("bias", "bias", "float32", [2], True, "bias/.ATTRIBUTES/VARIABLE_VALUE"),
            ("calls", "calls", "int64", [], False, "calls/.ATTRIBUTES/VARIABLE_VALUE"),
            ("inner/kernel", "kernel", "float32", [3, 2], True,
             "inner/kernel/.ATTRIBUTES/VARIABLE_VALUE")]
        # no variables collection: variables() are the object graph's
        assert [(v.name, v.checkpoint_key) for v in g.variables()] == [(s[1], s[5])
                                                                       for s in saved]
        keys = dict(tfshard.list_variables(f.variables_prefix))
        assert all(keys[s[5]] == s[3] for s in saved)
        functions = {fn.path: fn for fn in g.saved_functions()}
        assert len(functions["double"].concrete_functions) == 2
        assert functions["signatures/serving_default"].kind == "bare_concrete_function"
        assert [a.filename for a in g.asset_files] == ["vocab.txt"]
        assert (MODULE / "assets" / "vocab.txt").is_file()
        ragged = g.signatures["ragged"].outputs["doubled"]
        assert ragged.name is None and ragged.type_spec == "RaggedTensorSpec"
        assert [(c.name, c.dtype) for c in ragged.components] == [
            ("PartitionedCall:0", "int32"), ("PartitionedCall:1", "int64")]


def test_builder_two_meta_graphs_sparse_input_assets_and_defaults():
    with graph.open(BUILDER) as f:
        assert [g.tags for g in f.meta_graphs] == [["serve"], ["train"]]
        assert f.meta_graph() is f.meta_graphs[0]          # the one tagged serve
        assert f.meta_graph("train") is f.meta_graphs[1]
        with pytest.raises(tfshard.UnsupportedError, match="no meta graph"):
            f.meta_graph(["gpu"])
        g = f.meta_graph("serve")
        sig = g.signatures["serving_default"]
        sparse = sig.inputs["sparse_ids"]
        assert sparse.name is None and sparse.dtype == "int64" and sparse.shape == [-1, 10]
        assert sparse.coo_sparse == ("sparse_ids/values:0", "sparse_ids/indices:0",
                                     "sparse_ids/shape:0")
        default = sig.defaults["features"]
        assert (default.dtype, default.shape) == ("float32", [1, 4])
        assert default.value().tolist() == [[1.0] * 4]
        assert g.signatures["classify"].method_name == "tensorflow/serving/classify"
        assets = g.asset_files        # packed in the saved_model_assets any_list
        assert [(a.filename, a.tensor.name) for a in assets] == [("labels.txt", "asset_path:0")]
        assert g.collections["saved_model_main_op"].value == ["init_all_tables"]


def test_legacy_graph_variable_ops_and_bundle_signatures():
    with graph.open(LEGACY) as f:
        g = f.meta_graph()
        assert g.tensorflow_version == "" and "Variable" in g.op_counts()
        assert [(v.name, v.dtype, v.shape, v.trainable, v.op) for v in g.variables()] == [
            ("Variable", "float32", [], True, "Variable"),
            ("Variable_1", "float32", [], True, "Variable")]
        assert not any(v.definition.trainable for v in g.variables())   # TF 0.12: no flag
        assert g.saver.version == 1
        default, named = g.serving_signatures()
        assert default.kind == "regression" and default.tensors == {"input": "x:0",
                                                                    "output": "y:0"}
        assert named["inputs"].kind == "generic"
        assert g.tensor("Variable:0").dtype == "float32_ref"


def test_legacy_graph_restores_from_the_2016_serving_export():
    """The TF 0.12-style graph against a real V1 checkpoint written by TF in 2016 (TF
    Serving's half_plus_two export): both variables are there, as RestoreSlice reads
    them."""
    if not CORPUS_EXPORT.is_file():
        assert not os.environ.get("CI"), f"{CORPUS_EXPORT} is missing in CI"
        pytest.skip(f"the shared corpus file {CORPUS_EXPORT} is absent")
    check = graph.check_restore(LEGACY, CORPUS_EXPORT)
    assert check.ok and check.source == "saver"
    assert [(e.key, e.dtype, e.shape) for e in check.expected] == [
        ("Variable", "float32", []), ("Variable_1", "float32", [])]
    assert check.unused == []
    values = tfshard.load(CORPUS_EXPORT)
    assert float(values["Variable"]) == 0.5 and float(values["Variable_1"]) == 2.0


# ---- the JSON ---------------------------------------------------------------------------

_SUMMARY_KEYS = ["tags", "tensorflow_version", "collections", "variables", "saver",
                 "signatures", "op_counts"]
_SAVER_KEYS = ["filename_tensor_name", "save_tensor_name", "restore_op_name", "max_to_keep",
               "sharded", "keep_checkpoint_every_n_hours", "version"]


def _check_info(info):
    assert set(info) in ({"name", "dtype", "shape"}, {"name", "dtype", "shape", "coo_sparse"},
                         {"name", "dtype", "shape", "components"})
    assert info["dtype"] is None or isinstance(info["dtype"], (str, int))
    assert info["shape"] is None or all(isinstance(d, int) for d in info["shape"])
    if "coo_sparse" in info:
        assert info["name"] is None and set(info["coo_sparse"]) == {"values", "indices",
                                                                    "dense_shape"}
    if "components" in info:
        assert info["name"] is None
        for c in info["components"]:
            _check_info(c)


@pytest.mark.parametrize("path", [TF1, LEGACY, MODULE, BUILDER])
def test_json_has_exactly_the_documented_shape(path):
    with graph.open(path) as f:
        doc = graph.summary(f)
    json.dumps(doc, allow_nan=False)
    assert list(doc) == ["meta_graphs"]
    for mg in doc["meta_graphs"]:
        assert list(mg) == _SUMMARY_KEYS
        assert all(isinstance(t, str) for t in mg["tags"])
        for entry in mg["collections"].values():
            assert list(entry) == ["kind", "value"]
            assert entry["kind"] in ("node_list", "bytes_list", "int64_list", "float_list",
                                     "any_list", None)
        for v in mg["variables"]:
            assert list(v) == ["name", "dtype", "shape", "trainable"]
            assert not v["name"].endswith(":0")
        assert mg["saver"] is None or list(mg["saver"]) == _SAVER_KEYS
        for sig in mg["signatures"].values():
            assert list(sig) == ["method_name", "inputs", "outputs"]
            for info in list(sig["inputs"].values()) + list(sig["outputs"].values()):
                _check_info(info)
        assert all(isinstance(n, int) for n in mg["op_counts"].values())


def test_json_values_escapes_non_finite_floats_and_versions():
    with graph.open(TF1) as f:
        mg, = graph.summary(f)["meta_graphs"]
    c = mg["collections"]
    assert c["my_bytes"]["value"] == ["plain", "\\xff\x00\\xfe not utf-8", "ünïcödé"]
    assert c["my_floats"]["value"][:3] == [0.25, "inf", "nan"]
    assert c["my_ints"]["value"] == [-3, 0, 2**62]
    assert c["my_any"]["value"] == ["type.googleapis.com/tensorflow.TensorShapeProto"]
    assert mg["saver"]["version"] == 2 and mg["saver"]["max_to_keep"] == 3
    assert mg["variables"][-1] == {"name": "local_acc", "dtype": "float32", "shape": [],
                                   "trainable": True}
    with graph.open(LEGACY) as f:
        assert graph.summary(f)["meta_graphs"][0]["saver"]["version"] == 1
    with graph.open(MODULE) as f:
        sigs = graph.summary(f)["meta_graphs"][0]["signatures"]
    init = sigs["__saved_model_init_op"]["outputs"]["__saved_model_init_op"]
    assert init == {"name": "NoOp", "dtype": None, "shape": None}     # dtype 0: null
    doubled = sigs["ragged"]["outputs"]["doubled"]
    assert doubled["name"] is None and doubled["shape"] == []         # no shape stored
    assert [c["dtype"] for c in doubled["components"]] == ["int32", "int64"]


def _meta_graph_bytes(*, tensor_infos=(), nodes=(), functions=(), saver=None, objects=()):
    """A MetaGraphDef built field by field (meta_graph.proto field numbers), for what TF
    does not write: dtype codes it does not know, reference dtypes in signatures..."""
    graph_def = b"".join(field(1, 2, n) for n in nodes)
    if functions:
        graph_def += field(2, 2, b"".join(field(1, 2, f) for f in functions))
    out = field(1, 2, field(4, 2, b"t") + field(5, 2, b"9.9.9")) + field(2, 2, graph_def)
    if saver is not None:
        out += field(3, 2, saver)
    if tensor_infos:
        sig = b"".join(field(2, 2, field(1, 2, k.encode()) + field(2, 2, v))
                       for k, v in tensor_infos)
        out += field(5, 2, field(1, 2, b"sig") + field(2, 2, sig + field(3, 2, b"m")))
    if objects:
        out += field(7, 2, b"".join(field(1, 2, o) for o in objects))
    return out


def node_bytes(name, op, *, inputs=(), attrs=()):
    out = field(1, 2, name.encode()) + field(2, 2, op.encode())
    out += b"".join(field(3, 2, i.encode()) for i in inputs)
    return out + b"".join(field(5, 2, field(1, 2, k.encode()) + field(2, 2, v))
                          for k, v in attrs)


def test_json_dtypes_ref_unknown_and_shapes(tmp_path):
    unknown_rank = field(3, 0, 1)
    infos = [("ref", field(1, 2, b"v:0") + field(2, 0, 101)),
             ("unknown", field(1, 2, b"u:0") + field(2, 0, 77) + field(3, 2, unknown_rank)),
             ("unset", field(1, 2, b"n:0") + field(3, 2, field(2, 2, field(1, 0, -1)))),
             ("string_ref", field(1, 2, b"s:0") + field(2, 0, 107) + field(3, 2, b""))]
    path = tmp_path / "g.meta"
    path.write_bytes(_meta_graph_bytes(tensor_infos=infos))
    with graph.open(path) as f:
        mg, = graph.summary(f)["meta_graphs"]
    outputs = mg["signatures"]["sig"]["outputs"]
    assert outputs["ref"] == {"name": "v:0", "dtype": "float32_ref", "shape": []}
    assert outputs["unknown"] == {"name": "u:0", "dtype": 77, "shape": None}
    assert outputs["unset"] == {"name": "n:0", "dtype": None, "shape": [-1]}
    assert outputs["string_ref"] == {"name": "s:0", "dtype": "string_ref", "shape": []}
    assert mg["tags"] == ["t"] and mg["tensorflow_version"] == "9.9.9"
    assert mg["saver"] is None and mg["variables"] == [] and mg["op_counts"] == {}


# ---- risky ops -------------------------------------------------------------------------

def test_risky_ops_flags_code_and_files_but_not_the_saver(tmp_path):
    saver = field(1, 2, b"save/Const:0") + field(2, 2, b"save/control_dependency:0") + \
        field(3, 2, b"save/restore_all")
    nodes = [node_bytes("save/SaveV2", "SaveV2"), node_bytes("save/RestoreV2", "RestoreV2"),
             node_bytes("elsewhere/SaveV2", "SaveV2"), node_bytes("py", "PyFunc"),
             node_bytes("read", "ReadFile"), node_bytes("print", "PrintV2", attrs=[
                 ("output_stream", field(2, 2, b"file:///tmp/log"))]),
             node_bytes("quiet", "PrintV2", attrs=[("output_stream", field(2, 2, b"stderr"))]),
             node_bytes("add", "AddV2")]
    function = field(1, 2, field(1, 2, b"my_fn")) + field(3, 2, node_bytes("w", "WriteFile"))
    path = tmp_path / "risky.meta"
    path.write_bytes(_meta_graph_bytes(nodes=nodes, functions=[function], saver=saver))
    with graph.open(path) as f:
        risky = graph.risky_ops(f.meta_graph())
    assert [(r.node, r.op, r.function) for r in risky] == [
        ("elsewhere/SaveV2", "SaveV2", None), ("py", "PyFunc", None), ("read", "ReadFile", None),
        ("print", "PrintV2", None), ("w", "WriteFile", "my_fn")]
    assert "outside the graph's saver" in risky[0].reason
    assert "Python" in risky[1].reason and "file:///tmp/log" in risky[3].reason


@pytest.mark.parametrize("path", [TF1, LEGACY, MODULE, BUILDER])
def test_fixtures_have_no_risky_ops(path):
    """Their save and restore ops belong to their savers (TF2: inside the functions the
    saver's nodes call)."""
    with graph.open(path) as f:
        assert all(graph.risky_ops(g) == [] for g in f.meta_graphs)
        assert any(op in ("SaveV2", "SaveSlices") for g in f.meta_graphs for op in g.op_counts())


# ---- the command line ------------------------------------------------------------------

def test_cli_graph_text_summary(capsys):
    code, out, _ = run_cli(capsys, "graph", TF1)
    assert code == 0
    for text in ("MetaGraphDef", "meta graph 0: tags [], TensorFlow 2.21.0, 370 nodes",
                 "hyperparameters (node_list): ['hp/learning_rate:0'",
                 "emb/part_1  float32  [3, 4]  trainable  key emb  slice 10 4 4,3:0,4",
                 "saver: version 2, filename save/Const:0", "ops: Const "):
        assert text in out, out
    code, out, _ = run_cli(capsys, "graph", MODULE)
    assert code == 0 and "SavedModel (schema version 1), 1 meta graph(s)" in out
    assert "signature 'serving_default' (tensorflow/serving/predict):" in out
    assert "input  x: float32 [-1, 3] serving_default_x:0" in out
    assert "object graph: 19 objects, 3 variables" in out


def test_cli_graph_json_is_the_summary(capsys):
    for path in (TF1, MODULE, BUILDER / "saved_model.pb"):
        code, out, _ = run_cli(capsys, "graph", path, "--json")
        assert code == 0
        with graph.open(path) as f:
            assert json.loads(out) == json.loads(json.dumps(graph.summary(f)))
    code, out, _ = run_cli(capsys, "graph", BUILDER, "--json", "--tags", "train")
    assert [mg["tags"] for mg in json.loads(out)["meta_graphs"]] == [["train"]]


def test_cli_graph_ops_and_risky(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "graph", LEGACY, "--ops")
    assert code == 0 and "27 nodes" in out and "RestoreSlice" in out
    code, out, _ = run_cli(capsys, "graph", MODULE, "--ops", "--json")
    doc = json.loads(out)["meta_graphs"][0]
    assert len(doc["nodes"]) == 24 and len(doc["functions"]) == 10
    assert set(doc["nodes"][0]) == {"name", "op", "device"}
    code, out, _ = run_cli(capsys, "graph", MODULE, "--risky")
    assert code == 0 and "no risky op(s)" in out
    path = tmp_path / "r.meta"
    path.write_bytes(_meta_graph_bytes(nodes=[node_bytes("evil", "EagerPyFunc")]))
    code, out, _ = run_cli(capsys, "graph", path, "--risky")
    assert code == 1 and "RISKY  evil  EagerPyFunc" in out
    code, out, _ = run_cli(capsys, "graph", path, "--risky", "--json")
    assert code == 1 and json.loads(out)["meta_graphs"][0]["risky"][0]["node"] == "evil"
    code, _, err = run_cli(capsys, "graph", path, "--risky", "--ops")
    assert code == 2 and "not allowed" in err


def test_cli_graph_errors(capsys, tmp_path):
    code, _, err = run_cli(capsys, "graph", tmp_path / "nothing")
    assert code == 1 and "no graph at" in err
    (tmp_path / "saved_model.pbtxt").write_text("meta_graphs {}")
    code, _, err = run_cli(capsys, "graph", tmp_path)
    assert code == 1 and "text-format" in err
    bad = tmp_path / "bad.meta"
    bad.write_bytes(b"\x0a\xff\xff\xff\xff\x0f")
    code, _, err = run_cli(capsys, "graph", bad)
    assert code == 1 and str(bad) in err and "malformed graph at byte" in err


def test_graph_path_forms(tmp_path):
    """A .meta, a checkpoint prefix with its .meta, a directory whose state file names
    one, a SavedModel directory or its saved_model.pb."""
    for path in (TF1, DATA / "tf1" / "model.ckpt-3", DATA / "tf1"):
        with graph.open(path) as f:
            assert f.path == str(TF1) and f.kind == "meta_graph"
            assert f.variables_prefix == str(DATA / "tf1" / "model.ckpt-3")
    for path in (MODULE, MODULE / "saved_model.pb"):
        with graph.open(path) as f:
            assert f.kind == "saved_model" and f.directory == str(MODULE)
    copy = tmp_path / "graph.bin"
    shutil.copy(MODULE / "saved_model.pb", copy)
    with graph.open(copy, kind="saved_model") as f:
        assert f.meta_graph().tags == ["serve"]
    with pytest.raises(ValueError, match="kind"):
        graph.open(copy, kind="pbtxt")
    with pytest.raises(tfshard.CheckpointNotFoundError, match="not a SavedModel directory"):
        graph.open(tmp_path)


def test_ls_and_show_on_graph_files_point_to_tfshard_graph(capsys):
    code, _, err = run_cli(capsys, "ls", TF1)
    assert code == 1 and f"'tfshard graph {TF1}'" in err
    assert f"its checkpoint is {DATA / 'tf1' / 'model.ckpt-3'}" in err
    code, _, err = run_cli(capsys, "show", MODULE / "saved_model.pb", "bias")
    assert code == 1 and "SavedModel's graph" in err and "tfshard graph" in err
    with pytest.raises(tfshard.CheckpointNotFoundError, match="tfshard graph"):
        tfshard.open(TF1)


def test_saved_model_directory_reads_as_its_checkpoint(capsys, tmp_path):
    assert paths.resolve_prefix(MODULE) == str(MODULE / "variables" / "variables")
    assert paths.resolve_prefix(str(MODULE) + os.sep) == \
        str(MODULE) + os.sep + os.path.join("variables", "variables")
    code, out, _ = run_cli(capsys, "ls", BUILDER)
    assert code == 0 and "linear/w" in out and "variables/variables" in out
    assert sorted(tfshard.load(BUILDER)) == ["linear/b", "linear/w"]
    empty = tmp_path / "export" / "1"
    empty.mkdir(parents=True)
    shutil.copy(BUILDER / "saved_model.pb", empty)
    with pytest.raises(tfshard.CheckpointNotFoundError, match="SavedModel without variables"):
        tfshard.open(empty)


# ---- verify --graph -------------------------------------------------------------------

def test_check_restore_fixture_pairs():
    for path, source in ((TF1, "saver"), (LEGACY, "saver"), (MODULE, "object_graph"),
                         (BUILDER, "saver")):
        check = graph.check_restore(path)
        assert check.ok and check.source == source, (path, check)
        assert not check.missing and not check.mismatched and check.unused == []
    check = graph.check_restore(TF1)
    assert [e.slice_spec for e in check.expected if e.key == "emb"] == [
        "10 4 0,4:0,4", "10 4 4,3:0,4", "10 4 7,3:0,4"]


def test_check_restore_reports_missing_mismatched_unused(tmp_path):
    values = tfshard.load(DATA / "tf1" / "model.ckpt-3")
    values.pop("counts")
    values["dense/kernel"] = values["dense/kernel"].astype(np.float64)
    values["dense/bias"] = np.zeros(3, np.float32)
    values["extra"] = np.ones(2, np.float32)
    prefix = tfshard.save(tmp_path / "broken", values)
    check = graph.check_restore(TF1, prefix)
    assert not check.ok
    assert check.missing == [("counts", ("counts",))]
    assert [(m.key, m.what, m.expected, m.found, m.restores_anyway)
            for m in check.mismatched] == [
        ("dense/bias", "shape", [2], [3], True),        # a resource variable: not checked
        ("dense/kernel", "dtype", "float32", "float64", False)]
    assert check.unused == ["extra"]
    assert "the variable would take the checkpoint's shape" in check.mismatched[0].message


def test_cli_verify_with_graph(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "verify", DATA / "tf1" / "model.ckpt-3", "--graph", TF1)
    assert code == 0 and "OK: the checkpoint holds all 7 tensors the graph restores" in out
    code, out, _ = run_cli(capsys, "verify", MODULE)       # a SavedModel: its own graph
    assert code == 0 and "(object_graph)" in out
    values = tfshard.load(DATA / "tf1" / "model.ckpt-3")
    del values["global_step"]
    prefix = tfshard.save(tmp_path / "m", values)
    code, out, _ = run_cli(capsys, "verify", prefix, "--graph", TF1)
    assert code == 1 and "MISSING   global_step (for global_step)" in out
    assert "FAILED: 1 missing, 0 mismatched of 7 tensors" in out
    code, out, _ = run_cli(capsys, "verify", prefix, "--graph", TF1, "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"] and doc["graph"]["missing"] == [
        {"key": "global_step", "variables": ["global_step"]}]


# ---- lifetimes and laziness ------------------------------------------------------------

def test_values_outlive_the_file_and_closed_file_refuses(tmp_path):
    f = graph.open(TF1)
    g = f.meta_graph()
    variables = g.variables()
    value = g.tensor("hp/zeros:0").value()
    f.close()
    f.close()
    assert variables[0].name == "dense/kernel" and value.shape == (3, 4)
    with pytest.raises(ValueError, match="closed"):
        g.node("x")
    assert "closed" in repr(f)


def test_large_files_are_mapped_and_a_truncation_is_caught(tmp_path, monkeypatch):
    from tfshard.graph import _file

    path = tmp_path / "m.meta"
    shutil.copy(TF1, path)
    monkeypatch.setattr(_file, "_MAP_THRESHOLD", 0)
    with graph.open(path) as f:
        g = f.meta_graph()
        assert len(g.variables()) == 8
        with open(path, "r+b") as w:
            w.truncate(1000)
        with pytest.raises(tfshard.CorruptGraphError, match="truncated while open"):
            g.op_counts()


def test_variables_do_not_index_or_decode_every_node():
    with graph.open(TF1) as f:
        g = f.meta_graph()
        g.variables()
        g.collections
        g.signatures
        assert g._node_index is None
        for _ in range(4):       # a few lookups walk the graph for their node
            assert g.node("x").op == "Placeholder"
        assert g._node_index is None
        assert g.node("dense/kernel").op == "VariableV2"   # then every name is indexed
        assert g._node_index is not None and len(g._node_index) == g.num_nodes
        with pytest.raises(tfshard.NodeNotFoundError):
            g.node("nothing")
