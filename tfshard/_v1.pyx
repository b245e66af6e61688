# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Legacy V1 ("TensorSlice") checkpoint records: meta, data and TensorProto values
(Cython over csrc/tfs_v1.c).

The SSTable itself is read by :class:`tfshard._index.IndexTable`; this module turns
its values into plain Python values and numpy arrays, and never opens a file.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8

from ._format cimport *
from .errors import CorruptCheckpointError

cdef extern from "tfs_v1.h" nogil:
    ctypedef struct tfs_v1_meta:
        const uint8_t *meta
        size_t meta_len
        tfs_header versions
        uint32_t num_tensors

    ctypedef struct tfs_v1_tensor:
        const uint8_t *name
        size_t name_len
        int64_t dtype
        int32_t rank
        int has_shape
        int64_t num_elements
        uint32_t num_slices
        const uint8_t *msg
        size_t msg_len

    ctypedef struct tfs_v1_slice:
        const uint8_t *name
        size_t name_len
        int has_slice
        int32_t rank
        const uint8_t *tensor
        size_t tensor_len
        int has_tensor

    ctypedef struct tfs_v1_values:
        uint64_t count
        const uint8_t *content
        size_t content_len
        int has_content

    int tfs_v1_parse_meta(const uint8_t *p, size_t n, tfs_v1_meta *m)
    int tfs_v1_meta_next(const uint8_t **pos, const uint8_t *end, tfs_v1_tensor *t,
                         int64_t *dims)
    int tfs_v1_next_tensor_slice(const uint8_t **p, const uint8_t *end, int32_t *rank,
                                 int64_t *starts, int64_t *lengths)
    int tfs_v1_parse_data(const uint8_t *p, size_t n, tfs_v1_slice *s, int64_t *starts,
                          int64_t *lengths)
    size_t tfs_v1_itemsize(int64_t dtype)
    int tfs_v1_supported(int64_t dtype)
    int tfs_v1_count_values(const uint8_t *p, size_t n, int64_t dtype, tfs_v1_values *v)
    int tfs_v1_decode_values(const uint8_t *p, size_t n, int64_t dtype, uint64_t count,
                             void *out, size_t out_size)
    int tfs_v1_next_string(const uint8_t **pos, const uint8_t *end, const uint8_t **s,
                           size_t *len)


cdef inline str _name(const uint8_t *p, size_t n):
    return PyUnicode_DecodeUTF8(<const char *>p, n, "surrogateescape")


cdef const uint8_t *_ptr(const uint8_t[::1] b):
    return &b[0] if b.shape[0] else <const uint8_t *>""


cdef tuple _extents(int32_t rank, int64_t *starts, int64_t *lengths):
    return tuple([(starts[d], lengths[d]) for d in range(rank)])


def supported(int64_t dtype):
    """Whether tensors of DataType ``dtype`` can be decoded from a V1 checkpoint."""
    return bool(tfs_v1_supported(dtype))


def parse_meta(value, path=None):
    """Parse the meta record (the value under the empty key) of a V1 file.

    Returns
    -------
    tuple
        ``(versions, tensors)``: ``versions`` is a dict (producer, min_consumer,
        bad_consumer_1); ``tensors`` a list of ``(name, dtype_code, shape, slices)``
        with ``slices`` a list of extents tuples (``(start, length)`` per dimension,
        length -1 for the whole dimension).

    Raises
    ------
    CorruptCheckpointError
        If the record is malformed.
    """
    cdef const uint8_t[::1] buf = value
    cdef const uint8_t *p = _ptr(buf)
    cdef tfs_v1_meta m
    cdef tfs_v1_tensor t
    cdef const uint8_t *pos
    cdef const uint8_t *end
    cdef int64_t dims[TFS_MAX_RANK]
    cdef int64_t starts[TFS_MAX_RANK]
    cdef int64_t lengths[TFS_MAX_RANK]
    cdef int32_t rank
    cdef const uint8_t *cursor
    cdef uint32_t k
    cdef int st = tfs_v1_parse_meta(p, buf.shape[0], &m)
    if st == TFS_ERR_RANGE:
        raise CorruptCheckpointError(
            f"{path}: the record under the empty key holds no SavedTensorSliceMeta (expected "
            f"the metadata of a V1 checkpoint)", path=path, key="")
    check(st, f"{path}: the V1 metadata record", path, "", None)
    versions = {"producer": m.versions.producer, "min_consumer": m.versions.min_consumer,
                "bad_consumer_1": bool(m.versions.bad_consumer_1)}
    tensors = []
    pos = m.meta
    end = m.meta + m.meta_len
    while True:
        st = tfs_v1_meta_next(&pos, end, &t, dims)
        if st == TFS_END:
            break
        if st < 0:
            where = f"{path}: the metadata of tensor {len(tensors)}"
            if st == TFS_ERR_SHAPE:
                raise CorruptCheckpointError(
                    f"{where} has an invalid shape (expected rank at most {TFS_MAX_RANK}, "
                    f"non-negative dimensions and fewer than 2**63 elements; found rank "
                    f"{t.rank})", path=path, key="")
            check(st, where, path, "", None)
        name = _name(t.name, t.name_len) if t.name != NULL else ""
        shape = tuple([dims[d] for d in range(t.rank)]) if t.has_shape else ()
        slices = []
        cursor = t.msg
        for k in range(t.num_slices):
            st = tfs_v1_next_tensor_slice(&cursor, t.msg + t.msg_len, &rank, starts, lengths)
            if st != TFS_OK:
                check(TFS_ERR_RANGE if st == TFS_END else st,
                      f"{path}: slice {k} of tensor {name!r} in the metadata", path, name,
                      None)
            slices.append(_extents(rank, starts, lengths))
        tensors.append((name, t.dtype, shape, slices))
    return versions, tensors


def parse_data(value, path=None, key=None):
    """Parse a data record: ``(name, extents, tensor_proto)``.

    ``tensor_proto`` is a memoryview of the TensorProto bytes (None if the
    record has none); ``extents`` is None if the record has no slice.

    Raises
    ------
    CorruptCheckpointError
        If the record is malformed or holds no data.
    """
    cdef const uint8_t[::1] buf = value
    cdef const uint8_t *p = _ptr(buf)
    cdef tfs_v1_slice s
    cdef int64_t starts[TFS_MAX_RANK]
    cdef int64_t lengths[TFS_MAX_RANK]
    cdef int st = tfs_v1_parse_data(p, buf.shape[0], &s, starts, lengths)
    if st == TFS_ERR_RANGE:
        raise CorruptCheckpointError(
            f"{path}: the record of tensor {key!r} holds no SavedSlice (expected a data "
            f"record)", path=path, key=key)
    check(st, f"{path}: the data record of tensor {key!r}", path, key, None)
    name = _name(s.name, s.name_len) if s.name != NULL else ""
    extents = _extents(s.rank, starts, lengths) if s.has_slice else None
    proto = None
    if s.has_tensor:
        start = s.tensor - p
        proto = memoryview(value)[start:start + s.tensor_len]
    return name, extents, proto


def count_values(proto, int64_t dtype, path=None, key=None):
    """How many values of ``dtype`` a TensorProto holds (its typed field, else its
    tensor_content), for :func:`decode`; -1 for a dtype it cannot hold.

    Raises
    ------
    CorruptCheckpointError
        If the proto is malformed, or tensor_content is not a whole number of elements.
    """
    cdef const uint8_t[::1] buf = b"" if proto is None else proto
    cdef tfs_v1_values v
    cdef size_t itemsize = tfs_v1_itemsize(dtype)
    if not tfs_v1_supported(dtype):
        return -1
    cdef int st = tfs_v1_count_values(_ptr(buf), buf.shape[0], dtype, &v)
    where = f"{path}: the values of tensor {key!r}"
    if st == TFS_ERR_SIZE:
        raise CorruptCheckpointError(
            f"{where} are not a whole number of elements (a packed field of fixed-width "
            f"values has a stray byte count, or a complex field an odd number of parts)",
            path=path, key=key)
    check(st, where, path, key, None)
    if v.count == 0 and v.has_content and v.content_len and itemsize:
        if v.content_len % itemsize:
            raise CorruptCheckpointError(
                f"{where}: tensor_content holds {v.content_len} bytes, not a multiple of the "
                f"{itemsize}-byte element", path=path, key=key)
        return v.content_len // itemsize
    return v.count


def decode(proto, int64_t dtype, object numpy_dtype, Py_ssize_t count, path=None, key=None):
    """Decode the ``count`` values of a TensorProto into a flat numpy array.

    ``numpy_dtype`` is the array's dtype (``object`` for strings).  The number of
    values in the proto is counted, and compared with ``count``, before any
    memory is allocated for them.

    Raises
    ------
    CorruptCheckpointError
        If the proto is malformed or holds another number of values.
    """
    import numpy as np

    cdef const uint8_t[::1] buf = b"" if proto is None else proto
    cdef const uint8_t *p = _ptr(buf)
    cdef size_t n = buf.shape[0]
    cdef size_t itemsize = tfs_v1_itemsize(dtype)
    cdef const uint8_t *pos
    cdef const uint8_t *s
    cdef size_t slen
    cdef Py_ssize_t i
    cdef uint8_t[::1] out_bytes
    cdef int st
    where = f"{path}: the values of tensor {key!r}"
    found = count_values(proto, dtype, path, key)
    if found < 0:
        check(TFS_ERR_RANGE, where, path, key, None)
    if <uint64_t>found != <uint64_t>count:
        raise CorruptCheckpointError(
            f"{where}: the slice needs {count} values but the record holds {found}",
            path=path, key=key)
    if itemsize == 0:   # strings
        arr = np.empty(count, dtype=object)
        pos = p
        i = 0
        while True:
            st = tfs_v1_next_string(&pos, p + n, &s, &slen)
            if st == TFS_END:
                break
            check(st, where, path, key, None)
            arr[i] = PyBytes_FromStringAndSize(<const char *>s, slen)
            i += 1
        return arr
    arr = np.empty(count, dtype=numpy_dtype)
    if arr.itemsize != itemsize:
        raise ValueError(f"numpy dtype {numpy_dtype} does not match DataType {dtype}")
    if count == 0:
        return arr
    out_bytes = arr.view(np.uint8)
    st = tfs_v1_decode_values(p, n, dtype, count, &out_bytes[0], out_bytes.shape[0])
    if st == TFS_ERR_SIZE:
        raise CorruptCheckpointError(
            f"{where}: the record holds both typed values and tensor_content, or another "
            f"number of values than the slice needs ({count})", path=path, key=key)
    check(st, where, path, key, None)
    return arr


def string_nbytes(proto, path=None, key=None):
    """Total bytes of the string_val elements of a TensorProto."""
    cdef const uint8_t[::1] buf = b"" if proto is None else proto
    cdef const uint8_t *p = _ptr(buf)
    cdef const uint8_t *pos = p
    cdef const uint8_t *s
    cdef size_t slen, total = 0
    cdef int st
    while True:
        st = tfs_v1_next_string(&pos, p + buf.shape[0], &s, &slen)
        if st == TFS_END:
            return total
        check(st, f"{path}: the values of tensor {key!r}", path, key, None)
        total += slen
