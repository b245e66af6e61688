# cython: language_level=3
"""Reading protobuf messages field by field over the C core's ``tfs_pb_next``, for the
graph decoders (_metagraph.pyx: SavedModel and MetaGraphDef; _graphdef.pyx: GraphDef
nodes): a message cursor, checked reads of each scalar kind (a known field of another
wire type is an error), the shared messages (TensorShapeProto, TensorProto heads, Any,
map entries) and errors that say which rule of the wire format a field breaks, with the
offset of the problem (CorruptGraphError; tfshard.graph names the file)."""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8

from ._format cimport *

cdef enum:
    # Nesting of attribute values (lists of functions of attributes...), of composite
    # tensor infos and of saved variables; TF's own parser stops at 100.
    MAX_DEPTH = 64
    # The largest field number protobuf allows.
    MAX_FIELD = 0x1fffffff


# ---- errors ----------------------------------------------------------------------------

cdef inline int _corrupt(str problem, Py_ssize_t offset) except -1:
    from tfshard.errors import CorruptGraphError
    raise CorruptGraphError(f"malformed graph at byte {offset}: {problem}", offset=offset)


cdef struct Msg:
    const uint8_t *base  # the start of the buffer, for offsets in errors
    const uint8_t *p     # the next field
    const uint8_t *end   # the end of the message


cdef inline int _explain(const Msg *m, const uint8_t *start) except -1:
    """Raise for the field at ``start`` that tfs_pb_next rejected."""
    cdef const uint8_t *q = start
    cdef uint64_t tag, value
    if tfs_get_varint64(&q, m.end, &tag) != TFS_OK:
        _corrupt("malformed or truncated field tag", start - m.base)
    cdef uint64_t field = tag >> 3, wire = tag & 7
    if field == 0:
        _corrupt("field number 0", start - m.base)
    if field > MAX_FIELD:
        _corrupt(f"field number {field} is above the largest protobuf allows", start - m.base)
    if wire == TFS_PB_VARINT or wire == TFS_PB_LEN:
        if tfs_get_varint64(&q, m.end, &value) != TFS_OK:
            _corrupt(f"field {field} has a malformed or truncated varint", q - m.base)
        if wire == TFS_PB_LEN:
            _corrupt(f"field {field} of {value} bytes runs past the end of its message",
                     q - m.base)
    elif wire == TFS_PB_FIXED64 or wire == TFS_PB_FIXED32:
        _corrupt(f"field {field} runs past the end of its message", q - m.base)
    else:
        _corrupt(f"unsupported wire type {wire} (field {field})", start - m.base)
    _corrupt(f"field {field} is malformed", start - m.base)


cdef inline int _next(Msg *m, tfs_pb_field *f) except -1:
    """The next field of the message into ``f``: 1, or 0 at its end."""
    cdef const uint8_t *start = m.p
    if start >= m.end:
        return 0
    if tfs_pb_next(&m.p, m.end, f) != TFS_OK:
        _explain(m, start)
    return 1


cdef inline int _wrong(const Msg *m, const tfs_pb_field *f, str what, int wire) except -1:
    _corrupt(f"{what} (field {f.field}) has wire type {f.wire}, not {wire}",
             (m.p - m.base))


cdef inline int _need(const Msg *m, const tfs_pb_field *f, int wire, str what) except -1:
    if f.wire != <uint32_t>wire:
        _wrong(m, f, what, wire)
    return 0


cdef inline void _enter(Msg *sub, const Msg *m, const tfs_pb_field *f) noexcept nogil:
    sub.base = m.base
    sub.p = f.data
    sub.end = f.data + f.len


cdef inline int _open(Msg *m, const uint8_t[::1] buf, Py_ssize_t start, Py_ssize_t end) except -1:
    if not 0 <= start <= end <= buf.shape[0]:
        raise IndexError(f"[{start}:{end}] is not a range of {buf.shape[0]} bytes")
    m.base = &buf[0] if buf.shape[0] else <const uint8_t *>b""
    m.p = m.base + start
    m.end = m.base + end
    return 0


# ---- scalar values ---------------------------------------------------------------------

cdef inline str _text_of(const uint8_t *p, size_t n):
    """A protobuf string: UTF-8, or (old files hold other bytes) with backslash escapes."""
    if n == 0:
        return ""
    try:
        return PyUnicode_DecodeUTF8(<const char *>p, n, NULL)
    except UnicodeDecodeError:
        return PyBytes_FromStringAndSize(<const char *>p, n).decode("utf-8", "backslashreplace")


cdef inline str _text(const Msg *m, const tfs_pb_field *f, str what):
    _need(m, f, TFS_PB_LEN, what)
    return _text_of(f.data, f.len)


cdef inline bytes _bytes(const Msg *m, const tfs_pb_field *f, str what):
    _need(m, f, TFS_PB_LEN, what)
    return PyBytes_FromStringAndSize(<const char *>f.data, f.len)


cdef inline int64_t _int(const Msg *m, const tfs_pb_field *f, str what) except? -1:
    _need(m, f, TFS_PB_VARINT, what)
    return <int64_t>f.varint


cdef inline int64_t _int32(const Msg *m, const tfs_pb_field *f, str what) except? -1:
    """An int32 or enum: protobuf keeps the low 32 bits of the varint."""
    _need(m, f, TFS_PB_VARINT, what)
    return <int32_t><uint32_t>f.varint


cdef inline float _float(const Msg *m, const tfs_pb_field *f, str what) except? -1:
    cdef uint32_t bits
    cdef float out
    _need(m, f, TFS_PB_FIXED32, what)
    bits = <uint32_t>f.varint
    memcpy(&out, &bits, 4)
    return out


cdef inline int _repeated_ints(const Msg *m, const tfs_pb_field *f, list out, bint int32,
                        str what) except -1:
    """Append a repeated int64/int32/enum/bool field, packed or not."""
    cdef const uint8_t *q
    cdef const uint8_t *qend
    cdef uint64_t v
    if f.wire == TFS_PB_VARINT:
        out.append(<int32_t><uint32_t>f.varint if int32 else <int64_t>f.varint)
        return 0
    _need(m, f, TFS_PB_LEN, what)
    q = f.data
    qend = f.data + f.len
    while q < qend:
        if tfs_get_varint64(&q, qend, &v) != TFS_OK:
            _corrupt(f"{what}: malformed packed varint", q - m.base)
        out.append(<int32_t><uint32_t>v if int32 else <int64_t>v)
    return 0


cdef inline int _repeated_floats(const Msg *m, const tfs_pb_field *f, list out, str what) except -1:
    cdef size_t i
    cdef uint32_t bits
    cdef float x
    if f.wire == TFS_PB_FIXED32:
        out.append(_float(m, f, what))
        return 0
    _need(m, f, TFS_PB_LEN, what)
    if f.len % 4:
        _corrupt(f"{what}: packed floats of {f.len} bytes, not a multiple of 4",
                 f.data - m.base)
    for i in range(0, f.len, 4):
        bits = tfs_load_le32(f.data + i)
        memcpy(&x, &bits, 4)
        out.append(x)
    return 0


cdef inline int _repeated_bools(const Msg *m, const tfs_pb_field *f, list out, str what) except -1:
    cdef list raw = []
    _repeated_ints(m, f, raw, False, what)
    out.extend([v != 0 for v in raw])
    return 0


# ---- shared messages -------------------------------------------------------------------

cdef inline object _shape(Msg *m):
    """A TensorShapeProto: None for an unknown rank, else a tuple of sizes (-1 unknown)."""
    cdef tfs_pb_field f, g
    cdef Msg sub
    cdef list dims = []
    cdef bint unknown = False
    cdef int64_t size
    while _next(m, &f):
        if f.field == 2:
            _need(m, &f, TFS_PB_LEN, "a shape's dim")
            _enter(&sub, m, &f)
            size = 0
            while _next(&sub, &g):
                if g.field == 1:
                    size = _int(&sub, &g, "a dimension's size")
            dims.append(size)
        elif f.field == 3:
            unknown = _int(m, &f, "unknown_rank") != 0
    return None if unknown else tuple(dims)


cdef inline object _shape_field(Msg *m, const tfs_pb_field *f, str what):
    cdef Msg sub
    _need(m, f, TFS_PB_LEN, what)
    _enter(&sub, m, f)
    return _shape(&sub)


cdef inline tuple _tensor_head(Msg *m, const tfs_pb_field *f):
    """A TensorProto field: (dtype, shape, start, end), the values left in the span."""
    cdef tfs_pb_field g
    cdef Msg sub
    cdef int64_t dtype = 0
    cdef object shape = ()
    _need(m, f, TFS_PB_LEN, "a tensor")
    _enter(&sub, m, f)
    while _next(&sub, &g):
        if g.field == 1:
            dtype = _int32(&sub, &g, "a tensor's dtype")
        elif g.field == 2:
            shape = _shape_field(&sub, &g, "a tensor's shape")
    return (dtype, shape, f.data - m.base, f.data + f.len - m.base)


cdef inline tuple _any(Msg *m):
    """An Any: (type_url, value bytes)."""
    cdef tfs_pb_field f
    cdef str url = ""
    cdef bytes value = b""
    while _next(m, &f):
        if f.field == 1:
            url = _text(m, &f, "an Any's type_url")
        elif f.field == 2:
            value = _bytes(m, &f, "an Any's value")
    return (url, value)


cdef inline tuple _map_entry_head(Msg *sub, tfs_pb_field *value, str what):
    """The key of a map entry (field 1, a string) and whether its value field (2, a
    message) is present: (key, found); ``value`` holds the last value field."""
    cdef tfs_pb_field f
    cdef str key = ""
    cdef bint found = False
    while _next(sub, &f):
        if f.field == 1:
            key = _text(sub, &f, what + " key")
        elif f.field == 2:
            _need(sub, &f, TFS_PB_LEN, what + " value")
            value[0] = f
            found = True
    return (key, found)
