# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The ``GraphDef`` of a meta graph at the wire level (Cython over the protobuf reader of
csrc/tfs_format.c, with the message helpers of _pb.pxd): walking its nodes without
building them (names, ops and devices, for op counts, lookups and indexes, in windows of
a large file), decoding one node and its attribute values on demand, the function
library.  Field numbers (tensorflow/core/framework/{graph,node_def,function,op_def,
attr_value,tensor}.proto)::

    GraphDef         1 node, 2 library, 3 version (deprecated), 4 versions
    VersionDef       1 producer, 2 min_consumer, 3 bad_consumers
    FunctionDefLibrary 1 function (FunctionDef: 1 signature (OpDef: 1 name), 3 node_def)
    NodeDef          1 name, 2 op, 3 input, 4 device, 5 attr (map<string, AttrValue>)
    AttrValue        1 list, 2 s, 3 i, 4 f, 5 b, 6 type, 7 shape, 8 tensor, 9 placeholder,
                     10 func (NameAttrList: 1 name, 2 attr)
    ListValue        2 s, 3 i, 4 f, 5 b, 6 type, 7 shape, 8 tensor, 9 func
    TensorProto      1 dtype, 2 tensor_shape (its values: tfs_v1.h)

Protobuf's rules apply as in _metagraph.pyx: of a node's name or op given twice the last
one counts, in the walk as in the decoded node.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8

from ._format cimport *
from ._pb cimport *

# What scan() does with each node.
SCAN_OPS = 0      # arg: dict op -> count (updated)
SCAN_FIND = 1     # arg: (set of names wanted, dict name -> node offset to fill)
SCAN_INDEX = 2    # arg: dict name -> node offset (every node)
SCAN_BY_OP = 3    # arg: (set of ops, list of (name, op, offset) to fill)
SCAN_HEADS = 4    # arg: list of (name, op, device) to fill, every node


# ---- GraphDef: nodes and functions --------------------------------------------------

def graph_parts(buf, list spans):
    """A GraphDef (its occurrences merged): (node count, [library span...], producer,
    min_consumer), reading no node."""
    cdef const uint8_t[::1] view = buf
    cdef Msg m, sub
    cdef tfs_pb_field f, g
    cdef Py_ssize_t count = 0
    cdef list library = []
    cdef int64_t producer = 0, min_consumer = 0
    for start, end in spans:
        _open(&m, view, start, end)
        while _next(&m, &f):
            if f.field == 1:
                _need(&m, &f, TFS_PB_LEN, "a node")
                count += 1
            elif f.field == 2:
                _need(&m, &f, TFS_PB_LEN, "the function library")
                library.append((f.data - m.base, f.data + f.len - m.base))
            elif f.field == 4:
                _need(&m, &f, TFS_PB_LEN, "versions")
                _enter(&sub, &m, &f)
                while _next(&sub, &g):
                    if g.field == 1:
                        producer = _int32(&sub, &g, "producer")
                    elif g.field == 2:
                        min_consumer = _int32(&sub, &g, "min_consumer")
    return count, library, producer, min_consumer


def functions(buf, list spans):
    """The FunctionDefs of function libraries: [(name, start, end)]."""
    cdef const uint8_t[::1] view = buf
    cdef Msg m, fn, sig
    cdef tfs_pb_field f, g, h
    cdef list out = []
    cdef str name
    for start, end in spans:
        _open(&m, view, start, end)
        while _next(&m, &f):
            if f.field != 1:
                continue
            _need(&m, &f, TFS_PB_LEN, "a function")
            _enter(&fn, &m, &f)
            name = ""
            while _next(&fn, &g):
                if g.field == 1:
                    _need(&fn, &g, TFS_PB_LEN, "a function's signature")
                    _enter(&sig, &fn, &g)
                    while _next(&sig, &h):
                        if h.field == 1:
                            name = _text(&sig, &h, "a function's name")
            out.append((name, f.data - m.base, f.data + f.len - m.base))
    return out


cdef inline bint _same(const uint8_t *p, size_t n, const uint8_t *q, size_t k) noexcept nogil:
    return n == k and (n == 0 or memcmp(p, q, n) == 0)


# SCAN_FIND looks each node's name up in a filter of the wanted names' hashes first, so
# that only the few names that may match become Python strings (most of its time, else).
DEF FILTER_BITS = 65536
DEF FILTER_BYTES = 8192


cdef inline uint32_t _hash(const uint8_t *p, size_t n) noexcept nogil:
    """FNV-1a, folded to FILTER_BITS."""
    cdef uint32_t h = 2166136261u
    cdef size_t i
    for i in range(n):
        h = (h ^ p[i]) * 16777619u
    return (h ^ (h >> 16)) & (FILTER_BITS - 1)


def scan(buf, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t stop, uint32_t node_field,
         int mode, arg):
    """Walk the nodes (field ``node_field``: 1 of a GraphDef, 3 of a FunctionDef) of the
    message at ``buf[pos:end]``, from ``pos`` while it is below ``stop``; returns where it
    stopped (the start of a field), so that a caller can walk a large graph in windows.
    Of each node only its name, op and device are read, for ``mode`` (SCAN_*); the offset
    given for a node is that of its field tag (see :func:`node`)."""
    cdef const uint8_t[::1] view = buf
    cdef Msg m, sub
    cdef tfs_pb_field f, g
    cdef const uint8_t *name
    cdef const uint8_t *op
    cdef const uint8_t *device
    cdef const uint8_t *tag
    cdef size_t name_len, op_len, device_len
    cdef const uint8_t *last_op = NULL
    cdef size_t last_len = 0
    cdef object last_key = None
    cdef dict counts = None, found = None
    cdef set wanted = None
    cdef object ops = None
    cdef list out = None
    cdef object key, count
    cdef uint8_t filter_[FILTER_BYTES]
    cdef bytes encoded
    cdef uint32_t h
    if mode == SCAN_OPS:
        counts = arg
    elif mode == SCAN_FIND:
        wanted, found = arg
        memset(filter_, 0, sizeof(filter_))
        for key in wanted:
            encoded = key.encode("utf-8", "backslashreplace")
            h = _hash(<const uint8_t *><const char *>encoded, len(encoded))
            filter_[h >> 3] |= 1 << (h & 7)
    elif mode == SCAN_INDEX:
        found = arg
    elif mode == SCAN_BY_OP:
        ops, out = arg
    elif mode == SCAN_HEADS:
        out = arg
    else:
        raise ValueError(f"unknown scan mode {mode}")
    _open(&m, view, pos, end)
    cdef const uint8_t *limit = m.base + stop
    while m.p < limit:
        tag = m.p
        if not _next(&m, &f):
            break
        if f.field != node_field:
            continue
        _need(&m, &f, TFS_PB_LEN, "a node")
        _enter(&sub, &m, &f)
        name = op = device = NULL
        name_len = op_len = device_len = 0
        # Every field of the node is walked (each one skipped by its length): of a name
        # or op given twice the last one counts, as in a protobuf parser.
        while _next(&sub, &g):
            if g.field == 1:
                _need(&sub, &g, TFS_PB_LEN, "a node's name")
                name, name_len = g.data, g.len
            elif g.field == 2:
                _need(&sub, &g, TFS_PB_LEN, "a node's op")
                op, op_len = g.data, g.len
            elif g.field == 4:
                _need(&sub, &g, TFS_PB_LEN, "a node's device")
                device, device_len = g.data, g.len
        if mode == SCAN_OPS:
            # Consecutive nodes often share an op: reuse the last key.
            if last_key is None or not _same(op, op_len, last_op, last_len):
                last_key = _text_of(op, op_len)
                last_op, last_len = op, op_len
            count = counts.get(last_key)
            counts[last_key] = 1 if count is None else count + 1
        elif mode == SCAN_FIND:
            h = _hash(name, name_len)
            if filter_[h >> 3] & (1 << (h & 7)):
                key = _text_of(name, name_len)
                if key in wanted and key not in found:   # as SCAN_INDEX: the first one
                    found[key] = tag - m.base
        elif mode == SCAN_INDEX:
            key = _text_of(name, name_len)
            if key not in found:   # TF refuses duplicate names; keep the first
                found[key] = tag - m.base
        elif mode == SCAN_BY_OP:
            key = _text_of(op, op_len)
            if key in ops:
                out.append((_text_of(name, name_len), key, tag - m.base))
        else:
            out.append((_text_of(name, name_len), _text_of(op, op_len),
                        _text_of(device, device_len)))
    return m.p - m.base


cdef tuple _func(Msg *m, int depth):
    """A NameAttrList: (name, {attr: value})."""
    cdef tfs_pb_field f, value
    cdef Msg entry, sub
    cdef str name = ""
    cdef dict attrs = {}
    while _next(m, &f):
        if f.field == 1:
            name = _text(m, &f, "a function's name")
        elif f.field == 2:
            _need(m, &f, TFS_PB_LEN, "a function attribute")
            _enter(&entry, m, &f)
            key, found = _map_entry_head(&entry, &value, "a function attribute")
            if found:
                _enter(&sub, &entry, &value)
                attrs[key] = _attr_value(&sub, depth + 1)
            else:
                attrs[key] = (None, None)
    return (name, attrs)


cdef dict _list_value(Msg *m, int depth):
    cdef tfs_pb_field f
    cdef Msg sub
    cdef dict out = {}
    cdef list items
    while _next(m, &f):
        if f.field < 2 or f.field > 9:
            continue
        kind = ("s", "i", "f", "b", "type", "shape", "tensor", "func")[f.field - 2]
        items = out.setdefault(kind, [])
        if f.field == 2:
            items.append(_bytes(m, &f, "a list's string"))
        elif f.field == 3:
            _repeated_ints(m, &f, items, False, "a list's int")
        elif f.field == 4:
            _repeated_floats(m, &f, items, "a list's float")
        elif f.field == 5:
            _repeated_bools(m, &f, items, "a list's bool")
        elif f.field == 6:
            _repeated_ints(m, &f, items, True, "a list's type")
        elif f.field == 7:
            items.append(_shape_field(m, &f, "a list's shape"))
        elif f.field == 8:
            items.append(_tensor_head(m, &f))
        else:
            _need(m, &f, TFS_PB_LEN, "a list's function")
            _enter(&sub, m, &f)
            items.append(_func(&sub, depth + 1))
    return out


cdef object _attr_value(Msg *m, int depth):
    """An AttrValue: (kind, value); kind None when unset.  ``list``: {kind: [values]};
    ``tensor``: (dtype, shape, start, end); ``shape``: see _shape; ``func``: _func."""
    cdef tfs_pb_field f
    cdef Msg sub
    cdef object kind = None, value = None
    if depth > MAX_DEPTH:
        _corrupt(f"attribute values nested deeper than {MAX_DEPTH}", m.p - m.base)
    while _next(m, &f):
        if f.field == 1:
            _need(m, &f, TFS_PB_LEN, "an attribute's list")
            _enter(&sub, m, &f)
            kind, value = "list", _list_value(&sub, depth + 1)
        elif f.field == 2:
            kind, value = "s", _bytes(m, &f, "an attribute's string")
        elif f.field == 3:
            kind, value = "i", _int(m, &f, "an attribute's int")
        elif f.field == 4:
            kind, value = "f", _float(m, &f, "an attribute's float")
        elif f.field == 5:
            kind, value = "b", _int(m, &f, "an attribute's bool") != 0
        elif f.field == 6:
            kind, value = "type", _int32(m, &f, "an attribute's type")
        elif f.field == 7:
            kind, value = "shape", _shape_field(m, &f, "an attribute's shape")
        elif f.field == 8:
            kind, value = "tensor", _tensor_head(m, &f)
        elif f.field == 9:
            kind, value = "placeholder", _text(m, &f, "an attribute's placeholder")
        elif f.field == 10:
            _need(m, &f, TFS_PB_LEN, "an attribute's function")
            _enter(&sub, m, &f)
            kind, value = "func", _func(&sub, depth + 1)
    return (kind, value)


def node(buf, Py_ssize_t offset, Py_ssize_t end):
    """The NodeDef whose field tag lies at ``offset`` (as :func:`scan` gives it), in a
    message ending at ``end``: (name, op, [input...], device, {attr: (kind, value)},
    start, end)."""
    cdef const uint8_t[::1] view = buf
    cdef Msg m, sub, entry, val
    cdef tfs_pb_field f, g, value
    cdef str name = "", op = "", device = ""
    cdef list inputs = []
    cdef dict attrs = {}
    _open(&m, view, offset, end)
    if not _next(&m, &f):
        _corrupt("no node at this offset", offset)
    _need(&m, &f, TFS_PB_LEN, "a node")
    _enter(&sub, &m, &f)
    while _next(&sub, &g):
        if g.field == 1:
            name = _text(&sub, &g, "a node's name")
        elif g.field == 2:
            op = _text(&sub, &g, "a node's op")
        elif g.field == 3:
            inputs.append(_text(&sub, &g, "a node's input"))
        elif g.field == 4:
            device = _text(&sub, &g, "a node's device")
        elif g.field == 5:
            _need(&sub, &g, TFS_PB_LEN, "a node attribute")
            _enter(&entry, &sub, &g)
            key, found = _map_entry_head(&entry, &value, "a node attribute")
            if found:
                _enter(&val, &entry, &value)
                attrs[key] = _attr_value(&val, 0)
            else:
                attrs[key] = (None, None)
    return (name, op, inputs, device, attrs, f.data - sub.base, f.data + f.len - sub.base)


def tensor_head(buf, Py_ssize_t start, Py_ssize_t end):
    """(dtype, shape) of the TensorProto at ``buf[start:end]``."""
    cdef const uint8_t[::1] view = buf
    cdef Msg m
    cdef tfs_pb_field f
    cdef int64_t dtype = 0
    cdef object shape = ()
    _open(&m, view, start, end)
    while _next(&m, &f):
        if f.field == 1:
            dtype = _int32(&m, &f, "a tensor's dtype")
        elif f.field == 2:
            shape = _shape_field(&m, &f, "a tensor's shape")
    return dtype, shape
