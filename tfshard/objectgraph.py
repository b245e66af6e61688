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

The wire format is read by :mod:`tfshard._graph` (Cython over the C core's
protobuf reader) rather than by the ``protobuf`` package: tfshard does not depend
on it, and a dedicated decoder for these six messages checks every length against
the bytes that remain and reads a graph of tens of thousands of objects in a
fraction of a second.
"""

from __future__ import annotations

import gc
from collections import deque
from contextlib import contextmanager
from itertools import chain, starmap
from operator import attrgetter, itemgetter
from typing import NamedTuple, Optional

from . import _graph
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
    "serialized_graph",
    "name_to_key",
    "escape_local_name",
    "model_keys",
    "without_keys",
    "with_nodes_changed",
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


# ---- decoding ---------------------------------------------------------------------------

def _corrupt(message: str, offset=None) -> CorruptCheckpointError:
    where = f" at byte {offset}" if offset is not None else ""
    return CorruptCheckpointError(f"malformed object graph ({OBJECT_GRAPH_KEY}){where}: "
                                  f"{message}", key=OBJECT_GRAPH_KEY, offset=offset)


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


def _nodes(data) -> list:
    if isinstance(data, str) or not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"the object graph is bytes, not {type(data).__name__}")
    # The wire format is read by tfshard._graph (Cython over the C core's protobuf
    # reader), which builds the named tuples; each of its entries is Node's arguments.
    with _gc_paused():
        return list(starmap(Node, _graph.decode_nodes(bytes(data), Child, Attribute,
                                                       SlotVariable, RegisteredSaver)))


def _check_ids(nodes: list) -> None:
    n = len(nodes)
    if not n:
        raise _corrupt("no objects (a TF2 object graph has at least its root)")
    # Every id at once, in C loops; the loop below finds the culprit for the message.
    ids = list(map(itemgetter(1), chain.from_iterable(map(attrgetter("children"), nodes))))
    slots = list(chain.from_iterable(map(attrgetter("slot_variables"), nodes)))
    ids += map(itemgetter(0), slots)
    ids += map(itemgetter(2), slots)
    if not ids or (min(ids) >= 0 and max(ids) < n):
        return
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
            prefix = f"{base}/" if base else ""
            for local_name, child in nodes[current].children:
                if paths[child] is None:
                    # escape_local_name, inlined: this runs once per object
                    paths[child] = prefix + local_name.replace(".", "..").replace("/", ".S")
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
                    links.append(tuple.__new__(SlotLink, (slot_name, slot, original, node.id,
                                                          "reference")))
        for node in nodes:
            if not node.children:
                continue
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
            _, slot, variable, _, _ = link
            slot_of.setdefault(slot, link)
            slots_of.setdefault(variable, []).append(link)
        slots_of = {node_id: tuple(links) for node_id, links in slots_of.items()}
        keys = {}
        new = tuple.__new__
        for node in self.nodes:
            attributes = node.attributes
            if not attributes:
                continue
            node_id = node.id
            path = paths[node_id]
            slot = slot_of.get(node_id)
            slots = slots_of.get(node_id, ())
            for name, full_name, key in attributes:
                if key not in keys:
                    keys[key] = new(KeyInfo, (key, path, node_id, name, full_name, slot, slots))
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

def serialized_graph(model) -> bytes | None:
    """The serialized object graph a TF2 checkpoint stores, or None when ``model`` has
    none (TF1 checkpoints, those tfshard writes, other formats).

    Parameters
    ----------
    model : tfshard.Checkpoint or tfshard.formats.Source
        Anything with ``in`` and ``read(name)``.
    """
    if OBJECT_GRAPH_KEY not in model:
        return None
    value = model.read(OBJECT_GRAPH_KEY)
    if getattr(value, "shape", None) != () or not isinstance(value[()], bytes):
        return None
    return value[()]


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


def without_keys(graph: bytes, dropped: set) -> bytes:
    """The serialized object graph with every attribute whose checkpoint key is in
    ``dropped`` removed, so that TF restores the objects that owned them (an
    optimizer built for fine-tuning) from their initial values instead of failing
    on keys the checkpoint no longer has.  Everything else is kept byte for byte.

    Raises CorruptCheckpointError (a ValueError) when ``graph`` cannot be decoded.
    """
    buf = bytes(graph)
    nodes = iter(decode(buf).nodes)  # also checks the fields read below
    out = bytearray()
    for field, _, start, end, field_start in _graph.fields(buf, 0, len(buf)):
        if field != 1:                                          # not a node
            out += buf[field_start:end]
            continue
        node = next(nodes)
        if not any(key in dropped for _, _, key in node.attributes):
            out += buf[field_start:end]
            continue
        attributes = iter(node.attributes)  # one per field 2 of the node, in order
        body = bytearray()
        for field2, _, _, end2, field_start2 in _graph.fields(buf, start, end):
            if field2 == 2 and next(attributes).checkpoint_key in dropped:
                continue
            body += buf[field_start2:end2]
        out += b"\x0a" + _encode_varint(len(body)) + body
    return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _encode_varint(field << 3 | 2) + _encode_varint(len(payload)) + payload


def _string_field(field: int, text: str) -> bytes:
    # proto3 leaves default values out, as TF's serializer does
    return _length_delimited(field, text.encode("utf-8")) if text else b""


def _int_field(field: int, value: int) -> bytes:
    if not value:
        return b""
    if not 0 <= value <= _INT32_MAX:
        raise ValueError(f"node id {value} is not a non-negative int32")
    return _encode_varint(field << 3) + _encode_varint(value)


def _encode_child(child) -> bytes:
    local_name, node_id = child
    return _int_field(1, node_id) + _string_field(2, local_name)


def _encode_attribute(attribute) -> bytes:
    name, full_name, checkpoint_key = attribute
    return _string_field(1, name) + _string_field(2, full_name) + _string_field(3, checkpoint_key)


def _encode_slot(slot) -> bytes:
    original, slot_name, slot_node = slot
    return _int_field(1, original) + _string_field(2, slot_name) + _int_field(3, slot_node)


_NODE_FIELDS = (("children", 1, _encode_child), ("attributes", 2, _encode_attribute),
                ("slot_variables", 3, _encode_slot))


def with_nodes_changed(graph: bytes, changes: dict) -> bytes:
    """The serialized object graph with some nodes' edges, attributes or slot
    references replaced; everything else is kept byte for byte.

    Parameters
    ----------
    graph : bytes
        A serialized ``TrackableObjectGraph``.
    changes : dict
        ``{node id: {"children": [Child...], "attributes": [Attribute...],
        "slot_variables": [SlotVariable...]}}``, each key optional: the node's
        fields of that kind become the given list (plain tuples of the same
        fields work too).  Node ids are not renumbered, so a node left without
        edges to it stays in the graph, unreachable (TF ignores such nodes when
        they have no attributes).

    Raises
    ------
    CorruptCheckpointError
        When ``graph`` cannot be decoded (a ValueError), or a change names a
        node the graph does not have.
    """
    buf = bytes(graph)
    count = len(decode(buf).nodes)  # also checks the fields read below
    for node_id in changes:
        if not 0 <= node_id < count:
            raise _corrupt(f"a change names object {node_id}, but there are {count} objects")
    out = bytearray()
    node_id = 0
    for field, _, start, end, field_start in _graph.fields(buf, 0, len(buf)):
        if field != 1:
            out += buf[field_start:end]
            continue
        change = changes.get(node_id)
        node_id += 1
        if not change:
            out += buf[field_start:end]
            continue
        body = bytearray()
        replaced = set()
        for kind, number, encode in _NODE_FIELDS:
            if kind in change:
                replaced.add(number)
                for item in change[kind]:
                    body += _length_delimited(number, encode(item))
        for field2, _, _, end2, field_start2 in _graph.fields(buf, start, end):
            if field2 not in replaced:
                body += buf[field_start2:end2]
        out += _length_delimited(1, bytes(body))
    return bytes(out)
