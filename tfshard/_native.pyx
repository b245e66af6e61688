# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Byte-level parsing of TensorFlow checkpoints (the Cython layer over csrc/).

This module turns bytes into plain values and nothing else: it never opens a
file.  It is the one place where csrc status codes become exceptions.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8

import numpy as np
import crc32c as _crc32c

from .errors import ChecksumMismatchError, CorruptCheckpointError

cdef extern from "tfs_format.h" nogil:
    enum:
        TFS_OK
        TFS_END
        TFS_ERR_TRUNCATED
        TFS_ERR_VARINT
        TFS_ERR_BAD_MAGIC
        TFS_ERR_BAD_BLOCK
        TFS_ERR_BAD_ENTRY
        TFS_ERR_PROTO
        TFS_ERR_SHAPE
        TFS_ERR_RANGE
        TFS_ERR_SIZE
        TFS_ERR_BUFFER
        TFS_MAX_RANK
        TFS_FOOTER_SIZE
        TFS_BLOCK_TRAILER_SIZE

    ctypedef struct tfs_handle:
        uint64_t offset
        uint64_t size

    ctypedef struct tfs_block_iter:
        const uint8_t *pos
        const uint8_t *entries_end

    ctypedef struct tfs_header:
        int64_t num_shards
        int64_t endianness
        int64_t producer
        int64_t min_consumer
        int bad_consumer_1

    ctypedef struct tfs_entry:
        int64_t dtype
        int64_t shard_id
        int64_t offset
        int64_t size
        uint32_t crc32c
        int has_crc
        int32_t rank
        int unknown_rank
        int64_t num_elements
        uint32_t num_slices

    uint32_t tfs_load_le32(const uint8_t *p)
    uint32_t tfs_load_be32(const uint8_t *p)
    uint32_t tfs_crc_mask(uint32_t crc)
    uint32_t tfs_crc_unmask(uint32_t masked)
    int tfs_get_varint64(const uint8_t **p, const uint8_t *end, uint64_t *out)
    int tfs_decode_handle(const uint8_t *p, size_t n, tfs_handle *h)
    int tfs_decode_footer(const uint8_t *footer, tfs_handle *metaindex, tfs_handle *index)
    int tfs_block_iter_init(tfs_block_iter *it, const uint8_t *block, size_t size)
    int tfs_block_iter_next(tfs_block_iter *it, uint32_t *shared, const uint8_t **delta,
                            uint32_t *delta_len, const uint8_t **value, uint32_t *value_len)
    int tfs_parse_header(const uint8_t *p, size_t n, tfs_header *h)
    int tfs_parse_entry(const uint8_t *p, size_t n, tfs_entry *e, int64_t *dims)
    int tfs_parse_entry_slice(const uint8_t *p, size_t n, uint32_t index, int32_t *rank,
                              int64_t *starts, int64_t *lengths)
    size_t tfs_slice_key_bound(size_t name_len, int32_t rank)
    int tfs_slice_key_encode(const uint8_t *name, size_t name_len, int32_t rank,
                             const int64_t *starts, const int64_t *lengths,
                             uint8_t *out, size_t cap, size_t *out_len)
    int tfs_slice_key_decode(const uint8_t *key, size_t n, uint8_t *name_out, size_t name_cap,
                             size_t *name_len, int32_t *rank, int64_t *starts, int64_t *lengths)
    int tfs_string_scan(const uint8_t *p, size_t size, uint64_t count, int big_endian,
                        uint64_t *lengths, uint8_t *images, size_t *images_len,
                        size_t *header_len)


_STATUS_TEXT = {
    TFS_ERR_TRUNCATED: "runs past the end of the data",
    TFS_ERR_VARINT: "has a malformed varint",
    TFS_ERR_BAD_MAGIC: "is not an SSTable (bad magic number in the footer)",
    TFS_ERR_BAD_BLOCK: "has an inconsistent restart array",
    TFS_ERR_BAD_ENTRY: "has a malformed entry",
    TFS_ERR_PROTO: "is not a valid protobuf message",
    TFS_ERR_SHAPE: "has an invalid shape (rank above 254, a negative dimension, "
                   "or more than 2**63 elements)",
    TFS_ERR_RANGE: "holds a value outside the range the format allows",
    TFS_ERR_SIZE: "has sizes that do not add up to the recorded tensor size",
    TFS_ERR_BUFFER: "needs a larger buffer",
}

# Upper bound on key bytes rebuilt from prefix-compressed blocks, relative
# to the index file size: real indexes expand by well under 2x; a hostile
# one could otherwise expand quadratically.
cdef size_t KEY_EXPANSION = 64
# A Snappy block cannot expand by more than this factor (a 2-byte copy
# element yields at most 64 bytes).
cdef uint64_t SNAPPY_MAX_RATIO = 32

MAX_RANK = TFS_MAX_RANK


cdef int _check(int status, str what, path, key=None, offset=None) except -1:
    """Raise CorruptCheckpointError for a negative csrc status."""
    if status >= 0:
        return 0
    raise CorruptCheckpointError(f"{what} {_STATUS_TEXT.get(status, f'failed (status {status})')}",
                                 path=path, key=key, offset=offset)


cdef int _iter_init(tfs_block_iter *it, block) except? -100:
    """Start iterating a block held by any bytes-like object (kept alive by the caller)."""
    cdef const uint8_t[::1] b = block
    if b.shape[0] == 0:
        return TFS_ERR_BAD_BLOCK
    return tfs_block_iter_init(it, &b[0], b.shape[0])


cdef inline str _name(const uint8_t *p, size_t n):
    return PyUnicode_DecodeUTF8(<const char *>p, n, "surrogateescape")


def mask_crc(uint32_t crc):
    """TF's masked form of a CRC-32C (as stored in files)."""
    return tfs_crc_mask(crc)


def unmask_crc(uint32_t masked):
    """Inverse of :func:`mask_crc`."""
    return tfs_crc_unmask(masked)


cdef struct Record:
    uint64_t key_off
    uint64_t val_off
    uint32_t key_len
    uint32_t val_len
    bint hidden           # a per-slice key: not listed as a tensor


cdef class IndexTable:
    """The decoded ``.index`` SSTable of one checkpoint.

    Keys and values are copied into two compact buffers; records point into
    them in key order.  The header entry (key ``""``) is kept apart, so record
    ``i`` is always a tensor entry.  Entries are parsed on demand.
    """

    cdef uint8_t *keys
    cdef size_t keys_len, keys_cap, keys_limit
    cdef uint8_t *vals
    cdef size_t vals_len, vals_cap
    cdef Record *recs
    cdef Py_ssize_t nrecs, recs_cap
    cdef readonly Py_ssize_t visible_count
    cdef readonly bytes header_value
    cdef readonly object path

    def __cinit__(self):
        self.keys = NULL
        self.vals = NULL
        self.recs = NULL

    def __dealloc__(self):
        free(self.keys)
        free(self.vals)
        free(self.recs)

    def __init__(self, data, path=None):
        """Decode an index file.

        Parameters
        ----------
        data : bytes-like
            The whole ``.index`` file.
        path : str, optional
            File name used in error messages.
        """
        cdef const uint8_t[::1] buf = memoryview(data).cast("B")
        cdef Py_ssize_t size = buf.shape[0]
        cdef tfs_handle meta, index
        cdef tfs_block_iter it
        cdef uint32_t shared, delta_len, value_len
        cdef const uint8_t *delta
        cdef const uint8_t *value
        cdef const uint8_t *block
        cdef size_t block_size
        cdef tfs_handle h
        cdef uint64_t next_block_offset = 0
        cdef int st
        self.path = path
        if size < TFS_FOOTER_SIZE:
            raise CorruptCheckpointError(
                f"{path}: file is too short to be an SSTable ({size} bytes; the footer alone "
                f"is {TFS_FOOTER_SIZE})", path=path)
        self.keys_limit = KEY_EXPANSION * <size_t>size + (1 << 20)
        _check(tfs_decode_footer(&buf[size - TFS_FOOTER_SIZE], &meta, &index),
               f"{path}: the footer", path, None, size - TFS_FOOTER_SIZE)
        index_block = self._block(buf, index, "the index block")
        _check(_iter_init(&it, index_block), f"{path}: the index block", path, None, index.offset)
        while True:
            st = tfs_block_iter_next(&it, &shared, &delta, &delta_len, &value, &value_len)
            if st == TFS_END:
                break
            _check(st, f"{path}: the index block", path, None, index.offset)
            _check(tfs_decode_handle(value, value_len, &h), f"{path}: a block handle in the index block",
                   path, None, index.offset)
            # Data blocks are contiguous and in order; refusing anything else
            # bounds the work a hostile index can ask for by the file size.
            if h.offset < next_block_offset:
                raise CorruptCheckpointError(
                    f"{path}: data block at offset {h.offset} overlaps or precedes the previous "
                    f"block (which ends at {next_block_offset})", path=path, offset=h.offset)
            next_block_offset = h.offset + h.size + TFS_BLOCK_TRAILER_SIZE
            self._decode_data_block(buf, h)
        if self.header_value is None:
            raise CorruptCheckpointError(
                f"{path}: the index holds no entries (not even the bundle header)", path=path)

    cdef object _block(self, const uint8_t[::1] buf, tfs_handle h, str what):
        """Verify a block's trailer and return its uncompressed contents."""
        cdef uint64_t limit = buf.shape[0] - TFS_FOOTER_SIZE
        cdef uint32_t stored, actual
        cdef uint8_t kind
        path = self.path
        if h.offset > limit or h.size > limit - h.offset or \
                TFS_BLOCK_TRAILER_SIZE > limit - h.offset - h.size:
            raise CorruptCheckpointError(
                f"{path}: {what} (offset {h.offset}, size {h.size}) runs past the end of the "
                f"table ({limit} bytes before the footer)", path=path, offset=h.offset)
        raw = memoryview(buf)[h.offset:h.offset + h.size + 1]   # block + type byte
        kind = buf[h.offset + h.size]
        stored = tfs_load_le32(&buf[h.offset + h.size + 1])
        actual = _crc32c.crc32c(raw)
        if tfs_crc_unmask(stored) != actual:
            raise ChecksumMismatchError(
                f"{path}: {what} at offset {h.offset} fails its checksum (stored masked CRC "
                f"{stored:#010x}, computed {tfs_crc_mask(actual):#010x})",
                path=path, offset=h.offset)
        if kind == 0:
            return raw[:h.size]
        if kind == 1:
            return _snappy_decompress(bytes(raw[:h.size]), f"{path}: {what}", path, h.offset)
        raise CorruptCheckpointError(
            f"{path}: {what} at offset {h.offset} has unknown compression type {kind} "
            f"(expected 0 = none or 1 = Snappy)", path=path, offset=h.offset)

    cdef int _decode_data_block(self, const uint8_t[::1] buf, tfs_handle h) except -1:
        cdef tfs_block_iter it
        cdef uint32_t shared, delta_len, value_len
        cdef const uint8_t *delta
        cdef const uint8_t *value
        cdef int st, cmp
        cdef int32_t rank
        cdef uint64_t prev_off = 0
        cdef size_t prev_len = 0, key_len, n
        cdef bint first_in_block = True
        cdef Record *r
        path = self.path
        block = self._block(buf, h, "a data block")
        _check(_iter_init(&it, block), f"{path}: the data block at offset {h.offset}", path, None, h.offset)
        if self.nrecs > 0:
            prev_off = self.recs[self.nrecs - 1].key_off
            prev_len = self.recs[self.nrecs - 1].key_len
        elif self.header_value is not None:
            prev_off = 0
            prev_len = 0
        while True:
            st = tfs_block_iter_next(&it, &shared, &delta, &delta_len, &value, &value_len)
            if st == TFS_END:
                return 0
            _check(st, f"{path}: the data block at offset {h.offset}", path, None, h.offset)
            # Each block starts from an empty key.
            if shared > (0 if first_in_block else prev_len):
                raise CorruptCheckpointError(
                    f"{path}: an entry in the data block at offset {h.offset} shares {shared} "
                    f"key bytes with a previous key of {0 if first_in_block else prev_len} bytes",
                    path=path, offset=h.offset)
            key_len = <size_t>shared + delta_len
            self._reserve_keys(key_len)
            memcpy(self.keys + self.keys_len, self.keys + prev_off, shared)
            memcpy(self.keys + self.keys_len + shared, delta, delta_len)
            # Strictly increasing keys: duplicates or disorder mean corruption
            # (and binary search relies on it).
            if self.header_value is not None:
                n = key_len if key_len < prev_len else prev_len
                cmp = memcmp(self.keys + self.keys_len, self.keys + prev_off, n)
                if cmp < 0 or (cmp == 0 and key_len <= prev_len):
                    raise CorruptCheckpointError(
                        f"{path}: index keys are not in strictly increasing order at key "
                        f"{PyBytes_FromStringAndSize(<char *>self.keys + self.keys_len, key_len)!r}",
                        path=path, offset=h.offset)
            elif key_len != 0:
                raise CorruptCheckpointError(
                    f"{path}: the first index key must be the empty bundle-header key, found "
                    f"{PyBytes_FromStringAndSize(<char *>self.keys + self.keys_len, key_len)!r}",
                    path=path, offset=h.offset)
            if self.header_value is None:
                self.header_value = PyBytes_FromStringAndSize(<const char *>value, value_len)
                prev_off = self.keys_len
                prev_len = 0
                first_in_block = False
                continue
            self._reserve_vals(value_len)
            memcpy(self.vals + self.vals_len, value, value_len)
            if self.nrecs == self.recs_cap:
                self._grow_recs()
            r = &self.recs[self.nrecs]
            r.key_off = self.keys_len
            r.key_len = <uint32_t>key_len
            r.val_off = self.vals_len
            r.val_len = value_len
            r.hidden = key_len > 0 and self.keys[self.keys_len] == 0 and \
                tfs_slice_key_decode(self.keys + self.keys_len, key_len, NULL, 0, &n, &rank,
                                     NULL, NULL) == TFS_OK
            if not r.hidden:
                self.visible_count += 1
            self.nrecs += 1
            prev_off = self.keys_len
            prev_len = key_len
            self.keys_len += key_len
            self.vals_len += value_len
            first_in_block = False

    cdef int _reserve_keys(self, size_t extra) except -1:
        cdef size_t need = self.keys_len + extra
        cdef uint8_t *p
        if need <= self.keys_cap:
            return 0
        if need > self.keys_limit:
            raise CorruptCheckpointError(
                f"{self.path}: index keys expand to more than {self.keys_limit} bytes; "
                f"refusing a hostile index", path=self.path)
        cap = max(need, 2 * self.keys_cap, 4096)
        p = <uint8_t *>realloc(self.keys, cap)
        if p == NULL:
            raise MemoryError()
        self.keys, self.keys_cap = p, cap
        return 0

    cdef int _reserve_vals(self, size_t extra) except -1:
        cdef size_t need = self.vals_len + extra
        cdef uint8_t *p
        if need <= self.vals_cap:
            return 0
        cap = max(need, 2 * self.vals_cap, 4096)
        p = <uint8_t *>realloc(self.vals, cap)
        if p == NULL:
            raise MemoryError()
        self.vals, self.vals_cap = p, cap
        return 0

    cdef int _grow_recs(self) except -1:
        cdef Py_ssize_t cap = max(2 * self.recs_cap, 256)
        cdef Record *p = <Record *>realloc(self.recs, cap * sizeof(Record))
        if p == NULL:
            raise MemoryError()
        self.recs, self.recs_cap = p, cap
        return 0

    # ---- lookups ------------------------------------------------------

    def __len__(self):
        return self.nrecs

    def nbytes(self):
        """Bytes of memory held by the decoded table."""
        return self.keys_cap + self.vals_cap + self.recs_cap * sizeof(Record)

    cpdef Py_ssize_t find(self, bytes key):
        """Record number of ``key``, or -1."""
        cdef Py_ssize_t lo = 0, hi = self.nrecs, mid
        cdef const uint8_t *k = key
        cdef size_t klen = len(key), n
        cdef int cmp
        cdef Record *r
        while lo < hi:
            mid = (lo + hi) // 2
            r = &self.recs[mid]
            n = klen if klen < r.key_len else r.key_len
            cmp = memcmp(self.keys + r.key_off, k, n)
            if cmp == 0:
                cmp = (r.key_len > klen) - (r.key_len < klen)
            if cmp < 0:
                lo = mid + 1
            elif cmp > 0:
                hi = mid
            else:
                return mid
        return -1

    def key(self, Py_ssize_t i):
        """Raw key bytes of record ``i``."""
        self._index(i)
        return PyBytes_FromStringAndSize(<char *>self.keys + self.recs[i].key_off,
                                         self.recs[i].key_len)

    def name(self, Py_ssize_t i):
        """Key of record ``i`` as str (UTF-8, undecodable bytes escaped)."""
        self._index(i)
        return _name(self.keys + self.recs[i].key_off, self.recs[i].key_len)

    def value(self, Py_ssize_t i):
        """Raw value bytes (a serialized BundleEntryProto) of record ``i``."""
        self._index(i)
        return PyBytes_FromStringAndSize(<char *>self.vals + self.recs[i].val_off,
                                         self.recs[i].val_len)

    def is_hidden(self, Py_ssize_t i):
        """True for per-slice keys, which are not listed as tensors."""
        self._index(i)
        return bool(self.recs[i].hidden)

    cdef int _index(self, Py_ssize_t i) except -1:
        if i < 0 or i >= self.nrecs:
            raise IndexError(i)
        return 0

    def visible_names(self):
        """Names of all listed tensors, in key order."""
        cdef Py_ssize_t i
        out = []
        for i in range(self.nrecs):
            if not self.recs[i].hidden:
                out.append(_name(self.keys + self.recs[i].key_off, self.recs[i].key_len))
        return out

    def header(self):
        """The BundleHeaderProto as a dict."""
        cdef tfs_header h
        cdef const uint8_t *p = self.header_value
        _check(tfs_parse_header(p, len(self.header_value), &h),
               f"{self.path}: the bundle header", self.path, "")
        return {"num_shards": h.num_shards, "endianness": h.endianness,
                "producer": h.producer, "min_consumer": h.min_consumer,
                "bad_consumer_1": bool(h.bad_consumer_1)}

    cdef int _parse(self, Py_ssize_t i, tfs_entry *e, int64_t *dims) except -1:
        cdef Record *r = &self.recs[i]
        cdef int st = tfs_parse_entry(self.vals + r.val_off, r.val_len, e, dims)
        if st < 0:
            name = _name(self.keys + r.key_off, r.key_len)
            _check(st, f"{self.path}: the index entry of tensor {name!r}", self.path, name)
        return 0

    def entry(self, Py_ssize_t i):
        """Parse record ``i``'s BundleEntryProto.

        Returns
        -------
        tuple
            ``(dtype_code, shape, shard_id, offset, size, masked_crc or None,
            num_slices, unknown_rank)``.
        """
        cdef tfs_entry e
        cdef int64_t dims[TFS_MAX_RANK]
        self._index(i)
        self._parse(i, &e, dims)
        shape = tuple([dims[k] for k in range(e.rank)])
        return (e.dtype, shape, e.shard_id, e.offset, e.size,
                e.crc32c if e.has_crc else None, e.num_slices, bool(e.unknown_rank))

    def slices(self, Py_ssize_t i):
        """Stored slices of a partitioned tensor's entry.

        Returns
        -------
        list of tuple
            One tuple per slice of ``(start, length)`` pairs, one per
            dimension; ``length == -1`` means the whole dimension.
        """
        cdef tfs_entry e
        cdef int64_t dims[TFS_MAX_RANK]
        cdef int64_t starts[TFS_MAX_RANK]
        cdef int64_t lengths[TFS_MAX_RANK]
        cdef int32_t rank
        cdef uint32_t k
        cdef Record *r
        self._index(i)
        self._parse(i, &e, dims)
        r = &self.recs[i]
        out = []
        for k in range(e.num_slices):
            st = tfs_parse_entry_slice(self.vals + r.val_off, r.val_len, k, &rank, starts, lengths)
            if st < 0:
                name = _name(self.keys + r.key_off, r.key_len)
                _check(st, f"{self.path}: slice {k} of tensor {name!r}", self.path, name)
            out.append(tuple([(starts[d], lengths[d]) for d in range(rank)]))
        return out

    def list_entries(self):
        """Every listed tensor's parsed entry, in key order.

        Returns
        -------
        list of tuple
            ``(name, dtype_code, shape_list, shard_id, offset, size, num_slices)``.
        """
        cdef tfs_entry e
        cdef int64_t dims[TFS_MAX_RANK]
        cdef Py_ssize_t i
        cdef int32_t d
        out = []
        for i in range(self.nrecs):
            if self.recs[i].hidden:
                continue
            self._parse(i, &e, dims)
            out.append((_name(self.keys + self.recs[i].key_off, self.recs[i].key_len),
                        e.dtype, [dims[d] for d in range(e.rank)], e.shard_id, e.offset,
                        e.size, e.num_slices))
        return out


def _snappy_decompress(bytes block, str what, path, offset):
    """Decompress a raw-Snappy block, refusing sizes the input cannot hold."""
    cdef const uint8_t *p = block
    cdef uint64_t declared
    if tfs_get_varint64(&p, p + len(block), &declared) != TFS_OK or \
            declared > SNAPPY_MAX_RATIO * <uint64_t>len(block):
        raise CorruptCheckpointError(
            f"{what} at offset {offset} is a corrupted Snappy block (bad uncompressed length)",
            path=path, offset=offset)
    import cramjam
    try:
        out = bytes(cramjam.snappy.decompress_raw(block))
    except Exception as exc:   # cramjam raises its own DecompressionError
        raise CorruptCheckpointError(
            f"{what} at offset {offset} is a corrupted Snappy block ({exc})",
            path=path, offset=offset) from None
    if len(out) != declared:
        raise CorruptCheckpointError(
            f"{what} at offset {offset} decompresses to {len(out)} bytes, not the declared "
            f"{declared}", path=path, offset=offset)
    return out


def slice_key(bytes name, extents):
    """The index key of one stored slice of tensor ``name``.

    ``extents`` holds one ``(start, length)`` per dimension (length -1:
    whole dimension).
    """
    cdef int32_t rank = len(extents)
    cdef int64_t starts[TFS_MAX_RANK]
    cdef int64_t lengths[TFS_MAX_RANK]
    cdef size_t cap, n
    cdef uint8_t *out
    if rank < 1 or rank > TFS_MAX_RANK:
        raise ValueError(f"a slice needs 1 to {TFS_MAX_RANK} extents, got {rank}")
    for d in range(rank):
        starts[d], lengths[d] = extents[d]
    cap = tfs_slice_key_bound(len(name), rank)
    out = <uint8_t *>malloc(cap)
    if out == NULL:
        raise MemoryError()
    try:
        st = tfs_slice_key_encode(name, len(name), rank, starts, lengths, out, cap, &n)
        if st < 0:
            raise ValueError(f"cannot encode slice key ({_STATUS_TEXT.get(st)})")
        return PyBytes_FromStringAndSize(<char *>out, n)
    finally:
        free(out)


def decode_slice_key(bytes key):
    """Inverse of :func:`slice_key`: ``(name_bytes, extents)``.

    Raises
    ------
    ValueError
        If ``key`` is not a slice key.
    """
    cdef int64_t starts[TFS_MAX_RANK]
    cdef int64_t lengths[TFS_MAX_RANK]
    cdef int32_t rank
    cdef size_t name_len
    name = bytearray(len(key))
    cdef uint8_t[::1] nb = name
    cdef uint8_t *np_ = &nb[0] if len(key) else NULL
    st = tfs_slice_key_decode(key, len(key), np_, len(key), &name_len, &rank, starts, lengths)
    if st < 0:
        raise ValueError(f"not a slice key: {key!r}")
    return bytes(name[:name_len]), [(starts[d], -1 if lengths[d] < 0 else lengths[d])
                                    for d in range(rank)]


def decode_strings(data, Py_ssize_t count, bint big_endian, masked_crc, bint verify,
                   path=None, key=None, Py_ssize_t offset=0):
    """Decode a DT_STRING tensor's bytes into a flat object array of bytes.

    Parameters
    ----------
    data : bytes-like
        Exactly the tensor's ``size`` bytes.
    count : int
        Number of elements (from the shape).
    big_endian : bool
        The bundle's byte order (for the checksum images).
    masked_crc : int or None
        The entry's stored CRC.
    verify : bool
        Check the length checksum and the entry CRC.
    """
    cdef const uint8_t[::1] buf = memoryview(data).cast("B")
    cdef size_t size = buf.shape[0]
    cdef size_t images_len = 0, header_len = 0, pos
    cdef uint32_t stored, computed
    cdef Py_ssize_t i
    cdef const uint8_t *base
    if count < 0 or <size_t>count > size:
        raise CorruptCheckpointError(
            f"{path}: string tensor {key!r} at offset {offset} has {count} elements but only "
            f"{size} bytes (each element needs at least one length byte)",
            path=path, key=key, offset=offset)
    lengths = np.empty(count, dtype=np.uint64)
    images = np.empty(8 * count, dtype=np.uint8)
    cdef uint64_t[::1] lv = lengths
    cdef uint8_t[::1] iv = images
    base = &buf[0] if size else NULL
    if size == 0:
        raise CorruptCheckpointError(
            f"{path}: string tensor {key!r} at offset {offset} has size 0; it needs at least "
            f"the 4 checksum bytes", path=path, key=key, offset=offset)
    st = tfs_string_scan(base, size, count, big_endian, &lv[0] if count else NULL,
                         &iv[0] if count else NULL, &images_len, &header_len)
    _check(st, f"{path}: string tensor {key!r} at offset {offset}", path, key, offset)
    if verify:
        stored = tfs_load_be32(base + header_len) if big_endian else tfs_load_le32(base + header_len)
        computed = _crc32c.crc32c(images[:images_len])
        if tfs_crc_unmask(stored) != computed:
            raise ChecksumMismatchError(
                f"{path}: string tensor {key!r} at offset {offset}: the length checksum does not "
                f"match (stored {tfs_crc_unmask(stored)}, computed {computed})",
                path=path, key=key, offset=offset)
        view = memoryview(buf)
        computed = _crc32c.crc32c(view[header_len:header_len + 4], computed)
        computed = _crc32c.crc32c(view[header_len + 4:], computed)
        _compare_crc(masked_crc, computed, path, key, offset, size)
    out = np.empty(count, dtype=object)
    pos = header_len + 4
    for i in range(count):
        out[i] = PyBytes_FromStringAndSize(<const char *>base + pos, lv[i])
        pos += lv[i]
    return out


def decode_variants(data, Py_ssize_t count, masked_crc, bint verify,
                    path=None, key=None, Py_ssize_t offset=0):
    """Split a DT_VARIANT tensor into its serialized VariantTensorDataProto elements.

    Returns a flat object array of bytes; each element's checksum is verified
    when ``verify`` is true.
    """
    cdef const uint8_t[::1] buf = memoryview(data).cast("B")
    cdef size_t size = buf.shape[0]
    cdef const uint8_t *base = &buf[0] if size else NULL
    cdef const uint8_t *p = base
    cdef const uint8_t *end = base + size
    cdef uint64_t n
    cdef uint32_t crc = 0, stored
    cdef Py_ssize_t i
    if count < 0 or <size_t>count > size // 5 + 1:
        raise CorruptCheckpointError(
            f"{path}: variant tensor {key!r} at offset {offset} has {count} elements but only "
            f"{size} bytes", path=path, key=key, offset=offset)
    out = np.empty(count, dtype=object)
    for i in range(count):
        at = <size_t>(p - base)
        if tfs_get_varint64(&p, end, &n) != TFS_OK or n > <uint64_t>(end - p) or \
                end - p - <Py_ssize_t>n < 4:
            raise CorruptCheckpointError(
                f"{path}: variant tensor {key!r}: element {i} runs past the tensor's {size} bytes",
                path=path, key=key, offset=offset + at)
        payload = PyBytes_FromStringAndSize(<const char *>p, n)
        p += n
        if verify:
            crc = _crc32c.crc32c(int(n).to_bytes(8, "little"), crc)
            crc = _crc32c.crc32c(payload, crc)
            stored = tfs_load_le32(p)
            if tfs_crc_unmask(stored) != crc:
                raise ChecksumMismatchError(
                    f"{path}: variant tensor {key!r}: the checksum after element {i} does not "
                    f"match", path=path, key=key, offset=offset + at)
            crc = _crc32c.crc32c(PyBytes_FromStringAndSize(<const char *>p, 4), crc)
        p += 4
        out[i] = payload
    if p != end:
        raise CorruptCheckpointError(
            f"{path}: variant tensor {key!r} at offset {offset}: {end - p} bytes left over after "
            f"{count} elements", path=path, key=key, offset=offset)
    if verify:
        _compare_crc(masked_crc, crc, path, key, offset, size)
    return out


def _compare_crc(masked_crc, uint32_t computed, path, key, offset, size):
    if masked_crc is None or tfs_crc_unmask(masked_crc) != computed:
        stored = "none" if masked_crc is None else str(tfs_crc_unmask(masked_crc))
        raise ChecksumMismatchError(
            f"{path}: tensor {key!r} ({size} bytes at offset {offset}) fails its checksum: "
            f"stored CRC-32C {stored}, computed {computed}", path=path, key=key, offset=offset)


def check_crc(data, masked_crc, path=None, key=None, Py_ssize_t offset=0):
    """Verify the CRC-32C of a fixed-size tensor's bytes against its entry."""
    _compare_crc(masked_crc, _crc32c.crc32c(data), path, key, offset, len(data))
