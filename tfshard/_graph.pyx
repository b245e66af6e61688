# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The TF2 object graph (``_CHECKPOINTABLE_OBJECT_GRAPH``, FORMAT.md §13.1) at the wire
level (Cython over the protobuf reader of csrc/tfs_format.c).

Turns the bytes of a serialized ``TrackableObjectGraph`` into plain tuples, lists and
strings; :mod:`tfshard.objectgraph` builds its objects from them.  Every length is checked
by ``tfs_pb_next``; when it rejects a field, the field is read again here only to say
precisely what is wrong with it.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_DecodeUTF8

from ._format cimport *

cdef extern from "Python.h":
    ctypedef struct PyTypeObject:
        pass
    object PyType_GenericAlloc(PyTypeObject *t, Py_ssize_t nitems)

# The checkpoint key the graph is stored under (objectgraph.OBJECT_GRAPH_KEY), for errors.
cdef str KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"

# The largest field number protobuf allows.
cdef uint64_t MAX_FIELD = 0x1fffffff


# The messages of the graph (field numbers of trackable_object_graph.proto):
#   GRAPH   TrackableObjectGraph   1 nodes
#   OBJECT  TrackableObject        1 children, 2 attributes, 3 slot_variables,
#                                  4 registered_saver, 5 has_checkpoint_values
#   REF     ObjectReference        1 node_id (int32), 2 local_name
#   TENSOR  SerializedTensor       1 name, 2 full_name, 3 checkpoint_key
#   SLOT    SlotVariableReference  1 original_variable_node_id (int32), 2 slot_name,
#                                  3 slot_variable_node_id (int32)
#   SAVER   RegisteredSaver        1 name, 2 object_name
#   BOOL    BoolValue              1 value
#   ANY     a message read field by field, none of them known (fields())
cdef enum Kind:
    GRAPH
    OBJECT
    REF
    TENSOR
    SLOT
    SAVER
    BOOL
    ANY


cdef inline int _wire_of(Kind kind, uint64_t field) noexcept nogil:
    """The wire type of a field the decoder reads, -1 for a field it skips."""
    if field == 0:
        return -1
    if kind == GRAPH:
        return TFS_PB_LEN if field == 1 else -1
    if kind == OBJECT:
        return TFS_PB_LEN if field <= 5 else -1
    if kind == REF:
        return -1 if field > 2 else TFS_PB_VARINT if field == 1 else TFS_PB_LEN
    if kind == TENSOR:
        return TFS_PB_LEN if field <= 3 else -1
    if kind == SLOT:
        return -1 if field > 3 else TFS_PB_LEN if field == 2 else TFS_PB_VARINT
    if kind == SAVER:
        return TFS_PB_LEN if field <= 2 else -1
    if kind == BOOL:
        return TFS_PB_VARINT if field == 1 else -1
    return -1


cdef str _message_name(Kind kind):
    if kind == OBJECT:
        return " of an object"
    if kind == REF:
        return " of a child reference"
    if kind == TENSOR:
        return " of an attribute"
    if kind == SLOT:
        return " of a slot reference"
    if kind == SAVER:
        return " of a registered saver"
    if kind == BOOL:
        return " of has_checkpoint_values"
    return ""


# ---- errors ----------------------------------------------------------------------------
# tfs_pb_next reports every malformed field as TFS_ERR_PROTO; the messages below say which
# rule of the wire format the field breaks, so they are built here rather than by check().

cdef int _corrupt(str problem, Py_ssize_t offset) except -1:
    from tfshard.errors import CorruptCheckpointError
    raise CorruptCheckpointError(f"malformed object graph ({KEY}) at byte {offset}: {problem}",
                                 key=KEY, offset=offset)


cdef int _varint(const uint8_t *base, const uint8_t **q, const uint8_t *end,
                 uint64_t *out) except -1:
    """Read the varint at *q (advanced past it), or raise saying what is wrong with it."""
    cdef const uint8_t *start = q[0]
    cdef int st = tfs_get_varint64(q, end, out)
    if st == TFS_OK:
        return 0
    if st == TFS_ERR_TRUNCATED:
        _corrupt("truncated varint", start - base)
    if end - start >= 10 and start[9] >= 0x80:
        _corrupt("varint longer than 10 bytes", start - base)
    _corrupt("varint overflows 64 bits", start - base)


cdef int _wrong_wire(const uint8_t *base, const uint8_t *start, const uint8_t *end,
                     Kind kind, uint64_t field, uint64_t wire) except -1:
    """Raise for a field the decoder reads that has another wire type; start is its tag."""
    cdef uint64_t tag
    _varint(base, &start, end, &tag)
    _corrupt(f"field {field}{_message_name(kind)} has wire type {wire}, "
             f"not {_wire_of(kind, field)}", start - base)


cdef int _explain(const uint8_t *base, const uint8_t *start, const uint8_t *end,
                  Kind kind) except -1:
    """Raise for the field at ``start`` that tfs_pb_next rejected."""
    cdef const uint8_t *q = start
    cdef uint64_t tag, value
    _varint(base, &q, end, &tag)
    cdef uint64_t field = tag >> 3, wire = tag & 7
    cdef int expected = _wire_of(kind, field)
    if expected >= 0 and wire != <uint64_t>expected:
        _wrong_wire(base, start, end, kind, field, wire)
    if field == 0:
        _corrupt("field number 0", q - base)
    if field > MAX_FIELD:
        _corrupt(f"field number {field} is above the largest protobuf allows ({MAX_FIELD})",
                 q - base)
    if wire == TFS_PB_VARINT:
        _varint(base, &q, end, &value)
    elif wire == TFS_PB_LEN:
        _varint(base, &q, end, &value)
        _corrupt(f"field {field} of {value} bytes runs past the end of its message", q - base)
    elif wire == TFS_PB_FIXED64 or wire == TFS_PB_FIXED32:
        _corrupt(f"field {field} runs past the end of its message", q - base)
    else:
        _corrupt(f"unsupported wire type {wire} (field {field})", q - base)
    _corrupt(f"field {field} is malformed", start - base)  # each case above raises first


# ---- reading messages ------------------------------------------------------------------

cdef struct Msg:
    const uint8_t *base  # the start of the graph, for offsets in errors
    const uint8_t *p     # the next field
    const uint8_t *end   # the end of the message


cdef inline void _enter(Msg *sub, const Msg *m, const tfs_pb_field *f) noexcept nogil:
    """Point ``sub`` at the message held by the length-delimited field ``f``."""
    sub.base = m.base
    sub.p = f.data
    sub.end = f.data + f.len


cdef inline int _next(Msg *m, Kind kind, tfs_pb_field *f) except -1:
    """Read the next field of a message of kind ``kind`` into ``f``: 1, or 0 at the end of
    the message.  A field the message declares has the wire type it declares, or this
    raises; callers skip the other (unknown) fields by not matching their numbers."""
    cdef const uint8_t *start = m.p
    if start >= m.end:
        return 0
    if tfs_pb_next(&m.p, m.end, f) != TFS_OK:
        _explain(m.base, start, m.end, kind)
    cdef int wire = _wire_of(kind, f.field)
    if wire >= 0 and f.wire != <uint32_t>wire:
        _wrong_wire(m.base, start, m.end, kind, f.field, f.wire)
    return 1


# The tuple types decode_nodes builds (tuple subclasses without fields of their own, such
# as named tuples): building the caller's types here spares it a second pass that would
# copy every tuple (most of the time taken for a large graph, measured).
cdef struct Types:
    PyTypeObject *child
    PyTypeObject *attribute
    PyTypeObject *slot
    PyTypeObject *saver


cdef inline object _tuple2(PyTypeObject *t, object a, object b):
    cdef object out = PyType_GenericAlloc(t, 2)
    Py_INCREF(a)
    PyTuple_SET_ITEM(out, 0, a)
    Py_INCREF(b)
    PyTuple_SET_ITEM(out, 1, b)
    return out


cdef inline object _tuple3(PyTypeObject *t, object a, object b, object c):
    cdef object out = PyType_GenericAlloc(t, 3)
    Py_INCREF(a)
    PyTuple_SET_ITEM(out, 0, a)
    Py_INCREF(b)
    PyTuple_SET_ITEM(out, 1, b)
    Py_INCREF(c)
    PyTuple_SET_ITEM(out, 2, c)
    return out


cdef str _text(const Msg *m, const tfs_pb_field *f):
    if f.len == 0:
        return ""
    try:
        return PyUnicode_DecodeUTF8(<const char *>f.data, f.len, NULL)
    except UnicodeDecodeError:
        _corrupt("a string field is not valid UTF-8", f.data - m.base)


cdef object _ref(Msg *m, const Types *types):
    """An ObjectReference: (local_name, node_id)."""
    cdef tfs_pb_field f
    cdef int64_t node_id = 0
    cdef str name = ""
    while _next(m, REF, &f):
        if f.field == 1:
            node_id = <int64_t>f.varint  # a negative int32 is a 10-byte varint
        elif f.field == 2:
            name = _text(m, &f)
    return _tuple2(types.child, name, node_id)


cdef object _tensor(Msg *m, const Types *types):
    """A SerializedTensor: (name, full_name, checkpoint_key)."""
    cdef tfs_pb_field f
    cdef str name = "", full_name = "", checkpoint_key = ""
    while _next(m, TENSOR, &f):
        if f.field == 1:
            name = _text(m, &f)
        elif f.field == 2:
            full_name = _text(m, &f)
        elif f.field == 3:
            checkpoint_key = _text(m, &f)
    return _tuple3(types.attribute, name, full_name, checkpoint_key)


cdef object _slot(Msg *m, const Types *types):
    """A SlotVariableReference: (original_variable_node_id, slot_name, slot_variable_node_id)."""
    cdef tfs_pb_field f
    cdef int64_t original = 0, slot = 0
    cdef str slot_name = ""
    while _next(m, SLOT, &f):
        if f.field == 1:
            original = <int64_t>f.varint
        elif f.field == 2:
            slot_name = _text(m, &f)
        elif f.field == 3:
            slot = <int64_t>f.varint
    return _tuple3(types.slot, original, slot_name, slot)


cdef object _saver(Msg *m, const Types *types, object previous):
    """A RegisteredSaver merged into the previous one of the object (None if first):
    (name, object_name)."""
    cdef tfs_pb_field f
    cdef str name = "", object_name = ""
    if previous is not None:
        name, object_name = previous
    while _next(m, SAVER, &f):
        if f.field == 1:
            name = _text(m, &f)
        elif f.field == 2:
            object_name = _text(m, &f)
    return _tuple2(types.saver, name, object_name)


cdef tuple _object(Msg *m, const Types *types, Py_ssize_t node_id):
    """A TrackableObject: (node_id, children, attributes, slot_variables,
    registered_saver, has_checkpoint_values)."""
    cdef tfs_pb_field f, g
    cdef Msg sub
    cdef list children = [], attributes = [], slots = []
    cdef object saver = None
    cdef int has_values = -1  # absent; a BoolValue without its field is False
    while _next(m, OBJECT, &f):
        if f.field > 5:
            continue
        _enter(&sub, m, &f)
        if f.field == 1:
            children.append(_ref(&sub, types))
        elif f.field == 2:
            attributes.append(_tensor(&sub, types))
        elif f.field == 3:
            slots.append(_slot(&sub, types))
        elif f.field == 4:
            saver = _saver(&sub, types, saver)
        else:  # has_checkpoint_values; a repeated BoolValue is merged: the last value wins
            if has_values < 0:
                has_values = 0
            while _next(&sub, BOOL, &g):
                if g.field == 1:
                    has_values = g.varint != 0
    return (node_id, children, attributes, slots, saver,
            None if has_values < 0 else has_values == 1)


cdef PyTypeObject *_tuple_type(type t) except NULL:
    if not issubclass(t, tuple) or t.__basicsize__ != tuple.__basicsize__:
        raise TypeError(f"{t.__name__} is not a tuple type without fields of its own")
    return <PyTypeObject *>t


def decode_nodes(bytes data not None, type child=tuple, type attribute=tuple,
                 type slot_variable=tuple, type registered_saver=tuple):
    """The objects of a serialized ``TrackableObjectGraph``, in order.

    Each is ``(node_id, children, attributes, slot_variables, registered_saver,
    has_checkpoint_values)``: its index; lists of ``child`` tuples ``(local_name,
    node_id)``, of ``attribute`` tuples ``(name, full_name, checkpoint_key)`` and of
    ``slot_variable`` tuples ``(original_variable_node_id, slot_name,
    slot_variable_node_id)``; a ``registered_saver`` tuple ``(name, object_name)`` or
    None; True, False or None.  The four types are ``tuple`` or subclasses of it that
    add no fields (named tuples).  Unknown fields are skipped; node ids are not checked
    against the number of objects.

    Raises CorruptCheckpointError (key ``_CHECKPOINTABLE_OBJECT_GRAPH``, with the offset
    of the problem) for malformed fields, a known field of another wire type or a string
    that is not UTF-8.
    """
    cdef Types types
    types.child = _tuple_type(child)
    types.attribute = _tuple_type(attribute)
    types.slot = _tuple_type(slot_variable)
    types.saver = _tuple_type(registered_saver)
    cdef tfs_pb_field f
    cdef Msg m, sub
    m.base = m.p = <const uint8_t *><const char *>data
    m.end = m.base + len(data)
    cdef list nodes = []
    while _next(&m, GRAPH, &f):
        if f.field == 1:
            _enter(&sub, &m, &f)
            nodes.append(_object(&sub, &types, len(nodes)))
    return nodes


def fields(bytes data not None, Py_ssize_t start, Py_ssize_t end):
    """Every field of the message at ``data[start:end]``, in order, for rewriting it:
    ``(field, wire, value_start, value_end, field_start)``.  The value of a
    length-delimited field is its payload (after the length); of another field, its
    encoding after the tag.  Raises CorruptCheckpointError for a malformed field."""
    if not 0 <= start <= end <= len(data):
        raise IndexError(f"[{start}:{end}] is not a range of {len(data)} bytes")
    cdef tfs_pb_field f
    cdef Msg m
    cdef const uint8_t *field_start
    cdef const uint8_t *value
    cdef uint64_t tag
    m.base = <const uint8_t *><const char *>data
    m.p = m.base + start
    m.end = m.base + end
    cdef list out = []
    while True:
        field_start = m.p
        if not _next(&m, ANY, &f):
            break
        if f.wire == TFS_PB_LEN:
            value = f.data
        else:  # after the tag (tfs_pb_next has read it: this cannot fail)
            value = field_start
            tfs_get_varint64(&value, m.end, &tag)
        out.append((f.field, f.wire, value - m.base, m.p - m.base, field_start - m.base))
    return out
