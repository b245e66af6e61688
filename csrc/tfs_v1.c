/*
 * tfs_v1.c - parsing of legacy V1 ("TensorSlice") checkpoint values; see tfs_v1.h.
 *
 * Message and field numbers (tensorflow/core/util/saved_tensor_slice.proto,
 * tensorflow/core/framework/tensor.proto):
 *   SavedTensorSlices   meta 1, data 2
 *   SavedTensorSliceMeta tensor 1 (repeated SavedSliceMeta), versions 2
 *   SavedSliceMeta      name 1, shape 2, type 3, slice 4 (repeated)
 *   SavedSlice          name 1, slice 2, data 3 (TensorProto)
 *   TensorProto         dtype 1, tensor_shape 2, version_number 3, tensor_content 4,
 *                       float_val 5, double_val 6, int_val 7, string_val 8,
 *                       scomplex_val 9, int64_val 10, bool_val 11, dcomplex_val 12,
 *                       half_val 13, uint32_val 16, uint64_val 17
 */
#include "tfs_v1.h"

#include <string.h>

/* How the values of one dtype are stored in a TensorProto. */
enum { V_VARINT, V_FIXED32, V_FIXED64, V_BYTES };

typedef struct {
    uint32_t field;   /* TensorProto field number */
    int kind;         /* V_* */
    size_t itemsize;  /* bytes per decoded element */
    int per_elem;     /* scalars per element (2 for complex) */
} v1_layout;

static int64_t base_type(int64_t dtype)
{
    return dtype > 100 && dtype <= 133 ? dtype - 100 : dtype;
}

static int layout(int64_t dtype, v1_layout *l)
{
    l->per_elem = 1;
    switch (base_type(dtype)) {
    case 1:  l->field = 5;  l->kind = V_FIXED32; l->itemsize = 4; break;   /* float */
    case 2:  l->field = 6;  l->kind = V_FIXED64; l->itemsize = 8; break;   /* double */
    case 3:                                                                /* int32 */
    case 13: l->field = 7;  l->kind = V_VARINT;  l->itemsize = 4; break;   /* qint32 */
    case 4:                                                                /* uint8 */
    case 6:                                                                /* int8 */
    case 11:                                                               /* qint8 */
    case 12: l->field = 7;  l->kind = V_VARINT;  l->itemsize = 1; break;   /* quint8 */
    case 5:                                                                /* int16 */
    case 15:                                                               /* qint16 */
    case 16:                                                               /* quint16 */
    case 17: l->field = 7;  l->kind = V_VARINT;  l->itemsize = 2; break;   /* uint16 */
    case 7:  l->field = 8;  l->kind = V_BYTES;   l->itemsize = 0; break;   /* string */
    case 8:  l->field = 9;  l->kind = V_FIXED32; l->itemsize = 8; l->per_elem = 2; break;
    case 9:  l->field = 10; l->kind = V_VARINT;  l->itemsize = 8; break;   /* int64 */
    case 10: l->field = 11; l->kind = V_VARINT;  l->itemsize = 1; break;   /* bool */
    case 18: l->field = 12; l->kind = V_FIXED64; l->itemsize = 16; l->per_elem = 2; break;
    case 14:                                                               /* bfloat16 */
    case 19: l->field = 13; l->kind = V_VARINT;  l->itemsize = 2; break;   /* half */
    case 22: l->field = 16; l->kind = V_VARINT;  l->itemsize = 4; break;   /* uint32 */
    case 23: l->field = 17; l->kind = V_VARINT;  l->itemsize = 8; break;   /* uint64 */
    default:
        return TFS_ERR_RANGE;
    }
    return TFS_OK;
}

size_t tfs_v1_itemsize(int64_t dtype)
{
    v1_layout l;
    return layout(dtype, &l) == TFS_OK ? l.itemsize : 0;
}

int tfs_v1_supported(int64_t dtype)
{
    v1_layout l;
    return layout(dtype, &l) == TFS_OK;
}

/* ---- meta ---------------------------------------------------------------- */

int tfs_v1_parse_meta(const uint8_t *p, size_t n, tfs_v1_meta *m)
{
    const uint8_t *end = p + n, *q, *qend;
    tfs_pb_field f;
    int st, seen_versions = 0;
    memset(m, 0, sizeof(*m));
    while (p < end) {
        st = tfs_pb_next(&p, end, &f);
        if (st != TFS_OK)
            return st;
        if (f.field != 1)
            continue;
        if (f.wire != TFS_PB_LEN || m->meta != NULL)
            return TFS_ERR_PROTO;
        m->meta = f.data;
        m->meta_len = f.len;
    }
    if (m->meta == NULL)
        return TFS_ERR_RANGE;
    q = m->meta;
    qend = m->meta + m->meta_len;
    while (q < qend) {
        st = tfs_pb_next(&q, qend, &f);
        if (st != TFS_OK)
            return st;
        if (f.field == 1) {
            if (f.wire != TFS_PB_LEN)
                return TFS_ERR_PROTO;
            if (m->num_tensors == UINT32_MAX)
                return TFS_ERR_RANGE;
            m->num_tensors++;
        } else if (f.field == 2) {
            if (f.wire != TFS_PB_LEN || seen_versions)
                return TFS_ERR_PROTO;
            seen_versions = 1;
            st = tfs_parse_version(f.data, f.len, &m->versions);
            if (st != TFS_OK)
                return st;
        }
    }
    return TFS_OK;
}

int tfs_v1_meta_next(const uint8_t **pos, const uint8_t *end, tfs_v1_tensor *t,
                     int64_t *dims)
{
    tfs_pb_field f, g;
    const uint8_t *q, *qend;
    int st;
    for (;;) {
        if (*pos >= end)
            return TFS_END;
        st = tfs_pb_next(pos, end, &f);
        if (st != TFS_OK)
            return st;
        if (f.field == 1)
            break;
    }
    if (f.wire != TFS_PB_LEN)
        return TFS_ERR_PROTO;
    memset(t, 0, sizeof(*t));
    t->msg = f.data;
    t->msg_len = f.len;
    t->num_elements = 1;
    q = f.data;
    qend = f.data + f.len;
    while (q < qend) {
        st = tfs_pb_next(&q, qend, &g);
        if (st != TFS_OK)
            return st;
        switch (g.field) {
        case 1:
            if (g.wire != TFS_PB_LEN)
                return TFS_ERR_PROTO;
            t->name = g.data;
            t->name_len = g.len;
            break;
        case 2:
            if (g.wire != TFS_PB_LEN || t->has_shape)
                return TFS_ERR_PROTO;
            t->has_shape = 1;
            st = tfs_parse_shape(g.data, g.len, &t->rank, dims, &t->num_elements);
            if (st != TFS_OK)
                return st;
            break;
        case 3:
            if (g.wire != TFS_PB_VARINT)
                return TFS_ERR_PROTO;
            t->dtype = (int32_t)(uint32_t)g.varint;
            break;
        case 4:
            if (g.wire != TFS_PB_LEN)
                return TFS_ERR_PROTO;
            if (t->num_slices == UINT32_MAX)
                return TFS_ERR_RANGE;
            t->num_slices++;
            break;
        default:
            break;
        }
    }
    return TFS_OK;
}

int tfs_v1_next_tensor_slice(const uint8_t **p, const uint8_t *end, int32_t *rank,
                             int64_t *starts, int64_t *lengths)
{
    tfs_pb_field f;
    while (*p < end) {
        int st = tfs_pb_next(p, end, &f);
        if (st != TFS_OK)
            return st;
        if (f.field == 4 && f.wire == TFS_PB_LEN)
            return tfs_parse_slice(f.data, f.len, rank, starts, lengths);
    }
    return TFS_END;
}

/* ---- data ---------------------------------------------------------------- */

int tfs_v1_parse_data(const uint8_t *p, size_t n, tfs_v1_slice *s, int64_t *starts,
                      int64_t *lengths)
{
    const uint8_t *end = p + n, *data = NULL, *q, *qend;
    size_t data_len = 0;
    tfs_pb_field f;
    int st;
    memset(s, 0, sizeof(*s));
    while (p < end) {
        st = tfs_pb_next(&p, end, &f);
        if (st != TFS_OK)
            return st;
        if (f.field != 2)
            continue;
        if (f.wire != TFS_PB_LEN || data != NULL)
            return TFS_ERR_PROTO;
        data = f.data;
        data_len = f.len;
    }
    if (data == NULL)
        return TFS_ERR_RANGE;
    q = data;
    qend = data + data_len;
    while (q < qend) {
        st = tfs_pb_next(&q, qend, &f);
        if (st != TFS_OK)
            return st;
        if (f.field < 1 || f.field > 3)
            continue;
        if (f.wire != TFS_PB_LEN)
            return TFS_ERR_PROTO;
        if (f.field == 1) {
            s->name = f.data;
            s->name_len = f.len;
        } else if (f.field == 2) {
            if (s->has_slice)
                return TFS_ERR_PROTO;
            s->has_slice = 1;
            st = tfs_parse_slice(f.data, f.len, &s->rank, starts, lengths);
            if (st != TFS_OK)
                return st;
        } else {
            if (s->has_tensor)
                return TFS_ERR_PROTO;
            s->has_tensor = 1;
            s->tensor = f.data;
            s->tensor_len = f.len;
        }
    }
    return TFS_OK;
}

/* ---- values -------------------------------------------------------------- */

/* Scalars in one occurrence of the typed field (packed or not). */
static int count_scalars(const tfs_pb_field *f, int kind, uint64_t *out)
{
    const uint8_t *q, *qend;
    uint64_t k = 0, v;
    if (f->wire != TFS_PB_LEN) {
        int want = kind == V_VARINT ? TFS_PB_VARINT :
                   kind == V_FIXED32 ? TFS_PB_FIXED32 : TFS_PB_FIXED64;
        if ((int)f->wire != want)
            return TFS_ERR_PROTO;
        *out = 1;
        return TFS_OK;
    }
    if (kind == V_FIXED32 || kind == V_FIXED64) {
        size_t w = kind == V_FIXED32 ? 4 : 8;
        if (f->len % w)
            return TFS_ERR_SIZE;
        *out = f->len / w;
        return TFS_OK;
    }
    q = f->data;
    qend = f->data + f->len;
    while (q < qend) {
        if (tfs_get_varint64(&q, qend, &v) != TFS_OK)
            return TFS_ERR_PROTO;
        k++;
    }
    *out = k;
    return TFS_OK;
}

int tfs_v1_count_values(const uint8_t *p, size_t n, int64_t dtype, tfs_v1_values *v)
{
    const uint8_t *end = p + n;
    v1_layout l;
    tfs_pb_field f;
    uint64_t scalars = 0, k;
    int st;
    memset(v, 0, sizeof(*v));
    if (layout(dtype, &l) != TFS_OK)
        return TFS_ERR_RANGE;
    while (p < end) {
        st = tfs_pb_next(&p, end, &f);
        if (st != TFS_OK)
            return st;
        if (f.field == 4) {
            if (f.wire != TFS_PB_LEN)
                return TFS_ERR_PROTO;
            v->content = f.data;
            v->content_len = f.len;
            v->has_content = 1;
        } else if (f.field == l.field) {
            if (l.kind == V_BYTES) {
                if (f.wire != TFS_PB_LEN)
                    return TFS_ERR_PROTO;
                k = 1;
            } else {
                st = count_scalars(&f, l.kind, &k);
                if (st != TFS_OK)
                    return st;
            }
            scalars += k;   /* at most n: no overflow */
        }
    }
    if (scalars % (uint64_t)l.per_elem)
        return TFS_ERR_SIZE;
    v->count = scalars / (uint64_t)l.per_elem;
    return TFS_OK;
}

/* Store one integer value in `width` bytes (truncating), native byte order. */
static void put_int(uint8_t *out, size_t width, uint64_t v)
{
    uint8_t b8;
    uint16_t b16;
    uint32_t b32;
    switch (width) {
    case 1: b8 = (uint8_t)v; memcpy(out, &b8, 1); break;
    case 2: b16 = (uint16_t)v; memcpy(out, &b16, 2); break;
    case 4: b32 = (uint32_t)v; memcpy(out, &b32, 4); break;
    default: memcpy(out, &v, 8); break;
    }
}

/* Little-endian element bytes -> native order (a no-op copy on little-endian hosts). */
static void put_le(uint8_t *out, const uint8_t *in, size_t width)
{
    uint32_t x32;
    uint64_t x64;
    if (width == 4) {
        x32 = tfs_load_le32(in);
        memcpy(out, &x32, 4);
    } else if (width == 8) {
        x64 = tfs_load_le64(in);
        memcpy(out, &x64, 8);
    } else if (width == 2) {
        uint16_t x16 = (uint16_t)(in[0] | (in[1] << 8));
        memcpy(out, &x16, 2);
    } else {
        memcpy(out, in, width);
    }
}

int tfs_v1_decode_values(const uint8_t *p, size_t n, int64_t dtype, uint64_t count,
                         void *out, size_t out_size)
{
    const uint8_t *end = p + n, *q, *qend;
    uint8_t *o = (uint8_t *)out;
    v1_layout l;
    tfs_v1_values v;
    tfs_pb_field f;
    uint64_t scalars = 0, total, v64;
    size_t scalar_size, w;
    int st, bool_type;
    if (layout(dtype, &l) != TFS_OK || l.kind == V_BYTES)
        return TFS_ERR_RANGE;
    st = tfs_v1_count_values(p, n, dtype, &v);
    if (st != TFS_OK)
        return st;
    if (count > SIZE_MAX / l.itemsize || out_size < count * l.itemsize)
        return TFS_ERR_BUFFER;
    if (v.count > 0 && v.has_content && v.content_len > 0)
        return TFS_ERR_SIZE;
    if (v.count == 0 && v.has_content && v.content_len > 0) {
        /* Raw little-endian element bytes; complex splits into two scalars. */
        size_t i;
        w = l.itemsize / (size_t)l.per_elem;
        if (v.content_len % l.itemsize || v.content_len / l.itemsize != count)
            return TFS_ERR_SIZE;
        for (i = 0; i < v.content_len; i += w)
            put_le(o + i, v.content + i, w);
        if (base_type(dtype) == 10)
            for (i = 0; i < v.content_len; i++)
                o[i] = o[i] != 0;
        return TFS_OK;
    }
    if (v.count != count)
        return TFS_ERR_SIZE;
    total = count * (uint64_t)l.per_elem;
    scalar_size = l.itemsize / (size_t)l.per_elem;
    bool_type = base_type(dtype) == 10;
    while (p < end) {
        st = tfs_pb_next(&p, end, &f);
        if (st != TFS_OK)
            return st;
        if (f.field != l.field)
            continue;
        if (f.wire != TFS_PB_LEN) {
            /* One unpacked scalar. */
            q = NULL;
            qend = NULL;
        } else {
            q = f.data;
            qend = f.data + f.len;
        }
        for (;;) {
            if (q == NULL) {
                v64 = f.varint;          /* varint, fixed32 or fixed64 value */
            } else if (q >= qend) {
                break;
            } else if (l.kind == V_VARINT) {
                if (tfs_get_varint64(&q, qend, &v64) != TFS_OK)
                    return TFS_ERR_PROTO;
            } else if (l.kind == V_FIXED32) {
                v64 = tfs_load_le32(q);  /* counting checked the length */
                q += 4;
            } else {
                v64 = tfs_load_le64(q);
                q += 8;
            }
            if (scalars >= total)
                return TFS_ERR_SIZE;
            if (bool_type)
                v64 = v64 != 0;
            put_int(o + scalars * scalar_size, scalar_size, v64);
            scalars++;
            if (q == NULL)
                break;
        }
    }
    return scalars == total ? TFS_OK : TFS_ERR_SIZE;
}

int tfs_v1_next_string(const uint8_t **pos, const uint8_t *end, const uint8_t **s,
                       size_t *len)
{
    tfs_pb_field f;
    while (*pos < end) {
        int st = tfs_pb_next(pos, end, &f);
        if (st != TFS_OK)
            return st;
        if (f.field == 8) {
            if (f.wire != TFS_PB_LEN)
                return TFS_ERR_PROTO;
            *s = f.data;
            *len = f.len;
            return TFS_OK;
        }
    }
    return TFS_END;
}
