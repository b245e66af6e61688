"""One ``MetaGraphDef``, decoded lazily: each part on first use, nodes on demand."""

from __future__ import annotations

import re
from functools import cached_property

from .. import _graphdef as N
from .. import _metagraph as W
from .. import objectgraph
from ..errors import CorruptCheckpointError, CorruptGraphError, NodeNotFoundError
from ._types import (
    Any,
    AssetFile,
    BundleSignature,
    Collection,
    FuncAttr,
    Function,
    Node,
    NodeHead,
    SavedFunction,
    SavedObject,
    SavedVariable,
    SaverDef,
    Signature,
    SliceInfo,
    Tensor,
    TensorInfo,
    TensorValue,
    Variable,
    VariableDef,
    dtype_name,
    shape_list,
)

__all__ = ["MetaGraph", "VARIABLE_COLLECTIONS"]

#: Collections whose bytes_list entries TF writes as serialized ``VariableDef``s.
VARIABLE_COLLECTIONS = ("variables", "trainable_variables", "local_variables",
                        "model_variables", "moving_average_variables", "global_step",
                        "metric_variables")
# MetaGraphDef fields: 1 meta_info_def, 2 graph_def, 3 saver_def, 4 collection_def,
# 5 signature_def, 6 asset_file_def, 7 object_graph_def.
_TOP = (1, 2, 3, 4, 5, 6, 7)
_ASSETS_COLLECTION = "saved_model_assets"
_BUNDLE_COLLECTION = "serving_signatures"
# node() walks the graph for its node this many times before it indexes every name.
_WALKS_BEFORE_INDEX = 4
_TENSOR_NAME = re.compile(r"^(?P<op>[^:^]+):(?P<index>\d+)$")
# Ops whose output is a reference to their dtype attribute (the others output their value).
_REF_OUTPUT = frozenset({"VariableV2", "Variable", "TemporaryVariable", "Assign", "AssignAdd",
                         "AssignSub", "ScatterUpdate", "ScatterAdd", "ScatterSub"})
_VARIABLE_OPS = frozenset({"VariableV2", "Variable", "VarHandleOp", "TemporaryVariable"})
# Attributes that name the dtype of every output, and lists with one dtype per output.
_DTYPE_ATTRS = ("dtype", "T", "out_type", "DstT", "output_type", "Tout")
_DTYPE_LISTS = ("dtypes", "Tout", "output_types", "T", "component_types")


class MetaGraph:
    """One meta graph of a ``.meta`` file or a SavedModel (see :func:`tfshard.graph.open`).

    Every part is decoded on first use; a graph of hundreds of megabytes is walked node
    by node, without building its nodes, for :meth:`variables` and :meth:`op_counts`,
    and nodes are decoded one at a time by :meth:`node` and :meth:`tensor`.  The object
    is only usable while its file is open.
    """

    def __init__(self, source, start: int, end: int, index: int = 0):
        self._src = source
        self.index = index
        self._top = source.call(W.fields, start, end, _TOP)
        self._node_index = None
        self._lookups = 0

    def __repr__(self) -> str:
        return (f"<tfshard.graph.MetaGraph {self.index} of {self._src.path}: tags "
                f"{self.tags}, {self.num_nodes} nodes>")

    # ---- meta info -----------------------------------------------------------------

    @cached_property
    def _info(self) -> dict:
        return self._src.call(W.meta_info, self._top[1])

    @property
    def tags(self) -> list:
        """The meta graph's tags (``["serve"]`` in a SavedModel; often none in a ``.meta``)."""
        return list(self._info["tags"])

    @property
    def tensorflow_version(self) -> str:
        """``tf.__version__`` of the TensorFlow that wrote it ("" in files from before 1.0)."""
        return self._info["tensorflow_version"]

    @property
    def tensorflow_git_version(self) -> str:
        return self._info["tensorflow_git_version"]

    @property
    def meta_graph_version(self) -> str:
        return self._info["meta_graph_version"]

    @property
    def stripped_op_list(self) -> list:
        """Names of the ops of the stripped op list (the ops the graph uses)."""
        return list(self._info["stripped_ops"])

    @property
    def stripped_default_attrs(self) -> bool:
        return self._info["stripped_default_attrs"]

    @property
    def any_info(self):
        """The user's ``any_info`` (:class:`Any`) or None."""
        found = self._info["any_info"]
        return None if found is None else Any(*found)

    @property
    def function_aliases(self) -> dict:
        return dict(self._info["function_aliases"])

    # ---- collections, saver, signatures, assets -------------------------------------

    @cached_property
    def collections(self) -> dict:
        """``{name: Collection}`` of the ``collection_def`` map, in file order."""
        out = {}
        for name, (kind, values) in self._src.call(W.collections, self._top[4]).items():
            if kind == "any_list":
                values = [Any(*v) for v in values]
            variables = None
            if kind == "bytes_list" and name in VARIABLE_COLLECTIONS:
                variables = [_variable_def(v) for v in self._src.call(W.variable_defs,
                                                                      data=values)]
            out[name] = Collection(name, kind, values, variables)
        return out

    def variable_def(self, data: bytes) -> VariableDef:
        """Decode one serialized ``VariableDef`` (a bytes_list entry of a collection)."""
        return _variable_def(self._src.call(W.variable_def, data=data))

    @cached_property
    def saver(self):
        """The :class:`SaverDef`, or None when the meta graph has none."""
        if not self._top[3]:
            return None
        return SaverDef(*self._src.call(W.saver_def, self._top[3]))

    @cached_property
    def signatures(self) -> dict:
        """``{key: Signature}`` of the ``signature_def`` map."""
        out = {}
        for key, (method, inputs, outputs, defaults) in \
                self._src.call(W.signatures, self._top[5]).items():
            out[key] = Signature(method, {k: _tensor_info(v) for k, v in inputs.items()},
                                 {k: _tensor_info(v) for k, v in outputs.items()},
                                 {k: self._tensor_value(v, key) for k, v in defaults.items()})
        return out

    @cached_property
    def asset_files(self) -> list:
        """The :class:`AssetFile` entries (files under the SavedModel's ``assets/``): the
        ``asset_file_def`` field, or (TF1 SavedModel builders) the AssetFileDefs packed in
        the ``saved_model_assets`` collection."""
        found = self._src.call(W.asset_files, self._top[6])
        entry = self.collections.get(_ASSETS_COLLECTION)
        if not found and entry is not None and entry.kind == "any_list":
            for packed in entry.value:
                if packed.type_url.endswith("/tensorflow.AssetFileDef"):
                    found += self._src.call(W.asset_files, [(0, len(packed.value))],
                                            data=packed.value)
        return [AssetFile(None if info is None else _tensor_info(info), name)
                for info, name in found]

    def serving_signatures(self):
        """The signatures of a SessionBundle export (TF Serving before SavedModel): the
        ``tensorflow.serving.Signatures`` of the ``serving_signatures`` collection, as
        ``(default, {name: signature})`` with each signature a :class:`BundleSignature`
        (or None); None when the graph has no such collection."""
        entry = self.collections.get(_BUNDLE_COLLECTION)
        if entry is None or entry.kind != "any_list":
            return None
        default, named = None, {}
        for packed in entry.value:
            if packed.type_url.endswith("/tensorflow.serving.Signatures"):
                found, more = self._src.call(W.serving_signatures, data=packed.value)
                default = BundleSignature(*found) if found else default
                named.update({k: BundleSignature(*v) for k, v in more.items()})
        return default, named

    # ---- the graph -----------------------------------------------------------------

    @cached_property
    def _graph(self) -> tuple:
        return self._src.call(N.graph_parts, self._top[2])

    @property
    def num_nodes(self) -> int:
        """Nodes of the graph (not counting its functions' nodes)."""
        return self._graph[0]

    @property
    def producer(self) -> int:
        """The graph's ``versions.producer`` (the GraphDef version of its writer)."""
        return self._graph[2]

    @cached_property
    def _functions(self) -> list:
        return self._src.call(N.functions, self._graph[1])

    def functions(self) -> list:
        """The :class:`Function` entries of the graph's function library."""
        return [Function(name, self._count_nodes(start, end)) for name, start, end
                in self._functions]

    def _count_nodes(self, start, end) -> int:
        counts: dict = {}
        self._src.scan([(start, end)], 3, N.SCAN_OPS, counts)
        return sum(counts.values())

    def op_counts(self) -> dict:
        """``{op: number of nodes}`` over the graph and its function library."""
        counts: dict = {}
        self._src.scan(self._top[2], 1, N.SCAN_OPS, counts)
        for _, start, end in self._functions:
            self._src.scan([(start, end)], 3, N.SCAN_OPS, counts)
        return dict(sorted(counts.items()))

    def nodes(self, function: str | None = None) -> list:
        """Name, op and device (:class:`NodeHead`) of every node of the graph, or of the
        library function ``function``, in file order."""
        heads: list = []
        self._src.scan(self._node_container(function), 1 if function is None else 3,
                       N.SCAN_HEADS, heads)
        return [NodeHead(*h) for h in heads]

    def _node_container(self, function):
        if function is None:
            return self._top[2]
        for name, start, end in self._functions:
            if name == function:
                return [(start, end)]
        raise NodeNotFoundError(f"{self._src.path} has no function {function!r} in its "
                                f"library", path=self._src.path, key=function)

    def find_nodes(self, names) -> dict:
        """``{name: Node}`` for those of ``names`` the graph holds, in one pass over it
        (without building the index :meth:`node` builds)."""
        wanted = set(names)
        if self._node_index is not None:
            return {n: self._decode_node(self._node_index[n]) for n in wanted
                    if n in self._node_index}
        offsets: dict = {}
        out: dict = {}

        def decode(end):
            for name in offsets.keys() - out.keys():
                out[name] = self._decode_node(offsets[name], end)

        if wanted:
            self._src.scan(self._top[2], 1, N.SCAN_FIND, (wanted, offsets), decode)
        return out

    def node(self, name: str) -> Node:
        """The graph's node ``name`` (an op name, without ``:0``).  The first few calls
        each walk the graph for their node; later ones index every node name once, then
        look names up in the index.

        Raises
        ------
        NodeNotFoundError
            If the graph holds no such node.
        """
        if self._node_index is None and self._lookups < _WALKS_BEFORE_INDEX:
            # A walk finds one node faster than building the index of a large graph.
            self._lookups += 1
            found = self.find_nodes([name]).get(name)
        else:
            if self._node_index is None:
                index: dict = {}
                self._src.scan(self._top[2], 1, N.SCAN_INDEX, index)
                self._node_index = index
            offset = self._node_index.get(name)
            found = None if offset is None else self._decode_node(offset)
        if found is None:
            hint = (f"; {name!r} looks like a tensor name: use tensor({name!r})"
                    if _TENSOR_NAME.match(name) else "")
            raise NodeNotFoundError(f"{self._src.path}: the graph has no node {name!r}{hint}",
                                    path=self._src.path, key=name)
        return found

    def function_nodes(self, function: str) -> list:
        """The decoded :class:`Node` entries of one library function."""
        (start, end), = self._node_container(function)
        found: list = []
        self._src.scan([(start, end)], 3, N.SCAN_BY_OP, (_AnyOp(), found))
        return [self._decode_node(offset, end, function) for _, _, offset in found]

    def _decode_node(self, offset: int, end: int | None = None, function=None) -> Node:
        if end is None:
            end = next(e for s, e in self._top[2] if s <= offset < e)
        name, op, inputs, device, attrs, _, _ = self._src.call(N.node, offset, end)
        return Node(name, op, inputs, device,
                    {k: self._attr(v, name) for k, v in attrs.items()}, function)

    def tensor(self, name: str) -> Tensor:
        """The output ``"op:index"`` (``":0"`` may be left out) of a graph node: its op,
        dtype and shape as the node's attributes tell them, its value for a ``Const``.

        Raises
        ------
        NodeNotFoundError
            If there is no such node.
        """
        match = _TENSOR_NAME.match(name)
        op_name, index = (match["op"], int(match["index"])) if match else (name, 0)
        node = self.node(op_name)
        return Tensor(f"{op_name}:{index}", node, index, _output_dtype(node, index),
                      _output_shape(node, index))

    def nodes_by_op(self, ops, *, prefix: str | None = None) -> list:
        """Decoded nodes of the graph whose op is one of ``ops``, then those of its
        functions (their ``function`` set), in file order; with ``prefix``, only graph
        nodes whose name starts with it."""
        ops = set(ops)
        found: list = []
        out: list = []

        def decode(end):
            out.extend(self._decode_node(offset, end) for name, _, offset in found
                       if prefix is None or name.startswith(prefix))
            found.clear()

        self._src.scan(self._top[2], 1, N.SCAN_BY_OP, (ops, found), decode)
        if prefix is not None:
            return out
        for fname, start, end in self._functions:
            found = []
            self._src.scan([(start, end)], 3, N.SCAN_BY_OP, (ops, found))
            out += [self._decode_node(offset, end, fname) for _, _, offset in found]
        return out

    # ---- variables -------------------------------------------------------------------

    def variables(self) -> list:
        """The graph's variables: those of the ``variables`` collection in its order, then
        those only in ``trainable_variables``; for a TF2 SavedModel without these
        collections, the object graph's variables (:meth:`saved_variables`).  dtype and
        shape come from each variable's node (one pass over the graph for all of them)."""
        found: dict = {}
        for collection in ("variables", "trainable_variables"):
            entry = self.collections.get(collection)
            for definition in (entry.variables or []) if entry else []:
                name = _op_name(definition.variable_name)
                trainable = collection == "trainable_variables" or definition.trainable
                if name in found:
                    found[name] = (found[name][0], found[name][1] or trainable)
                else:
                    found[name] = (definition, trainable)
        if not found:
            return [Variable(v.name or v.path, v.dtype, v.shape, v.trainable, v.checkpoint_key)
                    for v in self.saved_variables()]
        nodes = self.find_nodes(found)
        out = []
        for name, (definition, trainable) in found.items():
            node = nodes.get(name)
            dtype = shape = None
            if node is not None:
                dtype = _as_dtype(node.attrs.get("dtype"))
                shape = (_as_shape(node.attrs["shape"]) if "shape" in node.attrs
                         else _output_shape(node, 0))
            info = definition.save_slice_info
            out.append(Variable(name, dtype, shape, trainable,
                                info.full_name if info else name, info,
                                node.op if node else None, definition))
        return out

    # ---- the TF2 object graph ----------------------------------------------------------

    @cached_property
    def _object_graph(self):
        if not self._top[7]:
            return None
        return self._src.call(W.object_graph, self._top[7])

    @property
    def has_object_graph(self) -> bool:
        """Whether the meta graph holds a ``SavedObjectGraph`` (TF2 SavedModels do)."""
        return self._object_graph is not None

    @cached_property
    def _object_paths(self) -> list:
        """The object path of each object, as checkpoint keys name it (the breadth-first
        path of local names from the root); None for objects the root does not reach."""
        nodes = self._object_graph[0] if self._object_graph else []
        if not nodes:
            return []
        try:
            return objectgraph.ObjectGraph(
                objectgraph.Node(i, [objectgraph.Child(name, child) for child, name in children])
                for i, (children, _, _, _) in enumerate(nodes)).paths()
        except CorruptCheckpointError as exc:   # a child id out of range
            raise CorruptGraphError(f"{self._src.path}: the object graph of meta graph "
                                    f"{self.index} {exc.message.split(': ', 1)[-1]}",
                                    path=self._src.path) from None

    def _saved_variable(self, node_id: int, detail) -> SavedVariable:
        path = self._object_paths[node_id]
        dtype, shape, trainable, _, _, name, device, _ = detail
        key = f"{path}/.ATTRIBUTES/VARIABLE_VALUE" if path else ""
        return SavedVariable(node_id, path or "", name, dtype_name(dtype), shape_list(shape),
                             trainable, key, device)

    def saved_variables(self) -> list:
        """The :class:`SavedVariable` entries of the TF2 object graph ([] without one)."""
        return [self._saved_variable(node_id, detail) for node_id, (_, kind, detail, _)
                in enumerate(self._object_graph[0] if self._object_graph else [])
                if kind == "variable"]

    def saved_functions(self) -> list:
        """The :class:`SavedFunction` entries of the TF2 object graph ([] without one)."""
        out = []
        for node_id, (_, kind, detail, _) in enumerate(
                self._object_graph[0] if self._object_graph else []):
            if kind == "function":
                names = list(detail)
            elif kind == "bare_concrete_function":
                names = [detail[0]]
            else:
                continue
            out.append(SavedFunction(node_id, self._object_paths[node_id] or "", kind, names))
        return out

    def saved_objects(self) -> list:
        """Every object of the TF2 object graph, as :class:`SavedObject` ([] without one)."""
        out = []
        for i, (children, kind, detail, registered) in enumerate(
                self._object_graph[0] if self._object_graph else []):
            if kind == "variable":
                detail = self._saved_variable(i, detail)
            elif isinstance(detail, list):
                detail = list(detail)
            out.append(SavedObject(i, self._object_paths[i], kind, detail, registered,
                                   [(name, child) for child, name in children]))
        return out

    def concrete_functions(self) -> dict:
        """``{name: bound_inputs}`` of the object graph's concrete functions: the ids of
        the objects (variables, resources) each one captures."""
        return {k: list(v) for k, v in
                (self._object_graph[1] if self._object_graph else {}).items()}

    # ---- attribute values ------------------------------------------------------------

    def _tensor_value(self, head, owner) -> TensorValue:
        dtype, shape, start, end = head
        return TensorValue(dtype_name(dtype), shape_list(shape),
                           lambda max_bytes: self._src.tensor_value(start, end, owner,
                                                                     max_bytes))

    def _attr(self, attr, owner):
        kind, value = attr
        if kind == "type":
            return dtype_name(value)
        if kind == "shape":
            return shape_list(value)
        if kind == "tensor":
            return self._tensor_value(value, owner)
        if kind == "func":
            return FuncAttr(value[0], {k: self._attr(v, owner) for k, v in value[1].items()})
        if kind == "list":
            if not value:
                return []
            kind, items = next(((k, v) for k, v in value.items() if v),
                               next(iter(value.items())))
            return [self._attr((kind, item), owner) for item in items]
        return value


class _AnyOp:
    """A set that holds every op (nodes_by_op of a whole function)."""

    def __contains__(self, op) -> bool:
        return True


def _variable_def(v: tuple) -> VariableDef:
    return VariableDef(*v[:4], None if v[4] is None else SliceInfo(*v[4]), *v[5:])


def _op_name(tensor_name: str) -> str:
    """``"dense/kernel:0"`` -> ``"dense/kernel"``."""
    match = _TENSOR_NAME.match(tensor_name)
    return match["op"] if match else tensor_name


def _tensor_info(info) -> TensorInfo:
    name, dtype, shape, coo, composite = info
    components = spec = None
    if composite is not None:
        spec, components = composite[0], [_tensor_info(c) for c in composite[1]]
    return TensorInfo(name, dtype_name(dtype), shape_list(shape), coo, components, spec)


def _as_dtype(value):
    """An attribute value that is a dtype (a name, an unknown code, None), else None: an
    attribute of another kind (in a hostile file) says nothing about the dtype."""
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def _as_shape(value):
    """An attribute value that is a shape (a list of ints), else None."""
    if isinstance(value, list) and all(type(d) is int for d in value):
        return value
    return None


def _output_dtype(node: Node, index: int):
    """The dtype of output ``index`` of a node as its attributes tell it, or None."""
    attrs = node.attrs
    if node.op == "VarHandleOp":
        return "resource"
    for name in _DTYPE_LISTS:
        value = attrs.get(name)
        if isinstance(value, list) and value and _as_dtype(value[0]) is not None:
            return _as_dtype(value[index]) if index < len(value) else None
    for name in _DTYPE_ATTRS:
        value = _as_dtype(attrs.get(name))
        if value is not None:
            if node.op in _REF_OUTPUT and isinstance(value, str):
                return value + "_ref"
            return value
    return None


def _output_shape(node: Node, index: int):
    """The shape of output ``index``: ``_output_shapes`` where the writer recorded it,
    else a Const's value, a Placeholder's or a variable's shape attribute; or None."""
    shapes = node.attrs.get("_output_shapes")
    if isinstance(shapes, list) and index < len(shapes):
        return _as_shape(shapes[index])
    if index == 0 and node.op == "Const" and isinstance(node.attrs.get("value"), TensorValue):
        return node.attrs["value"].shape
    if index == 0 and (node.op in ("Placeholder", "PlaceholderWithDefault")
                       or node.op in _VARIABLE_OPS and node.op != "VarHandleOp"):
        return _as_shape(node.attrs.get("shape"))
    if index == 0 and node.op == "VarHandleOp":
        return []
    return None

