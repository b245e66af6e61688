# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Tensor bytes that need decoding: DT_STRING, DT_VARIANT, and checksums (Cython over csrc/)."""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize

import numpy as np
import crc32c as _crc32c

from ._format cimport *
from .errors import ChecksumMismatchError, CorruptCheckpointError


def mask_crc(uint32_t crc):
    """TF's masked form of a CRC-32C (as stored in files)."""
    return tfs_crc_mask(crc)


def unmask_crc(uint32_t masked):
    """Inverse of :func:`mask_crc`."""
    return tfs_crc_unmask(masked)


def decode_strings(data, Py_ssize_t count, bint big_endian, masked_crc, bint verify,
                   path=None, key=None, Py_ssize_t offset=0):
    """Decode a DT_STRING tensor's bytes into a flat object array of bytes.

    Parameters
    ----------
    data : bytes-like
        Exactly the tensor's ``size`` bytes.
    count : int
        Number of elements (from the shape).
    big_endian : bool
        The bundle's byte order (for the checksum images).
    masked_crc : int or None
        The entry's stored CRC.
    verify : bool
        Check the length checksum and the entry CRC.
    """
    cdef const uint8_t[::1] buf = memoryview(data).cast("B")
    cdef size_t size = buf.shape[0]
    cdef size_t images_len = 0, header_len = 0, pos
    cdef uint32_t stored, computed
    cdef Py_ssize_t i
    cdef const uint8_t *base
    if count < 0 or <size_t>count > size:
        raise CorruptCheckpointError(
            f"{path}: string tensor {key!r} at offset {offset} has {count} elements but only "
            f"{size} bytes (each element needs at least one length byte)",
            path=path, key=key, offset=offset)
    lengths = np.empty(count, dtype=np.uint64)
    images = np.empty(8 * count, dtype=np.uint8)
    cdef uint64_t[::1] lv = lengths
    cdef uint8_t[::1] iv = images
    base = &buf[0] if size else NULL
    if size == 0:
        raise CorruptCheckpointError(
            f"{path}: string tensor {key!r} at offset {offset} has size 0; it needs at least "
            f"the 4 checksum bytes", path=path, key=key, offset=offset)
    st = tfs_string_scan(base, size, count, big_endian, &lv[0] if count else NULL,
                         &iv[0] if count else NULL, &images_len, &header_len)
    check(st, f"{path}: string tensor {key!r} at offset {offset}", path, key, offset)
    if verify:
        stored = tfs_load_be32(base + header_len) if big_endian else tfs_load_le32(base + header_len)
        computed = _crc32c.crc32c(images[:images_len])
        if tfs_crc_unmask(stored) != computed:
            raise ChecksumMismatchError(
                f"{path}: string tensor {key!r} at offset {offset}: the length checksum does not "
                f"match (stored {tfs_crc_unmask(stored)}, computed {computed})",
                path=path, key=key, offset=offset)
        view = memoryview(buf)
        computed = _crc32c.crc32c(view[header_len:header_len + 4], computed)
        computed = _crc32c.crc32c(view[header_len + 4:], computed)
        _compare_crc(masked_crc, computed, path, key, offset, size)
    out = np.empty(count, dtype=object)
    pos = header_len + 4
    for i in range(count):
        out[i] = PyBytes_FromStringAndSize(<const char *>base + pos, lv[i])
        pos += lv[i]
    return out


def decode_variants(data, Py_ssize_t count, masked_crc, bint verify,
                    path=None, key=None, Py_ssize_t offset=0):
    """Split a DT_VARIANT tensor into its serialized VariantTensorDataProto elements.

    Returns a flat object array of bytes; each element's checksum is verified
    when ``verify`` is true.
    """
    cdef const uint8_t[::1] buf = memoryview(data).cast("B")
    cdef size_t size = buf.shape[0]
    cdef const uint8_t *base = &buf[0] if size else NULL
    cdef const uint8_t *p = base
    cdef const uint8_t *end = base + size
    cdef uint64_t n
    cdef uint32_t crc = 0, stored
    cdef Py_ssize_t i
    if count < 0 or <size_t>count > size // 5 + 1:
        raise CorruptCheckpointError(
            f"{path}: variant tensor {key!r} at offset {offset} has {count} elements but only "
            f"{size} bytes", path=path, key=key, offset=offset)
    out = np.empty(count, dtype=object)
    for i in range(count):
        at = <size_t>(p - base)
        if tfs_get_varint64(&p, end, &n) != TFS_OK or n > <uint64_t>(end - p) or \
                end - p - <Py_ssize_t>n < 4:
            raise CorruptCheckpointError(
                f"{path}: variant tensor {key!r}: element {i} runs past the tensor's {size} bytes",
                path=path, key=key, offset=offset + at)
        payload = PyBytes_FromStringAndSize(<const char *>p, n)
        p += n
        if verify:
            crc = _crc32c.crc32c(int(n).to_bytes(8, "little"), crc)
            crc = _crc32c.crc32c(payload, crc)
            stored = tfs_load_le32(p)
            if tfs_crc_unmask(stored) != crc:
                raise ChecksumMismatchError(
                    f"{path}: variant tensor {key!r}: the checksum after element {i} does not "
                    f"match", path=path, key=key, offset=offset + at)
            crc = _crc32c.crc32c(PyBytes_FromStringAndSize(<const char *>p, 4), crc)
        p += 4
        out[i] = payload
    if p != end:
        raise CorruptCheckpointError(
            f"{path}: variant tensor {key!r} at offset {offset}: {end - p} bytes left over after "
            f"{count} elements", path=path, key=key, offset=offset)
    if verify:
        _compare_crc(masked_crc, crc, path, key, offset, size)
    return out


def _compare_crc(masked_crc, uint32_t computed, path, key, offset, size):
    # proto3 omits a zero fixed32: an entry without the field stores masked CRC 0.
    if masked_crc is None:
        masked_crc = 0
    if tfs_crc_unmask(masked_crc) != computed:
        stored = str(tfs_crc_unmask(masked_crc))
        raise ChecksumMismatchError(
            f"{path}: tensor {key!r} ({size} bytes at offset {offset}) fails its checksum: "
            f"stored CRC-32C {stored}, computed {computed}", path=path, key=key, offset=offset)


def crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b):
    """CRC-32C of A followed by B from the CRC-32Cs of A and B and B's length."""
    return tfs_crc32c_combine(crc_a, crc_b, len_b)


# Buffers of at least twice this many bytes are checksummed in pieces of at least this
# size when check_crc is given a pool (handing a piece to a thread costs some tens of
# microseconds; 1 MiB takes about a hundred to checksum).
PARALLEL_PIECE = 1 << 20


def check_crc(data, masked_crc, path=None, key=None, Py_ssize_t offset=0, pool=None,
              int pieces=1):
    """Verify the CRC-32C of a fixed-size tensor's bytes against its entry.

    With ``pool`` (an executor) and ``pieces`` > 1, a large buffer is cut into up to
    ``pieces`` parts checksummed in the pool's threads (crc32c releases the GIL) and
    the parts' CRCs are combined."""
    view = memoryview(data).cast("B")
    cdef Py_ssize_t n = len(view), step, start
    count = min(pieces, n // PARALLEL_PIECE) if pool is not None else 1
    if count < 2:
        _compare_crc(masked_crc, _crc32c.crc32c(view), path, key, offset, n)
        return
    step = -(-n // count)
    futures = [pool.submit(_crc32c.crc32c, view[start:start + step])
               for start in range(step, n, step)]
    cdef uint32_t crc = _crc32c.crc32c(view[:step])  # the first piece on this thread
    for start, future in zip(range(step, n, step), futures):
        crc = tfs_crc32c_combine(crc, future.result(), min(step, n - start))
    _compare_crc(masked_crc, crc, path, key, offset, n)
