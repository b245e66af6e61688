/*
 * tfs_format.h - byte-level parsing of the TensorFlow V2 checkpoint format.
 *
 * Plain C99 with no Python dependency.  Every function returns a tfs_status
 * and writes results through out-parameters.  Every length read from a file is
 * compared against the bytes remaining before it is used, and nothing here
 * allocates memory: callers own all buffers.
 */
#ifndef TFS_FORMAT_H
#define TFS_FORMAT_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TFS_OK = 0,
    TFS_END = 1,              /* iteration finished; not an error */
    TFS_ERR_TRUNCATED = -1,   /* a structure runs past the bytes available */
    TFS_ERR_VARINT = -2,      /* over-long or overflowing varint */
    TFS_ERR_BAD_MAGIC = -3,   /* SSTable footer magic is wrong */
    TFS_ERR_BAD_BLOCK = -4,   /* block restart array is inconsistent */
    TFS_ERR_BAD_ENTRY = -5,   /* block entry malformed */
    TFS_ERR_PROTO = -6,       /* protobuf wire format malformed */
    TFS_ERR_SHAPE = -7,       /* rank > 254, negative dim, element count overflow */
    TFS_ERR_RANGE = -8,       /* a value is outside the range the format allows */
    TFS_ERR_SIZE = -9,        /* encoded sizes disagree with the recorded size */
    TFS_ERR_BUFFER = -10      /* caller's output buffer is too small */
} tfs_status;

#define TFS_MAX_RANK 254
#define TFS_FOOTER_SIZE 48
#define TFS_BLOCK_TRAILER_SIZE 5
#define TFS_MASK_DELTA 0xa282ead8u

/* ---- primitive loads ---------------------------------------------------- */
uint32_t tfs_load_le32(const uint8_t *p);
uint64_t tfs_load_le64(const uint8_t *p);
uint32_t tfs_load_be32(const uint8_t *p);
/* CRC-32C of p[0..n) continued from crc (0 to start); as crc32c.crc32c(data, crc). */
uint32_t tfs_crc32c_extend(uint32_t crc, const uint8_t *p, size_t n);
/* The same, always by the portable slicing-by-8 loop (for tests and comparisons). */
uint32_t tfs_crc32c_portable(uint32_t crc, const uint8_t *p, size_t n);
/* 1 if tfs_crc32c_extend uses CRC instructions of this CPU, else 0. */
int tfs_crc32c_hardware(void);
/* CRC-32C of A followed by B, from crc_a = CRC-32C(A), crc_b = CRC-32C(B) and B's length:
 * lets pieces of one buffer be checksummed in parallel. */
uint32_t tfs_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);
uint32_t tfs_crc_mask(uint32_t crc);
uint32_t tfs_crc_unmask(uint32_t masked);

/* Varints: *p advances past the varint on success. */
int tfs_get_varint32(const uint8_t **p, const uint8_t *end, uint32_t *out);
int tfs_get_varint64(const uint8_t **p, const uint8_t *end, uint64_t *out);

/* ---- SSTable ------------------------------------------------------------ */
typedef struct {
    uint64_t offset;
    uint64_t size;
} tfs_handle;

/* Decode a block handle; extra bytes after the two varints are ignored. */
int tfs_decode_handle(const uint8_t *p, size_t n, tfs_handle *h);

/* footer must point at the last TFS_FOOTER_SIZE bytes of the file. */
int tfs_decode_footer(const uint8_t *footer, tfs_handle *metaindex, tfs_handle *index);

typedef struct {
    const uint8_t *pos;          /* next entry */
    const uint8_t *entries_end;  /* start of the restart array */
} tfs_block_iter;

/* Prepare to iterate the (uncompressed) contents of one block. */
int tfs_block_iter_init(tfs_block_iter *it, const uint8_t *block, size_t size);

/*
 * Decode the next entry.  The full key is the previous key truncated to
 * *shared bytes followed by the *delta_len bytes at *delta; the caller checks
 * *shared against the previous key's length.  Returns TFS_END after the last.
 */
int tfs_block_iter_next(tfs_block_iter *it, uint32_t *shared, const uint8_t **delta,
                        uint32_t *delta_len, const uint8_t **value, uint32_t *value_len);

/* ---- protobuf wire format ----------------------------------------------- */
typedef struct {
    uint32_t field;
    uint32_t wire;
    uint64_t varint;       /* wire 0 value, or fixed32/fixed64 value */
    const uint8_t *data;   /* wire 2 payload */
    size_t len;            /* wire 2 length */
} tfs_pb_field;

enum { TFS_PB_VARINT = 0, TFS_PB_FIXED64 = 1, TFS_PB_LEN = 2, TFS_PB_FIXED32 = 5 };

/* Decode the next field of a message; *p advances past it.  TFS_ERR_PROTO if malformed. */
int tfs_pb_next(const uint8_t **p, const uint8_t *end, tfs_pb_field *f);

/*
 * Parse a TensorShapeProto: dims holds TFS_MAX_RANK values.  TFS_ERR_SHAPE for
 * rank > TFS_MAX_RANK, a negative dimension or an element count above INT64_MAX
 * (*rank is still set, for the error message).
 */
int tfs_parse_shape(const uint8_t *p, size_t n, int32_t *rank, int64_t *dims,
                    int64_t *num_elements);

/* Parse a TensorSliceProto (whole-dimension extents: start 0, length -1). */
int tfs_parse_slice(const uint8_t *p, size_t n, int32_t *rank, int64_t *starts,
                    int64_t *lengths);

/* ---- bundle protos ------------------------------------------------------ */
typedef struct {
    int64_t num_shards;
    int64_t endianness;        /* 0 little, 1 big */
    int64_t producer;
    int64_t min_consumer;
    int bad_consumer_1;        /* 1 if version.bad_consumers lists consumer 1 */
} tfs_header;

int tfs_parse_header(const uint8_t *p, size_t n, tfs_header *h);
/* Parse a VersionDef into h's producer, min_consumer and bad_consumer_1 (the rest untouched). */
int tfs_parse_version(const uint8_t *p, size_t n, tfs_header *h);

typedef struct {
    int64_t dtype;
    int64_t shard_id;
    int64_t offset;
    int64_t size;
    uint32_t crc32c;           /* masked, as stored */
    int has_crc;
    int32_t rank;
    int unknown_rank;
    int64_t num_elements;
    uint32_t num_slices;
} tfs_entry;

/* Parse a BundleEntryProto; dims must hold TFS_MAX_RANK values. */
int tfs_parse_entry(const uint8_t *p, size_t n, tfs_entry *e, int64_t *dims);

/*
 * Parse the next TensorSliceProto of an entry, scanning from *p (start at the
 * entry's first byte) to end; *p advances past it, so all slices take one pass.
 * starts/lengths must hold TFS_MAX_RANK values; a whole-dimension extent yields
 * start 0, length -1.  TFS_END when no slice is left.
 */
int tfs_next_entry_slice(const uint8_t **p, const uint8_t *end, int32_t *rank,
                         int64_t *starts, int64_t *lengths);

/* ---- slice keys (OrderedCode) ------------------------------------------- */
/* Upper bound of the encoded size of a slice key. */
size_t tfs_slice_key_bound(size_t name_len, int32_t rank);

int tfs_slice_key_encode(const uint8_t *name, size_t name_len, int32_t rank,
                         const int64_t *starts, const int64_t *lengths,
                         uint8_t *out, size_t cap, size_t *out_len);

/*
 * Decode a slice key.  name_out (capacity name_cap, may be NULL to only
 * validate) receives the unescaped tensor name; starts/lengths hold
 * TFS_MAX_RANK values (may be NULL).
 */
int tfs_slice_key_decode(const uint8_t *key, size_t n, uint8_t *name_out, size_t name_cap,
                         size_t *name_len, int32_t *rank, int64_t *starts, int64_t *lengths);

/* ---- DT_STRING ---------------------------------------------------------- */
/*
 * Scan the lengths section of a string tensor of `count` elements stored in
 * `size` bytes.  Writes each length to lengths[] and its checksum image
 * (4 or 8 bytes, little- or big-endian) to images (capacity 8 * count).
 * On success *header_len is the size of the varint section, and the varint
 * section, the 4 checksum bytes and the string bytes exactly fill `size`.
 */
int tfs_string_scan(const uint8_t *p, size_t size, uint64_t count, int big_endian,
                    uint64_t *lengths, uint8_t *images, size_t *images_len,
                    size_t *header_len);

#endif
