# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Zero-copy views of a checkpoint's fixed-size tensors, made in C (Cython over csrc/).

The reader's paths whose cost is per tensor: one C call per ``ckpt[name]`` (lookup,
entry checks, CRC-32C, ndarray), and whole-checkpoint passes for ``load`` and
``verify_all`` that walk the index once and checksum every tensor without the GIL, in
pieces that threads share.  Anything off the common case (strings, variants, sub-byte
and partitioned tensors, byte swaps, a malformed entry, bytes past the end of a file,
a failing checksum) is handed back to the reader's general path, which raises the
precise error: this module never decides that a checkpoint is bad, it only skips work.
"""

from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort, realloc
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from cpython.unicode cimport PyUnicode_DecodeUTF8

cimport numpy as cnp

from ._format cimport *
from ._index cimport Cursor, IndexTable, is_slice_key

import numpy as np

cnp.import_array()

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL

cdef extern from "numpy/arrayobject.h":
    ctypedef struct PyArray_Descr
    PyTypeObject PyArray_Type
    # Steals the reference to descr.
    object PyArray_NewFromDescr(PyTypeObject *subtype, PyArray_Descr *descr, int nd,
                                cnp.npy_intp *dims, cnp.npy_intp *strides, void *data,
                                int flags, PyObject *obj)

cdef extern from *:
    """
    /* A dict sized for n entries up front: building a million-entry dict by
     * insertion rehashes it about twenty times.  CPython 3.13 made the call
     * internal; there the dict grows as usual. */
    #if PY_VERSION_HEX < 0x030D0000 && !defined(PYPY_VERSION)
    #define tfs_new_dict(n) _PyDict_NewPresized(n)
    #else
    #define tfs_new_dict(n) PyDict_New()
    #endif
    """
    dict tfs_new_dict(Py_ssize_t n)

cdef extern from "tfs_io.h" nogil:
    int tfs_file_size(int fd, int64_t *size)

# Tensors from this size on are checksummed in pieces of this size, so that threads can
# share one large tensor.
cdef int64_t PIECE = 4 << 20
#: Checkpoints with more data shards than this are read by the general path only (the
#: per-shard tables here are allocated up front).
MAX_SHARDS = 1 << 16


cdef inline str _name(const uint8_t *p, size_t n):
    return PyUnicode_DecodeUTF8(<const char *>p, n, "surrogateescape")


cdef int _grow(void **p, size_t elem, size_t *cap, size_t need) except -1:
    cdef size_t cap2
    cdef void *q
    if need <= cap[0]:
        return 0
    cap2 = cap[0] * 2 if cap[0] * 2 >= need else need
    if cap2 < 1024:
        cap2 = 1024
    q = realloc(p[0], cap2 * elem)
    if q == NULL:
        raise MemoryError()
    p[0] = q
    cap[0] = cap2
    return 0


cdef struct Span:
    int64_t shard
    int64_t start
    int64_t end


cdef int _span_cmp(const void *a, const void *b) noexcept nogil:
    cdef const Span *x = <const Span *>a
    cdef const Span *y = <const Span *>b
    if x.shard != y.shard:
        return -1 if x.shard < y.shard else 1
    if x.start != y.start:
        return -1 if x.start < y.start else 1
    return 0


cdef class Views:
    """Views of one open checkpoint's tensors, made without per-tensor Python work.

    ``opener(shard_id)`` returns ``(buffer, fd)`` for a data shard (the reader's map
    and its open file; the reader reports problems opening it), or None for a shard
    that is not a memory map of a local file (read by the general path only).  ``verified`` is the
    reader's set of handles whose CRC has been checked; both paths share it.
    ``get`` leaves tensors of ``parallel_min`` bytes or more that need a CRC to the
    reader, which checksums them in pieces on several threads.
    """

    cdef IndexTable table
    cdef list descrs            # numpy dtype by code, or None: not a plain view
    cdef Py_ssize_t ndescrs
    cdef int64_t num_shards
    cdef object opener
    cdef list bases             # memoryview of each shard's map once opened, else None
    cdef const uint8_t **ptrs
    cdef int64_t *mapped        # bytes in each shard's map; -1: not opened here yet
    cdef int *fds
    cdef set verified
    cdef int64_t parallel_min     # ckpt[name] leaves CRCs of this size on to the reader
    cdef bint closed

    def __cinit__(self):
        self.ptrs = NULL
        self.mapped = NULL
        self.fds = NULL

    def __dealloc__(self):
        free(self.ptrs)
        free(self.mapped)
        free(self.fds)

    def __init__(self, IndexTable table, list descrs, int64_t num_shards, opener, set verified,
                 int64_t parallel_min=INT64_MAX):
        cdef int64_t i
        if not 1 <= num_shards <= MAX_SHARDS:
            raise ValueError(f"num_shards must be between 1 and {MAX_SHARDS}")
        self.table = table
        self.descrs = descrs
        self.ndescrs = len(descrs)
        self.num_shards = num_shards
        self.opener = opener
        self.verified = verified
        self.parallel_min = parallel_min
        self.bases = [None] * num_shards
        self.ptrs = <const uint8_t **>malloc(num_shards * sizeof(uint8_t *))
        self.mapped = <int64_t *>malloc(num_shards * sizeof(int64_t))
        self.fds = <int *>malloc(num_shards * sizeof(int))
        if self.ptrs == NULL or self.mapped == NULL or self.fds == NULL:
            raise MemoryError()
        for i in range(num_shards):
            self.ptrs[i] = NULL
            self.mapped[i] = -1
            self.fds[i] = -1

    def close(self):
        """Forget the maps (arrays already made keep theirs alive)."""
        cdef int64_t i
        self.closed = True
        for i in range(self.num_shards):
            self.ptrs[i] = NULL
            self.mapped[i] = -1
            self.fds[i] = -1
        self.bases = [None] * self.num_shards
        self.opener = None

    cdef int _load(self, int64_t shard) except -1:
        """Make sure shard ``shard``'s map is known: 1, or 0 where it cannot be used."""
        cdef const uint8_t[::1] mv
        if self.mapped[shard] >= 0:
            return 1
        if self.closed:
            return 0
        source = self.opener(shard)
        if self.closed:
            return 0
        if source is None:  # not a map these paths can use: the general path reads it
            self.mapped[shard] = 0
            return 0
        buffer, fd = source
        view = memoryview(buffer)
        if view.nbytes:
            mv = view.cast("B")
            self.ptrs[shard] = &mv[0]
        self.bases[shard] = view
        self.fds[shard] = fd
        self.mapped[shard] = view.nbytes
        return 1

    cdef object _descr(self, const tfs_entry *e):
        """The dtype of a plain view of entry ``e``, or None (the general path's case)."""
        cdef Py_ssize_t itemsize
        if e.num_slices or e.dtype < 0 or e.dtype >= self.ndescrs:
            return None
        descr = self.descrs[e.dtype]
        if descr is None:
            return None
        itemsize = (<cnp.dtype>descr).itemsize
        if e.shard_id < 0 or e.shard_id >= self.num_shards or e.offset < 0 or e.size <= 0 \
                or e.num_elements <= 0 or e.num_elements > INT64_MAX // itemsize \
                or e.size != itemsize * e.num_elements:
            return None
        return descr

    cdef object _array(self, descr, const tfs_entry *e, const int64_t *dims):
        cdef cnp.npy_intp shape[TFS_MAX_RANK]
        cdef int32_t d
        for d in range(e.rank):
            shape[d] = <cnp.npy_intp>dims[d]
        Py_INCREF(descr)  # PyArray_NewFromDescr steals a reference
        arr = PyArray_NewFromDescr(&PyArray_Type, <PyArray_Descr *>descr, e.rank, shape, NULL,
                                   <void *>(self.ptrs[e.shard_id] + e.offset),
                                   cnp.NPY_ARRAY_C_CONTIGUOUS, NULL)
        cnp.set_array_base(<cnp.ndarray>arr, self.bases[e.shard_id])
        return arr

    def get(self, name, bint verify):
        """Tensor ``name`` as a read-only view of its map, its CRC checked once when
        ``verify``; None where the reader's general path must read it."""
        cdef const char *k
        cdef Py_ssize_t klen, handle
        cdef Cursor c
        cdef tfs_entry e
        cdef int64_t dims[TFS_MAX_RANK]
        cdef int64_t now
        cdef int st
        if self.closed or type(name) is not str:
            return None
        try:
            k = PyUnicode_AsUTF8AndSize(name, &klen)
        except UnicodeEncodeError:
            return None
        if klen == 0 or is_slice_key(<const uint8_t *>k, klen):
            return None
        c.key = NULL
        c.key_cap = 0
        try:
            if not self.table._seek(<const uint8_t *>k, klen, &c):
                return None
            st = tfs_parse_entry(c.value, c.value_len, &e, dims)
            handle = (c.blk << 32) | c.entry_off
        finally:
            free(c.key)
        if st != TFS_OK:
            return None
        descr = self._descr(&e)
        if descr is None or not self._load(e.shard_id):
            return None
        # The file's size now, not when it was mapped: bytes past the end of a file
        # truncated since would fault (SIGBUS) when read.
        if e.offset > self.mapped[e.shard_id] or e.size > self.mapped[e.shard_id] - e.offset \
                or tfs_file_size(self.fds[e.shard_id], &now) != 0 or e.offset + e.size > now:
            return None
        if verify and handle not in self.verified:
            if e.size >= self.parallel_min:
                return None  # the reader spreads large tensors over its threads
            if tfs_crc32c_extend(0, self.ptrs[e.shard_id] + e.offset, e.size) != \
                    tfs_crc_unmask(e.crc32c if e.has_crc else 0):
                return None
            self.verified.add(handle)
        return self._array(descr, &e, dims)

    def batch(self, bint arrays):
        """One walk over the listed tensors, for :class:`Batch`: with ``arrays``, also
        what ``finish`` needs to make each tensor's view."""
        return Batch(self, arrays)

    def any_overlap(self):
        """Whether the bytes of two tensors (slice entries included) may overlap in a
        data file: False is certain; True asks for the reader's exact check."""
        cdef Cursor c
        cdef tfs_entry e
        cdef int64_t dims[TFS_MAX_RANK]
        cdef Span *spans = NULL
        cdef size_t n = 0, cap = 0, i
        cdef int64_t *reach = NULL
        cdef bint sorted_ = True, found = False
        c.key = NULL
        c.key_cap = 0
        try:
            reach = <int64_t *>malloc(self.num_shards * sizeof(int64_t))
            if reach == NULL:
                raise MemoryError()
            for i in range(<size_t>self.num_shards):
                reach[i] = -1
            self.table._start(&c, 0)
            self.table._next(&c)  # the header
            while self.table._next(&c):
                if tfs_parse_entry(c.value, c.value_len, &e, dims) != TFS_OK:
                    return True  # the reader reports it
                if e.num_slices or e.size <= 0:
                    continue
                if e.shard_id < 0 or e.shard_id >= self.num_shards or e.offset < 0 or \
                        e.size > INT64_MAX - e.offset:
                    return True
                _grow(<void **>&spans, sizeof(Span), &cap, n + 1)
                spans[n].shard = e.shard_id
                spans[n].start = e.offset
                spans[n].end = e.offset + e.size
                # Writers lay tensors out in key order, so each shard's spans usually
                # come in increasing order and one pass suffices.
                if spans[n].start < reach[e.shard_id]:
                    sorted_ = False
                reach[e.shard_id] = spans[n].end
                n += 1
            if sorted_:
                return False
            with nogil:
                qsort(spans, n, sizeof(Span), _span_cmp)
                for i in range(1, n):
                    if spans[i].shard == spans[i - 1].shard and \
                            spans[i].start < spans[i - 1].end:
                        found = True
                        break
                    if spans[i].shard == spans[i - 1].shard and \
                            spans[i].end < spans[i - 1].end:
                        spans[i].end = spans[i - 1].end  # carry the furthest reach
            return found
        finally:
            free(c.key)
            free(spans)
            free(reach)


cdef class Batch:
    """The listed tensors of a checkpoint, walked once: those :class:`Views` can view
    are checksummed by :meth:`checksum` (any thread, without the GIL, over ranges of
    pieces from :meth:`split`) and made into views by :meth:`finish`; the others are
    listed for the reader's general path."""

    cdef Views views
    cdef bint arrays
    cdef Py_ssize_t n, cap
    cdef const uint8_t **ptr
    cdef int64_t *size
    cdef uint32_t *want          # expected CRC-32C (unmasked)
    cdef int64_t *handle
    cdef int64_t *ordinal        # position among the listed tensors
    cdef int64_t *entry_off      # into entries (the parsed entry of each, with arrays)
    cdef size_t npieces, pcap
    cdef const uint8_t **pptr
    cdef int64_t *plen
    cdef uint32_t *pcrc
    cdef tfs_entry *entries
    cdef int64_t *dims
    cdef size_t ncap, ndims, dcap
    cdef list names              # with arrays: the name of each viewable tensor
    cdef list slow               # (ordinal, name) of the tensors left to the reader
    cdef readonly int64_t nbytes

    def __cinit__(self):
        self.ptr = NULL
        self.size = NULL
        self.want = NULL
        self.handle = NULL
        self.ordinal = NULL
        self.entry_off = NULL
        self.pptr = NULL
        self.plen = NULL
        self.pcrc = NULL
        self.entries = NULL
        self.dims = NULL

    def __dealloc__(self):
        free(self.ptr)
        free(self.size)
        free(self.want)
        free(self.handle)
        free(self.ordinal)
        free(self.entry_off)
        free(self.pptr)
        free(self.plen)
        free(self.pcrc)
        free(self.entries)
        free(self.dims)

    def __init__(self, Views views, bint arrays):
        self.views = views
        self.arrays = arrays
        self.names = []
        self.slow = []
        self._walk()

    cdef int _walk(self) except -1:
        cdef IndexTable table = self.views.table
        cdef Cursor c
        cdef tfs_entry e
        cdef int64_t dims[TFS_MAX_RANK]
        cdef int64_t ordinal = -1, shard, done, step
        cdef int64_t *sizes_now = NULL
        cdef size_t cap_ptr = 0, cap_size = 0, cap_want = 0, cap_handle = 0, cap_ord = 0
        cdef size_t cap_eoff = 0, cap_pptr = 0, cap_plen = 0
        cdef size_t k, i
        cdef int st
        c.key = NULL
        c.key_cap = 0
        try:
            sizes_now = <int64_t *>malloc(self.views.num_shards * sizeof(int64_t))
            if sizes_now == NULL:
                raise MemoryError()
            for shard in range(self.views.num_shards):
                sizes_now[shard] = -2  # not asked yet
            table._start(&c, 0)
            table._next(&c)  # the header
            while table._next(&c):
                if is_slice_key(c.key, c.key_len):
                    continue
                ordinal += 1
                st = tfs_parse_entry(c.value, c.value_len, &e, dims)
                descr = self.views._descr(&e) if st == TFS_OK else None
                if descr is not None:
                    shard = e.shard_id
                    if sizes_now[shard] == -2:
                        sizes_now[shard] = -1
                        try:
                            loaded = self.views._load(shard)
                        except (OSError, ValueError):  # TFShardErrors: the reader reports them
                            loaded = 0
                        if loaded and \
                                tfs_file_size(self.views.fds[shard], &sizes_now[shard]) == 0:
                            if sizes_now[shard] > self.views.mapped[shard]:
                                sizes_now[shard] = self.views.mapped[shard]
                        else:
                            sizes_now[shard] = -1
                    if e.offset > sizes_now[shard] or e.size > sizes_now[shard] - e.offset:
                        descr = None
                if descr is None:
                    self.slow.append((ordinal, _name(c.key, c.key_len)))
                    continue
                k = self.n
                _grow(<void **>&self.ptr, sizeof(uint8_t *), &cap_ptr, k + 1)
                _grow(<void **>&self.size, sizeof(int64_t), &cap_size, k + 1)
                _grow(<void **>&self.want, sizeof(uint32_t), &cap_want, k + 1)
                _grow(<void **>&self.handle, sizeof(int64_t), &cap_handle, k + 1)
                _grow(<void **>&self.ordinal, sizeof(int64_t), &cap_ord, k + 1)
                self.ptr[k] = self.views.ptrs[e.shard_id] + e.offset
                self.size[k] = e.size
                self.want[k] = tfs_crc_unmask(e.crc32c if e.has_crc else 0)
                self.handle[k] = (c.blk << 32) | c.entry_off
                self.ordinal[k] = ordinal
                self.nbytes += e.size
                done = 0
                while done < e.size:
                    step = e.size - done if e.size - done < PIECE else PIECE
                    _grow(<void **>&self.pptr, sizeof(uint8_t *), &cap_pptr, self.npieces + 1)
                    _grow(<void **>&self.plen, sizeof(int64_t), &cap_plen, self.npieces + 1)
                    self.pptr[self.npieces] = self.ptr[k] + done
                    self.plen[self.npieces] = step
                    self.npieces += 1
                    done += step
                if self.arrays:
                    _grow(<void **>&self.entries, sizeof(tfs_entry), &self.ncap, k + 1)
                    _grow(<void **>&self.entry_off, sizeof(int64_t), &cap_eoff, k + 1)
                    _grow(<void **>&self.dims, sizeof(int64_t), &self.dcap,
                          self.ndims + e.rank + 1)
                    self.entries[k] = e
                    self.entry_off[k] = self.ndims
                    for i in range(<size_t>e.rank):
                        self.dims[self.ndims + i] = dims[i]
                    self.ndims += e.rank
                    self.names.append(_name(c.key, c.key_len))
                self.n += 1
            self.pcrc = <uint32_t *>malloc((self.npieces + 1) * sizeof(uint32_t))
            if self.pcrc == NULL:
                raise MemoryError()
            return 0
        finally:
            free(c.key)
            free(sizes_now)

    @property
    def count(self):
        """Tensors this batch checksums and views."""
        return self.n

    def split(self, int parts):
        """``[(lo, hi), ...]``: at most ``parts`` ranges of pieces with about equal bytes."""
        cdef size_t i, lo = 0
        cdef int64_t acc = 0, target
        out = []
        if parts < 1:
            parts = 1
        target = self.nbytes // parts + 1
        for i in range(self.npieces):
            acc += self.plen[i]
            if acc >= target and len(out) < parts - 1:
                out.append((lo, i + 1))
                lo = i + 1
                acc = 0
        if lo < self.npieces or not out:
            out.append((lo, self.npieces))
        return out

    def checksum(self, Py_ssize_t lo, Py_ssize_t hi):
        """CRC-32C of pieces ``lo`` to ``hi`` (without the GIL)."""
        cdef Py_ssize_t i
        if lo < 0 or hi > <Py_ssize_t>self.npieces or lo > hi:
            raise IndexError((lo, hi))
        with nogil:
            for i in range(lo, hi):
                self.pcrc[i] = tfs_crc32c_extend(0, self.pptr[i], <size_t>self.plen[i])

    def finish(self, bint verified):
        """Combine the pieces' CRCs.  Returns ``(arrays, slow)``: with ``arrays``, a dict
        of every listed tensor in key order (None for those the reader must read), else
        None; and the names the reader must read (or verify) itself, in key order: those
        left to it by the walk and, when ``verified``, those whose CRC did not match.
        (The views' verified set is left alone: a million additions would cost more
        than the checksums of a million small tensors.)"""
        cdef size_t k, p = 0
        cdef int64_t left
        cdef uint32_t crc
        cdef bint ok
        cdef list bad = []
        out = tfs_new_dict(self.n + len(self.slow)) if self.arrays else None
        slow = self.slow
        cdef Py_ssize_t si = 0, ns = len(slow)
        for k in range(self.n):
            ok = True
            if verified:
                crc = self.pcrc[p]
                left = self.size[k] - self.plen[p]
                p += 1
                while left > 0:
                    crc = tfs_crc32c_combine(crc, self.pcrc[p], <uint64_t>self.plen[p])
                    left -= self.plen[p]
                    p += 1
                ok = crc == self.want[k]
            if out is not None:
                while si < ns and slow[si][0] < self.ordinal[k]:
                    out[slow[si][1]] = None
                    si += 1
                out[self.names[k]] = self._view(k) if ok else None
            if not ok:
                bad.append((self.ordinal[k], self.names[k] if self.arrays else
                            self._key_name(self.handle[k])))
        if out is not None:
            while si < ns:
                out[slow[si][1]] = None
                si += 1
        if bad:
            slow = sorted(slow + bad)
        return out, [name for _, name in slow]

    cdef object _view(self, size_t k):
        cdef tfs_entry *e = &self.entries[k]
        return self.views._array(self.views._descr(e), e, self.dims + self.entry_off[k])

    cdef str _key_name(self, int64_t handle):
        return self.views.table.key(handle).decode("utf-8", "surrogateescape")
