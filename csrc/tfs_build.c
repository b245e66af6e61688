/* tfs_build.c - see tfs_build.h. */
#include "tfs_build.h"

#include <string.h>

/* 0xdb4775248b80fb57 little-endian: the LevelDB table magic number. */
static const uint8_t table_magic[8] = {0x57, 0xfb, 0x80, 0x8b, 0x24, 0x75, 0x47, 0xdb};

size_t tfs_put_varint64(uint8_t *out, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

static void put_le32(uint8_t *out, uint32_t v)
{
    out[0] = (uint8_t)v;
    out[1] = (uint8_t)(v >> 8);
    out[2] = (uint8_t)(v >> 16);
    out[3] = (uint8_t)(v >> 24);
}

/* A varint field (wire type 0), omitted when zero as proto3 does. */
static size_t put_uint_field(uint8_t *out, uint8_t tag, int64_t v)
{
    if (v == 0)
        return 0;
    out[0] = tag;
    return 1 + tfs_put_varint64(out + 1, (uint64_t)v);
}

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* ---- BundleEntryProto --------------------------------------------------- */

size_t tfs_entry_bound(int32_t rank)
{
    /* dtype, shard, offset, size: 11 each; crc 5; shape header 6; a dim 13. */
    return 4 * 11 + 5 + 6 + (size_t)(rank < 0 ? 0 : rank) * 13;
}

int tfs_encode_entry(int64_t dtype, int32_t rank, const int64_t *dims, int64_t shard_id,
                     int64_t offset, int64_t size, int has_crc, uint32_t crc,
                     uint8_t *out, size_t cap, size_t *out_len)
{
    size_t o = 0, shape_len = 0;
    int32_t i;
    if (rank < 0 || rank > TFS_MAX_RANK)
        return TFS_ERR_SHAPE;
    if (dtype <= 0 || shard_id < 0 || offset < 0 || size < 0)
        return TFS_ERR_RANGE;
    if (cap < tfs_entry_bound(rank))
        return TFS_ERR_BUFFER;
    for (i = 0; i < rank; i++) {
        if (dims[i] < 0)
            return TFS_ERR_SHAPE;
        /* Dim {size} is 2 bytes of framing plus the varint; a 0 dim is an empty Dim. */
        shape_len += 2 + (dims[i] ? 1 + varint_len((uint64_t)dims[i]) : 0);
    }
    o += put_uint_field(out + o, 0x08, dtype);
    out[o++] = 0x12; /* shape, always present */
    o += tfs_put_varint64(out + o, shape_len);
    for (i = 0; i < rank; i++) {
        out[o++] = 0x12; /* dim */
        out[o] = (uint8_t)(dims[i] ? 1 + varint_len((uint64_t)dims[i]) : 0);
        o++;
        o += put_uint_field(out + o, 0x08, dims[i]);
    }
    o += put_uint_field(out + o, 0x18, shard_id);
    o += put_uint_field(out + o, 0x20, offset);
    o += put_uint_field(out + o, 0x28, size);
    /* proto3 leaves a zero fixed32 out, and so does TF: a masked CRC of 0 (one tensor
     * in 2**32) is stored as an absent field, which readers take as 0. */
    if (has_crc && crc != 0) {
        out[o++] = 0x35;
        put_le32(out + o, crc);
        o += 4;
    }
    *out_len = o;
    return TFS_OK;
}

size_t tfs_slice_field_bound(int32_t rank)
{
    /* field tag + length varint, then per extent: tag, length, two int64 fields. */
    return 1 + 5 + (size_t)(rank < 0 ? 0 : rank) * (2 + 2 * 11);
}

int tfs_encode_slice_field(int32_t rank, const int64_t *starts, const int64_t *lengths,
                           uint8_t *out, size_t cap, size_t *out_len)
{
    size_t body = 0, o;
    int32_t i;
    if (rank < 0 || rank > TFS_MAX_RANK)
        return TFS_ERR_SHAPE;
    if (cap < tfs_slice_field_bound(rank))
        return TFS_ERR_BUFFER;
    for (i = 0; i < rank; i++) {
        if (lengths[i] < 0 && starts[i] != 0)
            return TFS_ERR_RANGE;
        if (lengths[i] >= 0 && starts[i] < 0)
            return TFS_ERR_RANGE;
        /* Whole dimension: empty Extent.  Otherwise start if non-zero, length always
         * (it sits in a oneof, so a zero length is still written). */
        body += 2;
        if (lengths[i] >= 0)
            body += (starts[i] ? 1 + varint_len((uint64_t)starts[i]) : 0) + 1 +
                    varint_len((uint64_t)lengths[i]);
    }
    o = 0;
    out[o++] = 0x3a;
    o += tfs_put_varint64(out + o, body);
    for (i = 0; i < rank; i++) {
        size_t ext = lengths[i] < 0 ? 0 :
            (starts[i] ? 1 + varint_len((uint64_t)starts[i]) : 0) + 1 +
            varint_len((uint64_t)lengths[i]);
        out[o++] = 0x0a;
        out[o++] = (uint8_t)ext;
        if (lengths[i] >= 0) {
            o += put_uint_field(out + o, 0x08, starts[i]);
            out[o++] = 0x10;
            o += tfs_put_varint64(out + o, (uint64_t)lengths[i]);
        }
    }
    *out_len = o;
    return TFS_OK;
}

/* ---- BundleHeaderProto -------------------------------------------------- */

int tfs_encode_header(int64_t num_shards, int64_t endianness, int64_t producer,
                      int64_t min_consumer, uint8_t *out, size_t cap, size_t *out_len)
{
    uint8_t version[22];
    size_t v = 0, o = 0;
    if (cap < TFS_HEADER_BOUND)
        return TFS_ERR_BUFFER;
    v += put_uint_field(version + v, 0x08, producer);
    v += put_uint_field(version + v, 0x10, min_consumer);
    o += put_uint_field(out + o, 0x08, num_shards);
    o += put_uint_field(out + o, 0x10, endianness);
    out[o++] = 0x1a; /* version, always present */
    out[o++] = (uint8_t)v;
    memcpy(out + o, version, v);
    *out_len = o + v;
    return TFS_OK;
}

/* ---- SSTable ------------------------------------------------------------ */

size_t tfs_table_bound(size_t n, size_t key_bytes, size_t value_bytes)
{
    /* Per entry: 3 varint32 + a restart slot in its data block, and in the worst
     * case a block of its own (count + trailer) with an index entry (3 varints,
     * separator no longer than the key, handle, restart slot).  Plus metaindex,
     * index-block framing and the footer. */
    return n * (15 + 4 + 4 + 5 + 15 + 20 + 4) + 2 * key_bytes + value_bytes +
           13 + 9 + TFS_FOOTER_SIZE + 64;
}

typedef struct {
    uint8_t *base;      /* start of this block in the output */
    size_t len;         /* bytes of entries so far */
    uint32_t *restarts;
    size_t nrestarts;
    size_t count;       /* entries since the last restart */
    const uint8_t *last_key;
    size_t last_len;
} block_builder;

static void block_reset(block_builder *b, uint8_t *base)
{
    b->base = base;
    b->len = 0;
    b->nrestarts = 1;
    b->restarts[0] = 0;
    b->count = 0;
    b->last_key = NULL;
    b->last_len = 0;
}

static void block_add(block_builder *b, int interval, const uint8_t *key, size_t klen,
                      const uint8_t *value, size_t vlen)
{
    size_t shared = 0;
    uint8_t *p;
    if (b->count < (size_t)interval) {
        size_t lim = klen < b->last_len ? klen : b->last_len;
        while (shared < lim && b->last_key[shared] == key[shared])
            shared++;
    } else {
        b->restarts[b->nrestarts++] = (uint32_t)b->len;
        b->count = 0;
    }
    p = b->base + b->len;
    p += tfs_put_varint64(p, shared);
    p += tfs_put_varint64(p, klen - shared);
    p += tfs_put_varint64(p, vlen);
    memcpy(p, key + shared, klen - shared);
    p += klen - shared;
    if (vlen)
        memcpy(p, value, vlen);
    p += vlen;
    b->len = (size_t)(p - b->base);
    b->last_key = key;
    b->last_len = klen;
    b->count++;
}

static size_t block_estimate(const block_builder *b)
{
    return b->len + 4 * b->nrestarts + 4;
}

/* Append the restart array, count and trailer; returns the block's handle size. */
static size_t block_finish(block_builder *b)
{
    size_t i, size;
    uint8_t *p = b->base + b->len;
    uint32_t crc;
    for (i = 0; i < b->nrestarts; i++, p += 4)
        put_le32(p, b->restarts[i]);
    put_le32(p, (uint32_t)b->nrestarts);
    p += 4;
    size = (size_t)(p - b->base);
    p[0] = 0; /* no compression */
    crc = tfs_crc32c_extend(tfs_crc32c_extend(0, b->base, size), p, 1);
    put_le32(p + 1, tfs_crc_mask(crc));
    return size;
}

static size_t put_handle(uint8_t *out, uint64_t offset, uint64_t size)
{
    size_t n = tfs_put_varint64(out, offset);
    return n + tfs_put_varint64(out + n, size);
}

static int key_less(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;
    return c < 0 || (c == 0 && alen < blen);
}

/*
 * The index key for a finished block whose last key is a: a short key k with
 * a <= k < next (FindShortestSeparator), or any k >= a when next is NULL
 * (FindShortSuccessor).  Written to out; returns its length.
 */
static size_t separator(const uint8_t *a, size_t alen, const uint8_t *next, size_t nlen,
                        uint8_t *out)
{
    size_t i = 0;
    if (next) {
        size_t lim = alen < nlen ? alen : nlen;
        while (i < lim && a[i] == next[i])
            i++;
        if (i < lim && a[i] < 0xff && (uint8_t)(a[i] + 1) < next[i]) {
            memcpy(out, a, i);
            out[i] = (uint8_t)(a[i] + 1);
            return i + 1;
        }
    } else {
        for (i = 0; i < alen; i++) {
            if (a[i] != 0xff) {
                memcpy(out, a, i);
                out[i] = (uint8_t)(a[i] + 1);
                return i + 1;
            }
        }
    }
    if (alen)
        memcpy(out, a, alen);
    return alen;
}

/* A finished data block whose index entry waits for the next key (§3.7). */
typedef struct {
    int set;
    uint64_t offset, size;
    const uint8_t *last_key;
    size_t last_len;
} pending_block;

/* Finish the data block at out + *off and start the next one after it. */
static void finish_data_block(block_builder *data, uint8_t *out, size_t *off,
                              pending_block *pending)
{
    size_t size = block_finish(data);
    pending->set = 1;
    pending->offset = *off;
    pending->size = size;
    pending->last_key = data->last_key;
    pending->last_len = data->last_len;
    *off += size + TFS_BLOCK_TRAILER_SIZE;
    block_reset(data, out + *off);
}

int tfs_build_table(size_t n, const uint8_t *const *keys, const size_t *key_lens,
                    const uint8_t *const *values, const size_t *value_lens,
                    uint32_t *scratch, uint8_t *out, size_t cap, size_t *out_len)
{
    size_t i, key_bytes = 0, value_bytes = 0, off = 0, idx_off, idx_size, meta_off, o;
    size_t sep_len;
    pending_block pending = {0, 0, 0, NULL, 0};
    block_builder data, index;
    uint8_t *index_area, *footer;

    for (i = 0; i < n; i++) {
        if (key_lens[i] > 0xffffffffu || value_lens[i] > 0xffffffffu)
            return TFS_ERR_RANGE;
        if (i && !key_less(keys[i - 1], key_lens[i - 1], keys[i], key_lens[i]))
            return TFS_ERR_RANGE;
        key_bytes += key_lens[i];
        value_bytes += value_lens[i];
    }
    if (cap < tfs_table_bound(n, key_bytes, value_bytes))
        return TFS_ERR_BUFFER;

    /* Index entries are staged at the end of the buffer (each at most 15 + key
     * + 20 bytes) and moved into place once the data blocks are written. */
    index_area = out + cap - (n * (15 + 20) + key_bytes + 16);
    data.restarts = scratch;
    index.restarts = scratch + n + 1;
    block_reset(&data, out);
    block_reset(&index, index_area);

    for (i = 0; i <= n; i++) {
        const uint8_t *key = i < n ? keys[i] : NULL;
        size_t klen = i < n ? key_lens[i] : 0;
        int flush = 0;
        if (i < n && data.len && klen + value_lens[i] >= 2 * (size_t)TFS_BLOCK_SIZE)
            flush = 1; /* a huge entry starts its own block */
        if ((flush || i == n) && data.len)
            finish_data_block(&data, out, &off, &pending);
        if (pending.set) {
            /* The separator goes into the index block's own key area; it is
             * never longer than the block's last key. */
            uint8_t *entry = index_area + index.len;
            uint8_t handle[20];
            size_t hlen = put_handle(handle, pending.offset, pending.size);
            uint8_t *keyspot = entry + 15; /* past room for the three varints */
            /* Build the entry by hand: restart interval 1 means shared = 0. */
            if (index.len)
                index.restarts[index.nrestarts++] = (uint32_t)index.len;
            sep_len = separator(pending.last_key, pending.last_len, key, klen, keyspot);
            entry += tfs_put_varint64(entry, 0);
            entry += tfs_put_varint64(entry, sep_len);
            entry += tfs_put_varint64(entry, hlen);
            memmove(entry, keyspot, sep_len);
            entry += sep_len;
            memcpy(entry, handle, hlen);
            entry += hlen;
            index.len = (size_t)(entry - index_area);
            pending.set = 0;
        }
        if (i == n)
            break;
        block_add(&data, TFS_RESTART_INTERVAL, key, klen, values[i], value_lens[i]);
        if (block_estimate(&data) >= TFS_BLOCK_SIZE)
            finish_data_block(&data, out, &off, &pending);
    }

    /* Metaindex: an empty block. */
    meta_off = off;
    data.restarts[0] = 0;
    block_reset(&data, out + off);
    off += block_finish(&data) + TFS_BLOCK_TRAILER_SIZE;

    /* Index block: move the staged entries down, then finish in place. */
    idx_off = off;
    memmove(out + off, index_area, index.len);
    index.base = out + off;
    idx_size = block_finish(&index);
    off += idx_size + TFS_BLOCK_TRAILER_SIZE;

    footer = out + off;
    memset(footer, 0, TFS_FOOTER_SIZE);
    o = put_handle(footer, meta_off, 8);
    put_handle(footer + o, idx_off, idx_size);
    memcpy(footer + TFS_FOOTER_SIZE - 8, table_magic, 8);
    *out_len = off + TFS_FOOTER_SIZE;
    return TFS_OK;
}
