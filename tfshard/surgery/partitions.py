"""Partitioned variables: the families of ``part_K`` keys of TF2 object graphs, the
object-graph rewrite that merges them, and TF's way of cutting a tensor into K
slices.

Two layouts hold one variable in pieces:

* slices of one key (TF1 partitioned variables saved by a ``Saver``, and TF2's
  ``ShardedVariable`` as TF 2.21 saves it): the index has one entry with the
  full shape plus an entry per slice.  tfshard reads them as one tensor.
* one key per piece: an object that tracks its shards as children named
  ``part_0``, ``part_1``... (keys ``<path>/part_K/.ATTRIBUTES/VARIABLE_VALUE``,
  each of the piece's own shape, stacked along the first axis), with the
  optimizer's slots of each piece under ``<path>/part_K/.OPTIMIZER_SLOT/...``.
  :func:`part_families` finds them and :func:`merged_graph` rewrites the object
  graph so that the merged key restores into a model whose variable is whole.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ..errors import UnsupportedError
from ..objectgraph import ATTRIBUTES, Attribute, SlotVariable, decode, with_nodes_changed

__all__ = ["PartFamily", "part_families", "merged_graph", "split_extents"]

_VALUE = "VARIABLE_VALUE"
_PART_RE = re.compile(r"part_(0|[1-9]\d*)")


class PartFamily(NamedTuple):
    """Keys that hold one variable (or one of its slots) in pieces along axis 0.

    ``merged_key`` is the key the whole tensor gets, ``part_keys`` the pieces'
    keys in order, ``full_name`` the merged attribute's name-based-restore name.
    """

    merged_key: str
    part_keys: tuple
    full_name: str


def _value_attribute(node):
    attributes = [a for a in node.attributes if a.name == _VALUE]
    return attributes[0] if len(attributes) == 1 and len(node.attributes) == 1 else None


def _strip_part(full_name: str, old: str, new: str) -> str:
    return full_name.replace(old, new, 1) if old in full_name else full_name


def _plan(graph):
    """``(families, changes)``: every part family of a decoded graph, and the node
    changes (see :func:`tfshard.objectgraph.with_nodes_changed`) that merge them."""
    nodes, paths = graph.nodes, graph.paths()
    families, changes = [], {}
    part_of = {}  # part node id -> (container id, k, number of parts)
    for node in nodes:
        parts = [(int(m.group(1)), child) for name, child in node.children
                 if (m := _PART_RE.fullmatch(name))]
        if not parts or any(a.name == _VALUE for a in node.attributes) or paths[node.id] is None:
            continue
        parts.sort()
        if [k for k, _ in parts] != list(range(len(parts))):
            continue  # not a complete run part_0..part_{n-1}
        attrs = [_value_attribute(nodes[child]) for _, child in parts]
        if any(a is None or nodes[child].children for a, (_, child) in zip(attrs, parts)):
            continue
        path = paths[node.id]
        merged = f"{path}/{ATTRIBUTES}/{_VALUE}"
        if any(a.checkpoint_key != f"{paths[child]}/{ATTRIBUTES}/{_VALUE}"
               for a, (_, child) in zip(attrs, parts)):
            continue  # keys not named after their paths: leave them alone
        full_name = re.sub(r"/part_0$", "", attrs[0].full_name)
        families.append(PartFamily(merged, tuple(a.checkpoint_key for a in attrs), full_name))
        changes[node.id] = {
            "attributes": list(node.attributes) + [Attribute(_VALUE, full_name, merged)],
            "children": [c for c in node.children if not _PART_RE.fullmatch(c.local_name)],
        }
        for k, (_, child) in enumerate(parts):
            changes[child] = {"attributes": []}
            part_of[child] = (node.id, k, len(parts))
    # Slots of the pieces: one family per (optimizer, slot name, container).
    for node in nodes:
        if not node.slot_variables or not any(s.original_variable_node_id in part_of
                                              for s in node.slot_variables):
            continue
        groups: dict = {}
        for ref in node.slot_variables:
            owner = part_of.get(ref.original_variable_node_id)
            if owner is not None:
                groups.setdefault((owner[0], ref.slot_name), {})[owner[1]] = ref
        kept = [ref for ref in node.slot_variables
                if ref.original_variable_node_id not in part_of]
        for (container, slot_name), by_k in groups.items():
            n = next(count for cid, _, count in part_of.values() if cid == container)
            refs = [by_k.get(k) for k in range(n)]
            if len(by_k) != n or None in refs:
                raise UnsupportedError(
                    f"slot {slot_name!r} of the partitioned variable {paths[container]} exists "
                    f"for {len(by_k)} of its {n} parts; its pieces cannot be merged")
            attrs = [_value_attribute(nodes[r.slot_variable_node_id]) for r in refs]
            part0_path = paths[refs[0].original_variable_node_id]
            if any(a is None for a in attrs) or not attrs[0].checkpoint_key.startswith(
                    part0_path + "/"):
                raise UnsupportedError(
                    f"slot {slot_name!r} of the partitioned variable {paths[container]} is not "
                    f"saved as one tensor per part under the part's path; its pieces cannot be "
                    f"merged")
            merged = paths[container] + attrs[0].checkpoint_key[len(part0_path):]
            part0_name = nodes[refs[0].original_variable_node_id].attributes[0].full_name
            full_name = _strip_part(attrs[0].full_name, part0_name,
                                    re.sub(r"/part_0$", "", part0_name))
            families.append(PartFamily(merged, tuple(a.checkpoint_key for a in attrs), full_name))
            kept.append(SlotVariable(container, slot_name, refs[0].slot_variable_node_id))
            changes[refs[0].slot_variable_node_id] = {
                "attributes": [Attribute(_VALUE, full_name, merged)]}
            for r in refs[1:]:
                changes[r.slot_variable_node_id] = {"attributes": []}
        changes[node.id] = {"slot_variables": kept}
    return families, changes


def part_families(graph_bytes: bytes) -> list:
    """Every :class:`PartFamily` of a serialized TF2 object graph (``[]`` when it
    has none).

    Raises
    ------
    CorruptCheckpointError
        When the graph cannot be decoded.
    UnsupportedError
        When a partitioned variable's slots cannot be merged with it (a slot on
        some parts only, or saved under other names).
    """
    return _plan(decode(graph_bytes))[0]


def merged_graph(graph_bytes: bytes) -> bytes:
    """The object graph with every part family merged: the container object gets
    the merged key as its ``VARIABLE_VALUE`` attribute and loses its ``part_K``
    edges, each optimizer's slot references point at the container, and the
    pieces' nodes keep no attributes, so ``tf.train.Checkpoint.restore`` puts
    the whole tensor into a model whose variable is not partitioned."""
    return with_nodes_changed(graph_bytes, _plan(decode(graph_bytes))[1])


def split_extents(shape, axis: int, k: int) -> list:
    """The ``k`` slices TF's ``fixed_size_partitioner`` cuts ``shape`` into along
    ``axis``: ``[[(start, length), ...] per dimension, ...]``, the first
    ``shape[axis] % k`` slices one longer than the rest."""
    dim = shape[axis]
    base, extra = divmod(dim, k)
    out, start = [], 0
    for i in range(k):
        length = base + (1 if i < extra else 0)
        out.append([(start, length) if d == axis else (0, n) for d, n in enumerate(shape)])
        start += length
    return out
