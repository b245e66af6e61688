# cython: language_level=3
"""Declarations of the index table (tfshard/_index.pyx), for the modules that walk it in C
(_views)."""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

from tfshard._format cimport tfs_block_iter, tfs_entry, tfs_handle


cdef struct Block:
    const uint8_t *data         # uncompressed contents (owned by IndexTable._owners)
    const uint8_t *entries_end  # start of the restart array
    uint32_t num_restarts
    size_t last_key_off         # this block's last key, in IndexTable.last_keys
    size_t last_key_len


cdef struct Cursor:
    Py_ssize_t blk
    tfs_block_iter it
    size_t entry_off            # offset of the current entry in its block
    uint8_t *key                # current key (owned by the cursor: free with _done)
    size_t key_cap
    size_t key_len
    uint32_t shared             # key bytes the current entry shares with the previous
    const uint8_t *value
    uint32_t value_len


cdef bint is_slice_key(const uint8_t *k, size_t n) noexcept


cdef class IndexTable:
    cdef object _data            # the index file bytes
    cdef list _owners            # keeps decompressed blocks alive
    cdef Block *blocks
    cdef Py_ssize_t nblocks
    cdef uint8_t *last_keys
    cdef readonly Py_ssize_t count          # tensor entries (all keys but the header)
    cdef readonly Py_ssize_t visible_count  # entries that are not per-slice keys
    cdef readonly bytes header_value
    cdef readonly object path

    cdef object _block(self, const uint8_t[::1] buf, tfs_handle h, str what)
    cdef int _add_block(self, const uint8_t[::1] buf, tfs_handle h) except -1
    cdef int _grow_key(self, Cursor *c, size_t need) except -1
    cdef int _start(self, Cursor *c, Py_ssize_t blk) except -1
    cdef int _next_in_block(self, Cursor *c) except -1
    cdef int _next(self, Cursor *c) except -1
    cdef int _validate(self) except -1
    cdef int _seek(self, const uint8_t *k, size_t klen, Cursor *c) except -1
    cdef Py_ssize_t _find(self, const uint8_t *k, size_t klen) except -2
    cdef int _at(self, Py_ssize_t handle, Cursor *c) except -1
    cdef int _parse(self, Cursor *c, tfs_entry *e, int64_t *dims) except -1
    cdef list _listing(self, int what)
