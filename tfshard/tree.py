"""Trees of a model's tensors, as ``tfshard ls --tree`` draws them.

A TF2 checkpoint (``tf.train.Checkpoint``) is shown as the object tree its object
graph records: one entry per object (model, layer, optimizer, variable) under its
local name, variables with their tensor, slot variables linked to the variable
they belong to.  Any other model (TF1 checkpoints, safetensors...) is shown as
the tree of its name scopes: names split on ``/``.

An entry is a plain dict, ready for JSON: ``name``, ``path``, ``children`` (a
list of entries) and, for an object of the object graph, ``node_id``.  An entry
that shows a tensor also has ``key``, ``dtype``, ``shape`` and ``nbytes`` (all
None, plus ``missing: True``, when the object graph names a key the checkpoint
lacks); in an object tree also ``attribute``, ``full_name`` and, for variables
with optimizer slots, ``slots`` (``slot``, ``optimizer``, ``path``, ``kind``,
``key`` of each), for slot variables ``slot_of`` (``slot``, ``variable``,
``optimizer``, ``kind``).  A reference entry (``{"name", "path", "node_id",
"ref"}``) is a second edge to an object shown at path ``ref``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from .errors import CorruptCheckpointError, UnsupportedError
from .objectgraph import OBJECT_GRAPH_KEY, decode, escape_local_name

__all__ = ["ModelTree", "model_tree", "object_tree", "scope_tree"]

# Deeper trees are refused: real ones are a few dozen levels deep, and the text
# indentation of a hostile chain of objects would grow with the square of its depth.
_MAX_TREE_DEPTH = 256


@dataclass
class ModelTree:
    """The tree of a model's tensors (see the module docstring for the entries).

    Attributes
    ----------
    path : str
        What was read (for TF checkpoints, the resolved prefix).
    format : str
        The model's format (``"tf"``, ``"safetensors"``...).
    num_shards : int or None
        Data shards of a TF checkpoint.
    kind : str
        ``"object_graph"`` or ``"name_scopes"``.
    root : dict
        The root entry.
    outside : dict or None
        For an object tree: the name-scope tree of the tensors no object path
        names (TF1-style keys saved beside the graph); None otherwise.
    tensors : list of TensorInfo
        The tensors shown, in both trees.
    objects : int or None
        Objects in the object graph.
    warning : str or None
        Why an object graph that is present could not be used (it is corrupt):
        the tree then shows name scopes.
    """

    path: str
    format: str
    num_shards: int | None
    kind: str
    root: dict
    outside: dict | None
    tensors: list
    objects: int | None = None
    warning: str | None = None

    @property
    def total_bytes(self) -> int:
        """Bytes of the tensors shown."""
        return sum(info.nbytes for info in self.tensors)


def model_tree(path, patterns=()) -> ModelTree:
    """The tree of the model at ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Anything :func:`tfshard.formats.list_tensors` lists.
    patterns : sequence of str
        Globs (``fnmatch``, ``*`` matches ``/``); when given, only tensors whose
        checkpoint key or object path matches one are shown, with the objects
        above them.

    Raises
    ------
    UnsupportedError
        If the object tree is deeper than 256 levels.
    """
    from .formats import list_tensors

    listing = list_tensors(path, object_graph=True)
    infos, graph, warning = listing.tensors, None, None
    if listing.object_graph is not None:
        try:
            graph = decode(listing.object_graph)
        except CorruptCheckpointError as exc:
            warning = f"{exc}; showing name scopes instead"
    if graph is None:
        root, shown = scope_tree(infos, patterns)
        return ModelTree(listing.path, listing.format, listing.num_shards, "name_scopes",
                         root, None, shown, warning=warning)
    root, shown, keys_shown = object_tree(graph, {i.name: i for i in infos}, patterns)
    rest = [i for i in infos if i.name not in keys_shown and i.name != OBJECT_GRAPH_KEY]
    outside, rest_shown = scope_tree(rest, patterns)
    return ModelTree(listing.path, listing.format, listing.num_shards, "object_graph", root,
                     outside, shown + rest_shown, objects=len(graph))


def _matches(patterns, *names) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(n, p) for n in names if n for p in patterns)


def _value(info, key: str) -> dict:
    """The fields of a tree entry that shows the tensor ``key`` (``info`` None: the
    object graph names a key the checkpoint lacks)."""
    if info is None:
        return {"key": key, "dtype": None, "shape": None, "nbytes": None, "missing": True}
    return {"key": key, "dtype": info.dtype, "shape": list(info.shape), "nbytes": info.nbytes}


def scope_tree(infos, patterns=()) -> tuple:
    """The name-scope tree of ``infos`` (objects with ``name``, ``dtype``, ``shape`` and
    ``nbytes``, such as :class:`tfshard.TensorInfo`): names split on ``/``.

    Returns
    -------
    tuple
        ``(root entry, infos shown)``; with ``patterns``, only names that match one.
    """
    root = {"name": "", "path": "", "children": []}
    index = {"": root}
    shown = []
    for info in sorted(infos, key=lambda i: i.name):
        if not _matches(patterns, info.name):
            continue
        shown.append(info)
        parent, path = root, ""
        parts = info.name.split("/")
        for depth, part in enumerate(parts):
            path = f"{path}/{part}" if depth else part
            entry = index.get(path)
            if entry is None:
                entry = index[path] = {"name": part, "path": path, "children": []}
                parent["children"].append(entry)
            parent = entry
        parent.update(_value(info, info.name))
    return root, shown


def object_tree(graph, by_key: dict, patterns=()) -> tuple:
    """The object tree of a TF2 checkpoint.

    Parameters
    ----------
    graph : tfshard.objectgraph.ObjectGraph
    by_key : dict
        The checkpoint's tensors: key -> :class:`tfshard.TensorInfo`.
    patterns : sequence of str
        Globs matched against checkpoint keys and object paths.

    Returns
    -------
    tuple
        ``(root entry, infos shown, keys shown)``.

    Each object appears once, where its object path puts it; a child edge to an
    object already shown elsewhere (Keras 3 models reach their weights through the
    optimizer's lists, a model holds its optimizer...) is a reference entry
    ``{"name", "path": the path through that edge, "ref": the path it is shown at}``,
    kept only when that object holds a tensor shown.
    Legacy slot variables appear under their variable as ``.OPTIMIZER_SLOT/<optimizer
    path>/<slot>``, as their object paths say."""
    nodes, paths, parents = graph.nodes, graph.paths(), graph.parents()
    keys = graph.keys()
    n = len(nodes)
    # The tree edges (those that name an object's path) and the references.
    tree_kids = [[] for _ in range(n)]
    refs = [[] for _ in range(n)]
    claimed = [False] * n
    claimed[0] = True
    for node in nodes:
        for name, child in node.children:
            if not claimed[child] and parents[child] == (node.id, name):
                claimed[child] = True
                tree_kids[node.id].append((name, child))
            else:
                refs[node.id].append((name, child))
    for child, parent in enumerate(parents):
        if parent is not None and not claimed[child]:  # slot variables: parent is the variable
            claimed[child] = True
            tree_kids[parent[0]].append((parent[1], child))
    # Pre-order from the root, with depth; the tree edges form a tree, so this ends.
    order, depth = [], [0] * n
    stack = [0]
    while stack:
        node_id = stack.pop()
        order.append(node_id)
        if depth[node_id] > _MAX_TREE_DEPTH:
            raise UnsupportedError(
                f"the object tree is more than {_MAX_TREE_DEPTH} levels deep; "
                f"tfshard draws at most {_MAX_TREE_DEPTH}")
        for _, child in reversed(tree_kids[node_id]):
            depth[child] = depth[node_id] + 1
            stack.append(child)
    shown_attrs = [[] for _ in range(n)]  # (attribute, key) to show of each node
    for node_id in order:
        for attribute in nodes[node_id].attributes:
            key = attribute.checkpoint_key
            if _matches(patterns, key, paths[node_id]) and keys[key].node_id == node_id:
                shown_attrs[node_id].append(attribute)
    valued = [bool(a) for a in shown_attrs]
    for node_id in reversed(order):
        if valued[node_id]:
            parent = parents[node_id]
            if parent is not None:
                valued[parent[0]] = True
    visible = list(valued)
    for node_id in reversed(order):
        if any(valued[child] for _, child in refs[node_id]):
            visible[node_id] = True
        if visible[node_id] and parents[node_id] is not None:
            visible[parents[node_id][0]] = True

    entries = {}
    infos_shown, keys_shown = [], set()
    for node_id in order:
        if not visible[node_id]:
            continue
        entry = {"name": "" if node_id == 0 else parents[node_id][1],
                 "path": paths[node_id], "node_id": node_id, "children": []}
        entries[node_id] = entry
        if node_id:
            entries[parents[node_id][0]]["children"].append(entry)
        attrs = shown_attrs[node_id]
        targets = [entry]
        if len(attrs) != 1 or attrs[0].name != "VARIABLE_VALUE":
            targets = []
            for attribute in attrs:
                prefix = f"{paths[node_id]}/" if paths[node_id] else ""
                key = attribute.checkpoint_key
                label = key[len(prefix):] if key.startswith(prefix) else attribute.name
                child = {"name": label, "path": paths[node_id], "node_id": node_id}
                entry["children"].append(child)
                targets.append(child)
        for attribute, target in zip(attrs, targets):
            key = attribute.checkpoint_key
            info = by_key.get(key)
            target.update(_value(info, key))
            target["attribute"] = attribute.name
            target["full_name"] = attribute.full_name
            keys_shown.add(key)
            if info is not None:
                infos_shown.append(info)
            found = keys[key]
            if found.slots:
                target["slots"] = [
                    {"slot": link.slot_name, "optimizer": paths[link.optimizer_node_id],
                     "path": paths[link.slot_node_id], "kind": link.kind,
                     "key": next((a.checkpoint_key for a in nodes[link.slot_node_id].attributes),
                                 None)}
                    for link in found.slots]
            if found.slot is not None:
                link = found.slot
                target["slot_of"] = {"slot": link.slot_name,
                                     "variable": paths[link.variable_node_id],
                                     "optimizer": paths[link.optimizer_node_id],
                                     "kind": link.kind}
        for name, child in refs[node_id]:
            if valued[child]:
                here = escape_local_name(name)
                entry["children"].append({
                    "name": name, "path": f"{paths[node_id]}/{here}" if node_id else here,
                    "node_id": child, "ref": paths[child]})
    for node_id, entry in entries.items():
        _saved_order(entry["children"], nodes[node_id])
    root = entries.get(0, {"name": "", "path": "", "node_id": 0, "children": []})
    return root, infos_shown, keys_shown


def _saved_order(entries: list, node) -> None:
    """Sort the entries under ``node`` as its children were saved (tree edges and
    references interleaved): its own attributes first, slot variables last."""
    position = {}
    for i, edge in enumerate(node.children):
        position.setdefault(edge, i)

    def rank(entry):
        if entry["node_id"] == node.id and "ref" not in entry:
            return -1
        return position.get((entry["name"], entry["node_id"]), len(position))

    entries.sort(key=rank)
