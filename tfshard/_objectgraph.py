"""The object graph of TF2 checkpoints (``TrackableObjectGraph``, FORMAT.md §13.1).

Only what checkpoint surgery needs: which checkpoint keys the model reaches
without going through an optimizer, and the graph with some keys removed.
Field numbers: TrackableObjectGraph 1 = nodes; TrackableObject 1 = children
(ObjectReference 1 = node_id, 2 = local_name), 2 = attributes
(SerializedTensor 3 = checkpoint_key), 3 = slot_variables.
"""

from __future__ import annotations

__all__ = ["OBJECT_GRAPH_KEY", "model_keys", "without_keys"]

#: The key under which TF2 checkpoints store their object graph: a scalar string
#: tensor holding a serialized ``TrackableObjectGraph`` (FORMAT.md §13.1).  It is
#: TF's restore metadata, not a weight.
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _varint(buf, pos: int) -> tuple:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf, spans: bool = False):
    """``(field number, value)`` of each field of a serialized protobuf message:
    an int for varints, a memoryview for length-delimited fields, None for fixed
    width ones; with ``spans``, ``(field number, value, (start, end))`` where the
    span covers the whole field, tag included.  ValueError when malformed.  (The
    object graph is the only protobuf tfshard reads outside the index; a
    dependency on protobuf for these few lines is not worth it.)"""
    buf = memoryview(buf)
    pos, end = 0, len(buf)
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        value = None
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if n > end - pos:
                raise ValueError("field runs past the end of its message")
            value, pos = buf[pos:pos + n], pos + n
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("field runs past the end of its message")
        yield (field, value, (start, pos)) if spans else (field, value)


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def without_keys(graph: bytes, dropped: set) -> bytes:
    """The serialized object graph with every attribute whose checkpoint key is in
    ``dropped`` removed, so that TF restores the objects that owned them (an
    optimizer built for fine-tuning) from their initial values instead of failing
    on keys the checkpoint no longer has.  Everything else is kept byte for byte."""
    out = bytearray()
    for field, node, (start, end) in _proto_fields(graph, spans=True):
        if field != 1 or not isinstance(node, memoryview):
            out += graph[start:end]
            continue
        body = bytearray()
        for f, v, (s, e) in _proto_fields(node, spans=True):
            if f == 2 and isinstance(v, memoryview):
                key = dict(_proto_fields(v)).get(3)
                if (isinstance(key, memoryview)
                        and bytes(key).decode("utf-8", "surrogateescape") in dropped):
                    continue
            body += node[s:e]
        out += b"\x0a" + _encode_varint(len(body)) + body
    return bytes(out)


def _is_optimizer_edge(local_name: str) -> bool:
    # tf.train.Checkpoint(optimizer=...), a Keras model's own `optimizer`,
    # `generator_optimizer`, a LossScaleOptimizer's `inner_optimizer`...
    return local_name.lower().endswith("optimizer")


def model_keys(graph: bytes):
    """``{checkpoint key: reached by the model}`` from a serialized
    ``TrackableObjectGraph``, or None if it cannot be parsed.

    A key is the model's when its node is reachable from the root without passing
    through an optimizer (an edge named ``...optimizer`` or a node with slot
    variables); slot variables themselves are only reachable through their
    optimizer's ``slot_variables`` references, never through children.
    """
    try:
        nodes = []  # (children [(node id, local name)], keys, has slot variables)
        for field, node in _proto_fields(graph):
            if field != 1 or not isinstance(node, memoryview):
                continue
            children, keys, has_slots = [], [], False
            for f, v in _proto_fields(node):
                if f == 1 and isinstance(v, memoryview):      # ObjectReference
                    ref = dict(_proto_fields(v))
                    local = ref.get(2, b"")
                    children.append((ref.get(1, 0), bytes(local).decode("utf-8", "replace")))
                elif f == 2 and isinstance(v, memoryview):    # SerializedTensor
                    key = dict(_proto_fields(v)).get(3)
                    if isinstance(key, memoryview):
                        keys.append(bytes(key).decode("utf-8", "surrogateescape"))
                elif f == 3:                                   # SlotVariableReference
                    has_slots = True
            nodes.append((children, keys, has_slots))
    except (ValueError, UnicodeDecodeError):
        return None
    if not nodes:
        return None
    reached, todo = {0}, [0]
    while todo:
        for child, local_name in nodes[todo.pop()][0]:
            if (isinstance(child, int) and 0 <= child < len(nodes) and child not in reached
                    and not _is_optimizer_edge(local_name) and not nodes[child][2]):
                reached.add(child)
                todo.append(child)
    owners: dict = {}
    for i, (_, keys, _) in enumerate(nodes):
        for key in keys:
            owners[key] = owners.get(key, False) or i in reached
    return owners
