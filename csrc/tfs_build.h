/*
 * tfs_build.h - encoding the TensorFlow V2 checkpoint format (the writer side).
 *
 * Same rules as tfs_format.h: plain C99, status codes, no allocation.  Each
 * encoder has a *_bound() function; callers size their buffer with it, and an
 * encoder given less returns TFS_ERR_BUFFER without writing past `cap`.
 */
#ifndef TFS_BUILD_H
#define TFS_BUILD_H

#include "tfs_format.h"

/* Bytes TF's table writer uses: 256 KiB data blocks, a restart every 16 keys. */
#define TFS_BLOCK_SIZE 262144
#define TFS_RESTART_INTERVAL 16

/* Append v as a varint to out (at most 10 bytes); returns the bytes written. */
size_t tfs_put_varint64(uint8_t *out, uint64_t v);

/* BundleEntryProto of a stored tensor (fields 1-6, TF's field order and omissions). */
size_t tfs_entry_bound(int32_t rank);
int tfs_encode_entry(int64_t dtype, int32_t rank, const int64_t *dims, int64_t shard_id,
                     int64_t offset, int64_t size, int has_crc, uint32_t crc,
                     uint8_t *out, size_t cap, size_t *out_len);

/* BundleHeaderProto; zero fields are omitted, the version message always written. */
#define TFS_HEADER_BOUND 48
int tfs_encode_header(int64_t num_shards, int64_t endianness, int64_t producer,
                      int64_t min_consumer, uint8_t *out, size_t cap, size_t *out_len);

/* One `slices` field (7) holding a TensorSliceProto; length -1 = whole dimension. */
size_t tfs_slice_field_bound(int32_t rank);
int tfs_encode_slice_field(int32_t rank, const int64_t *starts, const int64_t *lengths,
                           uint8_t *out, size_t cap, size_t *out_len);

/*
 * A whole SSTable exactly as TF's table builder writes it (FORMAT.md 3.7),
 * from n entries whose keys are strictly increasing (else TFS_ERR_RANGE).
 * scratch must hold 2 * (n + 1) values.
 */
size_t tfs_table_bound(size_t n, size_t key_bytes, size_t value_bytes);
int tfs_build_table(size_t n, const uint8_t *const *keys, const size_t *key_lens,
                    const uint8_t *const *values, const size_t *value_lens,
                    uint32_t *scratch, uint8_t *out, size_t cap, size_t *out_len);

#endif
