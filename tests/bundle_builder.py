"""An independent, deliberately simple bundle writer used to build test inputs.

It follows FORMAT.md step by step in plain Python, sharing no code with
tfshard, so tests can hand-build what TensorFlow never writes (big-endian
bundles, Snappy blocks, hostile sizes, malformed entries) and can check the
reader against a second implementation.  Its SSTable output is proven
byte-identical to TensorFlow's by tests/test_format.py.
"""

from __future__ import annotations

import os

import crc32c
import numpy as np

BLOCK_SIZE = 262144
RESTART_INTERVAL = 16
MAGIC = bytes.fromhex("57fb808b247547db")

# numpy dtype name -> TF DataType code
CODES = {
    "float32": 1, "float64": 2, "int32": 3, "uint8": 4, "int16": 5, "int8": 6, "object": 7,
    "complex64": 8, "int64": 9, "bool": 10, "bfloat16": 14, "uint16": 17, "complex128": 18,
    "float16": 19, "uint32": 22, "uint64": 23, "float8_e5m2": 24, "float8_e4m3fn": 25,
    "float8_e4m3fnuz": 26, "float8_e4m3b11fnuz": 27, "float8_e5m2fnuz": 28, "int4": 29,
    "uint4": 30, "int2": 31, "uint2": 32, "float4_e2m1fn": 33,
}


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative numbers as protobuf writes int64
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def field(num: int, wire: int, payload) -> bytes:
    tag = varint(num << 3 | wire)
    if wire == 0:
        return tag + varint(payload)
    if wire == 2:
        return tag + varint(len(payload)) + payload
    if wire == 5:
        return tag + payload.to_bytes(4, "little")
    raise ValueError(wire)


def encode_shape(shape) -> bytes:
    return b"".join(field(2, 2, field(1, 0, d) if d else b"") for d in shape)


def encode_slice(extents) -> bytes:
    out = b""
    for start, length in extents:
        ext = b"" if length < 0 else (field(1, 0, start) if start else b"") + field(2, 0, length)
        out += field(1, 2, ext)
    return out


def encode_entry(dtype, shape, shard_id=0, offset=0, size=0, crc=None, slices=()) -> bytes:
    out = field(1, 0, dtype) + field(2, 2, encode_shape(shape))
    if shard_id:
        out += field(3, 0, shard_id)
    if offset:
        out += field(4, 0, offset)
    if size:
        out += field(5, 0, size)
    if crc:  # proto3 leaves out a zero fixed32, as it does the other zero fields
        out += field(6, 5, crc)
    for s in slices:
        out += field(7, 2, encode_slice(s))
    return out


def encode_header(num_shards=1, endianness=0, producer=1, min_consumer=0, bad_consumers=()):
    version = (field(1, 0, producer) if producer else b"") + \
              (field(2, 0, min_consumer) if min_consumer else b"")
    if bad_consumers:
        version += field(3, 2, b"".join(varint(c) for c in bad_consumers))
    return (field(1, 0, num_shards) if num_shards else b"") + \
           (field(2, 0, endianness) if endianness else b"") + field(3, 2, version)


# ---- OrderedCode slice keys (FORMAT.md §8.2) -------------------------------

def _oc_uint(v: int) -> bytes:
    b = v.to_bytes(8, "big").lstrip(b"\0")
    return bytes([len(b)]) + b


def _oc_int(v: int) -> bytes:
    x = ~v if v < 0 else v
    length = (x.bit_length() + 7) // 7
    buf = (b"\xff\xff" if v < 0 else b"\0\0") + (v & ((1 << 64) - 1)).to_bytes(8, "big")
    out = bytearray(buf[10 - length:])
    out[0] ^= {1: 0x80, 2: 0xC0, 3: 0xE0, 4: 0xF0, 5: 0xF8, 6: 0xFC, 7: 0xFE}.get(length, 0xFF)
    if length > 8:
        out[1] ^= {9: 0x80, 10: 0xC0}[length]
    return bytes(out)


def slice_key(name: str, extents) -> bytes:
    esc = bytearray()
    for c in name.encode():
        esc += b"\x00\xff" if c == 0 else b"\xff\x00" if c == 0xFF else bytes([c])
    key = b"\x00" + bytes(esc) + b"\x00\x01" + _oc_uint(len(extents))
    for start, length in extents:
        key += _oc_int(0 if length < 0 else start) + _oc_int(-1 if length < 0 else length)
    return key


# ---- SSTable (FORMAT.md §3.7) -----------------------------------------------

def _shortest_separator(a: bytes, b: bytes) -> bytes:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    if i < n and a[i] < 0xFF and a[i] + 1 < b[i]:
        return a[:i] + bytes([a[i] + 1])
    return a


def _short_successor(a: bytes) -> bytes:
    for i, c in enumerate(a):
        if c != 0xFF:
            return a[:i] + bytes([c + 1])
    return a


class _Block:
    def __init__(self, interval):
        self.interval = interval
        self.buf = bytearray()
        self.restarts = [0]
        self.count = 0
        self.last = b""

    def add(self, key, value):
        shared = 0
        if self.count < self.interval:
            while shared < min(len(key), len(self.last)) and key[shared] == self.last[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.count = 0
        self.buf += varint(shared) + varint(len(key) - shared) + varint(len(value))
        self.buf += key[shared:] + value
        self.last = key
        self.count += 1

    def size_estimate(self):
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self):
        return bytes(self.buf) + b"".join(r.to_bytes(4, "little") for r in self.restarts) + \
            len(self.restarts).to_bytes(4, "little")

    def empty(self):
        return not self.buf


def build_table(items, compress=False, block_size=BLOCK_SIZE) -> bytes:
    """SSTable bytes for sorted ``(key, value)`` pairs, as TF's table builder writes them."""
    out = bytearray()
    index = _Block(1)
    data = _Block(RESTART_INTERVAL)
    pending = None
    last_key = b""
    num = 0

    def write_block(contents):
        kind = 0
        if compress:
            import cramjam
            c = bytes(cramjam.snappy.compress_raw(contents))
            if len(c) < len(contents) - len(contents) // 8:
                contents, kind = c, 1
        handle = (len(out), len(contents))
        out.extend(contents)
        out.append(kind)
        out.extend(mask(crc32c.crc32c(contents + bytes([kind]))).to_bytes(4, "little"))
        return handle

    def flush():
        nonlocal data, pending
        if data.empty():
            return
        pending = write_block(data.finish())
        data = _Block(RESTART_INTERVAL)

    for key, value in items:
        if num > 0 and len(key) + len(value) >= 2 * block_size:
            flush()
        if pending is not None:
            last_key = _shortest_separator(last_key, key)
            index.add(last_key, varint(pending[0]) + varint(pending[1]))
            pending = None
        last_key = key
        num += 1
        data.add(key, value)
        if data.size_estimate() >= block_size:
            flush()
    flush()
    meta = write_block(_Block(RESTART_INTERVAL).finish())
    if pending is not None:
        last_key = _short_successor(last_key)
        index.add(last_key, varint(pending[0]) + varint(pending[1]))
    idx = write_block(index.finish())
    handles = varint(meta[0]) + varint(meta[1]) + varint(idx[0]) + varint(idx[1])
    out += handles + b"\0" * (40 - len(handles)) + MAGIC
    return bytes(out)


# ---- tensor encodings (FORMAT.md §7) ---------------------------------------

def encode_strings(values, big_endian=False):
    """(data bytes, masked entry crc) of a DT_STRING tensor."""
    order = "big" if big_endian else "little"
    lengths = b"".join(varint(len(v)) for v in values)
    images = b"".join(len(v).to_bytes(4 if len(v) <= 0xFFFFFFFF else 8, order) for v in values)
    length_crc = crc32c.crc32c(images)
    stored = mask(length_crc).to_bytes(4, order)
    body = b"".join(values)
    entry_crc = crc32c.crc32c(body, crc32c.crc32c(stored, length_crc))
    return lengths + stored + body, mask(entry_crc)


def encode_tensor(array, big_endian=False):
    """(dtype code, data bytes, masked crc) for a numpy array."""
    a = np.asarray(array)
    code = CODES[str(a.dtype)]
    if code == 7:
        data, crc = encode_strings(list(a.reshape(-1)), big_endian)
        return code, data, crc
    if big_endian and a.dtype.itemsize > 1:
        unit = a.dtype.itemsize // 2 if a.dtype.kind == "c" else a.dtype.itemsize
        data = np.ascontiguousarray(a).view(f"u{unit}").byteswap().tobytes()
    else:
        data = np.ascontiguousarray(a).tobytes()
    return code, data, mask(crc32c.crc32c(data))


class Bundle:
    """Collects tensors, then writes ``prefix.index`` + data shards."""

    def __init__(self, big_endian=False):
        self.big_endian = big_endian
        self.items = []      # (key, dtype, shape, data bytes, crc, slices-or-None)
        self.extra = []      # (key, raw entry bytes) added verbatim
        self.slices = {}     # name -> (dtype, full shape, [extents, ...])

    def add(self, name, array, *, shard=0):
        code, data, crc = encode_tensor(array, self.big_endian)
        self.items.append((name.encode(), code, np.shape(array), data, crc, shard))

    def add_slice(self, name, full_shape, extents, array, *, shard=0):
        a = np.asarray(array)
        code, data, crc = encode_tensor(a, self.big_endian)
        self.items.append((slice_key(name, extents), code, a.shape, data, crc, shard))
        self.slices.setdefault(name, (code, tuple(full_shape), []))[2].append(extents)

    def add_raw_entry(self, key: bytes, entry: bytes):
        self.extra.append((key, entry))

    def write(self, prefix, num_shards=1, alignment=1, compress=False, header=None):
        files = [bytearray() for _ in range(num_shards)]
        entries = {}
        for key, code, shape, data, crc, shard in self.items:
            f = files[shard]
            entries[key] = encode_entry(code, shape, shard, len(f), len(data), crc)
            f += data
            f += b"\0" * (-len(f) % alignment)
        for name, (code, shape, extents) in self.slices.items():
            entries[name.encode()] = encode_entry(code, shape, slices=extents)
        entries.update(self.extra)
        if header is None:
            header = encode_header(num_shards, 1 if self.big_endian else 0)
        items = [(b"", header)] + sorted(entries.items())
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        with open(prefix + ".index", "wb") as fh:
            fh.write(build_table(items, compress=compress))
        for i, f in enumerate(files):
            with open(f"{prefix}.data-{i:05d}-of-{num_shards:05d}", "wb") as fh:
                fh.write(f)
        return prefix
