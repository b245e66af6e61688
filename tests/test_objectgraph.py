"""tfshard.objectgraph: decoding TF2's _CHECKPOINTABLE_OBJECT_GRAPH without TensorFlow.

Checkpoints written by TensorFlow itself (one module-scoped fixture, TF is slow to
import) are decoded by tfshard and by TF's own proto class and compared field by
field; keys, object paths and full names are compared with what TF reports.
Hostile bytes (mutations of real graphs, cycles, ids out of range) may only raise
CorruptCheckpointError.
"""

import random
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bundle_builder as bb

import tfshard
from tfshard import objectgraph
from tfshard import CorruptCheckpointError
from tfshard.objectgraph import OBJECT_GRAPH_KEY

GOLDEN = Path(__file__).parent / "data" / "golden"
KERAS_ADAM = GOLDEN / "keras_adam" / "ckpt-2"


def graph_bytes(prefix) -> bytes:
    with tfshard.open(prefix) as ckpt:
        return ckpt[OBJECT_GRAPH_KEY][()]


# ---- a tiny protobuf encoder, to build graphs TF would never write ----------------------

def _len_field(field: int, body: bytes) -> bytes:
    return bb.field(field, 2, body)


def _int_field(field: int, value: int) -> bytes:
    return bb.field(field, 0, value)


def encode(nodes) -> bytes:
    """A serialized TrackableObjectGraph from ``[{"children": [(name, id)], "attributes":
    [(name, full_name, key)], "slots": [(original, slot name, slot id)]}, ...]``."""
    out = []
    for node in nodes:
        body = b""
        for name, child in node.get("children", ()):
            body += _len_field(1, _int_field(1, child) + _len_field(2, name.encode()))
        for name, full_name, key in node.get("attributes", ()):
            body += _len_field(2, _len_field(1, name.encode()) + _len_field(2, full_name.encode())
                               + _len_field(3, key.encode()))
        for original, slot_name, slot in node.get("slots", ()):
            body += _len_field(3, _int_field(1, original) + _len_field(2, slot_name.encode())
                               + _int_field(3, slot))
        body += _len_field(5, _int_field(1, 1))
        out.append(_len_field(1, body))
    return b"".join(out)


def var(key, full_name="v"):
    return ("VARIABLE_VALUE", full_name, key)


# ---- checkpoints written by TensorFlow ----------------------------------------------------

@pytest.fixture(scope="module")
def tf_checkpoints(tmp_path_factory):
    """{case: (prefix, extra facts)} for TF2 checkpoints written by TF itself:
    "keras" (Keras 3 model + Adam after a training step), "module" (nested
    tf.Modules, local names with '.' and '/'), "legacy" (tf.compat.v1 Adam,
    which records slot variables with .OPTIMIZER_SLOT keys)."""
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    root = tmp_path_factory.mktemp("tf2")
    cases = {}

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="hidden"),
                              keras.layers.Dense(2, name="out")])
    optimizer = keras.optimizers.Adam(0.01)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.ones((8, 3), np.float32), np.ones((8, 2), np.float32), epochs=1, verbose=0)
    prefix = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(root / "keras/ckpt"))
    cases["keras"] = (prefix, {
        "variables": [v.path for v in model.trainable_variables],
        "iterations": optimizer.iterations.path,  # "adam/iteration", or "adam_1/..." when
        # another Adam was built in this process before
        "momentums": [v.path for v in optimizer._momentums],
        "velocities": [v.path for v in optimizer._velocities]})

    class Leaf(tf.Module):
        def __init__(self, value):
            super().__init__()
            self.w = tf.Variable([[value, value]], name="w")

    module = tf.Module()
    module.inner = Leaf(1.0)
    setattr(module, "a.b", Leaf(2.0))
    module.layers = [Leaf(3.0), {"x/y": tf.Variable(4.0, name="x_y"), "p.q/r": Leaf(5.0)}]
    module.shared = module.inner  # a second edge to the same object
    prefix = tf.train.Checkpoint(model=module, v=tf.Variable(6.0, name="v")).save(
        str(root / "module/ckpt"))
    cases["module"] = (prefix, {})

    w = tf.Variable([[1.0, 2.0]], name="w")
    b = tf.Variable(0.5, name="b")
    legacy = tf.compat.v1.train.AdamOptimizer(0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(w) * b
    legacy.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b]))
    net = tf.Module()
    net.dense = tf.Module()
    net.dense.kernel, net.dense.bias = w, b
    prefix = tf.train.Checkpoint(model=net, optimizer=legacy).save(str(root / "legacy/ckpt"))
    cases["legacy"] = (prefix, {})
    return cases


CASES = ("keras", "module", "legacy")


def tf_proto(data: bytes):
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    proto = trackable_object_graph_pb2.TrackableObjectGraph()
    proto.ParseFromString(data)
    return proto


def assert_same_as_proto(graph, proto):
    assert len(graph.nodes) == len(proto.nodes)
    for node, expected in zip(graph.nodes, proto.nodes):
        assert node.children == [(c.local_name, c.node_id) for c in expected.children]
        assert node.attributes == [(a.name, a.full_name, a.checkpoint_key)
                                   for a in expected.attributes]
        assert node.slot_variables == [
            (s.original_variable_node_id, s.slot_name, s.slot_variable_node_id)
            for s in expected.slot_variables]
        if expected.HasField("registered_saver"):
            assert node.registered_saver == (expected.registered_saver.name,
                                              expected.registered_saver.object_name)
        else:
            assert node.registered_saver is None
        if expected.HasField("has_checkpoint_values"):
            assert node.has_checkpoint_values is expected.has_checkpoint_values.value
        else:
            assert node.has_checkpoint_values is None


@pytest.mark.parametrize("case", CASES)
def test_decode_matches_tf_proto(tf_checkpoints, case):
    data = graph_bytes(tf_checkpoints[case][0])
    assert_same_as_proto(objectgraph.decode(data), tf_proto(data))


def test_decode_matches_tf_proto_golden():
    # The committed Keras 3 golden checkpoint, also without TF for the decode itself.
    pytest.importorskip("tensorflow")
    data = graph_bytes(KERAS_ADAM)
    assert_same_as_proto(objectgraph.decode(data), tf_proto(data))


@pytest.mark.parametrize("case", CASES)
def test_keys_paths_and_names_match_tf(tf_checkpoints, case):
    import tensorflow as tf
    from tensorflow.python.training import saver as tf_saver

    prefix = tf_checkpoints[case][0]
    data = graph_bytes(prefix)
    graph = objectgraph.decode(data)
    keys = graph.keys()
    on_disk = set(tf.train.load_checkpoint(prefix).get_variable_to_shape_map())
    assert set(keys) == on_disk - {OBJECT_GRAPH_KEY}
    for key, info in keys.items():
        # Every key is <object path>/.ATTRIBUTES/<attribute>: the path is TF's.
        assert key == f"{info.path}/.ATTRIBUTES/{info.attribute}", key
        assert graph.nodes[info.node_id].attributes[0].checkpoint_key == key
    # Restore-by-name: the same mapping as TF's own.
    assert objectgraph.name_to_key(data) == tf_saver.object_graph_key_mapping(prefix)
    assert graph.full_names() == tf_saver.object_graph_key_mapping(prefix)


def test_module_names_are_escaped(tf_checkpoints):
    graph = objectgraph.decode(graph_bytes(tf_checkpoints["module"][0]))
    paths = set(graph.paths())
    assert {"model/a..b/w", "model/layers/1/x.Sy", "model/layers/1/p..q.Sr/w",
            "model/inner/w", "v", "save_counter"} <= paths
    # The second edge to `inner` does not give it a second path.
    assert not any(p and p.startswith("model/shared") for p in paths)
    shared = [c for c in graph.nodes[graph.paths().index("model")].children
              if c.local_name == "shared"]
    assert graph.paths()[shared[0].node_id] == "model/inner"
    full_names = graph.full_names()
    assert full_names["x_y"] == "model/layers/1/x.Sy/.ATTRIBUTES/VARIABLE_VALUE"
    assert graph.slot_links() == []


def test_legacy_optimizer_slots(tf_checkpoints):
    graph = objectgraph.decode(graph_bytes(tf_checkpoints["legacy"][0]))
    keys, paths = graph.keys(), graph.paths()
    slot_keys = {k for k in keys if "/.OPTIMIZER_SLOT/" in k}
    assert slot_keys == {f"model/dense/{v}/.OPTIMIZER_SLOT/optimizer/{s}/.ATTRIBUTES/VARIABLE_VALUE"
                         for v in ("kernel", "bias") for s in ("m", "v")}
    for key in slot_keys:
        info = keys[key]
        variable_path, _, rest = info.path.partition("/.OPTIMIZER_SLOT/")
        assert info.slot.kind == "reference"
        assert info.slot.slot_name == rest.rsplit("/", 1)[1]
        assert paths[info.slot.variable_node_id] == variable_path
        assert paths[info.slot.optimizer_node_id] == "optimizer"
        assert info.slots == ()
    kernel = keys["model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE"]
    assert kernel.slot is None and kernel.full_name == "w"
    assert sorted(link.slot_name for link in kernel.slots) == ["m", "v"]
    assert {paths[link.slot_node_id] for link in kernel.slots} == {
        "model/dense/kernel/.OPTIMIZER_SLOT/optimizer/m",
        "model/dense/kernel/.OPTIMIZER_SLOT/optimizer/v"}
    # The slot variables hang under their variable in the tree of paths.
    for link in kernel.slots:
        parent, edge = graph.parents()[link.slot_node_id]
        assert parent == kernel.node_id and edge == f".OPTIMIZER_SLOT/optimizer/{link.slot_name}"


def test_keras3_optimizer_slots(tf_checkpoints):
    prefix, facts = tf_checkpoints["keras"]
    graph = objectgraph.decode(graph_bytes(prefix))
    keys, paths = graph.keys(), graph.paths()
    by_full_name = {info.full_name: info for info in keys.values()}
    # Keras 3 keeps the model's weights as ordinary children of the optimizer too; the
    # breadth-first path reaches them there first.
    for i, name in enumerate(facts["variables"]):
        info = by_full_name[name]
        assert info.path == f"optimizer/_trainable_variables/{i}"
        assert info.slot is None
        slots = {link.slot_name: link for link in info.slots}
        assert set(slots) == {"momentum", "velocity"}
        for slot_name, expected in (("momentum", facts["momentums"][i]),
                                    ("velocity", facts["velocities"][i])):
            link = slots[slot_name]
            assert link.kind == "list"
            assert paths[link.optimizer_node_id] == "optimizer"
            slot_info = by_full_name[expected]
            assert slot_info.node_id == link.slot_node_id and slot_info.slot == link
            assert slot_info.path.startswith("optimizer/_variables/")
    linked = {link.slot_node_id for link in graph.slot_links()}
    # Everything else of the optimizer (iterations, learning rate) is no slot.
    assert len(linked) == 2 * len(facts["variables"])
    assert by_full_name[facts["iterations"]].slot is None


def test_keras_golden_without_tf():
    graph = objectgraph.decode(graph_bytes(KERAS_ADAM))
    keys = graph.keys()
    with tfshard.open(KERAS_ADAM) as ckpt:
        assert set(keys) == set(ckpt) - {OBJECT_GRAPH_KEY}
    kernel = keys["optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"]
    assert kernel.full_name == "sequential/dense/kernel"
    assert [(s.slot_name, keys_of(graph, s.slot_node_id)) for s in kernel.slots] == [
        ("momentum", "optimizer/_variables/2/.ATTRIBUTES/VARIABLE_VALUE"),
        ("velocity", "optimizer/_variables/3/.ATTRIBUTES/VARIABLE_VALUE")]
    assert objectgraph.name_to_key(graph_bytes(KERAS_ADAM))["sequential/dense_1/bias"] == \
        "optimizer/_trainable_variables/3/.ATTRIBUTES/VARIABLE_VALUE"


def keys_of(graph, node_id):
    return graph.nodes[node_id].attributes[0].checkpoint_key


def test_model_keys_still_tell_model_from_optimizer():
    owners = objectgraph.model_keys(graph_bytes(KERAS_ADAM))
    assert owners["optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"] is True
    assert owners["optimizer/_variables/2/.ATTRIBUTES/VARIABLE_VALUE"] is False
    assert objectgraph.model_keys(b"\x0a\x05") is None


def test_without_keys_drops_attributes_only():
    data = graph_bytes(KERAS_ADAM)
    dropped = {"optimizer/_variables/2/.ATTRIBUTES/VARIABLE_VALUE"}
    stripped = objectgraph.decode(objectgraph.without_keys(data, dropped))
    original = objectgraph.decode(data)
    assert set(stripped.keys()) == set(original.keys()) - dropped
    assert [n.children for n in stripped.nodes] == [n.children for n in original.nodes]
    assert objectgraph.without_keys(data, set()) == data


def test_escape_local_name():
    assert objectgraph.escape_local_name("x/y") == "x.Sy"
    assert objectgraph.escape_local_name("my.obj") == "my..obj"
    assert objectgraph.escape_local_name("a./b") == "a...Sb"


# ---- crafted graphs -----------------------------------------------------------------

def test_cycles_terminate():
    data = encode([
        {"children": [("a", 1), ("self", 0)]},
        {"children": [("b", 2), ("back", 0)], "attributes": [var("a/.ATTRIBUTES/VARIABLE_VALUE")]},
        {"children": [("a_again", 1), ("loop", 2)],
         "attributes": [var("a/b/.ATTRIBUTES/VARIABLE_VALUE")]},
    ])
    graph = objectgraph.decode(data)
    assert graph.paths() == ["", "a", "a/b"]
    assert graph.parents() == [None, (0, "a"), (1, "b")]
    assert set(graph.keys()) == {"a/.ATTRIBUTES/VARIABLE_VALUE", "a/b/.ATTRIBUTES/VARIABLE_VALUE"}


def test_unreachable_node_has_no_path():
    graph = objectgraph.decode(encode([{}, {"attributes": [var("lost")]}]))
    assert graph.paths() == ["", None]
    assert graph.keys()["lost"].path is None


@pytest.mark.parametrize("nodes, message", [
    ([{"children": [("a", 1)]}], "refers to object 1, but there are 1 objects"),
    ([{"children": [("a", -1)]}], "refers to object -1"),
    ([{"slots": [(0, "m", 5)]}], "slot 'm' refers to slot variable object 5"),
    ([{"slots": [(7, "m", 0)]}], "slot 'm' refers to variable object 7"),
    ([], "no objects"),
])
def test_ids_out_of_range(nodes, message):
    with pytest.raises(CorruptCheckpointError, match=message):
        objectgraph.decode(encode(nodes))


@pytest.mark.parametrize("data, message", [
    (b"\x0a\x05\x0a", "runs past the end"),
    (b"\x0a" + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes"),
    (b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "runs past the end"),  # a 2**63-byte node
    (b"\x08\x01", "field 1 has wire type 0, not 2"),
    (b"\x0a\x02\x08\x01", "field 1 of an object has wire type 0"),
    (b"\x0a\x04\x12\x02\x0a\x05", "runs past the end"),  # a string past its attribute
    (b"\x0a\x05\x12\x03\x0a\x01\xff", "not valid UTF-8"),
    (b"\x0a\x02\x33\x00", "unsupported wire type 3"),
    (b"\x00", "field number 0"),
])
def test_malformed_bytes(data, message):
    with pytest.raises(CorruptCheckpointError, match=message) as info:
        objectgraph.decode(data)
    assert info.value.key == OBJECT_GRAPH_KEY
    assert isinstance(info.value, tfshard.TFShardError) and isinstance(info.value, ValueError)


def test_unknown_fields_are_skipped():
    extra = _int_field(9, 5) + _len_field(10, b"xyz") + b"\x7d\x00\x00\x00\x00"  # 15: fixed32
    node = _len_field(2, _len_field(3, b"k") + _int_field(4, 1)) + extra
    graph = objectgraph.decode(_len_field(1, node) + extra)
    assert graph.nodes[0].attributes == [("", "", "k")]


def test_singular_fields_and_negative_ids():
    # A negative int32 is a 10-byte varint; repeated BoolValue and RegisteredSaver
    # messages are merged (the last value of each field present wins); an empty BoolValue
    # is False.
    child = _len_field(1, _int_field(1, -1) + _len_field(2, b"c"))
    saver = (_len_field(4, _len_field(1, b"s1") + _len_field(2, b"o1"))
             + _len_field(4, _len_field(1, b"s2")))
    flags = _len_field(5, _int_field(1, 1)) + _len_field(5, b"")
    node, empty = objectgraph._nodes(_len_field(1, child + saver + flags)
                                     + _len_field(1, _len_field(5, b"")))
    assert node.children == [("c", -1)] and type(node.children[0]) is objectgraph.Child
    assert node.registered_saver == ("s2", "o1")
    assert type(node.registered_saver) is objectgraph.RegisteredSaver
    assert node.has_checkpoint_values is True and empty.has_checkpoint_values is False


def test_error_offsets():
    with pytest.raises(CorruptCheckpointError, match="at byte 12: a string field") as info:
        objectgraph.decode(b"\x0a\x04\x12\x02\x0a\x00" + b"\x0a\x05\x12\x03\x0a\x01\xff")
    assert info.value.offset == 12  # the string in the second object
    with pytest.raises(CorruptCheckpointError, match="truncated varint") as info:
        objectgraph.decode(b"\x0a\x01\x80")
    assert info.value.offset == 2


def test_not_bytes():
    with pytest.raises(TypeError):
        objectgraph.decode("text")


def _exercise(data: bytes) -> None:
    """Decode ``data`` and compute every view: only CorruptCheckpointError may escape."""
    try:
        graph = objectgraph.decode(data)
    except CorruptCheckpointError:
        return
    graph.paths()
    graph.parents()
    graph.keys()
    graph.slot_links()
    graph.full_names()
    objectgraph.model_keys(data)


SEEDS = [graph_bytes(KERAS_ADAM),
         encode([{"children": [("m", 1), ("opt", 2)]},
                 {"children": [("w", 3)]},
                 {"slots": [(3, "m", 4)], "children": [("_trainable_variables", 5)]},
                 {"attributes": [var("m/w/.ATTRIBUTES/VARIABLE_VALUE")]},
                 {"attributes": [var("slot")]},
                 {"children": [("0", 3)]}])]


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_truncations_and_bit_flips(seed):
    data = SEEDS[seed]
    for end in range(len(data)):
        _exercise(data[:end])
    rng = random.Random(seed)
    for _ in range(3000):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(mutated))
            choice = rng.random()
            if choice < 0.5:
                mutated[i] ^= 1 << rng.randrange(8)
            elif choice < 0.8:
                mutated[i] = rng.randrange(256)
            else:
                mutated[i:i] = bytes([rng.randrange(256)])
        _exercise(bytes(mutated))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(data):
    _exercise(data)


def test_decode_speed():
    # 50,001 objects: root -> model -> 10,000 layers -> kernel, bias; 20,000 slots.
    # Generous bound (loaded CI machines); typically well under a second.
    n_layers = 10_000
    nodes = [{"children": [("model", 1), ("optimizer", 2)]},
             {"children": [(f"layer_{i}", 3 + i) for i in range(n_layers)]},
             {"slots": []}]
    first_var = 3 + n_layers
    for i in range(n_layers):
        nodes.append({"children": [("kernel", first_var + 2 * i), ("bias", first_var + 2 * i + 1)]})
    for i in range(n_layers):
        for name in ("kernel", "bias"):
            nodes.append({"attributes": [var(f"model/layer_{i}/{name}/.ATTRIBUTES/VARIABLE_VALUE",
                                             f"layer_{i}/{name}")]})
    first_slot = len(nodes)
    for v in range(2 * n_layers):
        nodes[2]["slots"].append((first_var + v, "m", first_slot + v))
        nodes.append({"attributes": [var(f"slot{v}")]})
    data = encode(nodes)
    start = time.process_time()
    graph = objectgraph.decode(data)
    keys = graph.keys()
    elapsed = time.process_time() - start
    assert len(graph) == len(nodes) == 50_003
    assert keys["slot0"].path == "model/layer_0/kernel/.OPTIMIZER_SLOT/optimizer/m"
    print(f"decoded {len(nodes)} objects and indexed their keys in {elapsed:.3f}s CPU")
    assert elapsed < 5, f"decoding {len(nodes)} objects took {elapsed:.2f}s"
