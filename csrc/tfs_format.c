/* tfs_format.c - see tfs_format.h.  Plain C99, no allocation. */
#include "tfs_format.h"

#include <string.h>

/* ---- primitive loads ---------------------------------------------------- */

uint32_t tfs_load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

uint64_t tfs_load_le64(const uint8_t *p)
{
    return (uint64_t)tfs_load_le32(p) | ((uint64_t)tfs_load_le32(p + 4) << 32);
}

uint32_t tfs_load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
           (uint32_t)p[3];
}

/*
 * CRC-32C (Castagnoli): the SSE4.2 instruction where the CPU has it, else a
 * bytewise table.  Tensor data is checksummed
 * with the crc32c package (hardware, GIL released); this small version
 * serves the index blocks, which are a few hundred KiB at most, so that
 * opening and listing a checkpoint does not pay for importing that package.
 */
static const uint32_t crc32c_table[256] = {
    0x00000000u, 0xf26b8303u, 0xe13b70f7u, 0x1350f3f4u, 0xc79a971fu, 0x35f1141cu,
    0x26a1e7e8u, 0xd4ca64ebu, 0x8ad958cfu, 0x78b2dbccu, 0x6be22838u, 0x9989ab3bu,
    0x4d43cfd0u, 0xbf284cd3u, 0xac78bf27u, 0x5e133c24u, 0x105ec76fu, 0xe235446cu,
    0xf165b798u, 0x030e349bu, 0xd7c45070u, 0x25afd373u, 0x36ff2087u, 0xc494a384u,
    0x9a879fa0u, 0x68ec1ca3u, 0x7bbcef57u, 0x89d76c54u, 0x5d1d08bfu, 0xaf768bbcu,
    0xbc267848u, 0x4e4dfb4bu, 0x20bd8edeu, 0xd2d60dddu, 0xc186fe29u, 0x33ed7d2au,
    0xe72719c1u, 0x154c9ac2u, 0x061c6936u, 0xf477ea35u, 0xaa64d611u, 0x580f5512u,
    0x4b5fa6e6u, 0xb93425e5u, 0x6dfe410eu, 0x9f95c20du, 0x8cc531f9u, 0x7eaeb2fau,
    0x30e349b1u, 0xc288cab2u, 0xd1d83946u, 0x23b3ba45u, 0xf779deaeu, 0x05125dadu,
    0x1642ae59u, 0xe4292d5au, 0xba3a117eu, 0x4851927du, 0x5b016189u, 0xa96ae28au,
    0x7da08661u, 0x8fcb0562u, 0x9c9bf696u, 0x6ef07595u, 0x417b1dbcu, 0xb3109ebfu,
    0xa0406d4bu, 0x522bee48u, 0x86e18aa3u, 0x748a09a0u, 0x67dafa54u, 0x95b17957u,
    0xcba24573u, 0x39c9c670u, 0x2a993584u, 0xd8f2b687u, 0x0c38d26cu, 0xfe53516fu,
    0xed03a29bu, 0x1f682198u, 0x5125dad3u, 0xa34e59d0u, 0xb01eaa24u, 0x42752927u,
    0x96bf4dccu, 0x64d4cecfu, 0x77843d3bu, 0x85efbe38u, 0xdbfc821cu, 0x2997011fu,
    0x3ac7f2ebu, 0xc8ac71e8u, 0x1c661503u, 0xee0d9600u, 0xfd5d65f4u, 0x0f36e6f7u,
    0x61c69362u, 0x93ad1061u, 0x80fde395u, 0x72966096u, 0xa65c047du, 0x5437877eu,
    0x4767748au, 0xb50cf789u, 0xeb1fcbadu, 0x197448aeu, 0x0a24bb5au, 0xf84f3859u,
    0x2c855cb2u, 0xdeeedfb1u, 0xcdbe2c45u, 0x3fd5af46u, 0x7198540du, 0x83f3d70eu,
    0x90a324fau, 0x62c8a7f9u, 0xb602c312u, 0x44694011u, 0x5739b3e5u, 0xa55230e6u,
    0xfb410cc2u, 0x092a8fc1u, 0x1a7a7c35u, 0xe811ff36u, 0x3cdb9bddu, 0xceb018deu,
    0xdde0eb2au, 0x2f8b6829u, 0x82f63b78u, 0x709db87bu, 0x63cd4b8fu, 0x91a6c88cu,
    0x456cac67u, 0xb7072f64u, 0xa457dc90u, 0x563c5f93u, 0x082f63b7u, 0xfa44e0b4u,
    0xe9141340u, 0x1b7f9043u, 0xcfb5f4a8u, 0x3dde77abu, 0x2e8e845fu, 0xdce5075cu,
    0x92a8fc17u, 0x60c37f14u, 0x73938ce0u, 0x81f80fe3u, 0x55326b08u, 0xa759e80bu,
    0xb4091bffu, 0x466298fcu, 0x1871a4d8u, 0xea1a27dbu, 0xf94ad42fu, 0x0b21572cu,
    0xdfeb33c7u, 0x2d80b0c4u, 0x3ed04330u, 0xccbbc033u, 0xa24bb5a6u, 0x502036a5u,
    0x4370c551u, 0xb11b4652u, 0x65d122b9u, 0x97baa1bau, 0x84ea524eu, 0x7681d14du,
    0x2892ed69u, 0xdaf96e6au, 0xc9a99d9eu, 0x3bc21e9du, 0xef087a76u, 0x1d63f975u,
    0x0e330a81u, 0xfc588982u, 0xb21572c9u, 0x407ef1cau, 0x532e023eu, 0xa145813du,
    0x758fe5d6u, 0x87e466d5u, 0x94b49521u, 0x66df1622u, 0x38cc2a06u, 0xcaa7a905u,
    0xd9f75af1u, 0x2b9cd9f2u, 0xff56bd19u, 0x0d3d3e1au, 0x1e6dcdeeu, 0xec064eedu,
    0xc38d26c4u, 0x31e6a5c7u, 0x22b65633u, 0xd0ddd530u, 0x0417b1dbu, 0xf67c32d8u,
    0xe52cc12cu, 0x1747422fu, 0x49547e0bu, 0xbb3ffd08u, 0xa86f0efcu, 0x5a048dffu,
    0x8ecee914u, 0x7ca56a17u, 0x6ff599e3u, 0x9d9e1ae0u, 0xd3d3e1abu, 0x21b862a8u,
    0x32e8915cu, 0xc083125fu, 0x144976b4u, 0xe622f5b7u, 0xf5720643u, 0x07198540u,
    0x590ab964u, 0xab613a67u, 0xb831c993u, 0x4a5a4a90u, 0x9e902e7bu, 0x6cfbad78u,
    0x7fab5e8cu, 0x8dc0dd8fu, 0xe330a81au, 0x115b2b19u, 0x020bd8edu, 0xf0605beeu,
    0x24aa3f05u, 0xd6c1bc06u, 0xc5914ff2u, 0x37faccf1u, 0x69e9f0d5u, 0x9b8273d6u,
    0x88d28022u, 0x7ab90321u, 0xae7367cau, 0x5c18e4c9u, 0x4f48173du, 0xbd23943eu,
    0xf36e6f75u, 0x0105ec76u, 0x12551f82u, 0xe03e9c81u, 0x34f4f86au, 0xc69f7b69u,
    0xd5cf889du, 0x27a40b9eu, 0x79b737bau, 0x8bdcb4b9u, 0x988c474du, 0x6ae7c44eu,
    0xbe2da0a5u, 0x4c4623a6u, 0x5f16d052u, 0xad7d5351u,
};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(TFS_NO_HW_CRC)
#include <nmmintrin.h>
#define TFS_HAVE_SSE42 1
/* The SSE4.2 crc32 instruction computes CRC-32C; chosen at run time only. */
__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *p, size_t n)
{
    uint64_t c = (uint32_t)~crc;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        n -= 8;
    }
    while (n--)
        c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
#endif

uint32_t tfs_crc32c_extend(uint32_t crc, const uint8_t *p, size_t n)
{
#ifdef TFS_HAVE_SSE42
    if (__builtin_cpu_supports("sse4.2"))
        return crc32c_sse42(crc, p, n);
#endif
    crc = ~crc;
    while (n--)
        crc = crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

uint32_t tfs_crc_mask(uint32_t crc)
{
    return ((crc >> 15) | (crc << 17)) + TFS_MASK_DELTA;
}

uint32_t tfs_crc_unmask(uint32_t masked)
{
    uint32_t rot = masked - TFS_MASK_DELTA;
    return (rot >> 17) | (rot << 15);
}

int tfs_get_varint64(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    const uint8_t *q = *p;
    uint64_t result = 0;
    int shift;
    if (q < end && *q < 0x80) { /* one-byte fast path: most tags, sizes and dims */
        *out = *q;
        *p = q + 1;
        return TFS_OK;
    }
    for (shift = 0; shift <= 63; shift += 7) {
        uint8_t byte;
        if (q >= end)
            return TFS_ERR_TRUNCATED;
        byte = *q++;
        /* The tenth byte may only contribute the top bit of a uint64. */
        if (shift == 63 && byte > 1)
            return TFS_ERR_VARINT;
        result |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *out = result;
            *p = q;
            return TFS_OK;
        }
    }
    return TFS_ERR_VARINT;
}

int tfs_get_varint32(const uint8_t **p, const uint8_t *end, uint32_t *out)
{
    const uint8_t *q = *p;
    uint32_t result = 0;
    int shift;
    if (q < end && *q < 0x80) {
        *out = *q;
        *p = q + 1;
        return TFS_OK;
    }
    for (shift = 0; shift <= 28; shift += 7) {
        uint8_t byte;
        if (q >= end)
            return TFS_ERR_TRUNCATED;
        byte = *q++;
        if (shift == 28 && byte > 0x0f)
            return TFS_ERR_VARINT;
        result |= (uint32_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *out = result;
            *p = q;
            return TFS_OK;
        }
    }
    return TFS_ERR_VARINT;
}

/* ---- SSTable ------------------------------------------------------------ */

int tfs_decode_handle(const uint8_t *p, size_t n, tfs_handle *h)
{
    const uint8_t *end = p + n;
    int st = tfs_get_varint64(&p, end, &h->offset);
    if (st != TFS_OK)
        return st;
    return tfs_get_varint64(&p, end, &h->size);
}

int tfs_decode_footer(const uint8_t *footer, tfs_handle *metaindex, tfs_handle *index)
{
    const uint8_t *p = footer;
    const uint8_t *end = footer + 40;
    int st;
    if (tfs_load_le32(footer + 40) != 0x8b80fb57u || tfs_load_le32(footer + 44) != 0xdb477524u)
        return TFS_ERR_BAD_MAGIC;
    st = tfs_get_varint64(&p, end, &metaindex->offset);
    if (st == TFS_OK)
        st = tfs_get_varint64(&p, end, &metaindex->size);
    if (st == TFS_OK)
        st = tfs_get_varint64(&p, end, &index->offset);
    if (st == TFS_OK)
        st = tfs_get_varint64(&p, end, &index->size);
    return st;
}

int tfs_block_iter_init(tfs_block_iter *it, const uint8_t *block, size_t size)
{
    uint32_t num_restarts;
    if (size < 4)
        return TFS_ERR_BAD_BLOCK;
    num_restarts = tfs_load_le32(block + size - 4);
    if (num_restarts > (size - 4) / 4)
        return TFS_ERR_BAD_BLOCK;
    it->entries_end = block + size - 4 - 4 * (size_t)num_restarts;
    /* A restart count of 0 is accepted and means an empty block. */
    it->pos = num_restarts == 0 ? it->entries_end : block;
    return TFS_OK;
}

int tfs_block_iter_next(tfs_block_iter *it, uint32_t *shared, const uint8_t **delta,
                        uint32_t *delta_len, const uint8_t **value, uint32_t *value_len)
{
    const uint8_t *p = it->pos;
    const uint8_t *end = it->entries_end;
    if (p >= end)
        return TFS_END;
    if (tfs_get_varint32(&p, end, shared) != TFS_OK ||
        tfs_get_varint32(&p, end, delta_len) != TFS_OK ||
        tfs_get_varint32(&p, end, value_len) != TFS_OK)
        return TFS_ERR_BAD_ENTRY;
    if (*delta_len > (size_t)(end - p))
        return TFS_ERR_BAD_ENTRY;
    *delta = p;
    p += *delta_len;
    if (*value_len > (size_t)(end - p))
        return TFS_ERR_BAD_ENTRY;
    *value = p;
    it->pos = p + *value_len;
    return TFS_OK;
}

/* ---- protobuf wire format ---------------------------------------------- */

typedef tfs_pb_field pb_field;

enum { PB_VARINT = TFS_PB_VARINT, PB_FIXED64 = TFS_PB_FIXED64, PB_LEN = TFS_PB_LEN,
       PB_FIXED32 = TFS_PB_FIXED32 };

static inline int pb_next(const uint8_t **p, const uint8_t *end, pb_field *f)
{
    uint64_t tag, len;
    const uint8_t *q = *p;
    if (tfs_get_varint64(&q, end, &tag) != TFS_OK)
        return TFS_ERR_PROTO;
    if (tag >> 3 == 0 || tag >> 3 > 0x1fffffff)
        return TFS_ERR_PROTO;
    f->field = (uint32_t)(tag >> 3);
    f->wire = (uint32_t)(tag & 7);
    switch (f->wire) {
    case PB_VARINT:
        if (tfs_get_varint64(&q, end, &f->varint) != TFS_OK)
            return TFS_ERR_PROTO;
        break;
    case PB_FIXED64:
        if (end - q < 8)
            return TFS_ERR_PROTO;
        f->varint = tfs_load_le64(q);
        q += 8;
        break;
    case PB_FIXED32:
        if (end - q < 4)
            return TFS_ERR_PROTO;
        f->varint = tfs_load_le32(q);
        q += 4;
        break;
    case PB_LEN:
        if (tfs_get_varint64(&q, end, &len) != TFS_OK || len > (uint64_t)(end - q))
            return TFS_ERR_PROTO;
        f->data = q;
        f->len = (size_t)len;
        q += len;
        break;
    default: /* groups (3, 4) and reserved wire types are not used by these messages */
        return TFS_ERR_PROTO;
    }
    *p = q;
    return TFS_OK;
}

int tfs_pb_next(const uint8_t **p, const uint8_t *end, tfs_pb_field *f)
{
    return pb_next(p, end, f);
}

/* A known field with the wrong wire type makes the message malformed. */
#define PB_EXPECT(f, w) \
    do { if ((f).wire != (w)) return TFS_ERR_PROTO; } while (0)

static int parse_version(const uint8_t *p, size_t n, tfs_header *h)
{
    const uint8_t *end = p + n;
    pb_field f;
    while (p < end) {
        int st = pb_next(&p, end, &f);
        if (st != TFS_OK)
            return st;
        if (f.field == 1) {
            PB_EXPECT(f, PB_VARINT);
            h->producer = (int32_t)(uint32_t)f.varint;
        } else if (f.field == 2) {
            PB_EXPECT(f, PB_VARINT);
            h->min_consumer = (int32_t)(uint32_t)f.varint;
        } else if (f.field == 3) {
            if (f.wire == PB_VARINT) {
                if ((int32_t)(uint32_t)f.varint == 1)
                    h->bad_consumer_1 = 1;
            } else if (f.wire == PB_LEN) { /* packed */
                const uint8_t *q = f.data, *qend = f.data + f.len;
                while (q < qend) {
                    uint64_t v;
                    if (tfs_get_varint64(&q, qend, &v) != TFS_OK)
                        return TFS_ERR_PROTO;
                    if ((int32_t)(uint32_t)v == 1)
                        h->bad_consumer_1 = 1;
                }
            } else {
                return TFS_ERR_PROTO;
            }
        }
    }
    return TFS_OK;
}

int tfs_parse_version(const uint8_t *p, size_t n, tfs_header *h)
{
    return parse_version(p, n, h);
}

int tfs_parse_header(const uint8_t *p, size_t n, tfs_header *h)
{
    const uint8_t *end = p + n;
    pb_field f;
    memset(h, 0, sizeof(*h));
    while (p < end) {
        int st = pb_next(&p, end, &f);
        if (st != TFS_OK)
            return st;
        if (f.field == 1) {
            PB_EXPECT(f, PB_VARINT);
            h->num_shards = (int32_t)(uint32_t)f.varint;
        } else if (f.field == 2) {
            PB_EXPECT(f, PB_VARINT);
            h->endianness = (int32_t)(uint32_t)f.varint;
        } else if (f.field == 3) {
            PB_EXPECT(f, PB_LEN);
            st = parse_version(f.data, f.len, h);
            if (st != TFS_OK)
                return st;
        }
    }
    return TFS_OK;
}

/* TensorShapeProto.  Repeated occurrences merge, as protobuf parsers do. */
static int parse_shape(const uint8_t *p, size_t n, tfs_entry *e, int64_t *dims)
{
    const uint8_t *end = p + n;
    pb_field f;
    while (p < end) {
        int st = pb_next(&p, end, &f);
        if (st != TFS_OK)
            return st;
        if (f.field == 2) { /* Dim */
            const uint8_t *q = f.data, *qend = f.data + f.len;
            int64_t size = 0;
            pb_field g;
            PB_EXPECT(f, PB_LEN);
            while (q < qend) {
                st = pb_next(&q, qend, &g);
                if (st != TFS_OK)
                    return st;
                if (g.field == 1) {
                    PB_EXPECT(g, PB_VARINT);
                    size = (int64_t)g.varint;
                }
            }
            /* Count every dimension (for the error message), store the first TFS_MAX_RANK. */
            if (e->rank < TFS_MAX_RANK)
                dims[e->rank] = size;
            if (e->rank == INT32_MAX)
                return TFS_ERR_SHAPE;
            e->rank++;
        } else if (f.field == 3) {
            PB_EXPECT(f, PB_VARINT);
            e->unknown_rank = f.varint != 0;
        }
    }
    return TFS_OK;
}

int tfs_parse_entry(const uint8_t *p, size_t n, tfs_entry *e, int64_t *dims)
{
    const uint8_t *end = p + n;
    pb_field f;
    int32_t i;
    memset(e, 0, sizeof(*e));
    while (p < end) {
        int st = pb_next(&p, end, &f);
        if (st != TFS_OK)
            return st;
        switch (f.field) {
        case 1:
            PB_EXPECT(f, PB_VARINT);
            e->dtype = (int32_t)(uint32_t)f.varint;
            break;
        case 2:
            PB_EXPECT(f, PB_LEN);
            st = parse_shape(f.data, f.len, e, dims);
            if (st != TFS_OK)
                return st;
            break;
        case 3:
            PB_EXPECT(f, PB_VARINT);
            e->shard_id = (int32_t)(uint32_t)f.varint;
            break;
        case 4:
            PB_EXPECT(f, PB_VARINT);
            e->offset = (int64_t)f.varint;
            break;
        case 5:
            PB_EXPECT(f, PB_VARINT);
            e->size = (int64_t)f.varint;
            break;
        case 6:
            PB_EXPECT(f, PB_FIXED32);
            e->crc32c = (uint32_t)f.varint;
            e->has_crc = 1;
            break;
        case 7:
            PB_EXPECT(f, PB_LEN);
            e->num_slices++;
            break;
        default:
            break; /* unknown fields are skipped, as protobuf does */
        }
    }
    if (e->rank > TFS_MAX_RANK)
        return TFS_ERR_SHAPE;
    e->num_elements = 1;
    for (i = 0; i < e->rank; i++) {
        if (dims[i] < 0)
            return TFS_ERR_SHAPE;
        if (dims[i] > 0 && e->num_elements > INT64_MAX / dims[i])
            return TFS_ERR_SHAPE;
        e->num_elements *= dims[i];
    }
    return TFS_OK;
}

static int parse_slice(const uint8_t *p, size_t n, int32_t *rank, int64_t *starts,
                       int64_t *lengths)
{
    const uint8_t *end = p + n;
    pb_field f;
    *rank = 0;
    while (p < end) {
        int st = pb_next(&p, end, &f);
        if (st != TFS_OK)
            return st;
        if (f.field == 1) { /* Extent */
            const uint8_t *q = f.data, *qend = f.data + f.len;
            int64_t start = 0, length = -1;
            pb_field g;
            PB_EXPECT(f, PB_LEN);
            while (q < qend) {
                st = pb_next(&q, qend, &g);
                if (st != TFS_OK)
                    return st;
                if (g.field == 1) {
                    PB_EXPECT(g, PB_VARINT);
                    start = (int64_t)g.varint;
                } else if (g.field == 2) {
                    PB_EXPECT(g, PB_VARINT);
                    length = (int64_t)g.varint;
                    if (length < 0)
                        return TFS_ERR_RANGE;
                }
            }
            if (start < 0 || (length < 0 && start != 0))
                return TFS_ERR_RANGE;
            if (*rank >= TFS_MAX_RANK)
                return TFS_ERR_SHAPE;
            starts[*rank] = start;
            lengths[*rank] = length;
            (*rank)++;
        }
    }
    return TFS_OK;
}

int tfs_parse_shape(const uint8_t *p, size_t n, int32_t *rank, int64_t *dims,
                    int64_t *num_elements)
{
    tfs_entry e;
    int32_t i;
    int st;
    memset(&e, 0, sizeof(e));
    st = parse_shape(p, n, &e, dims);
    *rank = e.rank;
    if (st != TFS_OK)
        return st;
    if (e.rank > TFS_MAX_RANK)
        return TFS_ERR_SHAPE;
    *num_elements = 1;
    for (i = 0; i < e.rank; i++) {
        if (dims[i] < 0)
            return TFS_ERR_SHAPE;
        if (dims[i] > 0 && *num_elements > INT64_MAX / dims[i])
            return TFS_ERR_SHAPE;
        *num_elements *= dims[i];
    }
    return TFS_OK;
}

int tfs_parse_slice(const uint8_t *p, size_t n, int32_t *rank, int64_t *starts,
                    int64_t *lengths)
{
    return parse_slice(p, n, rank, starts, lengths);
}

int tfs_next_entry_slice(const uint8_t **p, const uint8_t *end, int32_t *rank,
                         int64_t *starts, int64_t *lengths)
{
    pb_field f;
    while (*p < end) {
        int st = pb_next(p, end, &f);
        if (st != TFS_OK)
            return st;
        if (f.field == 7 && f.wire == PB_LEN)
            return parse_slice(f.data, f.len, rank, starts, lengths);
    }
    return TFS_END;
}

/* ---- OrderedCode slice keys ---------------------------------------------- */

static const uint8_t oc_first_mask[11] = {0, 0x80, 0xc0, 0xe0, 0xf0, 0xf8, 0xfc, 0xfe, 0xff, 0xff, 0xff};
static const uint8_t oc_second_mask[11] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0xc0};

static size_t oc_put_uint(uint64_t v, uint8_t *out)
{
    uint8_t be[8];
    int i, k = 0;
    for (i = 7; i >= 0; i--) {
        be[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
    while (k < 8 && be[k] == 0)
        k++;
    out[0] = (uint8_t)(8 - k);
    memcpy(out + 1, be + k, (size_t)(8 - k));
    return (size_t)(9 - k);
}

static size_t oc_put_int(int64_t v, uint8_t *out)
{
    uint64_t x = v < 0 ? ~(uint64_t)v : (uint64_t)v;
    uint8_t buf[10];
    int bits = 0, len, i;
    uint64_t u = (uint64_t)v;
    while (x) {
        bits++;
        x >>= 1;
    }
    len = (bits + 7) / 7; /* 1..10 bytes */
    buf[0] = buf[1] = v < 0 ? 0xff : 0x00;
    for (i = 9; i >= 2; i--) {
        buf[i] = (uint8_t)(u & 0xff);
        u >>= 8;
    }
    memcpy(out, buf + 10 - len, (size_t)len);
    out[0] ^= oc_first_mask[len];
    if (len > 1)
        out[1] ^= oc_second_mask[len];
    return (size_t)len;
}

size_t tfs_slice_key_bound(size_t name_len, int32_t rank)
{
    return 1 + 2 * name_len + 2 + 9 + (size_t)(rank < 0 ? 0 : rank) * 20;
}

int tfs_slice_key_encode(const uint8_t *name, size_t name_len, int32_t rank,
                         const int64_t *starts, const int64_t *lengths,
                         uint8_t *out, size_t cap, size_t *out_len)
{
    size_t i, o = 0;
    if (rank < 0 || rank > TFS_MAX_RANK)
        return TFS_ERR_SHAPE;
    if (cap < tfs_slice_key_bound(name_len, rank))
        return TFS_ERR_BUFFER;
    out[o++] = 0; /* OC_uint(0) */
    for (i = 0; i < name_len; i++) {
        uint8_t c = name[i];
        if (c == 0x00) {
            out[o++] = 0x00;
            out[o++] = 0xff;
        } else if (c == 0xff) {
            out[o++] = 0xff;
            out[o++] = 0x00;
        } else {
            out[o++] = c;
        }
    }
    out[o++] = 0x00;
    out[o++] = 0x01;
    o += oc_put_uint((uint64_t)rank, out + o);
    for (i = 0; i < (size_t)rank; i++) {
        o += oc_put_int(lengths[i] < 0 ? 0 : starts[i], out + o);
        o += oc_put_int(lengths[i] < 0 ? -1 : lengths[i], out + o);
    }
    *out_len = o;
    return TFS_OK;
}

static int oc_get_uint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    const uint8_t *q = *p;
    uint8_t n;
    if (q >= end)
        return TFS_ERR_TRUNCATED;
    n = *q++;
    if (n > 8)
        return TFS_ERR_RANGE;
    if ((size_t)(end - q) < n)
        return TFS_ERR_TRUNCATED;
    *v = 0;
    while (n--)
        *v = (*v << 8) | *q++;
    *p = q;
    return TFS_OK;
}

static int leading_ones(uint8_t c)
{
    int n = 0;
    while (n < 8 && (c & (0x80 >> n)))
        n++;
    return n;
}

static int oc_get_int(const uint8_t **p, const uint8_t *end, int64_t *v)
{
    const uint8_t *q = *p;
    int positive, len, i;
    uint8_t buf[10], first;
    uint64_t acc;
    if (q >= end)
        return TFS_ERR_TRUNCATED;
    positive = (q[0] & 0x80) != 0;
    first = positive ? q[0] : (uint8_t)~q[0];
    len = leading_ones(first);
    if (len == 8) {
        if (end - q < 2)
            return TFS_ERR_TRUNCATED;
        len += leading_ones(positive ? q[1] : (uint8_t)~q[1]);
        if (len > 10)
            return TFS_ERR_RANGE;
    }
    if ((size_t)(end - q) < (size_t)len)
        return TFS_ERR_TRUNCATED;
    memcpy(buf, q, (size_t)len);
    buf[0] ^= oc_first_mask[len];
    if (len > 1)
        buf[1] ^= oc_second_mask[len];
    acc = positive ? 0 : ~(uint64_t)0;
    for (i = 0; i < len; i++)
        acc = (acc << 8) | buf[i];
    *v = (int64_t)acc;
    *p = q + len;
    return TFS_OK;
}

int tfs_slice_key_decode(const uint8_t *key, size_t n, uint8_t *name_out, size_t name_cap,
                         size_t *name_len, int32_t *rank, int64_t *starts, int64_t *lengths)
{
    const uint8_t *p = key, *end = key + n;
    uint64_t lead, r, i;
    size_t o = 0;
    int st = oc_get_uint(&p, end, &lead);
    if (st != TFS_OK)
        return st;
    if (lead != 0)
        return TFS_ERR_RANGE;
    for (;;) {
        uint8_t c;
        if (p >= end)
            return TFS_ERR_TRUNCATED;
        c = *p++;
        if (c == 0x00 || c == 0xff) {
            uint8_t d;
            if (p >= end)
                return TFS_ERR_TRUNCATED;
            d = *p++;
            if (c == 0x00 && d == 0x01)
                break;
            if (c == 0x00 && d == 0xff)
                c = 0x00;
            else if (c == 0xff && d == 0x00)
                c = 0xff;
            else
                return TFS_ERR_RANGE;
        }
        if (name_out) {
            if (o >= name_cap)
                return TFS_ERR_BUFFER;
            name_out[o] = c;
        }
        o++;
    }
    *name_len = o;
    st = oc_get_uint(&p, end, &r);
    if (st != TFS_OK)
        return st;
    if (r < 1 || r > TFS_MAX_RANK)
        return TFS_ERR_RANGE;
    *rank = (int32_t)r;
    for (i = 0; i < r; i++) {
        int64_t s, l;
        st = oc_get_int(&p, end, &s);
        if (st == TFS_OK)
            st = oc_get_int(&p, end, &l);
        if (st != TFS_OK)
            return st;
        if (starts) {
            starts[i] = s;
            lengths[i] = l;
        }
    }
    return p == end ? TFS_OK : TFS_ERR_RANGE;
}

/* ---- DT_STRING ---------------------------------------------------------- */

static void put_image(uint64_t v, int bytes, int big_endian, uint8_t *out)
{
    int i;
    for (i = 0; i < bytes; i++) {
        uint8_t b = (uint8_t)(v >> (8 * i));
        out[big_endian ? bytes - 1 - i : i] = b;
    }
}

int tfs_string_scan(const uint8_t *p, size_t size, uint64_t count, int big_endian,
                    uint64_t *lengths, uint8_t *images, size_t *images_len,
                    size_t *header_len)
{
    const uint8_t *q = p, *end = p + size;
    uint64_t i, total = 0;
    size_t im = 0;
    /* Every element needs at least one length byte: refuse early. */
    if (count > size)
        return TFS_ERR_SIZE;
    for (i = 0; i < count; i++) {
        uint64_t len;
        int st = tfs_get_varint64(&q, end, &len);
        if (st == TFS_ERR_TRUNCATED)
            return TFS_ERR_SIZE;
        if (st != TFS_OK)
            return st;
        if (len > size || total + len > size)
            return TFS_ERR_SIZE;
        total += len;
        lengths[i] = len;
        if (len <= 0xffffffffu) {
            put_image(len, 4, big_endian, images + im);
            im += 4;
        } else {
            put_image(len, 8, big_endian, images + im);
            im += 8;
        }
    }
    *header_len = (size_t)(q - p);
    *images_len = im;
    if (size - *header_len < 4 || size - *header_len - 4 != total)
        return TFS_ERR_SIZE;
    return TFS_OK;
}
