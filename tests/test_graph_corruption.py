"""Corrupt and hostile graph files: every truncation at a field boundary, malformed wire
format, hostile sizes and nesting.  Only TFShardError subclasses may come out, naming
the file (and the offset where known); nothing is allocated for sizes the bytes do not
hold.  The random campaign over the same decoder is in test_fuzz.py (seeds "graph")."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import tfshard
from tfshard import graph

from bundle_builder import field, varint

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "graph"
spec = importlib.util.spec_from_file_location("fuzz", ROOT / "scripts" / "fuzz.py")
fuzz = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fuzz)


def exercise(tmp_path, data: bytes, kind="meta_graph", name="g") -> str:
    """Write ``data`` as a graph file and walk the whole API over it (fuzz.exercise)."""
    suffix = ".meta" if kind == "meta_graph" else ".pb"
    path = tmp_path / (name + suffix)
    path.write_bytes(data)
    return fuzz.exercise_graph(str(path), kind, str(tmp_path / name))


def boundaries(data: bytes) -> list:
    """The offsets where a field starts or ends, at every depth of nesting (for a message
    fuzz.parse_message can read)."""
    out = set()

    def walk(fields, base):
        pos = base
        for f in fields:
            out.add(pos)
            encoded = fuzz.encode_message([f])
            if f.children is not None:
                header = len(encoded) - len(f.payload())
                walk(f.children, pos + header)
            pos += len(encoded)
            out.add(pos)

    walk(fuzz.parse_message(data), 0)
    return sorted(out)


@pytest.mark.parametrize("name, kind", [("legacy/export.meta", "meta_graph"),
                                        ("builder/saved_model.pb", "saved_model")])
def test_every_truncation_at_a_field_boundary(tmp_path, name, kind):
    data = (DATA / name).read_bytes()
    cuts = boundaries(data)[:-1]
    assert len(cuts) > 200
    cuts = cuts[::max(1, len(cuts) // 250)]   # the larger file: 250 of its boundaries
    outcomes = {}
    for cut in cuts:
        for at in {cut, max(0, cut - 1)}:     # at the boundary, and one byte short of it
            outcome = exercise(tmp_path, data[:at], kind)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # A cut between top-level fields is a valid (shorter) message; the others are not.
    assert set(outcomes) <= {"ok", "CorruptGraphError", "UnsupportedError",
                             "NodeNotFoundError"}, outcomes
    assert outcomes["CorruptGraphError"] > len(cuts) // 2


def test_errors_name_the_file_and_offset(tmp_path):
    data = (DATA / "legacy" / "export.meta").read_bytes()
    path = tmp_path / "cut.meta"
    path.write_bytes(data[:-3])
    with pytest.raises(tfshard.CorruptGraphError) as info:
        graph.open(path)          # the top-level fields are walked when it opens
    exc = info.value
    assert exc.path == str(path) and str(path) in str(exc)
    assert isinstance(exc.offset, int) and 0 < exc.offset < len(data)
    assert isinstance(exc, tfshard.CorruptCheckpointError) and isinstance(exc, ValueError)


def _meta(graph_def=b"", *extra):
    return field(2, 2, graph_def) + b"".join(extra)


def _node(name, op, *attrs):
    out = field(1, 2, name.encode()) + field(2, 2, op.encode())
    return out + b"".join(field(5, 2, field(1, 2, k.encode()) + field(2, 2, v)) for k, v in attrs)


def _const(name, tensor):
    return field(1, 2, _node(name, "Const", ("value", field(8, 2, tensor))))


def _tensor(dtype, dims, *values):
    shape = b"".join(field(2, 2, field(1, 0, d)) for d in dims)
    return field(1, 0, dtype) + field(2, 2, shape) + b"".join(values)


def _open_value(tmp_path, data, name="c"):
    path = tmp_path / "v.meta"
    path.write_bytes(data)
    with graph.open(path) as f:
        return f.meta_graph().tensor(name).value()


def test_const_values_broadcast_and_bounds(tmp_path):
    # one float for 6 elements: the value repeats (as TF stores tf.fill / tf.zeros)
    one = _tensor(1, [2, 3], field(5, 5, int(np.float32(1.5).view(np.uint32))))
    assert _open_value(tmp_path, _meta(_const("c", one))).tolist() == [[1.5] * 3] * 2
    # no value at all: zeros; strings: empty
    assert not _open_value(tmp_path, _meta(_const("c", _tensor(3, [4])))).any()
    strings = _open_value(tmp_path, _meta(_const("c", _tensor(7, [2], field(8, 2, b"a")))))
    assert strings.tolist() == [b"a", b"a"]
    # 2**40 elements from one value: refused before anything is allocated
    with pytest.raises(tfshard.UnsupportedError, match="max_bytes"):
        _open_value(tmp_path, _meta(_const("c", _tensor(1, [2**20, 2**20], field(5, 5, 0)))))
    # dimensions whose product overflows int64
    with pytest.raises(tfshard.UnsupportedError, match="max_bytes"):
        _open_value(tmp_path, _meta(_const("c", _tensor(9, [2**62, 2**62]))))
    # more values than elements; a partial element of tensor_content
    with pytest.raises(tfshard.CorruptGraphError, match="3 values for a shape of 2"):
        _open_value(tmp_path, _meta(_const("c", _tensor(3, [2], field(7, 2, b"\x01\x02\x03")))))
    with pytest.raises(tfshard.CorruptGraphError, match="not a multiple"):
        _open_value(tmp_path, _meta(_const("c", _tensor(1, [2], field(4, 2, b"\x00" * 7)))))
    # an unknown dimension, a dtype with no numpy value, a reference dtype
    with pytest.raises(tfshard.CorruptGraphError, match="no full shape"):
        _open_value(tmp_path, _meta(_const("c", _tensor(1, [-1]))))
    with pytest.raises(tfshard.UnsupportedError, match="resource"):
        _open_value(tmp_path, _meta(_const("c", _tensor(20, []))))
    with pytest.raises(tfshard.CorruptGraphError, match="reference dtype"):
        _open_value(tmp_path, _meta(_const("c", _tensor(101, []))))
    # a small max_bytes
    path = tmp_path / "big.meta"
    path.write_bytes(_meta(_const("c", _tensor(1, [1000]))))
    with graph.open(path) as f:
        value = f.meta_graph().tensor("c").node.attrs["value"]
        with pytest.raises(tfshard.UnsupportedError):
            value.value(max_bytes=100)
        assert value.value(max_bytes=4000).shape == (1000,)


def test_hostile_wire_format(tmp_path):
    cases = {
        # a node claiming 2**63 bytes
        "huge_length": field(2, 2, b"\x0a" + varint(2**63) + b"x"),
        # an over-long varint where the meta graph's first field is
        "long_varint": b"\x08" + b"\xff" * 11,
        # graph_def with the varint wire type
        "wrong_wire": field(2, 0, 5),
        # a node whose name is a number
        "name_wire": _meta(field(1, 2, field(1, 0, 7))),
        # field number 0, wire types 3/4 (groups), 6, 7
        "field_zero": b"\x02\x00",
        "group": b"\x0b\x0c",
        "wire_6": b"\x0e",
        # a collection whose int64 list is not packed varints
        "packed": field(4, 2, field(1, 2, b"c") + field(2, 2, field(3, 2, field(1, 2,
                                                                                  b"\xff")))),
        # float list of 5 bytes
        "floats": field(4, 2, field(1, 2, b"f") + field(2, 2, field(4, 2, field(1, 2,
                                                                                  b"12345")))),
        # an object graph whose child points past the objects
        "child_id": field(7, 2, field(1, 2, field(1, 2, field(1, 0, 99)))),
        # a negative child id (a 10-byte int32)
        "child_negative": field(7, 2, field(1, 2, field(1, 2, field(1, 0, -1)))),
    }
    for name, data in cases.items():
        outcome = exercise(tmp_path, data, name=name)
        assert outcome == "CorruptGraphError", (name, outcome)
    # the same bytes as a SavedModel
    assert exercise(tmp_path, field(2, 0, 1), "saved_model") == "CorruptGraphError"
    assert exercise(tmp_path, field(2, 2, b"\xff"), "saved_model") == "CorruptGraphError"


def test_nesting_deeper_than_the_limit_is_refused(tmp_path):
    # An attribute value that is a function whose attribute is a function ... 200 deep.
    value = field(3, 0, 1)
    for _ in range(200):
        value = field(10, 2, field(1, 2, b"f") + field(2, 2, field(1, 2, b"a")
                                                        + field(2, 2, value)))
    data = _meta(field(1, 2, _node("n", "PartitionedCall", ("f", value))))
    assert exercise(tmp_path, data) == "CorruptGraphError"
    path = tmp_path / "deep.meta"
    path.write_bytes(data)
    with graph.open(path) as f:
        with pytest.raises(tfshard.CorruptGraphError, match="nested deeper than 64"):
            f.meta_graph().node("n")
    # composite tensor infos nested 200 deep; 60 levels are fine
    for depth, outcome in ((200, "CorruptGraphError"), (60, "ok")):
        info = field(1, 2, b"t:0")
        for _ in range(depth):
            info = field(5, 2, field(2, 2, info))
        signature = field(1, 2, b"s") + field(2, 2, field(2, 2, field(1, 2, b"o")
                                                           + field(2, 2, info)))
        assert exercise(tmp_path, field(5, 2, signature)) == outcome, depth


def test_empty_and_odd_but_valid_messages(tmp_path):
    """An empty file is an empty MetaGraphDef (protobuf allows it); repeated singular
    fields merge as protobuf merges them; duplicate op fields: the last one counts, in
    the op counts as in the decoded node."""
    assert exercise(tmp_path, b"") == "ok"
    path = tmp_path / "empty.meta"
    path.write_bytes(b"")
    with graph.open(path) as f:
        doc = graph.summary(f)
    assert doc == {"meta_graphs": [{"tags": [], "tensorflow_version": "", "collections": {},
                                    "variables": [], "saver": None, "signatures": {},
                                    "op_counts": {}}]}
    # two graph_def fields: their nodes add up; two meta_info_defs: tags add up
    data = (field(1, 2, field(4, 2, b"a")) + _meta(field(1, 2, _node("x", "NoOp")))
            + field(1, 2, field(4, 2, b"b")) + _meta(field(1, 2, _node("y", "NoOp") +
                                                        field(2, 2, b"Const"))))
    path.write_bytes(data)
    with graph.open(path) as f:
        g = f.meta_graph()
        assert g.tags == ["a", "b"] and g.num_nodes == 2
        assert g.op_counts() == {"Const": 1, "NoOp": 1}
        assert g.node("y").op == "Const"
        json.dumps(graph.summary(f))
    # a collection entry without a kind; a signature with no value
    data = field(4, 2, field(1, 2, b"nothing")) + field(5, 2, field(1, 2, b"s"))
    path.write_bytes(data)
    with graph.open(path) as f:
        mg, = graph.summary(f)["meta_graphs"]
    assert mg["collections"] == {"nothing": {"kind": None, "value": []}}
    assert mg["signatures"] == {"s": {"method_name": "", "inputs": {}, "outputs": {}}}


def test_garbage_files(tmp_path):
    rng = np.random.default_rng(5)
    outcomes = set()
    for i in range(60):
        data = rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8).tobytes()
        outcomes.add(exercise(tmp_path, data, "meta_graph" if i % 2 else "saved_model"))
    assert outcomes <= {"ok", "CorruptGraphError"}
    assert "CorruptGraphError" in outcomes
    text = tmp_path / "text.meta"
    text.write_text("meta_info_def { tags: 'serve' }\n")
    with pytest.raises(tfshard.CorruptGraphError, match=str(text)):
        graph.open(text)
