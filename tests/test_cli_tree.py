"""``tfshard ls --tree``: the object tree of TF2 checkpoints, name scopes otherwise."""

import json
from pathlib import Path

import numpy as np
import pytest

import tfshard
from tfshard import cli
from tfshard.objectgraph import OBJECT_GRAPH_KEY

GOLDEN = Path(__file__).parent / "data" / "golden"
KERAS_ADAM = GOLDEN / "keras_adam" / "ckpt-2"


def cli_run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def lines_named(out: str, name: str) -> list:
    """The lines of a tree whose entry (after the box drawing) starts with ``name``."""
    found = []
    for line in out.splitlines():
        entry = line.lstrip("│├└─| `-").lstrip()
        if entry.split("  ")[0].split(" -> ")[0] == name:
            found.append(line)
    return found


def walk(entry):
    yield entry
    for child in entry.get("children", ()):
        yield from walk(child)


def test_keras_tree_text(capsys):
    code, out, _ = cli_run(capsys, "ls", KERAS_ADAM, "--tree")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == str(KERAS_ADAM)
    assert lines[-1] == (f"15 tensors, 332 B in 1 shard(s) (object graph of 36 objects): "
                         f"{KERAS_ADAM}")
    assert lines[1].endswith("── model") and lines[-2].startswith("└── save_counter")
    kernel = [line for line in lines if "(slots: momentum, velocity from optimizer)" in line]
    assert len(kernel) == 4
    assert " ".join(kernel[0].split()).endswith(
        "── 0 float32 [3, 4] 48 B (slots: momentum, velocity from optimizer)")
    assert any("── _kernel -> optimizer/_trainable_variables/0" in line for line in lines)
    assert any("(momentum slot of optimizer/_trainable_variables/0)" in line for line in lines)
    assert any("(velocity slot of optimizer/_trainable_variables/3)" in line for line in lines)
    # Objects without tensors (Keras' bookkeeping lists) are left out.
    assert not lines_named(out, "_losses") and not lines_named(out, "_inbound_nodes")
    assert "key:" not in out


def test_keras_tree_json_covers_every_key(capsys):
    code, out, _ = cli_run(capsys, "ls", KERAS_ADAM, "--tree", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["tree_kind"] == "object_graph" and doc["objects"] == 36
    assert doc["tensors"] == 15 and doc["outside_tree"] == []
    entries = list(walk(doc["tree"]))
    values = {e["key"]: e for e in entries if "key" in e}
    with tfshard.open(KERAS_ADAM) as ckpt:
        assert set(values) == set(ckpt) - {OBJECT_GRAPH_KEY}
        for key, e in values.items():
            info = ckpt.info(key)
            assert (e["dtype"], tuple(e["shape"]), e["nbytes"]) == \
                (info.dtype, info.shape, info.nbytes)
            assert key == f"{e['path']}/.ATTRIBUTES/VARIABLE_VALUE"
    kernel = values["optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"]
    assert kernel["full_name"] == "sequential/dense/kernel"
    assert [(s["slot"], s["optimizer"], s["key"], s["kind"]) for s in kernel["slots"]] == [
        ("momentum", "optimizer", "optimizer/_variables/2/.ATTRIBUTES/VARIABLE_VALUE", "list"),
        ("velocity", "optimizer", "optimizer/_variables/3/.ATTRIBUTES/VARIABLE_VALUE", "list")]
    momentum = values["optimizer/_variables/2/.ATTRIBUTES/VARIABLE_VALUE"]
    assert momentum["slot_of"] == {"slot": "momentum", "variable": "optimizer/_trainable_variables/0",
                                   "optimizer": "optimizer", "kind": "list"}
    refs = {e["path"]: e["ref"] for e in entries if "ref" in e}
    assert refs["model/_functional/_operations/1/_kernel"] == "optimizer/_trainable_variables/0"
    assert refs["model/optimizer"] == "optimizer"


def test_tree_patterns_and_keys(capsys):
    code, out, _ = cli_run(capsys, "ls", KERAS_ADAM, "--tree", "--keys",
                           "*_trainable_variables/0/*")
    assert code == 0
    values = [line for line in out.splitlines() if "key:" in line]
    assert len(values) == 1
    assert values[0].endswith("key: optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"
                              "  name: sequential/dense/kernel")
    assert "save_counter" not in out and "_iterations" not in out
    assert out.splitlines()[-1].startswith("1 tensor, 48 B")
    # Object paths match too.
    code, out, _ = cli_run(capsys, "ls", KERAS_ADAM, "--tree", "--json", "save_counter")
    doc = json.loads(out)
    assert [e["key"] for e in walk(doc["tree"]) if "key" in e] == [
        "save_counter/.ATTRIBUTES/VARIABLE_VALUE"]


def test_keys_needs_tree(capsys):
    code, _, err = cli_run(capsys, "ls", KERAS_ADAM, "--keys")
    assert code == 2 and "--keys needs --tree" in err


def test_help_explains_tree(capsys):
    code, out, _ = cli_run(capsys, "ls", "--help")
    assert code == 0
    assert "--tree" in out and "--keys" in out and "tfshard ls train/ckpt-100 --tree" in out


@pytest.fixture
def tf1_checkpoint(tmp_path):
    w = np.ones((3, 2), np.float32)
    return tfshard.save(tmp_path / "tf1" / "model.ckpt", {
        "dense/kernel": w, "dense/kernel/Adam": w, "dense/bias": np.zeros(2, np.float32),
        "global_step": np.int64(7)})


def test_name_scope_tree_text(capsys, tf1_checkpoint):
    code, out, _ = cli_run(capsys, "ls", tf1_checkpoint, "--tree")
    assert code == 0
    lines = out.splitlines()
    assert lines[1:-1] == [
        "├── dense",
        "│   ├── bias      float32  [2]     8 B",
        "│   └── kernel    float32  [3, 2]  24 B",
        "│       └── Adam  float32  [3, 2]  24 B",
        "└── global_step   int64    []      8 B",
    ]
    assert lines[-1].startswith("4 tensors, 64 B in 1 shard(s) (name scopes): ")


def test_name_scope_tree_json(capsys, tf1_checkpoint):
    code, out, _ = cli_run(capsys, "ls", tf1_checkpoint, "--tree", "--json", "dense/*")
    assert code == 0
    doc = json.loads(out)
    assert doc["tree_kind"] == "name_scopes" and doc["objects"] is None
    [dense] = doc["tree"]["children"]
    assert dense["name"] == "dense" and "key" not in dense
    kernel = dense["children"][1]
    assert (kernel["key"], kernel["shape"], kernel["nbytes"]) == ("dense/kernel", [3, 2], 24)
    assert kernel["children"][0]["key"] == "dense/kernel/Adam"
    assert doc["tensors"] == 3


def test_name_scope_tree_of_safetensors(capsys, tmp_path, tf1_checkpoint):
    pytest.importorskip("safetensors")
    out_file = tmp_path / "model.safetensors"
    assert cli_run(capsys, "convert", tf1_checkpoint, out_file, "-q")[0] == 0
    code, out, _ = cli_run(capsys, "ls", out_file, "--tree", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["format"] == "safetensors" and doc["tree_kind"] == "name_scopes"
    assert sorted(e["key"] for e in walk(doc["tree"]) if "key" in e) == [
        "dense/bias", "dense/kernel", "dense/kernel/Adam", "global_step"]
    code, out, _ = cli_run(capsys, "ls", out_file, "--tree")
    assert code == 0 and "safetensors format (name scopes)" in out


def save_with_graph(prefix, graph: bytes, tensors: dict):
    value = np.empty((), dtype=object)
    value[()] = graph
    return tfshard.save(prefix, {OBJECT_GRAPH_KEY: value, **tensors})


def test_cyclic_graph_and_tensors_outside_it(capsys, tmp_path):
    from test_objectgraph import encode, var

    graph = encode([
        {"children": [("net", 1), ("loop", 0)]},
        {"children": [("w", 2), ("up", 0), ("again", 1)]},
        {"attributes": [var("net/w/.ATTRIBUTES/VARIABLE_VALUE", "w"),
                        var("net/w/.ATTRIBUTES/GONE", "gone")]},
    ])
    prefix = save_with_graph(tmp_path / "ckpt", graph, {
        "net/w/.ATTRIBUTES/VARIABLE_VALUE": np.ones(3, np.float32), "extra/t": np.int32(1)})
    code, text, _ = cli_run(capsys, "ls", prefix, "--tree")
    assert code == 0
    assert "(missing" in text and "(tensors no object path names)" in text
    assert "extra" in text and "└── t" in text
    code, out, _ = cli_run(capsys, "ls", prefix, "--tree", "--json")
    doc = json.loads(out)
    assert [e["name"] for e in doc["outside_tree"]] == ["extra"]
    net = doc["tree"]["children"][0]
    # Edges back up the cycle are references to objects shown elsewhere.
    assert [(c["name"], c["path"], c.get("ref")) for c in net["children"]] == [
        ("w", "net/w", None), ("up", "net/up", ""), ("again", "net/again", "net")]
    assert "── up -> (root)" in text
    w = net["children"][0]
    assert [(c["name"], c.get("missing", False)) for c in w["children"]] == [
        (".ATTRIBUTES/VARIABLE_VALUE", False), (".ATTRIBUTES/GONE", True)]


def test_corrupt_graph_falls_back_to_name_scopes(capsys, tmp_path):
    prefix = save_with_graph(tmp_path / "ckpt", b"\x0a\x05\x0a",
                             {"a/b": np.float32(1)})
    code, out, err = cli_run(capsys, "ls", prefix, "--tree")
    assert code == 0
    assert "malformed object graph" in err and "showing name scopes" in err
    assert "(name scopes)" in out and "└── b" in out


def test_too_deep_graph_is_refused(capsys, tmp_path):
    from test_objectgraph import encode, var

    depth = 300
    nodes = [{"children": [("n", i + 1)]} for i in range(depth)]
    nodes.append({"attributes": [var("deep")]})
    prefix = save_with_graph(tmp_path / "ckpt", encode(nodes), {"deep": np.float32(1)})
    code, _, err = cli_run(capsys, "ls", prefix, "--tree")
    assert code == 1 and "more than 256 levels deep" in err


# ---- checkpoints written by TensorFlow ----------------------------------------------------

@pytest.fixture(scope="module")
def legacy_checkpoint(tmp_path_factory):
    tf = pytest.importorskip("tensorflow")
    w = tf.Variable([[1.0, 2.0]], name="w")
    b = tf.Variable(0.5, name="b")
    optimizer = tf.compat.v1.train.AdamOptimizer(0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(w) * b
    optimizer.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))
    net = tf.Module()
    net.dense = tf.Module()
    net.dense.kernel, net.dense.bias = w, b
    setattr(net, "odd.name/x", tf.Variable(3.0, name="odd"))
    root = tmp_path_factory.mktemp("legacy")
    return tf.train.Checkpoint(model=net, optimizer=optimizer).save(str(root / "ckpt"))


def test_legacy_slots_in_tree(capsys, legacy_checkpoint):
    code, out, _ = cli_run(capsys, "ls", legacy_checkpoint, "--tree")
    assert code == 0
    lines = out.splitlines()
    [kernel] = lines_named(out, "kernel")
    assert " ".join(kernel.split()).endswith(
        "── kernel float32 [1, 2] 8 B (slots: m, v from optimizer)")
    i = lines.index(kernel)
    assert ".OPTIMIZER_SLOT/optimizer/m" in lines[i + 1]
    assert ".OPTIMIZER_SLOT/optimizer/v" in lines[i + 2]
    assert lines_named(out, "odd.name/x")
    code, out, _ = cli_run(capsys, "ls", legacy_checkpoint, "--tree", "--json")
    doc = json.loads(out)
    values = {e["key"]: e for e in walk(doc["tree"]) if "key" in e}
    import tensorflow as tf

    assert set(values) == set(tf.train.load_checkpoint(legacy_checkpoint)
                              .get_variable_to_shape_map()) - {OBJECT_GRAPH_KEY}
    m = values["model/dense/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE"]
    assert m["slot_of"] == {"slot": "m", "variable": "model/dense/kernel",
                            "optimizer": "optimizer", "kind": "reference"}
    assert "model/odd..name.Sx/.ATTRIBUTES/VARIABLE_VALUE" in values
