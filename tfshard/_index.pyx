# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The checkpoint index: SSTable blocks, bundle entries and slice keys (Cython over csrc/).

Turns bytes into plain values and nothing else: it never opens a file.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8


from ._format cimport *
from .errors import ChecksumMismatchError, CorruptCheckpointError

# A Snappy block cannot expand by more than this factor (a 2-byte copy
# element yields at most 64 bytes).
cdef uint64_t SNAPPY_MAX_RATIO = 32

cdef int _iter_init(tfs_block_iter *it, block) except? -100:
    """Start iterating a block held by any bytes-like object (kept alive by the caller)."""
    cdef const uint8_t[::1] b = block
    if b.shape[0] == 0:
        return TFS_ERR_BAD_BLOCK
    return tfs_block_iter_init(it, &b[0], b.shape[0])


cdef inline str _name(const uint8_t *p, size_t n):
    return PyUnicode_DecodeUTF8(<const char *>p, n, "surrogateescape")


# What IndexTable._listing builds per listed tensor.
cdef enum:
    _NAMES
    _SHAPES
    _ENTRIES


cdef inline int _cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen):
    cdef size_t n = alen if alen < blen else blen
    cdef int c = memcmp(a, b, n) if n else 0
    if c:
        return c
    return (alen > blen) - (alen < blen)


cdef bint is_slice_key(const uint8_t *k, size_t n) noexcept:
    cdef size_t name_len
    cdef int32_t rank
    return n > 0 and k[0] == 0 and \
        tfs_slice_key_decode(k, n, NULL, 0, &name_len, &rank, NULL, NULL) == TFS_OK


cdef class IndexTable:
    """The ``.index`` SSTable of one checkpoint, decoded on demand.

    The blocks stay as they are in the file (prefix-compressed keys), so the
    memory held is about the size of the index file; construction walks
    every entry once to validate the table (checksums, block structure,
    strictly increasing keys, restart points) and to count the tensors.
    Entries are addressed by *handles* (block number << 32 | entry offset).
    """

    def __cinit__(self):
        self.blocks = NULL
        self.last_keys = NULL

    def __dealloc__(self):
        free(self.blocks)
        free(self.last_keys)

    def __init__(self, data, path=None):
        """Decode and validate an index file.

        Parameters
        ----------
        data : bytes
            The whole ``.index`` file (kept, not copied).
        path : str, optional
            File name used in error messages.
        """
        cdef const uint8_t[::1] buf = data
        cdef Py_ssize_t size = buf.shape[0]
        cdef tfs_handle meta, index, h
        cdef tfs_block_iter it
        cdef uint32_t shared, delta_len, value_len
        cdef const uint8_t *delta
        cdef const uint8_t *value
        cdef uint64_t next_block_offset = 0
        cdef int st
        self.path = path
        self._data = data
        self._owners = []
        if size < TFS_FOOTER_SIZE:
            raise CorruptCheckpointError(
                f"{path}: file is too short to be an SSTable ({size} bytes; the footer alone "
                f"is {TFS_FOOTER_SIZE})", path=path)
        check(tfs_decode_footer(&buf[size - TFS_FOOTER_SIZE], &meta, &index),
               f"{path}: the footer", path, None, size - TFS_FOOTER_SIZE)
        index_block = self._block(buf, index, "the index block")
        check(_iter_init(&it, index_block), f"{path}: the index block", path, None, index.offset)
        handles = []
        while True:
            st = tfs_block_iter_next(&it, &shared, &delta, &delta_len, &value, &value_len)
            if st == TFS_END:
                break
            if st == TFS_OK:
                st = tfs_decode_handle(value, value_len, &h)
            if st < 0:
                check(st, f"{path}: the index block (or a block handle in it)", path, None,
                       index.offset)
            # Data blocks are contiguous and in order; refusing anything else
            # bounds the work a hostile index can ask for by the file size.
            if h.offset < next_block_offset:
                raise CorruptCheckpointError(
                    f"{path}: data block at offset {h.offset} overlaps or precedes the previous "
                    f"block (which ends at {next_block_offset})", path=path, offset=h.offset)
            next_block_offset = h.offset + h.size + TFS_BLOCK_TRAILER_SIZE
            handles.append((h.offset, h.size))
        self.blocks = <Block *>malloc(max(len(handles), 1) * sizeof(Block))
        if self.blocks == NULL:
            raise MemoryError()
        for offset, bsize in handles:
            h.offset, h.size = offset, bsize
            self._add_block(buf, h)
        self._validate()

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
        actual = tfs_crc32c_extend(0, &buf[h.offset], h.size + 1)
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

    cdef int _add_block(self, const uint8_t[::1] buf, tfs_handle h) except -1:
        cdef tfs_block_iter it
        cdef const uint8_t[::1] contents
        cdef Block *b = &self.blocks[self.nblocks]
        block = self._block(buf, h, f"the data block at offset {h.offset}")
        contents = block
        if contents.shape[0] >= (<size_t>1 << 32):
            raise CorruptCheckpointError(
                f"{self.path}: the data block at offset {h.offset} is 4 GiB or larger",
                path=self.path, offset=h.offset)
        check(_iter_init(&it, block), f"{self.path}: the data block at offset {h.offset}",
               self.path, None, h.offset)
        self._owners.append(block)
        b.data = &contents[0]
        b.entries_end = it.entries_end
        b.num_restarts = (contents.shape[0] - 4 - (it.entries_end - b.data)) // 4
        self.nblocks += 1
        return 0

    cdef int _grow_key(self, Cursor *c, size_t need) except -1:
        cdef uint8_t *p
        cdef size_t cap
        if need <= c.key_cap and c.key != NULL:
            return 0
        cap = need if need > 2 * c.key_cap else 2 * c.key_cap
        p = <uint8_t *>realloc(c.key, cap if cap > 64 else 64)
        if p == NULL:
            raise MemoryError()
        c.key, c.key_cap = p, cap if cap > 64 else 64
        return 0

    cdef int _start(self, Cursor *c, Py_ssize_t blk) except -1:
        """Position ``c`` at the start of block ``blk`` (c.key must be valid or NULL)."""
        c.blk = blk
        c.key_len = 0
        if blk < self.nblocks:
            tfs_block_iter_init(&c.it, self.blocks[blk].data,
                                self.blocks[blk].entries_end - self.blocks[blk].data +
                                4 * self.blocks[blk].num_restarts + 4)
        return 0

    cdef int _next_in_block(self, Cursor *c) except -1:
        """Advance within the current block: 1, or 0 at its end."""
        cdef uint32_t delta_len
        cdef const uint8_t *delta
        cdef const uint8_t *before = c.it.pos
        cdef int st
        if c.blk >= self.nblocks:
            return 0
        st = tfs_block_iter_next(&c.it, &c.shared, &delta, &delta_len, &c.value, &c.value_len)
        if st == TFS_END:
            return 0
        if st < 0:
            check(st, f"{self.path}: data block {c.blk}", self.path, None, None)
        if c.shared > c.key_len:
            raise CorruptCheckpointError(
                f"{self.path}: an entry in data block {c.blk} shares {c.shared} key bytes with "
                f"a previous key of {c.key_len} bytes", path=self.path)
        self._grow_key(c, <size_t>c.shared + delta_len)
        memcpy(c.key + c.shared, delta, delta_len)
        c.key_len = <size_t>c.shared + delta_len
        c.entry_off = before - self.blocks[c.blk].data
        return 1

    cdef int _next(self, Cursor *c) except -1:
        """Advance to the next entry of the table: 1, or 0 after the last one."""
        while c.blk < self.nblocks:
            if self._next_in_block(c):
                return 1
            self._start(c, c.blk + 1)
        return 0

    cdef int _validate(self) except -1:
        """One pass over all entries: order, restart points, header, counts."""
        cdef Cursor c
        cdef uint8_t *prev = NULL
        cdef uint8_t *p
        cdef size_t prev_len = 0, prev_cap = 0
        cdef Py_ssize_t blk
        cdef uint32_t next_restart
        cdef Block *b
        cdef bint first = True, any_entry
        c.key = NULL
        c.key_cap = 0
        try:
            last_keys = bytearray()
            try:
                for blk in range(self.nblocks):
                    b = &self.blocks[blk]
                    self._start(&c, blk)
                    next_restart = 0
                    any_entry = False
                    while self._next_in_block(&c):
                        any_entry = True
                        # Restart points must mark, in order, entries that share no
                        # key bytes: lookups binary-search them.
                        if c.entry_off == 0 and (b.num_restarts == 0 or
                                                 tfs_load_le32(b.entries_end) != 0):
                            raise CorruptCheckpointError(
                                f"{self.path}: data block {blk} does not start with a restart "
                                f"point (restart[0] must be 0)", path=self.path)
                        if next_restart < b.num_restarts and \
                                tfs_load_le32(b.entries_end + 4 * next_restart) == c.entry_off:
                            if c.shared != 0:
                                raise CorruptCheckpointError(
                                    f"{self.path}: data block {blk} has a restart point at an entry "
                                    f"that shares key bytes", path=self.path)
                            next_restart += 1
                        if first:
                            if c.key_len != 0:
                                raise CorruptCheckpointError(
                                    f"{self.path}: the first index key must be the empty bundle-"
                                    f"header key, found {bytes(c.key[:c.key_len])!r}",
                                    path=self.path)
                            self.header_value = PyBytes_FromStringAndSize(<const char *>c.value,
                                                                          c.value_len)
                            first = False
                        else:
                            if _cmp(c.key, c.key_len, prev, prev_len) <= 0:
                                raise CorruptCheckpointError(
                                    f"{self.path}: index keys are not in strictly increasing order "
                                    f"at key {bytes(c.key[:c.key_len])!r}", path=self.path)
                            self.count += 1
                            if not is_slice_key(c.key, c.key_len):
                                self.visible_count += 1
                        if c.key_len > prev_cap or prev == NULL:
                            prev_cap = c.key_len * 2 if c.key_len > 32 else 64
                            p = <uint8_t *>realloc(prev, prev_cap)
                            if p == NULL:
                                raise MemoryError()
                            prev = p
                        memcpy(prev, c.key, c.key_len)
                        prev_len = c.key_len
                    if any_entry and next_restart != b.num_restarts:
                        raise CorruptCheckpointError(
                            f"{self.path}: data block {blk} has {b.num_restarts} restart points but "
                            f"only {next_restart} of them mark entries in order", path=self.path)
                    # An empty block keeps the previous last key, so block search stays sorted.
                    b.last_key_off = len(last_keys)
                    b.last_key_len = prev_len
                    last_keys += PyBytes_FromStringAndSize(<const char *>prev, prev_len)
            finally:
                free(prev)
            if self.header_value is None:
                raise CorruptCheckpointError(
                    f"{self.path}: the index holds no entries (not even the bundle header)",
                    path=self.path)
            self.last_keys = <uint8_t *>malloc(len(last_keys) if len(last_keys) else 1)
            if self.last_keys == NULL:
                raise MemoryError()
            if len(last_keys):
                lk = bytes(last_keys)
                memcpy(self.last_keys, <const char *>lk, len(lk))
            return 0
        finally:
            free(c.key)

    # ---- lookups ------------------------------------------------------

    def __len__(self):
        return self.count

    cdef int _seek(self, const uint8_t *k, size_t klen, Cursor *c) except -1:
        """Position ``c`` (key valid or NULL; the caller frees it) on the entry of key
        ``k``: 1, or 0 if there is none."""
        cdef Py_ssize_t lo = 0, hi = self.nblocks, mid, blk
        cdef uint32_t rlo, rhi, rmid
        cdef Block *b
        cdef const uint8_t *p
        cdef uint32_t shared, nonshared, vlen
        cdef int cmp
        # The first block whose last key is >= k.
        while lo < hi:
            mid = (lo + hi) // 2
            b = &self.blocks[mid]
            if _cmp(self.last_keys + b.last_key_off, b.last_key_len, k, klen) < 0:
                lo = mid + 1
            else:
                hi = mid
        if lo == self.nblocks:
            return 0
        blk = lo
        b = &self.blocks[blk]
        # The last restart point whose key is <= k (restart keys are stored whole).
        rlo, rhi = 0, b.num_restarts - 1 if b.num_restarts else 0
        while rlo < rhi:
            rmid = (rlo + rhi + 1) // 2
            p = b.data + tfs_load_le32(b.entries_end + 4 * rmid)
            tfs_get_varint32(&p, b.entries_end, &shared)
            tfs_get_varint32(&p, b.entries_end, &nonshared)
            tfs_get_varint32(&p, b.entries_end, &vlen)
            if _cmp(p, nonshared, k, klen) <= 0:
                rlo = rmid
            else:
                rhi = rmid - 1
        self._start(c, blk)
        if b.num_restarts:
            c.it.pos = b.data + tfs_load_le32(b.entries_end + 4 * rlo)
        while self._next_in_block(c):
            cmp = _cmp(c.key, c.key_len, k, klen)
            if cmp == 0:
                return 1
            if cmp > 0:
                return 0
        return 0

    cdef Py_ssize_t _find(self, const uint8_t *k, size_t klen) except -2:
        """Handle of key ``k``, or -1."""
        cdef Cursor c
        c.key = NULL
        c.key_cap = 0
        try:
            if self._seek(k, klen, &c):
                return (c.blk << 32) | c.entry_off
            return -1
        finally:
            free(c.key)

    def find(self, bytes key):
        """Handle of the entry stored under ``key`` (any key), or -1."""
        return self._find(key, len(key))

    def find_tensor(self, bytes name):
        """Handle of listed tensor ``name`` (per-slice keys excluded), or -1."""
        if is_slice_key(name, len(name)):
            return -1
        return self._find(name, len(name))

    cdef int _at(self, Py_ssize_t handle, Cursor *c) except -1:
        """Position a cursor on the entry at ``handle`` (key rebuilt from its restart)."""
        cdef Py_ssize_t blk = handle >> 32
        cdef size_t off = handle & 0xffffffff
        cdef Block *b
        cdef uint32_t lo = 0, hi, mid
        if handle < 0 or blk >= self.nblocks:
            raise IndexError(handle)
        b = &self.blocks[blk]
        # Last restart at or before the entry, then walk forward to it.
        hi = b.num_restarts
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if tfs_load_le32(b.entries_end + 4 * mid) <= off:
                lo = mid
            else:
                hi = mid
        self._start(c, blk)
        if b.num_restarts:
            c.it.pos = b.data + tfs_load_le32(b.entries_end + 4 * lo)
        while self._next_in_block(c):
            if c.entry_off == off:
                return 0
            if c.entry_off > off:
                break
        raise IndexError(handle)

    def key(self, Py_ssize_t handle):
        """Raw key bytes of the entry at ``handle``."""
        cdef Cursor c
        c.key = NULL
        c.key_cap = 0
        try:
            self._at(handle, &c)
            return PyBytes_FromStringAndSize(<char *>c.key, c.key_len)
        finally:
            free(c.key)

    def value(self, Py_ssize_t handle):
        """Value bytes of the entry at ``handle``: a read-only memoryview into the
        table's block (no copy), valid while this table lives."""
        cdef Cursor c
        cdef size_t off
        c.key = NULL
        c.key_cap = 0
        try:
            self._at(handle, &c)
            off = c.value - self.blocks[c.blk].data
            return memoryview(self._owners[c.blk])[off:off + c.value_len]
        finally:
            free(c.key)

    def handles(self):
        """Handles of all tensor entries (slice entries included), in key order."""
        cdef Cursor c
        c.key = NULL
        c.key_cap = 0
        try:
            out = []
            self._start(&c, 0)
            self._next(&c)  # the header
            while self._next(&c):
                out.append((c.blk << 32) | c.entry_off)
            return out
        finally:
            free(c.key)

    def visible_names(self):
        """Names of all listed tensors, in key order."""
        return self._listing(_NAMES)

    def header(self):
        """The BundleHeaderProto as a dict."""
        cdef tfs_header h
        cdef const uint8_t *p = self.header_value
        check(tfs_parse_header(p, len(self.header_value), &h),
               f"{self.path}: the bundle header", self.path, "", None)
        return {"num_shards": h.num_shards, "endianness": h.endianness,
                "producer": h.producer, "min_consumer": h.min_consumer,
                "bad_consumer_1": bool(h.bad_consumer_1)}

    cdef int _parse(self, Cursor *c, tfs_entry *e, int64_t *dims) except -1:
        cdef int st = tfs_parse_entry(c.value, c.value_len, e, dims)
        cdef int32_t d
        if st < 0:
            name = _name(c.key, c.key_len)
            if st == TFS_ERR_SHAPE:
                if e.rank > TFS_MAX_RANK:
                    found = f"rank {e.rank}"
                else:
                    shape = [dims[d] for d in range(e.rank)]
                    found = f"shape {shape}, " + (
                        "which has a negative dimension" if any(x < 0 for x in shape) else
                        "whose element count overflows int64")
                raise CorruptCheckpointError(
                    f"{self.path}: invalid tensor shape for {name!r}: {found} (expected rank at "
                    f"most {TFS_MAX_RANK}, non-negative dimensions and fewer than 2**63 "
                    f"elements)", path=self.path, key=name)
            check(st, f"{self.path}: the index entry of tensor {name!r}", self.path, name, None)
        return 0

    def entry(self, Py_ssize_t handle):
        """Parse the BundleEntryProto at ``handle``.

        Returns
        -------
        tuple
            ``(dtype_code, shape, shard_id, offset, size, masked_crc or None,
            num_slices, unknown_rank)``.
        """
        cdef Cursor c
        cdef tfs_entry e
        cdef int64_t dims[TFS_MAX_RANK]
        c.key = NULL
        c.key_cap = 0
        try:
            self._at(handle, &c)
            self._parse(&c, &e, dims)
            shape = tuple([dims[k] for k in range(e.rank)])
            return (e.dtype, shape, e.shard_id, e.offset, e.size,
                    e.crc32c if e.has_crc else None, e.num_slices, bool(e.unknown_rank))
        finally:
            free(c.key)

    def slices(self, Py_ssize_t handle):
        """Stored slices of the partitioned tensor at ``handle``.

        Returns
        -------
        list of tuple
            One tuple per slice of ``(start, length)`` pairs, one per
            dimension; ``length == -1`` means the whole dimension.
        """
        cdef Cursor c
        cdef tfs_entry e
        cdef int64_t dims[TFS_MAX_RANK]
        cdef int64_t starts[TFS_MAX_RANK]
        cdef int64_t lengths[TFS_MAX_RANK]
        cdef int32_t rank
        cdef uint32_t k
        cdef const uint8_t *pos
        c.key = NULL
        c.key_cap = 0
        try:
            self._at(handle, &c)
            self._parse(&c, &e, dims)
            out = []
            pos = c.value
            # One pass over the entry (each slice scanned once, not from the start).
            for k in range(e.num_slices):
                st = tfs_next_entry_slice(&pos, c.value + c.value_len, &rank, starts, lengths)
                if st != TFS_OK:
                    name = _name(c.key, c.key_len)
                    check(TFS_ERR_RANGE if st == TFS_END else st,
                          f"{self.path}: slice {k} of tensor {name!r}", self.path, name, None)
                out.append(tuple([(starts[d], lengths[d]) for d in range(rank)]))
            return out
        finally:
            free(c.key)

    def list_entries(self):
        """Every listed tensor's parsed entry, in key order.

        Returns
        -------
        list of tuple
            ``(name, dtype_code, shape, shard_id, offset, size, num_slices)``.
        """
        return self._listing(_ENTRIES)

    def shapes(self):
        """``[(name, [dims...]), ...]`` for every listed tensor, in key order
        (the fast path of ``list_variables``)."""
        return self._listing(_SHAPES)

    cdef list _listing(self, int what):
        """One walk over the listed tensors (per-slice keys skipped)."""
        cdef Cursor c
        cdef tfs_entry e
        cdef int64_t dims[TFS_MAX_RANK]
        cdef int32_t d
        c.key = NULL
        c.key_cap = 0
        try:
            out = []
            self._start(&c, 0)
            self._next(&c)  # the header
            while self._next(&c):
                if is_slice_key(c.key, c.key_len):
                    continue
                if what == _NAMES:
                    out.append(_name(c.key, c.key_len))
                    continue
                self._parse(&c, &e, dims)
                if what == _ENTRIES:
                    out.append((_name(c.key, c.key_len), e.dtype,
                                tuple([dims[d] for d in range(e.rank)]), e.shard_id, e.offset,
                                e.size, e.num_slices))
                else:
                    out.append((_name(c.key, c.key_len), [dims[d] for d in range(e.rank)]))
            return out
        finally:
            free(c.key)


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
    whole dimension); none for a scalar (V1 checkpoints store scalars
    under such a key).
    """
    cdef int32_t rank = len(extents)
    cdef int64_t starts[TFS_MAX_RANK]
    cdef int64_t lengths[TFS_MAX_RANK]
    cdef size_t cap, n
    cdef uint8_t *out
    if rank > TFS_MAX_RANK:
        raise ValueError(f"a slice has at most {TFS_MAX_RANK} extents, got {rank}")
    for d in range(rank):
        starts[d], lengths[d] = extents[d]
    cap = tfs_slice_key_bound(len(name), rank)
    out = <uint8_t *>malloc(cap)
    if out == NULL:
        raise MemoryError()
    try:
        st = tfs_slice_key_encode(name, len(name), rank, starts, lengths, out, cap, &n)
        if st < 0:
            raise ValueError(f"cannot encode slice key ({status_text(st)})")
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


