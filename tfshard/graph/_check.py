"""Whether a checkpoint holds what a graph restores: ``tfshard verify CKPT --graph G``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

from .. import objectgraph
from ..errors import NodeNotFoundError, TFShardError
from ._meta import _as_dtype, _as_shape

__all__ = ["check_restore", "RestoreCheck", "Mismatch", "Expected"]

_RESTORE_OPS = {"RestoreV2", "Restore", "RestoreSlice"}
_ASSIGN_OPS = {"Assign", "AssignVariableOp"}
_INPUT = re.compile(r"^(?P<op>[^:^]+)(?::(?P<index>\d+))?$")


class Expected(NamedTuple):
    """One tensor the graph restores: its checkpoint key, the dtype and (full) shape it
    needs (None: not known), the slice it reads (``""``: the whole tensor), the
    variables it goes to, and whether a shape mismatch makes TF's restore fail (False
    where TF assigns without checking shapes: resource variables of a TF1 ``Saver``)."""
    key: str
    dtype: Optional[str]
    shape: Optional[list]
    slice_spec: str
    variables: tuple
    shape_checked: bool = True


class Mismatch(NamedTuple):
    """An entry whose dtype or shape is not what the graph expects.  ``restores_anyway``:
    TF's restore does not fail on it (the variable takes the checkpoint's shape), but the
    graph's ops expect the declared one."""
    key: str
    variables: tuple
    what: str
    expected: object
    found: object
    restores_anyway: bool = False

    @property
    def message(self) -> str:
        names = ", ".join(self.variables) or "?"
        text = (f"{self.key} (for {names}): the graph expects {self.what} {self.expected}, "
                f"the checkpoint holds {self.found}")
        if self.restores_anyway:
            text += (" (TF's restore does not check this shape: the variable would take the "
                     "checkpoint's shape)")
        return text


@dataclass
class RestoreCheck:
    """Result of :func:`check_restore`.

    Attributes
    ----------
    graph, checkpoint : str
        The graph file and the checkpoint prefix compared.
    source : str
        Where the expected entries come from: ``"saver"`` (the restore ops of the
        graph's ``Saver``: exactly what ``Saver.restore`` runs), ``"variables"`` (the
        variables collections, for a graph whose saver ops are not found) or
        ``"object_graph"`` (a TF2 SavedModel's saved variables).
    expected : list of Expected
    missing : list of (key, variables)
        Keys the graph restores that the checkpoint does not hold.
    mismatched : list of Mismatch
    unused : list of str
        Checkpoint keys nothing in the graph restores.
    notes : list of str
    """
    graph: str
    checkpoint: str
    source: str
    expected: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)
    unused: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every expected entry is there with the dtype and shape expected."""
        return not self.missing and not self.mismatched


def _split_input(name: str):
    match = _INPUT.match(name)
    if not match:
        return None
    return match["op"], int(match["index"] or 0)


def _strings(graph, input_name: str) -> list:
    """The decoded strings of the Const a restore op reads its names or slices from."""
    node = graph.node(_split_input(input_name)[0])
    while node.op == "Identity" and node.inputs:
        node = graph.node(_split_input(node.inputs[0])[0])
    if node.op != "Const":
        raise NodeNotFoundError(f"{input_name} is computed by a {node.op}, not a Const",
                                key=input_name)
    value = node.attrs["value"].value()
    return [v.decode("utf-8", "backslashreplace") for v in value.reshape(-1)]


def _from_saver(graph) -> list | None:
    """The entries the saver's restore ops read, or None when they are not found."""
    saver = graph.saver
    if saver is None or "/" not in saver.restore_op_name:
        return None
    scope = saver.restore_op_name.rsplit("/", 1)[0] + "/"
    restores = graph.nodes_by_op(_RESTORE_OPS, prefix=scope)
    if not restores:
        return None
    # Where each restored tensor goes: Assign / AssignVariableOp (var, value), with
    # Identity nodes between them.
    identity, targets = {}, {}
    for node in graph.nodes_by_op(_ASSIGN_OPS | {"Identity"}, prefix=scope):
        if node.op == "Identity" and node.inputs:
            identity[node.name] = node.inputs[0]
        elif node.op in _ASSIGN_OPS and len(node.inputs) >= 2:
            source = node.inputs[1]
            for _ in range(len(identity) + 1):
                parsed = _split_input(source)
                if parsed is None or parsed[0] not in identity or parsed[1] != 0:
                    break
                source = identity[parsed[0]]
            parsed = _split_input(source)
            if parsed is not None:
                checked = node.attrs.get("validate_shape", node.op == "Assign") is True
                variable = (_split_input(node.inputs[0]) or (node.inputs[0], 0))[0]
                targets.setdefault(parsed, []).append((variable, checked))
    variables = graph.find_nodes({v for found in targets.values() for v, _ in found})
    out = []
    for restore in restores:
        if restore.op == "RestoreV2":
            names, specs = _strings(graph, restore.inputs[1]), _strings(graph, restore.inputs[2])
            dtypes = restore.attrs.get("dtypes")
            dtypes = dtypes if isinstance(dtypes, list) else []
        else:
            names = _strings(graph, restore.inputs[1])
            specs = _strings(graph, restore.inputs[2]) if restore.op == "RestoreSlice" else [""]
            dtypes = [restore.attrs.get("dt")]
        for i, (key, spec) in enumerate(zip(names, specs)):
            found = targets.get((restore.name, i), [])
            names_to = tuple(v for v, _ in found)
            shape = None
            if spec:
                shape = [int(d) for d in spec.split(" ")[:-1]]   # ValueError: not a spec
            else:
                shapes = [_as_shape(variables[v].attrs.get("shape")) for v in names_to
                          if v in variables]
                shape = shapes[0] if shapes else None
            dtype = _as_dtype(dtypes[i]) if i < len(dtypes) else None
            out.append(Expected(key, dtype if isinstance(dtype, str) else None, shape, spec,
                                names_to, all(checked for _, checked in found) or bool(spec)))
    return out


def _from_variables(graph) -> list:
    out = []
    for v in graph.variables():
        spec = v.slice_info.spec if v.slice_info else ""
        shape = list(v.slice_info.full_shape) if v.slice_info else v.shape
        out.append(Expected(v.checkpoint_key, v.dtype if isinstance(v.dtype, str) else None,
                            shape, spec, (v.name,)))
    return out


def _from_object_graph(graph, ckpt) -> list:
    """A TF2 SavedModel's variables, keyed as the checkpoint's object graph names them
    (matched by object path, as TF's loader matches objects)."""
    keys_by_path = {}
    data = objectgraph.serialized_graph(ckpt)
    if data is not None:
        decoded = objectgraph.decode(data)
        paths = decoded.paths()
        for node in decoded.nodes:
            for name, _, key in node.attributes:
                if name == "VARIABLE_VALUE" and paths[node.id] is not None:
                    keys_by_path.setdefault(paths[node.id], key)
    return [Expected(keys_by_path.get(v.path, v.checkpoint_key),
                     v.dtype if isinstance(v.dtype, str) else None, v.shape, "",
                     (v.name or v.path,)) for v in graph.saved_variables()]


def _compatible(expected, found) -> bool:
    return len(expected) == len(found) and all(e in (-1, f) for e, f in zip(expected, found))


def check_restore(graph, checkpoint=None, *, tags=None) -> RestoreCheck:
    """Whether restoring ``checkpoint`` into ``graph`` would find every tensor the graph
    restores, with the dtype and shape it expects.

    For a TF1 graph the expected entries are read from its ``Saver``'s restore ops (the
    tensor names, slices and dtypes ``save/RestoreV2`` reads, and the variables they are
    assigned to), which is what ``Saver.restore`` runs; without them, from its variables
    collections.  For a TF2 SavedModel, from the object graph's variables.

    Parameters
    ----------
    graph : str, os.PathLike, GraphFile or MetaGraph
        A ``.meta`` file, a ``saved_model.pb`` or a SavedModel directory (see
        :func:`tfshard.graph.open`).
    checkpoint : str or os.PathLike, optional
        The checkpoint (anything :func:`tfshard.open` accepts); default: the SavedModel's
        ``variables/variables``, or the prefix of ``P.meta``.
    tags : str or list, optional
        Which meta graph of a SavedModel (see :meth:`GraphFile.meta_graph`).

    Returns
    -------
    RestoreCheck

    Raises
    ------
    CheckpointNotFoundError, CorruptGraphError, CorruptCheckpointError
        If the graph or the checkpoint cannot be read.
    """
    from .. import reader
    from ._file import GraphFile, open as open_graph
    from ._meta import MetaGraph

    owned = None
    if isinstance(graph, MetaGraph):
        meta, graph_path = graph, graph._src.path
    else:
        if not isinstance(graph, GraphFile):
            graph = owned = open_graph(graph)
        meta, graph_path = graph.meta_graph(tags), graph.path
        if checkpoint is None:
            checkpoint = graph.variables_prefix
    try:
        if checkpoint is None:
            raise TFShardError(f"no checkpoint given for {graph_path}, and none lies beside "
                               f"it", path=graph_path)
        with reader.open(checkpoint) as ckpt:
            check = RestoreCheck(graph_path, ckpt.prefix, "saver")
            expected = None
            if meta.has_object_graph and meta.saved_variables() and \
                    "variables" not in meta.collections:
                check.source, expected = "object_graph", _from_object_graph(meta, ckpt)
            if expected is None:
                try:
                    expected = _from_saver(meta)
                except (TFShardError, KeyError, AttributeError, IndexError, TypeError,
                        ValueError) as exc:
                    check.notes.append(f"the saver's restore ops could not be read ({exc}); "
                                       f"checked against the variables collections instead")
                    expected = None
                if expected is None:
                    check.source, expected = "variables", _from_variables(meta)
            _compare(check, expected, ckpt)
            return check
    finally:
        if owned is not None:
            owned.close()


def _compare(check: RestoreCheck, expected: list, ckpt) -> None:
    check.expected = expected
    keys = set(ckpt.keys())
    for e in expected:
        if e.key not in keys:
            check.missing.append((e.key, e.variables))
            continue
        info = ckpt.info(e.key)
        if e.dtype is not None and info.dtype != e.dtype:
            check.mismatched.append(Mismatch(e.key, e.variables, "dtype", e.dtype, info.dtype))
        elif e.shape is not None and not _compatible(e.shape, list(info.shape)):
            check.mismatched.append(Mismatch(e.key, e.variables, "shape", list(e.shape),
                                             list(info.shape), not e.shape_checked))
    used = {e.key for e in expected} | {objectgraph.OBJECT_GRAPH_KEY}
    check.unused = sorted(k for k in keys if k not in used)
    if not expected:
        check.notes.append("the graph restores no variables")
