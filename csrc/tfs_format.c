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
 * CRC-32C (Castagnoli).  The writer checksums every tensor it writes with this
 * code and the reader its index blocks, so it has a fast path on every CPU:
 *
 * - x86-64: the SSE4.2 crc32 instruction (gcc, clang and MSVC), chosen at run
 *   time by CPUID;
 * - arm64: the ARMv8 CRC32 instructions, chosen at run time from the Linux
 *   hwcaps (always present on Apple silicon);
 * - everywhere else, and where the CPU lacks them: slicing-by-8, eight table
 *   lookups per eight bytes, in portable C.
 *
 * TFS_NO_HW_CRC forces the portable path (tests check both paths against the
 * same vectors); tfs_crc32c_portable is always the portable path.
 */
#include "tfs_crc32c_tables.h"

uint32_t tfs_crc32c_portable(uint32_t crc, const uint8_t *p, size_t n)
{
    const uint32_t (*t)[256] = tfs_crc32c_table;
    crc = ~crc;
    /* Byte loads, assembled little-endian: any alignment, any byte order. */
    while (n >= 8) {
        uint32_t lo = crc ^ ((uint32_t)p[0] | ((uint32_t)p[1] << 8) |
                             ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24));
        crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^
              t[4][lo >> 24] ^ t[3][p[4]] ^ t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = t[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if !defined(TFS_NO_HW_CRC) && (defined(__x86_64__) || defined(_M_X64))
#define TFS_HW_CRC_X86 1
#include <nmmintrin.h>
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#define TFS_TARGET_SSE42
static int cpu_has_hw_crc(void)
{
    int info[4];
    __cpuid(info, 1);
    return (info[2] >> 20) & 1; /* ECX bit 20: SSE4.2 */
}
#else
#define TFS_TARGET_SSE42 __attribute__((target("sse4.2")))
static int cpu_has_hw_crc(void)
{
    return __builtin_cpu_supports("sse4.2") != 0;
}
#endif

static uint32_t gf2_mulmod(uint32_t a, uint32_t b);
static uint32_t xpow8n(uint64_t n);

/* Buffers of at least three stripes run as three interleaved streams: the crc32
 * instruction has a latency of three cycles but accepts one per cycle, so one stream
 * reaches a third of the throughput.  The streams' registers are joined by
 * multiplying by x^(8 * TFS_CRC_STRIPE), a constant computed once. */
#define TFS_CRC_STRIPE 8192
static volatile uint32_t stripe_shift;  /* 0: not yet computed (never its value) */

TFS_TARGET_SSE42
static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p, size_t n)
{
    uint64_t c = (uint32_t)~crc;
    if (n >= 3 * TFS_CRC_STRIPE) {
        uint32_t shift = stripe_shift;
        if (shift == 0)
            stripe_shift = shift = xpow8n(TFS_CRC_STRIPE);
        while (n >= 3 * TFS_CRC_STRIPE) {
            uint64_t c1 = 0, c2 = 0, v0, v1, v2;
            const uint8_t *q = p, *end = p + TFS_CRC_STRIPE;
            for (; q < end; q += 8) {
                memcpy(&v0, q, 8);
                memcpy(&v1, q + TFS_CRC_STRIPE, 8);
                memcpy(&v2, q + 2 * TFS_CRC_STRIPE, 8);
                c = _mm_crc32_u64(c, v0);
                c1 = _mm_crc32_u64(c1, v1);
                c2 = _mm_crc32_u64(c2, v2);
            }
            /* The register is linear in the bytes: the state after A B C is
             * ((state(A) * x^8L) ^ state0(B)) * x^8L ^ state0(C). */
            c = gf2_mulmod(shift, (uint32_t)c) ^ (uint32_t)c1;
            c = gf2_mulmod(shift, (uint32_t)c) ^ (uint32_t)c2;
            p += 3 * TFS_CRC_STRIPE;
            n -= 3 * TFS_CRC_STRIPE;
        }
    }
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

#elif !defined(TFS_NO_HW_CRC) && defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__)) \
    && (defined(__linux__) || defined(__APPLE__))
#define TFS_HW_CRC_ARM 1
#if defined(__linux__)
#include <sys/auxv.h>
static int cpu_has_hw_crc(void)
{
    return (getauxval(AT_HWCAP) >> 7) & 1; /* HWCAP_CRC32 */
}
#else
static int cpu_has_hw_crc(void)
{
    return 1; /* every Apple arm64 CPU has the CRC32 instructions */
}
#endif

/* Inline assembly rather than <arm_acle.h>: gcc and clang spell the function
 * attribute that enables the intrinsics differently, and the instructions
 * assemble without it. */
static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p, size_t n)
{
    uint32_t c = ~crc;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        __asm__(".arch_extension crc\n\tcrc32cx %w0, %w0, %x1" : "+r"(c) : "r"(v));
        p += 8;
        n -= 8;
    }
    while (n--) {
        uint32_t b = *p++;
        __asm__(".arch_extension crc\n\tcrc32cb %w0, %w0, %w1" : "+r"(c) : "r"(b));
    }
    return ~c;
}
#endif

#if defined(TFS_HW_CRC_X86) || defined(TFS_HW_CRC_ARM)
/* -1: not yet probed.  Probing twice from two threads stores the same value. */
static volatile int hw_crc = -1;

uint32_t tfs_crc32c_extend(uint32_t crc, const uint8_t *p, size_t n)
{
    int hw = hw_crc;
    if (hw < 0)
        hw_crc = hw = cpu_has_hw_crc();
    return hw ? crc32c_hw(crc, p, n) : tfs_crc32c_portable(crc, p, n);
}

int tfs_crc32c_hardware(void)
{
    int hw = hw_crc;
    if (hw < 0)
        hw_crc = hw = cpu_has_hw_crc();
    return hw;
}
#else
uint32_t tfs_crc32c_extend(uint32_t crc, const uint8_t *p, size_t n)
{
    return tfs_crc32c_portable(crc, p, n);
}

int tfs_crc32c_hardware(void)
{
    return 0;
}
#endif

/* Polynomials over GF(2) modulo the CRC-32C polynomial, in the CRC's reflected bit order:
 * bit 31 is the coefficient of x^0.  Appending len_b bytes to A multiplies CRC(A) by
 * x^(8 * len_b); the pre- and post-inversion of the CRC cancel in the sum with CRC(B). */
#define TFS_CRC32C_POLY 0x82f63b78u

static uint32_t gf2_mulmod(uint32_t a, uint32_t b)
{
    uint32_t product = 0;
    int i;
    for (i = 31; i >= 0; i--) {       /* a's coefficients of x^0, x^1, ... */
        if (a & ((uint32_t)1 << i))
            product ^= b;
        b = (b & 1) ? (b >> 1) ^ TFS_CRC32C_POLY : b >> 1;  /* b *= x */
    }
    return product;
}

/* x^(8 * n) modulo the polynomial, by squaring. */
static uint32_t xpow8n(uint64_t n)
{
    uint32_t power = (uint32_t)1 << 23;  /* x^8: one byte */
    uint32_t shift = (uint32_t)1 << 31;  /* x^0 */
    while (n) {
        if (n & 1)
            shift = gf2_mulmod(shift, power);
        power = gf2_mulmod(power, power);
        n >>= 1;
    }
    return shift;
}

uint32_t tfs_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
{
    return gf2_mulmod(xpow8n(len_b), crc_a) ^ crc_b;
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

static TFS_INLINE int pb_next(const uint8_t **p, const uint8_t *end, pb_field *f)
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
