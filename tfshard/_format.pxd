# cython: language_level=3
"""Declarations of the C format core (csrc/tfs_format.h), shared by the Cython modules,
and the one function that turns its status codes into exceptions."""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

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
    uint32_t tfs_crc32c_extend(uint32_t crc, const uint8_t *p, size_t n)
    uint32_t tfs_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
    uint32_t tfs_crc_mask(uint32_t crc)
    uint32_t tfs_crc_unmask(uint32_t masked)
    int tfs_get_varint32(const uint8_t **p, const uint8_t *end, uint32_t *out)
    int tfs_get_varint64(const uint8_t **p, const uint8_t *end, uint64_t *out)
    int tfs_decode_handle(const uint8_t *p, size_t n, tfs_handle *h)
    int tfs_decode_footer(const uint8_t *footer, tfs_handle *metaindex, tfs_handle *index)
    int tfs_block_iter_init(tfs_block_iter *it, const uint8_t *block, size_t size)
    int tfs_block_iter_next(tfs_block_iter *it, uint32_t *shared, const uint8_t **delta,
                            uint32_t *delta_len, const uint8_t **value, uint32_t *value_len)
    int tfs_parse_header(const uint8_t *p, size_t n, tfs_header *h)
    int tfs_parse_entry(const uint8_t *p, size_t n, tfs_entry *e, int64_t *dims)
    int tfs_next_entry_slice(const uint8_t **p, const uint8_t *end, int32_t *rank,
                             int64_t *starts, int64_t *lengths)
    size_t tfs_slice_key_bound(size_t name_len, int32_t rank)
    int tfs_slice_key_encode(const uint8_t *name, size_t name_len, int32_t rank,
                             const int64_t *starts, const int64_t *lengths,
                             uint8_t *out, size_t cap, size_t *out_len)
    int tfs_slice_key_decode(const uint8_t *key, size_t n, uint8_t *name_out, size_t name_cap,
                             size_t *name_len, int32_t *rank, int64_t *starts, int64_t *lengths)
    # The protobuf field reader (_graph and _metagraph walk messages with it).
    enum:
        TFS_PB_VARINT
        TFS_PB_FIXED64
        TFS_PB_LEN
        TFS_PB_FIXED32

    ctypedef struct tfs_pb_field:
        uint32_t field
        uint32_t wire
        uint64_t varint
        const uint8_t *data
        size_t len

    int tfs_pb_next(const uint8_t **p, const uint8_t *end, tfs_pb_field *f)

    int tfs_string_scan(const uint8_t *p, size_t size, uint64_t count, int big_endian,
                        uint64_t *lengths, uint8_t *images, size_t *images_len,
                        size_t *header_len)


cdef inline str status_text(int status):
    if status == TFS_ERR_TRUNCATED:
        return "runs past the end of the data"
    if status == TFS_ERR_VARINT:
        return "has a malformed varint"
    if status == TFS_ERR_BAD_MAGIC:
        return "is not an SSTable (bad magic number in the footer)"
    if status == TFS_ERR_BAD_BLOCK:
        return "has an inconsistent restart array"
    if status == TFS_ERR_BAD_ENTRY:
        return "has a malformed entry"
    if status == TFS_ERR_PROTO:
        return "is not a valid protobuf message"
    if status == TFS_ERR_SHAPE:
        return ("has an invalid shape (rank above 254, a negative dimension, or more than "
                "2**63 elements)")
    if status == TFS_ERR_RANGE:
        return "holds a value outside the range the format allows"
    if status == TFS_ERR_SIZE:
        return "has sizes that do not add up to the recorded tensor size"
    if status == TFS_ERR_BUFFER:
        return "needs a larger buffer"
    return f"failed (status {status})"


cdef inline int check(int status, str what, path, key, offset) except -1:
    """Raise CorruptCheckpointError("<what> <problem>") for a negative status."""
    if status >= 0:
        return 0
    from tfshard.errors import CorruptCheckpointError
    raise CorruptCheckpointError(f"{what} {status_text(status)}", path=path, key=key,
                                 offset=offset)
