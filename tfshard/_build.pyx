# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Encoding for the writer: entries, the index SSTable, string/variant tensors, and
the data-file sink that checksums and writes tensor bytes (Cython over csrc/)."""

from libc.errno cimport EINTR, EIO, errno
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF

cimport numpy as cnp

import crc32c as _crc32c

cnp.import_array()

from ._format cimport *

cdef extern from "Python.h":
    int _PyBytes_Resize(PyObject **obj, Py_ssize_t newsize)
    PyObject *_new_bytes "PyBytes_FromStringAndSize"(const char *v, Py_ssize_t n)
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL
    int PyDict_Next(object d, Py_ssize_t *pos, PyObject **key, PyObject **value)

cdef extern from "tfs_io.h" nogil:
    long long tfs_write(int fd, const void *p, size_t n)
    int tfs_preallocate(int fd, int64_t offset, int64_t len)

cdef extern from "tfs_build.h" nogil:
    size_t tfs_put_varint64(uint8_t *out, uint64_t v)
    enum: TFS_HEADER_BOUND
    int tfs_encode_header(int64_t num_shards, int64_t endianness, int64_t producer,
                          int64_t min_consumer, uint8_t *out, size_t cap, size_t *out_len)
    size_t tfs_entry_bound(int32_t rank)
    int tfs_encode_entry(int64_t dtype, int32_t rank, const int64_t *dims, int64_t shard_id,
                         int64_t offset, int64_t size, int has_crc, uint32_t crc,
                         uint8_t *out, size_t cap, size_t *out_len)
    size_t tfs_slice_field_bound(int32_t rank)
    int tfs_encode_slice_field(int32_t rank, const int64_t *starts, const int64_t *lengths,
                               uint8_t *out, size_t cap, size_t *out_len)
    size_t tfs_table_bound(size_t n, size_t key_bytes, size_t value_bytes)
    int tfs_build_table(size_t n, const uint8_t *const *keys, const size_t *key_lens,
                        const uint8_t *const *values, const size_t *value_lens,
                        uint32_t *scratch, uint8_t *out, size_t cap, size_t *out_len)


cdef int _encode_failed(int status, str what) except -1:
    # Inputs are validated in Python before they get here, so a failure is a bug
    # in tfshard rather than bad data: say so plainly.
    raise ValueError(f"cannot encode {what}: it {status_text(status)}")


cdef int32_t _dims(shape, int64_t *dims) except -1:
    cdef Py_ssize_t rank = len(shape), i
    if rank > TFS_MAX_RANK:
        raise ValueError(f"rank {rank} is above the format's limit of {TFS_MAX_RANK}")
    for i in range(rank):
        dims[i] = shape[i]
    return <int32_t>rank


def encode_entry(int64_t dtype, shape, int64_t shard_id, int64_t offset, int64_t size, crc):
    """Serialize a BundleEntryProto for stored tensor bytes (``crc``: masked, or None)."""
    return _entry(dtype, shape, shard_id, offset, size, crc)


cdef bytes _entry(int64_t dtype, shape, int64_t shard_id, int64_t offset, int64_t size, crc):
    cdef int64_t dims[TFS_MAX_RANK]
    cdef uint8_t out[64 + 13 * TFS_MAX_RANK]
    cdef size_t n
    cdef int32_t rank = _dims(shape, dims)
    cdef int st = tfs_encode_entry(dtype, rank, dims, shard_id, offset, size,
                                   crc is not None, crc if crc is not None else 0,
                                   out, sizeof(out), &n)
    if st != TFS_OK:
        _encode_failed(st, "a tensor entry")
    return PyBytes_FromStringAndSize(<char *>out, n)


cdef bytes _entry_nd(int64_t dtype, int ndim, const cnp.npy_intp *shape, int64_t shard_id,
                     int64_t offset, int64_t size, uint32_t crc):
    """_entry for an array's own dimensions (no shape tuple)."""
    cdef int64_t dims[TFS_MAX_RANK]
    cdef uint8_t out[64 + 13 * TFS_MAX_RANK]
    cdef size_t n
    cdef int i
    if ndim > TFS_MAX_RANK:
        raise ValueError(f"rank {ndim} is above the format's limit of {TFS_MAX_RANK}")
    for i in range(ndim):
        dims[i] = shape[i]
    cdef int st = tfs_encode_entry(dtype, ndim, dims, shard_id, offset, size, 1, crc, out,
                                   sizeof(out), &n)
    if st != TFS_OK:
        _encode_failed(st, "a tensor entry")
    return PyBytes_FromStringAndSize(<char *>out, n)


def encode_partitioned_entry(int64_t dtype, shape, slices):
    """Serialize the entry of a partitioned tensor: dtype, full shape, and one
    TensorSliceProto per stored slice (each a sequence of (start, length); length
    -1 is a whole dimension)."""
    cdef int64_t starts[TFS_MAX_RANK]
    cdef int64_t lengths[TFS_MAX_RANK]
    cdef uint8_t out[6 + 24 * TFS_MAX_RANK]
    cdef size_t n
    cdef int32_t rank
    cdef Py_ssize_t i
    cdef int st
    parts = [encode_entry(dtype, shape, 0, 0, 0, None)]
    for extents in slices:
        rank = len(extents)
        if rank > TFS_MAX_RANK:
            raise ValueError(f"rank {rank} is above the format's limit of {TFS_MAX_RANK}")
        for i in range(rank):
            starts[i], lengths[i] = extents[i]
        st = tfs_encode_slice_field(rank, starts, lengths, out, sizeof(out), &n)
        if st != TFS_OK:
            _encode_failed(st, "a tensor slice")
        parts.append(PyBytes_FromStringAndSize(<char *>out, n))
    return b"".join(parts)


def encode_header(int64_t num_shards, int64_t endianness=0, int64_t producer=1,
                  int64_t min_consumer=0):
    """Serialize a BundleHeaderProto; the defaults are what TF writes on
    little-endian hosts (version {producer: 1})."""
    cdef uint8_t out[TFS_HEADER_BOUND]
    cdef size_t n
    cdef int st = tfs_encode_header(num_shards, endianness, producer, min_consumer, out,
                                    sizeof(out), &n)
    if st != TFS_OK:
        _encode_failed(st, "the bundle header")
    return PyBytes_FromStringAndSize(<char *>out, n)


def build_table(list keys, values, bytes first=None):
    """The bytes of an SSTable holding ``keys`` (strictly increasing bytes) and
    ``values`` (a list in the same order, or a dict by key), exactly as
    TensorFlow's table builder lays it out.  ``first``, if given, is the value of
    ``keys[0]`` (the bundle header under the empty key, which is not in the dict)."""
    cdef size_t n = len(keys), i, key_bytes = 0, value_bytes = 0, cap, out_len
    cdef const uint8_t **kp = NULL
    cdef const uint8_t **vp = NULL
    cdef size_t *kl = NULL
    cdef size_t *vl = NULL
    cdef uint32_t *scratch = NULL
    cdef PyObject *raw = NULL
    cdef uint8_t *dst
    cdef bytes k, v
    cdef int st
    cdef bint by_key = isinstance(values, dict)
    cdef list listed = None if by_key else values
    cdef dict table = values if by_key else None
    if not by_key and len(listed) != n:
        raise ValueError("keys and values differ in length")
    try:
        kp = <const uint8_t **>malloc((n + 1) * sizeof(uint8_t *))
        vp = <const uint8_t **>malloc((n + 1) * sizeof(uint8_t *))
        kl = <size_t *>malloc((n + 1) * sizeof(size_t))
        vl = <size_t *>malloc((n + 1) * sizeof(size_t))
        scratch = <uint32_t *>malloc(2 * (n + 1) * sizeof(uint32_t))
        if not (kp and vp and kl and vl and scratch):
            raise MemoryError()
        for i in range(n):
            k = keys[i]
            v = first if i == 0 and first is not None else table[k] if by_key else listed[i]
            kp[i] = <const uint8_t *>PyBytes_AS_STRING(k)
            vp[i] = <const uint8_t *>PyBytes_AS_STRING(v)
            kl[i] = len(k)
            vl[i] = len(v)
            key_bytes += kl[i]
            value_bytes += vl[i]
        cap = tfs_table_bound(n, key_bytes, value_bytes)
        raw = _new_bytes(NULL, cap)
        if raw == NULL:
            raise MemoryError()
        dst = <uint8_t *>PyBytes_AS_STRING(<object>raw)
        with nogil:
            st = tfs_build_table(n, kp, kl, vp, vl, scratch, dst, cap, &out_len)
        # Shrunk in place rather than sliced: a copy would double the memory an index
        # of millions of entries takes.
        if st == TFS_OK and _PyBytes_Resize(&raw, out_len) < 0:
            raw = NULL  # freed by the failed resize, which set MemoryError
            raise MemoryError()
        out = <object>raw   # a reference of its own...
        Py_DECREF(out)      # ...so give back the one _new_bytes made
        raw = NULL
        if st == TFS_ERR_RANGE:
            raise ValueError("table keys must be strictly increasing and under 4 GiB")
        if st != TFS_OK:
            _encode_failed(st, "the index table")
        return out
    finally:
        free(kp)
        free(vp)
        free(kl)
        free(vl)
        free(scratch)


cdef int64_t _plain_code(obj) noexcept:
    """The TF dtype code of an array whose bytes are stored exactly as they are in
    memory (an exact ndarray, C-contiguous, native byte order, of a numpy
    built-in numeric type); 0 for anything else."""
    cdef cnp.ndarray a
    cdef int t
    cdef Py_ssize_t size
    if type(obj) is not cnp.ndarray:
        return 0
    a = <cnp.ndarray>obj
    if not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISNOTSWAPPED(a):
        return 0
    # By numpy type number, so user-defined types (ml_dtypes) never match.
    t = cnp.PyArray_TYPE(a)
    size = cnp.PyArray_ITEMSIZE(a)
    if t in (cnp.NPY_BYTE, cnp.NPY_SHORT, cnp.NPY_INT, cnp.NPY_LONG, cnp.NPY_LONGLONG):
        return 6 if size == 1 else 5 if size == 2 else 3 if size == 4 else 9 if size == 8 else 0
    if t in (cnp.NPY_UBYTE, cnp.NPY_USHORT, cnp.NPY_UINT, cnp.NPY_ULONG, cnp.NPY_ULONGLONG):
        return 4 if size == 1 else 17 if size == 2 else 22 if size == 4 else 23 if size == 8 else 0
    if t == cnp.NPY_FLOAT16:
        return 19
    if t == cnp.NPY_FLOAT:
        return 1
    if t == cnp.NPY_DOUBLE:
        return 2
    if t == cnp.NPY_CFLOAT:
        return 8
    if t == cnp.NPY_CDOUBLE:
        return 18
    if t == cnp.NPY_BOOL:
        return 10
    return 0


def prepare_plain(list pairs, list by_code):
    """The writer's fast path over ``(name, array)`` pairs.

    A pair whose name is a non-empty str and whose array is stored byte for
    byte (see _plain_code) becomes the writer's tensor tuple ``(key, name,
    by_code[code], shape, array, nbytes, None)``; any other pair gives None,
    for the caller's general path.
    """
    cdef list out = []
    cdef int64_t code
    for pair in pairs:
        name, array = pair
        code = _plain_code(array) if type(name) is str and len(<str>name) else 0
        if code:
            try:
                key = (<str>name).encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                code = 0  # the general path reports it
        if code:
            out.append((key, name, by_code[code], array.shape, array,
                        cnp.PyArray_NBYTES(<cnp.ndarray>array), None))
        else:
            out.append(None)
    return out


cdef inline size_t _put_le32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xff
    p[1] = (v >> 8) & 0xff
    p[2] = (v >> 16) & 0xff
    p[3] = (v >> 24) & 0xff
    return 4


cdef inline uint32_t _crc_le(uint32_t crc, uint64_t v, int nbytes) noexcept nogil:
    cdef uint8_t img[8]
    cdef int i
    for i in range(nbytes):
        img[i] = (v >> (8 * i)) & 0xff
    return tfs_crc32c_extend(crc, img, nbytes)


def encode_strings(list items):
    """Encode a DT_STRING tensor (FORMAT.md 7.3, little-endian).

    ``items`` are the elements in row-major order, each ``bytes``.
    Returns ``(data, masked_crc)``.
    """
    cdef Py_ssize_t count = len(items), i
    cdef size_t total = 0, lens_len = 0, o, ln
    cdef uint32_t len_crc = 0, crc
    cdef uint8_t *p
    cdef bytes s
    for i in range(count):
        s = items[i]
        if s is None:
            raise TypeError("string elements must be bytes, not None")
        ln = len(s)
        total += ln
        lens_len += 1
        while ln >= 0x80:
            ln >>= 7
            lens_len += 1
    data = PyBytes_FromStringAndSize(NULL, lens_len + 4 + total)
    p = <uint8_t *>PyBytes_AS_STRING(data)
    o = 0
    for i in range(count):
        s = items[i]
        ln = len(s)
        o += tfs_put_varint64(p + o, ln)
        len_crc = _crc_le(len_crc, ln, 4 if ln <= 0xffffffffu else 8)
    _put_le32(p + o, tfs_crc_mask(len_crc))
    # The entry CRC runs over the length images (len_crc so far), then the stored
    # checksum bytes, then the strings.
    crc = tfs_crc32c_extend(len_crc, p + o, 4)
    o += 4
    for i in range(count):
        s = items[i]
        ln = len(s)
        if ln:
            memcpy(p + o, PyBytes_AS_STRING(s), ln)
            crc = tfs_crc32c_extend(crc, p + o, ln)
            o += ln
    return data, tfs_crc_mask(crc)


def encode_variants(list items):
    """Encode a DT_VARIANT tensor from serialized VariantTensorDataProto bytes
    (FORMAT.md 7.4).  Returns ``(data, masked_crc)``."""
    cdef Py_ssize_t count = len(items), i
    cdef size_t total = 0, o, ln
    cdef uint32_t crc = 0
    cdef uint8_t *p
    cdef bytes s
    for i in range(count):
        s = items[i]
        if s is None:
            raise TypeError("variant elements must be bytes, not None")
        total += len(s) + 10 + 4
    data = PyBytes_FromStringAndSize(NULL, total)
    p = <uint8_t *>PyBytes_AS_STRING(data)
    o = 0
    for i in range(count):
        s = items[i]
        ln = len(s)
        o += tfs_put_varint64(p + o, ln)
        crc = _crc_le(crc, ln, 8)
        if ln:
            memcpy(p + o, PyBytes_AS_STRING(s), ln)
            crc = tfs_crc32c_extend(crc, p + o, ln)
            o += ln
        _put_le32(p + o, tfs_crc_mask(crc))
        crc = tfs_crc32c_extend(crc, p + o, 4)
        o += 4
    return data[:o], tfs_crc_mask(crc)


cdef enum:
    # Tensors up to this size are copied into a staging buffer and written in
    # batches; larger ones are written straight from the caller's memory.
    STAGE_SIZE = 1 << 20
    # Large tensors are checksummed and written in chunks of this size, so the
    # bytes the CRC just read are still in cache when write() copies them.
    CHUNK = 1 << 20
    MAX_ALIGNMENT = 1 << 20
    # Tensors from this size on have their CRC computed on another thread
    # while they are written, when the caller passes a thread pool.
    PARALLEL_CRC_MIN = STAGE_SIZE
    # Smaller reservations are not worth a system call.
    PREALLOCATE_MIN = 1 << 20


cdef int _write_all(int fd, const uint8_t *p, size_t n) noexcept nogil:
    """write() until done, continuing after short writes; 0, or the errno of the
    failure (EIO for a write that makes no progress, which would otherwise loop)."""
    cdef long long w
    while n:
        w = tfs_write(fd, p, n if n < (1 << 30) else (1 << 30))
        if w < 0:
            if errno == EINTR:
                continue
            return errno
        if w == 0:
            return EIO
        p += w
        n -= <size_t>w
    return 0


cdef class DataFile:
    """Appends tensors to one data file: checksums them, pads to the alignment,
    batches small writes.

    The file descriptor is owned by the caller, who closes it after
    :meth:`flush`.  Not thread-safe: one DataFile per thread.
    """

    cdef int fd
    cdef size_t alignment
    cdef uint8_t *stage
    cdef size_t staged
    cdef readonly int64_t position   # bytes appended so far, staged included
    cdef readonly object path
    cdef readonly object failed      # name of the tensor whose write failed, if one did

    def __cinit__(self):
        self.stage = NULL

    def __init__(self, int fd, Py_ssize_t alignment, path=None):
        if alignment < 1 or alignment > MAX_ALIGNMENT:
            raise ValueError(f"alignment must be between 1 and {MAX_ALIGNMENT}")
        self.fd = fd
        self.alignment = alignment
        self.path = path
        self.stage = <uint8_t *>malloc(STAGE_SIZE)
        if self.stage == NULL:
            raise MemoryError()
        self.staged = 0
        self.position = 0

    def __dealloc__(self):
        free(self.stage)

    cdef int _raise(self, int err) except -1:
        import os
        raise OSError(err, os.strerror(err), self.path)

    cdef int _flush(self) except -1:
        cdef int err
        with nogil:
            err = _write_all(self.fd, self.stage, self.staged)
        if err:
            self._raise(err)
        self.staged = 0
        return 0

    def preallocate(self, int64_t nbytes):
        """Reserve the file's blocks for the next ``nbytes`` bytes to be appended, where
        the file system can (Linux ``fallocate`` keeping the file's size; elsewhere
        nothing).  Writes into reserved blocks skip the file system's allocation work
        (on ext4 about a tenth of a large write's time).  Best effort: a failure is
        ignored, and a real shortage of space shows in the writes themselves."""
        if nbytes >= PREALLOCATE_MIN:
            with nogil:
                tfs_preallocate(self.fd, self.position, nbytes)

    def flush(self):
        """Write out whatever is staged.  Every write is checked: a failure (even
        after part of the bytes went out) raises OSError with the errno."""
        self._flush()

    def append_all(self, list tensors, int64_t shard_id, dict entries, crc_pool=None):
        """Append tensors; the encoded BundleEntryProto of each goes to
        ``entries[key]``.

        Each item is the writer's tuple ``(key, name, dtype, shape, payload,
        nbytes, crc)``: ``dtype.code`` is stored, ``payload`` written, and its
        CRC computed unless ``crc`` (masked) is given.  With ``crc_pool`` (a
        concurrent.futures executor), large tensors are checksummed there while
        this thread writes them: the two passes over memory then take the time
        of one.
        """
        cdef int64_t offset, size
        cdef uint32_t crc
        cdef tuple t
        for t in tensors:
            given = t[6]
            offset = self.position
            try:
                if given is None and crc_pool is not None and t[5] >= PARALLEL_CRC_MIN:
                    pending = crc_pool.submit(_crc32c.crc32c, t[4])
                    try:
                        size = self._append(t[4], False, &crc)
                    finally:
                        given = tfs_crc_mask(pending.result())
                else:
                    size = self._append(t[4], given is None, &crc)
            except OSError:
                self.failed = t[1]
                raise
            entries[t[0]] = _entry(t[2].code, t[3], shard_id, offset, size,
                                   crc if given is None else given)

    def append_mapping(self, dict tensors, int64_t shard_id, dict entries, crc_pool=None):
        """The writer's fast path for a dict of many tensors: when every key is a
        non-empty str (UTF-8 without surrogates) and every value an array stored
        byte for byte (see ``_plain_code``), append them all in the dict's order,
        their entries into ``entries``, and return how many; otherwise write
        nothing and return -1, for the general path.  Keys already in ``entries``
        are the caller's to exclude.  Large tensors are checksummed in
        ``crc_pool`` while being written, as in :meth:`append_all`."""
        cdef Py_ssize_t pos = 0, klen
        cdef PyObject *k
        cdef PyObject *v
        cdef const char *utf8
        cdef cnp.ndarray a
        cdef int64_t offset, size, total = 0
        cdef size_t n
        cdef uint32_t crc
        while PyDict_Next(tensors, &pos, &k, &v):
            if type(<object>k) is not str or not _plain_code(<object>v):
                return -1
            try:
                utf8 = PyUnicode_AsUTF8AndSize(<object>k, &klen)
            except UnicodeEncodeError:
                return -1
            if klen == 0:
                return -1
            n = cnp.PyArray_NBYTES(<cnp.ndarray>v)
            total += n + (self.alignment - n % self.alignment) % self.alignment
        self.preallocate(total)
        pos = 0
        while PyDict_Next(tensors, &pos, &k, &v):
            utf8 = PyUnicode_AsUTF8AndSize(<object>k, &klen)
            a = <cnp.ndarray>v
            offset = self.position
            try:
                if crc_pool is not None and cnp.PyArray_NBYTES(a) >= PARALLEL_CRC_MIN:
                    pending = crc_pool.submit(_crc32c.crc32c, a)
                    try:
                        size = self._append(a, False, &crc)
                    finally:
                        crc = tfs_crc_mask(pending.result())
                else:
                    size = self._append(a, True, &crc)
            except OSError:
                self.failed = <object>k
                raise
            entries[PyBytes_FromStringAndSize(utf8, klen)] = _entry_nd(
                _plain_code(a), cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a), shard_id, offset,
                size, crc)
        return len(tensors)

    def append(self, data, bint checksum=True):
        """Append one tensor's bytes (any C-contiguous buffer).

        Returns ``(offset, size, masked_crc)``; ``masked_crc`` is None when
        ``checksum`` is false (the caller supplies it).
        """
        cdef int64_t offset = self.position
        cdef uint32_t crc
        cdef int64_t size = self._append(data, checksum, &crc)
        return offset, size, (crc if checksum else None)

    cdef int64_t _append(self, data, bint checksum, uint32_t *masked) except -1:
        """Append bytes, pad to the alignment; returns the size, CRC to *masked."""
        cdef Py_buffer view
        cdef const uint8_t *p
        cdef size_t n, done, step, pad
        cdef uint32_t crc = 0
        cdef int err = 0
        cdef bint exported = not _plain_code(data)
        if exported:
            PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS)
            p = <const uint8_t *>view.buf
            n = <size_t>view.len
        else:  # an ndarray numpy would export as is: skip building the buffer info
            p = <const uint8_t *>cnp.PyArray_DATA(<cnp.ndarray>data)
            n = <size_t>cnp.PyArray_NBYTES(<cnp.ndarray>data)
        try:
            if n > STAGE_SIZE - self.staged:
                self._flush()
            if n <= STAGE_SIZE - self.staged:
                if checksum:
                    crc = tfs_crc32c_extend(0, p, n)
                if n:
                    memcpy(self.stage + self.staged, p, n)
                self.staged += n
            elif not checksum:
                with nogil:
                    err = _write_all(self.fd, p, n)
                if err:
                    self._raise(err)
            else:
                with nogil:
                    done = 0
                    while done < n and not err:
                        step = n - done if n - done < CHUNK else CHUNK
                        crc = tfs_crc32c_extend(crc, p + done, step)
                        err = _write_all(self.fd, p + done, step)
                        done += step
                if err:
                    self._raise(err)
        finally:
            if exported:
                PyBuffer_Release(&view)
        self.position += n
        pad = (self.alignment - <size_t>(self.position % self.alignment)) % self.alignment
        if pad:
            if pad > STAGE_SIZE - self.staged:
                self._flush()
            memset(self.stage + self.staged, 0, pad)
            self.staged += pad
            self.position += pad
        masked[0] = tfs_crc_mask(crc)
        return <int64_t>n
