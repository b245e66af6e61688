"""The object graph of TF2 checkpoints, decoded without TensorFlow (FORMAT.md §13.1).

A checkpoint written by ``tf.train.Checkpoint`` stores, under the key
``_CHECKPOINTABLE_OBJECT_GRAPH``, a serialized ``TrackableObjectGraph``: the
objects that were saved (the ``Checkpoint`` itself is node 0, then models,
layers, optimizers, variables), the named edges between them, and for each
object the checkpoint keys of its tensors.  :func:`decode` turns those bytes
into an :class:`ObjectGraph`; everything else here is derived from it.

>>> import tfshard
>>> from tfshard import objectgraph
>>> with tfshard.open("train/ckpt-100") as ckpt:                 # doctest: +SKIP
...     graph = objectgraph.decode(ckpt[objectgraph.OBJECT_GRAPH_KEY][()])
>>> graph.paths()[5]                                              # doctest: +SKIP
'model/dense/kernel'
>>> graph.keys()["model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE"].full_name   # doctest: +SKIP
'dense/kernel'

Wire format (proto3; field numbers of ``trackable_object_graph.proto``)::

    TrackableObjectGraph    1: repeated TrackableObject nodes       (node 0 = root)
    TrackableObject         1: repeated ObjectReference children
                            2: repeated SerializedTensor attributes
                            3: repeated SlotVariableReference slot_variables
                            4: RegisteredSaver registered_saver
                            5: google.protobuf.BoolValue has_checkpoint_values (1: bool)
    ObjectReference         1: int32 node_id          2: string local_name
    SerializedTensor        1: string name            2: string full_name
                            3: string checkpoint_key
    SlotVariableReference   1: int32 original_variable_node_id
                            2: string slot_name       3: int32 slot_variable_node_id
    RegisteredSaver         1: string name            2: string object_name

The decoder is written here rather than taken from the ``protobuf`` package:
tfshard does not depend on it, and a dedicated decoder for these six messages is
short, checks every length against the bytes that remain, and reads a graph of
tens of thousands of objects in a fraction of a second.
"""

from __future__ import annotations

import gc
from collections import deque
from contextlib import contextmanager
from typing import NamedTuple, Optional

from .errors import CorruptCheckpointError

__all__ = [
    "OBJECT_GRAPH_KEY",
    "ObjectGraph",
    "Node",
    "Child",
    "Attribute",
    "SlotVariable",
    "RegisteredSaver",
    "SlotLink",
    "KeyInfo",
    "decode",
    "name_to_key",
    "escape_local_name",
    "model_keys",
    "without_keys",
]

#: The key under which TF2 checkpoints store their object graph: a scalar string
#: tensor holding a serialized ``TrackableObjectGraph`` (FORMAT.md §13.1).  It is
#: TF's restore metadata, not a weight.
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"

#: The path segment between a variable's path and its optimizer's path in the
#: object path of a slot variable recorded with a ``SlotVariableReference``.
OPTIMIZER_SLOT = ".OPTIMIZER_SLOT"

#: The path segment before an attribute's escaped name in a checkpoint key.
ATTRIBUTES = ".ATTRIBUTES"

_INT32_MAX = 2**31 - 1


# ---- the decoded structure -------------------------------------------------------------

class Child(NamedTuple):
    """A named edge from an object to one of its dependencies (``ObjectReference``)."""

    local_name: str
    node_id: int


class Attribute(NamedTuple):
    """A tensor an object saves (``SerializedTensor``).

    ``name`` is the attribute's name on its object (``"VARIABLE_VALUE"`` for a
    variable), ``full_name`` the name a name-based restore matches (for a
    variable, its ``Variable.name`` without ``:0``) and ``checkpoint_key`` the
    tensor's key in the checkpoint.
    """

    name: str
    full_name: str
    checkpoint_key: str


class SlotVariable(NamedTuple):
    """A slot variable an optimizer object records (``SlotVariableReference``):
    the node of the variable it belongs to, the slot's name (``"m"``, ``"v"``...)
    and the slot variable's own node."""

    original_variable_node_id: int
    slot_name: str
    slot_variable_node_id: int


class RegisteredSaver(NamedTuple):
    """The saver registered for an object (``RegisteredSaver``)."""

    name: str
    object_name: str


class Node:
    """One object of the graph (``TrackableObject``).

    Attributes
    ----------
    id : int
        Its index in :attr:`ObjectGraph.nodes` (0 is the root).
    children : list of Child
        Its dependencies, in the order they were saved.
    attributes : list of Attribute
        The tensors it saves.
    slot_variables : list of SlotVariable
        For an optimizer of the kind that records them: its slot variables.
    registered_saver : RegisteredSaver or None
    has_checkpoint_values : bool or None
        Whether it or one of its dependencies saves a tensor, as recorded by the
        writer; None when the field is absent (older writers).
    """

    __slots__ = ("id", "children", "attributes", "slot_variables", "registered_saver",
                 "has_checkpoint_values")

    def __init__(self, id, children=None, attributes=None, slot_variables=None,
                 registered_saver=None, has_checkpoint_values=None):
        self.id = id
        self.children = [] if children is None else children
        self.attributes = [] if attributes is None else attributes
        self.slot_variables = [] if slot_variables is None else slot_variables
        self.registered_saver = registered_saver
        self.has_checkpoint_values = has_checkpoint_values

    def __repr__(self) -> str:
        return (f"Node(id={self.id}, children={self.children}, attributes={self.attributes}, "
                f"slot_variables={self.slot_variables}, "
                f"registered_saver={self.registered_saver}, "
                f"has_checkpoint_values={self.has_checkpoint_values})")


class SlotLink(NamedTuple):
    """A slot variable linked to the variable it belongs to and its optimizer.

    ``kind`` says where the link comes from: ``"reference"`` when the optimizer
    records it in the graph (``SlotVariableReference``: tf.keras 2 and
    ``tf.compat.v1`` optimizers; the slot's object path is then
    ``<variable path>/.OPTIMIZER_SLOT/<optimizer path>/<slot name>``);
    ``"list"`` when it is inferred from a Keras 3 optimizer, which tracks its
    variables as ordinary children: a list child (``_momentums``,
    ``_velocities``...) whose i-th element belongs to the i-th element of its
    ``_trainable_variables`` list.  For ``"list"`` links, ``slot_name`` is the
    suffix Keras 3 appends to the variable's name (``momentum``, ``velocity``),
    or the list's name without leading underscores when the names do not tell.
    """

    slot_name: str
    slot_node_id: int
    variable_node_id: int
    optimizer_node_id: int
    kind: str


class KeyInfo(NamedTuple):
    """What the object graph says about one checkpoint key (see :meth:`ObjectGraph.keys`).

    ``path`` is the object path of the node that saves it (None when the node is
    unreachable from the root), ``attribute`` and ``full_name`` come from its
    :class:`Attribute`.  ``slot`` is set when the node is a slot variable;
    ``slots`` lists the slot variables of the node when it is a variable that
    has some.
    """

    key: str
    path: Optional[str]
    node_id: int
    attribute: str
    full_name: str
    slot: Optional[SlotLink]
    slots: tuple


# ---- wire-level decoding ---------------------------------------------------------------

def _corrupt(message: str, offset=None) -> CorruptCheckpointError:
    where = f" at byte {offset}" if offset is not None else ""
    return CorruptCheckpointError(f"malformed object graph ({OBJECT_GRAPH_KEY}){where}: "
                                  f"{message}", key=OBJECT_GRAPH_KEY, offset=offset)


def _varint(buf: bytes, pos: int, end: int) -> tuple:
    """(value, position after it) of the varint at ``pos``; at most 10 bytes."""
    result = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise _corrupt("truncated varint", start)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift > 63:
            raise _corrupt("varint longer than 10 bytes", start)


def _int32(value: int) -> int:
    # A negative int32 is written as the 10-byte varint of its 64-bit two's complement.
    return value - (1 << 64) if value >= 1 << 63 else value


def _skip(buf: bytes, pos: int, end: int, tag: int) -> int:
    """Position after the value of a field with key ``tag`` (already read) that the
    decoder does not use."""
    field, wire = tag >> 3, tag & 7
    if field == 0:
        raise _corrupt("field number 0", pos)
    if wire == 0:
        return _varint(buf, pos, end)[1]
    if wire == 2:
        n, pos = _varint(buf, pos, end)
        if n > end - pos:
            raise _corrupt(f"field {field} of {n} bytes runs past the end of its message", pos)
        return pos + n
    if wire in (1, 5):
        size = 8 if wire == 1 else 4
        if size > end - pos:
            raise _corrupt(f"field {field} runs past the end of its message", pos)
        return pos + size
    raise _corrupt(f"unsupported wire type {wire} (field {field})", pos)


def _text(buf: bytes, start: int, end: int) -> str:
    try:
        return buf[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise _corrupt("a string field is not valid UTF-8", start) from None


def _length(buf: bytes, pos: int, end: int) -> tuple:
    """(start, end) of the length-delimited value at ``pos``."""
    if pos < end and buf[pos] < 0x80:  # nearly every length here fits one byte
        n = buf[pos]
        pos += 1
    else:
        n, pos = _varint(buf, pos, end)
    if n > end - pos:
        raise _corrupt(f"a field of {n} bytes runs past the end of its message", pos)
    return pos, pos + n


def _fields(buf: bytes, pos: int, end: int, known: dict):
    """The fields of the message at ``buf[pos:end]`` whose number is in ``known``
    (``{field number: wire type}``): ``(tag, value start, value end)`` for a
    length-delimited field, ``(tag, value, None)`` for a varint.  Other fields are
    skipped; a known field with another wire type is an error."""
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(buf, pos, end)
        wire = known.get(tag >> 3)
        if wire is None:
            pos = _skip(buf, pos, end, tag)
        elif wire != tag & 7:
            raise _corrupt(f"field {tag >> 3} has wire type {tag & 7}, not {wire}", pos)
        elif wire == 2:
            s, pos = _length(buf, pos, end)
            yield tag, s, pos
        else:
            value, pos = _varint(buf, pos, end)
            yield tag, value, None


# {field number: wire type} of each message (0 varint, 2 length-delimited).
_TENSOR = {1: 2, 2: 2, 3: 2}
_SAVER = {1: 2, 2: 2}
_BOOL = {1: 0}

# Tags (field number << 3 | wire type) the decoder expects.
_T_VARINT_1 = 0x08
_T_LEN_1, _T_LEN_2, _T_LEN_3 = 0x0A, 0x12, 0x1A


@contextmanager
def _gc_paused():
    """No cyclic garbage collection inside: decoding and indexing a graph creates
    tens of thousands of small objects, which the collector would only rescan
    (half the time taken, measured), and none of them form cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# The decoder below is written for speed as much as for clarity: a model with ten
# thousand variables and their optimizer slots has tens of thousands of objects,
# so the common case (one-byte tags and lengths) is read inline and only the
# rest goes through _varint and _skip.

def _ref(buf: bytes, pos: int, end: int) -> Child:
    """An ObjectReference at ``buf[pos:end]``."""
    node_id, name = 0, ""
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(buf, pos, end)
        if tag == 0x08:                                        # node_id
            if pos < end and buf[pos] < 0x80:
                node_id = buf[pos]
                pos += 1
            else:
                node_id, pos = _varint(buf, pos, end)
                node_id = _int32(node_id)
        elif tag == 0x12:                                      # local_name
            s, pos = _length(buf, pos, end)
            name = _text(buf, s, pos)
        elif tag >> 3 in (1, 2):
            raise _corrupt(f"field {tag >> 3} of a child reference has wire type {tag & 7}",
                           pos)
        else:
            pos = _skip(buf, pos, end, tag)
    return tuple.__new__(Child, (name, node_id))


def _tensor(buf: bytes, pos: int, end: int) -> Attribute:
    """A SerializedTensor at ``buf[pos:end]``."""
    values = ["", "", ""]  # name, full_name, checkpoint_key
    start = pos
    try:
        while pos < end:
            tag = buf[pos]
            if tag < 0x80:
                pos += 1
            else:
                tag, pos = _varint(buf, pos, end)
            field = tag >> 3
            if 1 <= field <= 3 and tag & 7 == 2:
                if pos < end and buf[pos] < 0x80:
                    s = pos + 1
                    pos = s + buf[pos]
                    if pos > end:
                        raise _corrupt("a string runs past the end of its message", s)
                else:
                    s, pos = _length(buf, pos, end)
                values[field - 1] = buf[s:pos].decode("utf-8")
            elif 1 <= field <= 3:
                raise _corrupt(f"field {field} of an attribute has wire type {tag & 7}", pos)
            else:
                pos = _skip(buf, pos, end, tag)
    except UnicodeDecodeError:
        raise _corrupt("a string field is not valid UTF-8", start) from None
    return tuple.__new__(Attribute, values)


def _slot(buf: bytes, pos: int, end: int) -> SlotVariable:
    """A SlotVariableReference at ``buf[pos:end]``."""
    ids = [0, 0]  # original_variable_node_id (tag 0x08), slot_variable_node_id (tag 0x18)
    slot_name = ""
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(buf, pos, end)
        if tag == 0x08 or tag == 0x18:                          # the two node ids
            if pos < end and buf[pos] < 0x80:
                ids[tag >> 4] = buf[pos]
                pos += 1
            else:
                value, pos = _varint(buf, pos, end)
                ids[tag >> 4] = _int32(value)
        elif tag == 0x12:                                       # slot_name
            s, pos = _length(buf, pos, end)
            slot_name = _text(buf, s, pos)
        elif 1 <= tag >> 3 <= 3:
            raise _corrupt(f"field {tag >> 3} of a slot reference has wire type {tag & 7}", pos)
        else:
            pos = _skip(buf, pos, end, tag)
    return tuple.__new__(SlotVariable, (ids[0], slot_name, ids[1]))


def _object(buf: bytes, pos: int, end: int, node_id: int) -> Node:
    """A TrackableObject at ``buf[pos:end]``."""
    children, attributes, slots = [], [], []
    saver = has_values = None
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(buf, pos, end)
        if tag & 7 != 2 or not 1 <= tag >> 3 <= 5:
            if 1 <= tag >> 3 <= 5:
                raise _corrupt(f"field {tag >> 3} of an object has wire type {tag & 7}", pos)
            pos = _skip(buf, pos, end, tag)
            continue
        if pos < end and buf[pos] < 0x80:
            s = pos + 1
            pos = s + buf[pos]
            if pos > end:
                raise _corrupt("a field runs past the end of its object", s)
        else:
            s, pos = _length(buf, pos, end)
        if tag == 0x0A:
            children.append(_ref(buf, s, pos))
        elif tag == 0x12:
            attributes.append(_tensor(buf, s, pos))
        elif tag == 0x2A:                       # BoolValue, merged: the last value wins
            if pos - s == 2 and buf[s] == 0x08 and buf[s + 1] < 0x80:
                has_values = buf[s + 1] != 0
            else:
                has_values = bool(has_values)
                for _, v, _ in _fields(buf, s, pos, _BOOL):
                    has_values = v != 0
        elif tag == 0x1A:
            slots.append(_slot(buf, s, pos))
        else:                                   # RegisteredSaver, merged
            name, object_name = saver or ("", "")
            for t, v, ve in _fields(buf, s, pos, _SAVER):
                if t == _T_LEN_1:
                    name = _text(buf, v, ve)
                else:
                    object_name = _text(buf, v, ve)
            saver = RegisteredSaver(name, object_name)
    return Node(node_id, children, attributes, slots, saver, has_values)


def _nodes(data) -> list:
    if isinstance(data, str) or not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"the object graph is bytes, not {type(data).__name__}")
    buf = bytes(data)
    nodes = []
    pos, end = 0, len(buf)
    with _gc_paused():
        while pos < end:
            tag = buf[pos]
            if tag < 0x80:
                pos += 1
            else:
                tag, pos = _varint(buf, pos, end)
            if tag == 0x0A:                                     # nodes
                s, pos = _length(buf, pos, end)
                nodes.append(_object(buf, s, pos, len(nodes)))
            elif tag >> 3 == 1:
                raise _corrupt(f"field 1 has wire type {tag & 7}, not 2", pos)
            else:
                pos = _skip(buf, pos, end, tag)
    return nodes


def _check_ids(nodes: list) -> None:
    n = len(nodes)
    if not n:
        raise _corrupt("no objects (a TF2 object graph has at least its root)")
    for node in nodes:
        for local_name, child in node.children:
            if not 0 <= child < n:
                raise _corrupt(f"object {node.id}'s child {local_name!r} refers to object "
                               f"{child}, but there are {n} objects")
        for original, slot_name, slot in node.slot_variables:
            for what, ref in (("variable", original), ("slot variable", slot)):
                if not 0 <= ref < n:
                    raise _corrupt(f"object {node.id}'s slot {slot_name!r} refers to {what} "
                                   f"object {ref}, but there are {n} objects")


def escape_local_name(name: str) -> str:
    """``name`` as one segment of an object path: ``.`` becomes ``..``, then ``/``
    becomes ``.S`` (FORMAT.md §13.1), so ``"x/y"`` -> ``"x.Sy"``, ``"a.b"`` -> ``"a..b"``."""
    return name.replace(".", "..").replace("/", ".S")


# ---- the graph -------------------------------------------------------------------------

class ObjectGraph:
    """A decoded ``TrackableObjectGraph`` (build one with :func:`decode`).

    ``nodes[i]`` is the :class:`Node` with id ``i``; node 0 is the root (the
    ``tf.train.Checkpoint``).  The views below are computed on first use and
    cached; the graph is meant to be read, not changed.
    """

    def __init__(self, nodes):
        self.nodes = tuple(nodes)
        _check_ids(self.nodes)
        self._paths = None
        self._parents = None
        self._links = None
        self._keys = None

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        n_keys = sum(len(node.attributes) for node in self.nodes)
        return f"<ObjectGraph: {len(self.nodes)} objects, {n_keys} attributes>"

    # -- paths ---------------------------------------------------------------------

    def _traverse(self) -> None:
        """Breadth-first from the root, children in their saved order, the first path
        found to a node being its path: how TF names objects when it saves them.
        Slot variables recorded with a SlotVariableReference are reached from no
        child edge; they get ``<variable>/.OPTIMIZER_SLOT/<optimizer>/<slot>``."""
        with _gc_paused():
            self._paths, self._parents = self._bfs()

    def _bfs(self) -> tuple:
        nodes = self.nodes
        paths = [None] * len(nodes)
        parents = [None] * len(nodes)  # (parent id, edge name) on the path, or None
        paths[0] = ""
        queue = deque([0])
        while queue:  # each node enters the queue once, so cycles end
            current = queue.popleft()
            base = paths[current]
            for local_name, child in nodes[current].children:
                if paths[child] is None:
                    segment = escape_local_name(local_name)
                    paths[child] = f"{base}/{segment}" if base else segment
                    parents[child] = (current, local_name)
                    queue.append(child)
        tree_paths = list(paths)  # slot paths are built from these only
        for node in nodes:
            optimizer_path = tree_paths[node.id]
            for original, slot_name, slot in node.slot_variables:
                variable_path = tree_paths[original]
                if paths[slot] is not None or variable_path is None or optimizer_path is None:
                    continue
                edge = f"{OPTIMIZER_SLOT}/{optimizer_path}/{escape_local_name(slot_name)}"
                paths[slot] = f"{variable_path}/{edge}"
                parents[slot] = (original, edge)
        return paths, parents

    def paths(self) -> list:
        """The object path of each node, by node id: the local names (escaped with
        :func:`escape_local_name`) of the edges on the breadth-first path from the
        root, joined with ``/``; ``""`` for the root, None for a node the root does
        not reach.  A checkpoint key is ``<path>/.ATTRIBUTES/<escaped attribute>``."""
        if self._paths is None:
            self._traverse()
        return list(self._paths)

    def parents(self) -> list:
        """For each node id, ``(parent id, edge name)`` of the edge its path ends
        with, None for the root and unreachable nodes.  These edges form a tree
        (the one :func:`paths` names); for a slot variable the parent is its
        variable and the edge name ``.OPTIMIZER_SLOT/<optimizer path>/<slot>``."""
        if self._parents is None:
            self._traverse()
        return list(self._parents)

    # -- slot variables ------------------------------------------------------------

    def slot_links(self) -> list:
        """Every slot variable linked to its variable and optimizer, as
        :class:`SlotLink` (both kinds: recorded references and Keras 3 lists)."""
        if self._links is None:
            self._links = self._find_links()
        return list(self._links)

    def _find_links(self) -> list:
        nodes = self.nodes
        links, seen = [], set()
        for node in nodes:
            for original, slot_name, slot in node.slot_variables:
                if slot not in seen:
                    seen.add(slot)
                    links.append(SlotLink(slot_name, slot, original, node.id, "reference"))
        for node in nodes:
            trainable = next((child for name, child in node.children
                              if name == "_trainable_variables"), None)
            if trainable is None:
                continue
            variables = _list_items(nodes[trainable])
            if not variables:
                continue
            for name, child in node.children:
                if name in _KERAS_NOT_SLOTS or child == trainable:
                    continue
                items = _list_items(nodes[child])
                if items is None or len(items) != len(variables):
                    continue
                for variable, slot in zip(variables, items):
                    if (slot in seen or slot == variable or not nodes[slot].attributes
                            or not nodes[variable].attributes):
                        continue
                    seen.add(slot)
                    links.append(SlotLink(_keras_slot_name(nodes[variable], nodes[slot], name),
                                          slot, variable, node.id, "list"))
        return links

    # -- keys ----------------------------------------------------------------------

    def keys(self) -> dict:
        """``{checkpoint key: KeyInfo}`` for every attribute of every node, in node
        order (a key saved by two attributes keeps the first)."""
        if self._keys is None:
            with _gc_paused():
                self._keys = self._index_keys()
        return dict(self._keys)

    def _index_keys(self) -> dict:
        paths = self.paths()
        slot_of, slots_of = {}, {}
        for link in self.slot_links():
            slot_of.setdefault(link.slot_node_id, link)
            slots_of.setdefault(link.variable_node_id, []).append(link)
        slots_of = {node_id: tuple(links) for node_id, links in slots_of.items()}
        keys = {}
        for node in self.nodes:
            node_id = node.id
            slot = slot_of.get(node_id)
            slots = slots_of.get(node_id, ())
            for name, full_name, key in node.attributes:
                if key not in keys:
                    keys[key] = tuple.__new__(KeyInfo, (key, paths[node_id], node_id, name,
                                                        full_name, slot, slots))
        return keys

    def full_names(self) -> dict:
        """``{full_name: checkpoint key}`` as TF's restore-by-name builds it
        (``tf.compat.v1.train.Saver`` reading an object-based checkpoint): every
        attribute of every node in order, a later one replacing an earlier one of
        the same ``full_name``."""
        return {full_name: key for node in self.nodes
                for _, full_name, key in node.attributes}


# Children of a Keras 3 optimizer that are lists but hold no slot variables.
_KERAS_NOT_SLOTS = frozenset({"_variables", "_trainable_variables",
                              "_trainable_variables_indices"})


def _list_items(node: Node):
    """The node ids of a tracked Python list (children named "0", "1"... in order),
    or None when ``node`` is not one."""
    children = node.children
    for i, (name, _) in enumerate(children):
        if name != str(i):
            return None
    return [child for _, child in children]


def _keras_slot_name(variable: Node, slot: Node, list_name: str) -> str:
    # Keras 3 names an optimizer variable "<optimizer>/<variable path with '/' -> '_'>_<slot>".
    base = variable.attributes[0].full_name.replace("/", "_") + "_"
    full_name = slot.attributes[0].full_name
    own = full_name.split("/", 1)[1] if "/" in full_name else full_name
    if base != "_" and own.startswith(base) and len(own) > len(base):
        return own[len(base):]
    return list_name.lstrip("_") or list_name


# ---- functions -------------------------------------------------------------------------

def decode(data) -> ObjectGraph:
    """Decode a serialized ``TrackableObjectGraph``.

    Parameters
    ----------
    data : bytes-like
        The value of the checkpoint's ``_CHECKPOINTABLE_OBJECT_GRAPH`` tensor
        (``ckpt[OBJECT_GRAPH_KEY][()]``).

    Returns
    -------
    ObjectGraph

    Raises
    ------
    CorruptCheckpointError
        When the bytes are not a valid ``TrackableObjectGraph``: truncated or
        malformed fields, strings that are not UTF-8, no nodes, or node ids
        (children, slot references) out of range.
    TypeError
        When ``data`` is not bytes-like.
    """
    return ObjectGraph(_nodes(data))


def name_to_key(graph_bytes) -> dict:
    """``{full_name: checkpoint key}`` of a serialized object graph: how a name-based
    restore finds the key of a variable named ``full_name`` (``Variable.name``
    without ``:0``).  Same as :meth:`ObjectGraph.full_names`.

    Raises
    ------
    CorruptCheckpointError
        When ``graph_bytes`` cannot be decoded (see :func:`decode`).
    """
    return decode(graph_bytes).full_names()


# ---- checkpoint surgery (used by tfshard.conversion.strip) -----------------------------

def _is_optimizer_edge(local_name: str) -> bool:
    # tf.train.Checkpoint(optimizer=...), a Keras model's own `optimizer`,
    # `generator_optimizer`, a LossScaleOptimizer's `inner_optimizer`...
    return local_name.lower().endswith("optimizer")


def model_keys(graph: bytes):
    """``{checkpoint key: reached by the model}`` from a serialized object graph, or
    None if it cannot be decoded.

    A key is the model's when its node is reachable from the root without passing
    through an optimizer (an edge named ``...optimizer`` or a node with slot
    variables); slot variables themselves are only reachable through their
    optimizer's ``slot_variables`` references, never through children.
    """
    try:
        nodes = decode(graph).nodes
    except CorruptCheckpointError:
        return None
    reached, todo = {0}, [0]
    while todo:
        for local_name, child in nodes[todo.pop()].children:
            if (child not in reached and not _is_optimizer_edge(local_name)
                    and not nodes[child].slot_variables):
                reached.add(child)
                todo.append(child)
    owners: dict = {}
    for node in nodes:
        for _, _, key in node.attributes:
            owners[key] = owners.get(key, False) or node.id in reached
    return owners


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _spans(buf: bytes, pos: int, end: int):
    """(tag, value start, value end, field start) of every field of a message, for
    rewriting it; the value span is None for fields that are not length-delimited."""
    while pos < end:
        start = pos
        tag, pos = _varint(buf, pos, end)
        if tag & 7 == 2:
            s, pos = _length(buf, pos, end)
            yield tag, s, pos, start
        else:
            pos = _skip(buf, pos, end, tag)
            yield tag, None, pos, start


def without_keys(graph: bytes, dropped: set) -> bytes:
    """The serialized object graph with every attribute whose checkpoint key is in
    ``dropped`` removed, so that TF restores the objects that owned them (an
    optimizer built for fine-tuning) from their initial values instead of failing
    on keys the checkpoint no longer has.  Everything else is kept byte for byte.

    Raises CorruptCheckpointError (a ValueError) when ``graph`` cannot be decoded.
    """
    buf = bytes(graph)
    by_node = iter(decode(buf).nodes)
    out = bytearray()
    for tag, s, e, start in _spans(buf, 0, len(buf)):
        if tag != _T_LEN_1:
            out += buf[start:e]
            continue
        node = next(by_node)
        if not any(key in dropped for _, _, key in node.attributes):
            out += buf[start:e]
            continue
        body = bytearray()
        for t, vs, ve, fs in _spans(buf, s, e):
            if t == _T_LEN_2 and vs is not None:
                keep = True
                for t2, v2, v2e in _fields(buf, vs, ve, _TENSOR):
                    if t2 == _T_LEN_3:
                        keep = _text(buf, v2, v2e) not in dropped
                if not keep:
                    continue
            body += buf[fs:ve]
        out += b"\x0a" + _encode_varint(len(body)) + body
    return bytes(out)
