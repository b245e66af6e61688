/*
 * tfs_v1.h - parsing of legacy V1 ("TensorSlice") checkpoint values.
 *
 * A V1 checkpoint file is one SSTable (read with tfs_format.h).  The value under
 * the empty key is a serialized SavedTensorSlices holding only `meta` (one
 * SavedSliceMeta per tensor: name, shape, dtype, stored slices; plus a
 * VersionDef); every other value is a SavedTensorSlices holding only `data`
 * (a SavedSlice: name, slice, and a TensorProto whose typed repeated field holds
 * the slice's values).
 *
 * Plain C99, no Python, no allocation: callers own every buffer, and every
 * length read from the input is checked against the bytes remaining.
 */
#ifndef TFS_V1_H
#define TFS_V1_H

#include <stddef.h>
#include <stdint.h>

#include "tfs_format.h"

/* The meta record (value of the empty key). */
typedef struct {
    const uint8_t *meta;       /* SavedTensorSliceMeta payload */
    size_t meta_len;
    tfs_header versions;       /* producer, min_consumer, bad_consumer_1 */
    uint32_t num_tensors;
} tfs_v1_meta;

/*
 * Locate the meta of a SavedTensorSlices value and read its versions.
 * TFS_ERR_RANGE if the value holds no meta; TFS_ERR_PROTO if it is malformed
 * or holds the meta (or its versions) more than once.
 */
int tfs_v1_parse_meta(const uint8_t *p, size_t n, tfs_v1_meta *m);

/* One SavedSliceMeta. */
typedef struct {
    const uint8_t *name;
    size_t name_len;
    int64_t dtype;             /* as stored (0 if absent) */
    int32_t rank;
    int has_shape;
    int64_t num_elements;
    uint32_t num_slices;
    const uint8_t *msg;        /* the whole SavedSliceMeta, for tfs_v1_next_tensor_slice */
    size_t msg_len;
} tfs_v1_tensor;

/*
 * Decode the next SavedSliceMeta of a meta payload; *pos starts at m->meta and
 * advances.  dims holds TFS_MAX_RANK values.  Returns TFS_END after the last.
 */
int tfs_v1_meta_next(const uint8_t **pos, const uint8_t *end, tfs_v1_tensor *t,
                     int64_t *dims);

/*
 * The next stored slice of a SavedSliceMeta, scanning from *p (start at msg) to
 * end; *p advances past it (starts/lengths: TFS_MAX_RANK).  TFS_END after the last.
 */
int tfs_v1_next_tensor_slice(const uint8_t **p, const uint8_t *end, int32_t *rank,
                             int64_t *starts, int64_t *lengths);

/* One data record. */
typedef struct {
    const uint8_t *name;
    size_t name_len;
    int has_slice;
    int32_t rank;              /* of the slice */
    const uint8_t *tensor;     /* the TensorProto payload */
    size_t tensor_len;
    int has_tensor;
} tfs_v1_slice;

/*
 * Parse a data value (SavedTensorSlices with `data`).  starts/lengths hold
 * TFS_MAX_RANK values.  TFS_ERR_RANGE if the value holds no data record.
 */
int tfs_v1_parse_data(const uint8_t *p, size_t n, tfs_v1_slice *s, int64_t *starts,
                      int64_t *lengths);

/* Bytes per decoded element of a dtype V1 can hold; 0 for strings and unsupported types. */
size_t tfs_v1_itemsize(int64_t dtype);

/* Whether tensors of this dtype can be decoded (fixed-size types above, and strings). */
int tfs_v1_supported(int64_t dtype);

/* What a TensorProto holds for a given dtype. */
typedef struct {
    uint64_t count;            /* elements in the dtype's typed field (complex: pairs) */
    const uint8_t *content;    /* tensor_content, if present */
    size_t content_len;
    int has_content;
} tfs_v1_values;

/*
 * Count the elements a TensorProto holds for `dtype` (its typed repeated field,
 * packed and unpacked occurrences together) without decoding them.
 * TFS_ERR_PROTO on a malformed message or a field with the wrong wire type;
 * TFS_ERR_SIZE if a packed fixed-width field is not a whole number of values
 * or a complex field holds an odd number of scalars; TFS_ERR_RANGE for an
 * unsupported dtype.
 */
int tfs_v1_count_values(const uint8_t *p, size_t n, int64_t dtype, tfs_v1_values *v);

/*
 * Decode exactly `count` elements of a fixed-size dtype into out (capacity
 * out_size bytes, native byte order, tfs_v1_itemsize(dtype) bytes each).  Values
 * come from the typed field or, when that is empty, from tensor_content
 * (little-endian element bytes).  Integer values are truncated to the element
 * width, as TensorFlow's reader does; half/bfloat16 keep the low 16 bits.
 * TFS_ERR_SIZE if the input holds another number of elements, or both a typed
 * field and tensor_content; TFS_ERR_BUFFER if out is too small.
 */
int tfs_v1_decode_values(const uint8_t *p, size_t n, int64_t dtype, uint64_t count,
                         void *out, size_t out_size);

/*
 * Iterate the string_val elements of a TensorProto: *pos starts at the proto
 * and advances.  Returns TFS_END after the last one.
 */
int tfs_v1_next_string(const uint8_t **pos, const uint8_t *end, const uint8_t **s,
                       size_t *len);

#endif
