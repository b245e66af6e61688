"""The values :mod:`tfshard.graph` returns, and the conversions from the wire-level
tuples of :mod:`tfshard._metagraph` into them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Union

from ..dtypes import NAMES

__all__ = [
    "dtype_name", "shape_list", "Any", "Collection", "SliceInfo", "VariableDef", "Variable",
    "SaverDef", "TensorInfo", "Signature", "AssetFile", "BundleSignature", "FuncAttr", "TensorValue", "Node",
    "Tensor", "NodeHead", "Function", "SavedVariable", "SavedObject", "SavedFunction", "RiskyOp",
]

# TF's names for the codes tfshard's dtype table leaves out (it holds tensor types).
_EXTRA_NAMES = {20: "resource"}

DTypeName = Union[str, int, None]


def dtype_name(code: int) -> DTypeName:
    """TensorFlow's name for a ``DataType`` code, as ``tf.as_dtype(code).name`` gives it:
    ``"float32"``, ``"float32_ref"`` for a reference type (code + 100), None for 0
    (``DT_INVALID``, a dtype that was never set), and the integer itself for a code
    TensorFlow does not know."""
    if code == 0:
        return None
    base, ref = (code - 100, "_ref") if code > 100 else (code, "")
    name = NAMES.get(base) or _EXTRA_NAMES.get(base)
    return name + ref if name else code


def shape_list(shape) -> Optional[list]:
    """A decoded TensorShapeProto as a list (-1: unknown size), None for unknown rank."""
    return None if shape is None else list(shape)


class Any(NamedTuple):
    """A ``google.protobuf.Any``: the type URL and the serialized message."""
    type_url: str
    value: bytes


class Collection(NamedTuple):
    """One entry of a meta graph's ``collection_def``.

    ``kind`` is ``"node_list"`` (``value``: node or tensor names, str), ``"bytes_list"``
    (bytes), ``"int64_list"`` (int), ``"float_list"`` (float), ``"any_list"``
    (:class:`Any`), or None when the entry sets no kind.  ``variables`` holds the
    decoded :class:`VariableDef` entries of the collections TF stores them in
    (``variables``, ``trainable_variables``, ``global_step``...), else None.
    """
    name: str
    kind: Optional[str]
    value: list
    variables: Optional[list] = None


class SliceInfo(NamedTuple):
    """A ``SaveSliceInfoDef``: the partition of ``full_name`` a variable holds."""
    full_name: str
    full_shape: tuple
    var_offset: tuple
    var_shape: tuple

    @property
    def spec(self) -> str:
        """The slice as a TF1 Saver writes it in ``shape_and_slices``: ``"10 3 0,4:0,3"``
        (the full shape, then ``offset,length`` per dimension)."""
        extents = ":".join(f"{o},{n}" for o, n in zip(self.var_offset, self.var_shape))
        return " ".join(map(str, self.full_shape)) + " " + extents


class VariableDef(NamedTuple):
    """A ``VariableDef`` (one entry of a variables collection)."""
    variable_name: str
    initial_value_name: str
    initializer_name: str
    snapshot_name: str
    save_slice_info: Optional[SliceInfo]
    is_resource: bool
    trainable: bool
    synchronization: int
    aggregation: int


@dataclass(frozen=True)
class Variable:
    """A variable of a meta graph (see :meth:`MetaGraph.variables`).

    Attributes
    ----------
    name : str
        The variable's op name (``"dense/kernel"``, no ``:0``).
    dtype : str, int or None
        Its value's dtype, from its graph node (None when there is none).
    shape : list or None
        From its graph node: -1 for an unknown size, None for an unknown rank or no node.
    trainable : bool
        Listed in ``trainable_variables`` or flagged in its ``VariableDef``.
    checkpoint_key : str
        The checkpoint entry it restores from: its name, the full name of a partitioned
        variable, or for a TF2 object graph ``<object path>/.ATTRIBUTES/VARIABLE_VALUE``.
    slice_info : SliceInfo or None
        For a partition of a partitioned variable: its place in the whole.
    op : str or None
        The op of its node (``VariableV2``, ``VarHandleOp``, TF 0.12's ``Variable``).
    definition : VariableDef or None
        Its ``VariableDef`` (None for one known only from the object graph).
    """
    name: str
    dtype: DTypeName
    shape: Optional[list]
    trainable: bool
    checkpoint_key: str
    slice_info: Optional[SliceInfo] = None
    op: Optional[str] = None
    definition: Optional[VariableDef] = None


class SaverDef(NamedTuple):
    """A ``SaverDef``; ``version`` is 0 (legacy), 1 (V1) or 2 (V2)."""
    filename_tensor_name: str
    save_tensor_name: str
    restore_op_name: str
    max_to_keep: int
    sharded: bool
    keep_checkpoint_every_n_hours: float
    version: int


class TensorInfo(NamedTuple):
    """A ``TensorInfo`` of a signature: ``name`` is None for a sparse tensor
    (``coo_sparse``: the names of its values, indices and dense shape tensors) or a
    composite one (``components``: TensorInfos, ``type_spec``: its class name)."""
    name: Optional[str]
    dtype: DTypeName
    shape: Optional[list]
    coo_sparse: Optional[tuple] = None
    components: Optional[list] = None
    type_spec: Optional[str] = None


class Signature(NamedTuple):
    """A ``SignatureDef``: inputs and outputs by key; ``defaults`` holds
    :class:`TensorValue` defaults of inputs."""
    method_name: str
    inputs: dict
    outputs: dict
    defaults: dict


class AssetFile(NamedTuple):
    """An ``AssetFileDef``: the tensor that holds the asset's path, and its file name
    (under the SavedModel's ``assets/``)."""
    tensor: Optional[TensorInfo]
    filename: str


class BundleSignature(NamedTuple):
    """A SessionBundle ``Signature``: ``kind`` is ``"regression"`` (``tensors``: input,
    output), ``"classification"`` (input, classes, scores) or ``"generic"`` (any names),
    None when unset; ``tensors`` maps each role to a tensor name."""
    kind: Optional[str]
    tensors: dict


class FuncAttr(NamedTuple):
    """A ``NameAttrList`` attribute value: a function and its attributes."""
    name: str
    attrs: dict


@dataclass(frozen=True)
class TensorValue:
    """A ``TensorProto`` held in a graph (a ``Const`` node's value, a signature default),
    decoded on demand with :meth:`value`."""
    dtype: DTypeName
    shape: Optional[list]
    _decode: object = field(repr=False, compare=False)

    def value(self, max_bytes: int = 256 << 20):
        """The tensor as a numpy array (DT_STRING: an object array of bytes).

        TF stores constants compactly: a tensor of one repeated value keeps it once,
        and fewer values than elements mean that the last one repeats; the array
        returned is the full tensor.

        Raises
        ------
        UnsupportedError
            For a dtype tfshard cannot decode here (resource, variant, float8 stored
            as values), or a tensor over ``max_bytes``.
        CorruptGraphError
            If the stored values do not fit the dtype and shape.
        """
        return self._decode(max_bytes)


@dataclass(frozen=True)
class Node:
    """A ``NodeDef``.  ``attrs`` maps names to plain values: bytes, int, float, bool,
    a dtype name, a shape list (None: unknown rank), a :class:`TensorValue`, a
    :class:`FuncAttr`, a list of one of these, or None for an unset value.
    ``function`` names the library function the node belongs to (None: the graph)."""
    name: str
    op: str
    inputs: list
    device: str
    attrs: dict
    function: Optional[str] = None


class NodeHead(NamedTuple):
    """Name, op and device of a node, as :meth:`MetaGraph.nodes` lists them."""
    name: str
    op: str
    device: str


@dataclass(frozen=True)
class Tensor:
    """One output of a node (``"loss/global_step:0"``): its dtype and shape as the
    node's attributes tell them (None where they do not), and its value for a ``Const``."""
    name: str
    node: Node
    index: int
    dtype: DTypeName
    shape: Optional[list]

    @property
    def op(self) -> str:
        return self.node.op

    def value(self, max_bytes: int = 256 << 20):
        """The value of a ``Const`` node's output (see :meth:`TensorValue.value`).

        Raises
        ------
        UnsupportedError
            If the node is not a ``Const`` (its value exists only when the graph runs).
        """
        from ..errors import UnsupportedError

        held = self.node.attrs.get("value")
        if self.node.op != "Const" or not isinstance(held, TensorValue):
            raise UnsupportedError(f"{self.name} is the output of a {self.node.op} node, not "
                                   f"of a Const: its value exists only when the graph runs",
                                   key=self.name)
        return held.value(max_bytes)


class Function(NamedTuple):
    """A function of the graph's library: its name and number of nodes."""
    name: str
    num_nodes: int


class SavedVariable(NamedTuple):
    """A variable of a TF2 ``SavedObjectGraph``: ``path`` is its object path from the
    root (``"layer/kernel"``), ``checkpoint_key`` the key it restores from."""
    node_id: int
    path: str
    name: str
    dtype: DTypeName
    shape: Optional[list]
    trainable: bool
    checkpoint_key: str
    device: str = ""


class SavedObject(NamedTuple):
    """One object of a TF2 ``SavedObjectGraph``.  ``kind`` is the ``SavedObject`` kind
    set (``"user_object"``, ``"variable"``, ``"function"``, ``"bare_concrete_function"``,
    ``"asset"``, ``"constant"``, ``"resource"``, ``"captured_tensor"``) or None;
    ``detail`` what it holds: the user object's identifier, the variable's
    :class:`SavedVariable`, the function's concrete function names, a bare concrete
    function's ``(name, argument_keywords, allowed_positional_arguments)``, the asset's
    index in :attr:`MetaGraph.asset_files`, the constant's operation, the resource's
    device, a captured tensor's ``(name, concrete_function)``.  ``children``:
    ``(local_name, node_id)`` pairs."""
    node_id: int
    path: Optional[str]
    kind: Optional[str]
    detail: object
    registered_name: str
    children: list


class SavedFunction(NamedTuple):
    """A function of a TF2 ``SavedObjectGraph`` (``tf.function`` or a bare concrete
    function) at an object path, and the concrete functions that implement it."""
    node_id: int
    path: str
    kind: str
    concrete_functions: list


class RiskyOp(NamedTuple):
    """A node whose op runs code or touches files (see :meth:`MetaGraph.risky_ops`)."""
    node: str
    op: str
    function: Optional[str]
    reason: str
