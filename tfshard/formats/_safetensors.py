"""safetensors as a format adapter: single files, Hugging Face sharded models
(``*.safetensors.index.json``) and directories of either.  Reading validates
each header and returns zero-copy views of a map of the file; writing lays the
header out from the plan and puts each tensor's bytes straight into place."""

from __future__ import annotations

import glob
import json
import mmap
import os
import re
import sys

import crc32c

from .. import dtypes
from .. import _commit
from .._util import (
    close_map,
    create_exclusive,
    drop_pages,
    remove_file,
    temp_name,
    write_all,
    write_temp,
)
from ..errors import (
    CheckpointNotFoundError,
    ChecksumMismatchError,
    CorruptCheckpointError,
    OutputExistsError,
    UnsupportedError,
)
from ..slices import prod
from ._base import (
    _ST_FOREIGN_BITS,
    _ST_INDEX_SUFFIX,
    _ST_SUFFIX,
    _ST_TO_TF,
    _TF_TO_ST,
    Sink,
    Source,
    _empty,
    _is_plain_filename,
    _make_dirs,
    _open_binary,
    _read_json,
)


# ---- safetensors ------------------------------------------------------------------

# The safetensors library refuses headers above this size; so do we, which
# also bounds what a hostile length field makes us read.
_ST_MAX_HEADER = 100_000_000

#: The ``__metadata__`` key under which tfshard records every tensor's CRC-32C:
#: its value is a JSON object (as a string, since metadata values are strings)
#: mapping each tensor name of the file to the CRC-32C (Castagnoli, unmasked) of
#: the tensor's bytes as stored in the file, as 8 lowercase hex digits.
CHECKSUM_KEY = "tfshard.crc32c"
_CRC_RE = re.compile(r"[0-9a-f]{8}")


class _STEntry:
    __slots__ = ("file", "st_dtype", "shape", "begin", "end")

    def __init__(self, file, st_dtype, shape, begin, end):
        self.file, self.st_dtype, self.shape, self.begin, self.end = (
            file, st_dtype, shape, begin, end)


class _STFile:
    """One safetensors file: its validated header and a read-only map of it."""

    def __init__(self, path: str):
        self.path = path
        self.buffer = None
        with _open_binary(path, "safetensors file") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise CorruptCheckpointError(
                    f"{path} is {size} bytes; a safetensors file starts with an 8-byte header "
                    f"length", path=path, offset=0)
            length = int.from_bytes(f.read(8), "little")
            if length > min(size - 8, _ST_MAX_HEADER):
                raise CorruptCheckpointError(
                    f"{path}: the header length field says {length} bytes; the file has "
                    f"{size - 8} after it, and headers are limited to {_ST_MAX_HEADER}",
                    path=path, offset=0)
            raw = f.read(length)
            if len(raw) != length:
                raise CorruptCheckpointError(f"{path} shrank while its header was read",
                                             path=path, offset=8)
            self.data_start = 8 + length
            self.size = size
            self.metadata, self.entries = _parse_st_header(raw, path, self, size - 8 - length)
            self.crcs = _parse_checksums(self.metadata, self.entries, path)
            self.buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def close(self):
        close_map(self.buffer)


def _no_duplicate_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_st_header(raw: bytes, path: str, file, data_size: int):
    """Validate a safetensors JSON header the way the format requires: known
    dtypes, shapes matching byte spans, and spans that tile the data section
    exactly (no gap, overlap or trailing bytes).  Returns (metadata, entries)."""
    def corrupt(message, key=None):
        return CorruptCheckpointError(f"{path}: {message}", path=path, key=key, offset=8)

    if not raw.startswith(b"{"):
        raise corrupt("the header is not a JSON object (it must start with '{')")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        raise corrupt(f"the header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise corrupt("the header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, str) for v in metadata.values())):
        raise corrupt("__metadata__ must map strings to strings")
    entries = {}
    for name, info in header.items():
        if not isinstance(info, dict):
            raise corrupt(f"the entry of tensor {name!r} is not an object", name)
        st_dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if st_dtype in _ST_TO_TF:
            bits = dtypes.by_name(_ST_TO_TF[st_dtype]).itemsize * 8
        elif st_dtype in _ST_FOREIGN_BITS:
            bits = _ST_FOREIGN_BITS[st_dtype]
        else:
            raise corrupt(f"tensor {name!r} has unknown dtype {st_dtype!r}", name)
        # type() is int: JSON true/false would pass isinstance(..., int).
        if not (isinstance(shape, list) and all(type(d) is int and 0 <= d < 1 << 63
                                                for d in shape)):
            raise corrupt(f"tensor {name!r} has shape {shape!r}; expected a list of "
                          f"non-negative integers", name)
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise corrupt(f"tensor {name!r} has data_offsets {offsets!r}; expected "
                          f"[begin, end] with 0 <= begin <= end", name)
        begin, end = offsets
        if prod(shape) * bits != (end - begin) * 8:
            raise corrupt(f"tensor {name!r} is {st_dtype} {shape}, which needs "
                          f"{prod(shape) * bits // 8} bytes, but data_offsets span "
                          f"{end - begin}", name)
        entries[name] = _STEntry(file, st_dtype, tuple(shape), begin, end)
    expected = 0
    for e in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if e.begin != expected:
            what = "overlaps" if e.begin < expected else "leaves a gap"
            raise corrupt(f"tensor data {what} at byte {min(e.begin, expected)} of the data "
                          f"section (a tensor starts at {e.begin}, the previous ends at "
                          f"{expected})")
        expected = e.end
    if expected != data_size:
        raise corrupt(f"the tensors cover {expected} bytes, but the data section after the "
                      f"header is {data_size} bytes")
    return metadata or {}, entries


def _parse_checksums(metadata: dict, entries: dict, path: str) -> dict:
    """``{tensor name: CRC-32C}`` from a header's :data:`CHECKSUM_KEY` (``{}`` when
    there is none).  Entries for tensors the file does not hold are ignored: a tool
    that dropped tensors but kept the metadata leaves nothing wrong to check."""
    text = metadata.get(CHECKSUM_KEY)
    if text is None:
        return {}
    try:
        table = json.loads(text)
    except (ValueError, RecursionError):
        table = None
    if not isinstance(table, dict) or not all(
            isinstance(v, str) and _CRC_RE.fullmatch(v) for v in table.values()):
        raise CorruptCheckpointError(
            f"{path}: __metadata__[{CHECKSUM_KEY!r}] is not a JSON object of tensor names to "
            f"8-digit lowercase hex CRC-32C values", path=path, key=CHECKSUM_KEY, offset=8)
    return {name: int(v, 16) for name, v in table.items() if name in entries}


def _safetensors_inputs(path: str):
    """The files of a (possibly sharded) safetensors model and its weight map
    (None when there is no index file)."""
    if os.path.isdir(path):
        index = os.path.join(path, "model" + _ST_INDEX_SUFFIX)
        if not os.path.isfile(index):
            found = sorted(glob.glob(os.path.join(glob.escape(path), "*" + _ST_INDEX_SUFFIX)))
            if len(found) > 1:
                raise UnsupportedError(
                    f"{path} holds several safetensors index files "
                    f"({', '.join(os.path.basename(f) for f in found[:5])}); pass one of them",
                    path=path)
            index = found[0] if found else None
        if index:
            return _safetensors_index(index)
        files = sorted(glob.glob(os.path.join(glob.escape(path), "*" + _ST_SUFFIX)))
        if not files:
            raise CheckpointNotFoundError(f"{path} holds no .safetensors file", path=path)
        return files, None
    if path.lower().endswith(_ST_INDEX_SUFFIX):
        return _safetensors_index(path)
    return [path], None


def _safetensors_index(path: str):
    index = _read_json(path, "safetensors index", 1 << 30)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not (isinstance(weight_map, dict) and all(isinstance(v, str)
                                                 for v in weight_map.values())):
        raise CorruptCheckpointError(f"{path}: expected an object with a 'weight_map' from "
                                     f"tensor names to file names", path=path)
    directory = os.path.dirname(path)
    files = []
    for name, file in weight_map.items():
        # Shards lie beside the index; a path in the map must not send us elsewhere.
        if not _is_plain_filename(file):
            raise CorruptCheckpointError(f"{path}: tensor {name!r} is mapped to {file!r}; "
                                         f"expected a file name beside the index",
                                         path=path, key=name)
        if file not in files:
            files.append(file)
    return [os.path.join(directory, f) for f in files], weight_map


class _SafetensorsSource(Source):
    """A safetensors file, a sharded model through its ``*.safetensors.index.json``,
    or a directory of either.  Headers are validated at open; tensors are
    zero-copy views of each file's map."""

    format = "safetensors"

    def __init__(self, path, *, verify: bool = True):
        super().__init__(path)
        self._files: list = []
        self._entries: dict = {}
        self.verify = verify
        self._verified: set = set()
        try:
            paths, weight_map = _safetensors_inputs(path)
            opened = {}
            for p in paths:
                opened[os.path.basename(p)] = f = _STFile(p)
                self._files.append(f)
            if weight_map is None:
                for f in self._files:
                    for name, e in f.entries.items():
                        if name in self._entries:
                            raise UnsupportedError(
                                f"tensor {name!r} is in both {self._entries[name].file.path} "
                                f"and {f.path}; open one file", path=path, key=name)
                        self._entries[name] = e
            else:
                for name, file in weight_map.items():
                    e = opened[file].entries.get(name)
                    if e is None:
                        raise CorruptCheckpointError(
                            f"{path}: the index maps tensor {name!r} to {file}, which does not "
                            f"hold it", path=path, key=name)
                    self._entries[name] = e
        except BaseException:
            self.close()
            raise
        self._sorted = sorted(self._entries)
        #: The ``__metadata__`` of the first file (``{}`` when it has none).
        self.metadata = dict(self._files[0].metadata) if self._files else {}

    def _names(self):
        return self._sorted

    def _release(self, name):
        e = self._entries.get(name)
        if e is not None:
            drop_pages(e.file.buffer, e.file.data_start + e.begin, e.file.data_start + e.end)

    def _entry(self, name) -> _STEntry:
        e = self._entries.get(name) if isinstance(name, str) else None
        if e is None:
            raise self._not_found(name)
        return e

    def _dtype(self, name, e) -> dtypes.DType:
        if e.st_dtype not in _ST_TO_TF:
            raise UnsupportedError(
                f"{e.file.path}: tensor {name!r} has safetensors dtype {e.st_dtype}, which has "
                f"no TensorFlow equivalent", path=e.file.path, key=name)
        return dtypes.by_name(_ST_TO_TF[e.st_dtype])

    def _info(self, name):
        e = self._entry(name)
        return self._dtype(name, e).name, e.shape

    def _nbytes(self, name):
        e = self._entry(name)
        return e.end - e.begin

    def _read(self, name):
        import numpy as np

        e = self._entry(name)
        dt = self._dtype(name, e)
        if len(e.shape) > 64:
            raise UnsupportedError(f"tensor {name!r} has rank {len(e.shape)}; numpy allows 64",
                                   path=e.file.path, key=name)
        count = prod(e.shape)
        f = e.file
        start = f.data_start + e.begin
        # A file truncated after it was mapped would fault (SIGBUS) when a view
        # is read: check its current size first.
        current = f.buffer.size()
        if f.data_start + e.end > min(current, f.size):
            raise CorruptCheckpointError(
                f"{f.path} is {current} bytes, but tensor {name!r} needs bytes "
                f"[{start}, {f.data_start + e.end}) (the file was truncated)",
                path=f.path, key=name, offset=start)
        if self.verify and name in f.crcs and name not in self._verified:
            self._check_crc(name, e, start)
        if count == 0:
            return _empty(e.shape, dt.numpy, e.file.path, name)
        arr = np.frombuffer(f.buffer, dtype=dt.numpy, count=count, offset=start)
        if sys.byteorder == "big" and dt.swap:
            arr = _byteswapped(arr, dt)
        return arr.reshape(e.shape)

    @property
    def checksummed(self) -> set:
        """The tensors whose CRC-32C the files record (:data:`CHECKSUM_KEY`)."""
        return {name for name, e in self._entries.items() if name in e.file.crcs}

    def _check_crc(self, name, e, start):
        f = e.file
        with memoryview(f.buffer) as whole, whole[start:f.data_start + e.end] as data:
            crc = crc32c.crc32c(data)
        if crc != f.crcs[name]:
            raise ChecksumMismatchError(
                f"{f.path}: tensor {name!r} has CRC-32C {crc:08x}, but the file's "
                f"__metadata__ records {f.crcs[name]:08x} (the data changed after it was "
                f"written)", path=f.path, key=name, offset=start)
        self._verified.add(name)

    def _close(self):
        for f in self._files:
            f.close()


def _byteswapped(arr, dt):
    """A native-order copy of little-endian data (big-endian hosts only)."""
    import numpy as np

    out = arr.view(np.dtype(f"u{dt.swap}")).byteswap().view(dt.numpy)
    out.flags.writeable = False
    return out


# ---- writing ------------------------------------------------------------------------

def _shard_groups(plan: dict, max_shard_size) -> list:
    """Tensor names per output file: in plan order, a new file whenever the next
    tensor would take the current one past ``max_shard_size``."""
    groups: list = [[]]
    used = 0
    for name, (dt, shape) in plan.items():
        n = dt.itemsize * prod(shape)
        if max_shard_size is not None and groups[-1] and used + n > max_shard_size:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += n
    return groups


class _STShard:
    """One safetensors file being written: its header, each tensor's offset, and
    where in the header each tensor's CRC-32C goes once its bytes are written."""

    def __init__(self, final: str, names: list, plan: dict, metadata: dict):
        self.final = final
        self.path = temp_name(final)  # where it is until the commit renames it
        # Larger elements first: with the data section starting on a multiple of
        # 8, every tensor is then aligned to its element size (as the
        # safetensors library lays files out), so mapped views are aligned.
        ordered = sorted(names, key=lambda n: -plan[n][0].itemsize)
        header, self.offsets, offset = {}, {}, 0
        for name in ordered:
            dt, shape = plan[name]
            size = dt.itemsize * prod(shape)
            header[name] = {"dtype": _TF_TO_ST[dt.name], "shape": list(shape),
                            "data_offsets": [offset, offset + size]}
            self.offsets[name] = offset
            offset += size
        raw, crc_at = _header_bytes(header, metadata, ordered)
        raw += b" " * (-len(raw) % 8)
        self.data_start = 8 + len(raw)
        self.data_size = offset
        self.crc_at = {name: 8 + at for name, at in crc_at.items()}  # file offsets
        self.crcs: dict = {}
        # Open (and locked as in use) until the commit has renamed it.
        self.fd = create_exclusive(self.path)
        try:
            write_all(self.fd, len(raw).to_bytes(8, "little") + raw)
        except BaseException:
            self.close()
            remove_file(self.path)
            raise

    def close(self):
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


_CRC_PLACEHOLDER = "0" * 8


def _header_bytes(header: dict, metadata: dict, names: list):
    """The JSON header: ``__metadata__`` first (``metadata`` plus a
    :data:`CHECKSUM_KEY` entry holding a placeholder per tensor), then the
    tensors.  Returns the bytes and, for each name, the byte offset of its
    placeholder, which the commit overwrites with the tensor's CRC-32C (hex
    digits need no JSON escaping, so the header's length never changes)."""
    def dumps(value):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def escaped(text):  # ``text`` as it appears inside a JSON string
        return dumps(text)[1:-1]

    out = bytearray(b'{"__metadata__":{')
    for key, value in metadata.items():
        if key != CHECKSUM_KEY:
            out += f"{dumps(key)}:{dumps(value)},".encode("utf-8")
    out += f'{dumps(CHECKSUM_KEY)}:"'.encode("utf-8") + escaped("{").encode("utf-8")
    crc_at = {}
    for i, name in enumerate(names):
        out += escaped(("," if i else "") + dumps(name) + ':"').encode("utf-8")
        crc_at[name] = len(out)
        out += escaped(_CRC_PLACEHOLDER + '"').encode("utf-8")
    out += escaped("}").encode("utf-8") + b'"}'
    out += (b"," + dumps(header)[1:].encode("utf-8")) if header else b"}"
    return bytes(out), crc_at


def _raw_bytes(arr):
    """A buffer of ``arr``'s bytes in C order, little-endian (no copy when it
    already is)."""
    import numpy as np

    arr = np.ascontiguousarray(arr)
    if sys.byteorder == "big" and arr.dtype.itemsize > 1:
        if arr.dtype.kind == "c":  # two floats per element, each swapped
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        else:  # through unsigned ints, which ml_dtypes types can be viewed as
            arr = arr.view(f"u{arr.dtype.itemsize}").byteswap()
    # ml_dtypes types cannot be exported as buffers; their bytes can.
    return memoryview(arr.reshape(-1).view(np.uint8))


class _SafetensorsSink(Sink):
    """One ``.safetensors`` file, or (``max_shard_size``) Hugging Face shards plus
    an index.  Headers are written from the plan first; each tensor's bytes go
    straight to their place in the file when it is added."""

    format = "safetensors"
    # Defaults for an abort() of a partly constructed sink.
    _shards: list = []
    _index_temp = None

    def __init__(self, path, plan, *, max_shard_size, overwrite, metadata=None):
        super().__init__(path, plan, max_shard_size=max_shard_size, overwrite=overwrite)
        low = path.lower()
        if low.endswith(_ST_INDEX_SUFFIX):
            stem, index, single = path[:-len(_ST_INDEX_SUFFIX)], path, None
            directory = os.path.dirname(path)
        elif low.endswith(_ST_SUFFIX):
            stem, single = path[:-len(_ST_SUFFIX)], path
            index, directory = stem + _ST_INDEX_SUFFIX, os.path.dirname(path)
        else:  # a directory: Hugging Face's file names inside it
            directory = path
            stem = os.path.join(path, "model")
            index, single = stem + _ST_INDEX_SUFFIX, stem + _ST_SUFFIX
        groups = _shard_groups(plan, max_shard_size)
        n = len(groups)
        if n == 1 and single is not None:
            finals, self._index = [single], None
        else:
            finals = [f"{stem}-{i + 1:05d}-of-{n:05d}{_ST_SUFFIX}" for i in range(n)]
            self._index = index
        self._stem, self._single, self._old_index = stem, single, index
        self._finals = finals
        existing = [p for p in self._outputs(finals) if os.path.lexists(p)]
        if existing and not overwrite:
            raise self._exists_error(existing[0])
        for p in existing:
            if os.path.isdir(p):
                raise OutputExistsError(f"{p} is a directory; it will not be replaced by a "
                                        f"file", path=p)
        self._shards = []
        self._where: dict = {}
        self._index_temp = None
        self._created_dirs = _make_dirs(directory)
        try:
            for final, names in zip(finals, groups):
                shard = _STShard(final, names, plan, metadata or {})
                self._shards.append(shard)
                for name in names:
                    self._where[name] = shard
        except BaseException:
            self.abort()
            raise

    def _outputs(self, finals) -> list:
        """Files of this output, and of any other sharding of the same stem (which
        a loader would mix up with ours)."""
        others = [self._old_index] + ([self._single] if self._single else [])
        pattern = glob.escape(self._stem) + "-[0-9][0-9][0-9][0-9][0-9]-of-*" + _ST_SUFFIX
        others += [p for p in glob.glob(pattern) if _SHARD_RE.match(os.path.basename(p))]
        return list(dict.fromkeys(finals + others))

    def _write(self, name, dt, shape, array):
        arr = self._array(name, dt, shape, array)
        shard = self._where[name]
        # Tensors are laid out by element size, so a tensor's place need not
        # follow the previous one's: write there (holes are filled by later adds).
        if arr.nbytes:
            raw = _raw_bytes(arr)
            shard.crcs[name] = crc32c.crc32c(raw)
            write_all(shard.fd, raw, shard.data_start + shard.offsets[name])
        else:
            shard.crcs[name] = 0

    @staticmethod
    def _write_checksums(shard):
        """Each tensor's CRC-32C into its placeholder in the header."""
        for name, at in shard.crc_at.items():
            write_all(shard.fd, b"%08x" % shard.crcs[name], at)

    def _commit(self):
        for shard in self._shards:
            self._write_checksums(shard)
            size = os.fstat(shard.fd).st_size
            if size != shard.data_start + shard.data_size:  # every byte written exactly once
                raise CorruptCheckpointError(
                    f"{shard.path} is {size} bytes after writing; expected "
                    f"{shard.data_start + shard.data_size}", path=shard.path)
        if not self.overwrite:
            existing = [p for p in self._outputs(self._finals) if os.path.lexists(p)]
            if existing:
                raise self._exists_error(existing[0])
        files = [s.final for s in self._shards]
        stem = re.escape(os.path.basename(self._stem))
        others = [os.path.basename(p) for p in (self._old_index, self._single) if p]
        members = re.compile(f"(?:{stem}-\\d{{5}}-of-\\d{{5}}{re.escape(_ST_SUFFIX)}|"
                             + "|".join(map(re.escape, others)) + ")$")
        index_fd = -1
        try:
            if self._index is None:  # one file: it is the commit file itself
                commit, commit_temp, moves = self._shards[0].final, self._shards[0].path, []
            else:
                weight_map = {name: os.path.basename(self._where[name].final)
                              for name in sorted(self._plan)}
                total = sum(s.data_size for s in self._shards)
                commit = self._index
                commit_temp, index_fd = write_temp(commit, json.dumps(
                    {"metadata": {"total_size": total}, "weight_map": weight_map},
                    indent=2, ensure_ascii=False).encode("utf-8") + b"\n",
                    target=self.path, what="the index")
                self._index_temp = commit_temp
                moves = [(s.path, s.final) for s in self._shards]
                files.append(self._index)
            # The index (or the single file) is the commit point: an old output
            # stays complete until it is replaced.
            _commit.install(_commit.Layout(commit, members, lock=self._stem + ".safetensors" +
                                           _commit.LOCK_SUFFIX),
                            commit_temp, moves, target=self.path, what="the safetensors output")
        finally:
            if index_fd >= 0:
                os.close(index_fd)
        for shard in self._shards:
            shard.path = shard.final
            shard.close()
        return files

    def _abort(self):
        for shard in self._shards:
            shard.close()
            remove_file(shard.path)
        if self._index_temp is not None:
            remove_file(self._index_temp)


_SHARD_RE = re.compile(r".*-\d{5}-of-\d{5}" + re.escape(_ST_SUFFIX) + "$")
