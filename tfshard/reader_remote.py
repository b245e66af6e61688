"""Reading checkpoints at URLs: the remote twins of :class:`~tfshard.Checkpoint`.

:class:`RemoteCheckpoint` is the local reader with one difference, where the bytes come
from: the index object is fetched in one request and parsed by the same code, and each
data object is a :class:`tfshard.storage.RangeBuffer` into which exactly the byte ranges a
read needs are fetched (a tensor: its bytes; a row range: those rows; :func:`tfshard.load`:
every tensor, coalesced and fetched concurrently while earlier tensors are decoded).
Decoding, checksums and views are the local reader's own.

Data object names come from the index header's shard count (HTTP servers give no
listings).  Legacy V1 checkpoints are read whole at open (their values are protobuf
fields, decoded into copies anyway): :class:`RemoteV1Checkpoint`.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass

from . import _index, dtypes, state, storage
from .errors import CheckpointNotFoundError, CorruptCheckpointError, TFShardError
from .paths import _DATA_RE, _SSTABLE_MAGIC, _V1_PATTERN_RE, _V1_SHARD_RE, data_filename
from .reader import Checkpoint, _Entry, _normalize_rows
from .reader_v1 import V1Checkpoint
from .slices import prod

__all__ = ["RemoteCheckpoint", "RemoteV1Checkpoint", "latest_checkpoint"]

_INDEX = ".index"
# Index entries claiming bytes beyond this offset are not believed when sizing a data
# object's buffer (a hostile index must not reserve exabytes); reading them fails.
_MAX_EXTENT = 1 << 48
# A state file is a handful of lines (as tfshard.state).
_MAX_STATE_BYTES = state._MAX_STATE_BYTES


@dataclass
class _Found:
    """What a URL resolved to: a V2 prefix with its index bytes, or V1 files."""
    prefix: storage.Location
    index: bytes | None = None
    v1_files: list | None = None
    v1_contents: list | None = None


@dataclass(frozen=True)
class _Shifted(_Entry):
    """An entry whose ``offset`` is relative to ``source``, a fetched piece that starts
    at byte ``delta`` of the data object."""
    source: bytes
    delta: int


def _relocated(exc: TFShardError, delta: int) -> TFShardError:
    """``exc`` with the offsets it names made relative to the data object again."""
    if exc.offset is not None:
        text = exc.message.replace(f"offset {exc.offset}", f"offset {exc.offset + delta}")
        exc.offset += delta
        exc.message = text
        exc.args = (text,) + exc.args[1:]
    return exc


def new(cls, path, storage_options):
    """The object ``Checkpoint(url)`` returns: resolved once, of the matching class."""
    found = _resolve(storage.Location.parse(path, storage_options))
    klass = RemoteV1Checkpoint if found.index is None else RemoteCheckpoint
    obj = object.__new__(klass)
    obj._found = found
    return obj


# ---- resolving a URL -----------------------------------------------------------------

def _try_index(prefix: storage.Location) -> _Found | None:
    try:
        return _Found(prefix, prefix.suffixed(_INDEX).read(what="index file"))
    except CheckpointNotFoundError:
        return None


def _read_state(directory: storage.Location) -> state.CheckpointState | None:
    """The ``checkpoint`` state file in ``directory``, paths as URLs; None if absent."""
    where = directory.child(state.STATE_FILENAME)
    try:
        text = where.read(what="checkpoint state file")
    except CheckpointNotFoundError:
        return None
    if len(text) > _MAX_STATE_BYTES:
        raise CorruptCheckpointError(
            f"{where.url} is larger than {_MAX_STATE_BYTES} bytes; not a checkpoint state "
            f"file", path=where.url)
    st = state.parse_state(text, "", where.url)

    def url(p: str) -> str:
        if storage.is_url(p):
            return p
        # A relative path is relative to the directory, as in TF.  An absolute local path
        # was written on the machine that trained: the checkpoint lies beside the state
        # file here, under the same name.
        name = os.path.basename(p) if os.path.isabs(p) else p
        return f"{directory.url.rstrip('/')}/{name}"

    st.model_checkpoint_path = url(st.model_checkpoint_path)
    st.all_model_checkpoint_paths = [url(p) for p in st.all_model_checkpoint_paths]
    return st


def _at(directory: storage.Location, url: str) -> storage.Location:
    """The Location of ``url``, a neighbour of ``directory`` when it lies under it."""
    base = directory.url.rstrip("/") + "/"
    if url.startswith(base):
        return directory.child(url[len(base):])
    return storage.Location.parse(url, directory.storage_options)


def _v1(loc: storage.Location) -> _Found | None:
    """The V1 checkpoint ``loc`` names (one file, one of its shards, or the pattern
    ``P-?????-of-NNNNN``), fetched whole; None if it names none."""
    url = loc.url
    pattern, shard = _V1_PATTERN_RE.match(url), _V1_SHARD_RE.match(url)
    if pattern or shard:
        m = pattern or shard
        base, count = m["prefix"], int(m["count"])
        files = [f"{base}-{i:05d}-of-{count:05d}" for i in range(count)]
        if shard:
            try:
                loc.size(what="V1 checkpoint file")
            except CheckpointNotFoundError:
                return None
        prefix_loc = loc.trimmed(len(url) - len(base))
        contents = []
        for f in files:
            try:
                contents.append(prefix_loc.suffixed(f[len(base):]).read(
                    what="V1 checkpoint file"))
            except CheckpointNotFoundError as exc:
                if pattern is not None and not contents:
                    return None
                raise CheckpointNotFoundError(
                    f"V1 checkpoint {base!r} lacks its shard file {f} (of {count})",
                    path=f) from exc
        return _Found(prefix_loc if shard else loc, None, files, contents)
    try:
        size = loc.size(what="V1 checkpoint file")
    except CheckpointNotFoundError:
        size = None
    if size is not None:
        if size < 48 or loc.read(size - 8, size, what="V1 checkpoint file") != _SSTABLE_MAGIC:
            return None
        return _Found(loc, None, [url], [loc.read(what="V1 checkpoint file")])
    # P itself is no file: its shards P-SSSSS-of-NNNNN, where the store can list.
    shards = [u for u in loc.glob("-[0-9][0-9][0-9][0-9][0-9]-of-[0-9]*")
              if _V1_SHARD_RE.match(u) and _V1_SHARD_RE.match(u)["prefix"] == url]
    counts = {int(_V1_SHARD_RE.match(u)["count"]) for u in shards}
    if len(counts) == 1:
        count, = counts
        return _v1(loc.suffixed(f"-?????-of-{count:05d}"))
    if counts:
        raise CheckpointNotFoundError(
            f"V1 checkpoint {url!r} has shard files of several saves (shard counts "
            f"{sorted(counts)}); pass one pattern such as {url}-?????-of-{max(counts):05d}",
            path=url)
    return None


def _resolve(loc: storage.Location) -> _Found:
    """What the URL ``loc`` names: a prefix, its ``.index``, a data object, a directory
    (its state file, or a SavedModel's ``variables/variables``), or a V1 checkpoint.
    A prefix costs one request (its index); each alternative tried costs one more."""
    url = loc.url
    if url.endswith(_INDEX):
        found = _try_index(loc.trimmed(len(_INDEX)))
        if found is None:
            raise CheckpointNotFoundError(f"index file {url} does not exist", path=url)
        return found
    data = _DATA_RE.match(url)
    if data:
        found = _try_index(loc.trimmed(len(url) - len(data["prefix"])))
        if found is not None:
            return found
    found = _try_index(loc)
    if found is not None:
        return found
    st = _read_state(loc)
    if st is not None:
        prefix = _at(loc, st.model_checkpoint_path)
        found = _try_index(prefix) or _v1(prefix)
        if found is None:
            raise CheckpointNotFoundError(
                f"the state file {loc.child(state.STATE_FILENAME).url} names the checkpoint "
                f"{prefix.url!r}, but {prefix.url}{_INDEX} does not exist",
                path=prefix.url + _INDEX)
        return found
    found = _try_index(loc.child("variables").child("variables")) or _v1(loc)
    if found is not None:
        return found
    raise CheckpointNotFoundError(
        f"no checkpoint at {url!r}: neither {url}{_INDEX} nor a state file "
        f"{loc.child(state.STATE_FILENAME).url} nor a V1 checkpoint exists", path=url)


def latest_checkpoint(directory, storage_options=None) -> str | None:
    """:func:`tfshard.latest_checkpoint` for a directory URL: the prefix URL its state
    file names, if that checkpoint's index (or V1 file) exists; None otherwise."""
    loc = storage.Location.parse(directory, storage_options)
    st = _read_state(loc)
    if st is None:
        return None
    prefix = _at(loc, st.model_checkpoint_path)
    if prefix.suffixed(_INDEX).exists(what="index file"):
        return prefix.url
    # A V1 checkpoint: its file, or the first file of its shard pattern (a HEAD each).
    pattern = _V1_PATTERN_RE.match(prefix.url)
    first = prefix.trimmed(len("-?????-of-") + len(pattern["count"])).suffixed(
        f"-00000-of-{pattern['count']}") if pattern else prefix
    return prefix.url if first.exists(what="V1 checkpoint file") else None


# ---- the readers ---------------------------------------------------------------------

class RemoteCheckpoint(Checkpoint):
    """A V2 checkpoint at a URL: the API of :class:`tfshard.Checkpoint`.

    Arrays are read-only views of the fetched bytes (copies where the local reader copies
    too).  Only the bytes a read needs are fetched, once: a tensor's bytes (in concurrent
    pieces when large), or for a row-range :meth:`read` without ``verify=True`` only
    those rows.  Fetched bytes stay with the checkpoint (each is fetched once);
    ``release`` drops this process's pages of them where they sit in an in-memory file,
    without changing any value.
    """

    # The C fast paths work on memory maps of local files; fetched bytes take the
    # general path.
    _views = False

    def __init__(self, path, *, verify: bool = True, storage_options=None):
        found = self.__dict__.pop("_found", None)
        if found is None:  # constructed without Checkpoint.__new__'s resolution
            found = _resolve(storage.Location.parse(path, storage_options))
        self.verify = bool(verify)
        self._shards: dict = {}
        self._verified: set = set()
        self._lent: set = set()
        self._lock = threading.Lock()
        self._closed = False
        self._opened: dict = {}
        self._extents: dict | None = None
        self._location = found.prefix
        self.prefix = found.prefix.url
        self.index_path = self.prefix + _INDEX
        self._table = _index.IndexTable(found.index, self.index_path)
        header = self._table.header()
        self._check_header(header)
        self.num_shards = header["num_shards"]
        self.big_endian = header["endianness"] == 1
        self._swap = self.big_endian != (sys.byteorder == "big")

    def __repr__(self) -> str:
        state_ = "closed" if self._closed else f"{len(self)} tensors"
        return f"<tfshard.Checkpoint {self.prefix!r} (remote): {state_}>"

    def _spans(self):
        """``(shard, start, end)`` of every stored tensor and slice, from the index."""
        table = self._table
        for h in table.handles():
            _, _, shard, offset, size, _, nslices, _ = table.entry(h)
            if not nslices and size > 0 and offset >= 0 and offset + size <= _MAX_EXTENT \
                    and 0 <= shard < self.num_shards:
                yield shard, offset, offset + size

    def _extent(self, shard_id: int) -> int:
        """Bytes of data object ``shard_id`` that the index refers to."""
        if self._extents is None:
            extents: dict = {}
            for shard, _, end in self._spans():
                if end > extents.get(shard, 0):
                    extents[shard] = end
            self._extents = extents
        return self._extents.get(shard_id, 0)

    def _shard(self, shard_id: int, whole: bool = False) -> storage.RangeBuffer:
        """The buffer of data object ``shard_id``; ``whole``: all of it will be fetched."""
        with self._lock:
            self._check_open()
            shard = self._shards.get(shard_id)
            if shard is None:
                name = data_filename("", shard_id, self.num_shards)
                shard = self._shards[shard_id] = storage.RangeBuffer(
                    self._location.suffixed(name), self._extent(shard_id), "data shard",
                    populate=whole)
            return shard

    def _tensor_buffer(self, e, name: str, private: bool = False):
        shard = self._shard(e.shard_id)
        if isinstance(e, _Shifted):
            return e.source, shard
        end = e.offset + e.size
        if end > shard.size:
            raise CorruptCheckpointError(
                f"{self.index_path}: tensor {name!r} records bytes [{e.offset}, {end}) of "
                f"{shard.path}, beyond any size this reader accepts", path=shard.path,
                key=name, offset=e.offset)
        return shard.buffer, shard

    def _private_map(self, shard):
        return shard.buffer  # fetched bytes are shared: writable reads copy

    def _read_plain(self, i: int, name: str, e, verify: bool, index=None,
                    writable: bool = False):
        if e.size > 0:
            start, end = e.offset, e.offset + e.size
            whole = verify and i not in self._verified
            if index is not None and not whole and e.shape and e.shape[0] > 0 and \
                    e.dtype.kind in (dtypes.FIXED, dtypes.SUBBYTE) and prod(e.shape):
                rows = _normalize_rows(index, e.shape[0])
                if rows is not None:
                    row_bytes = e.size // e.shape[0]
                    start, end = e.offset + rows[0] * row_bytes, e.offset + rows[1] * row_bytes
            if end > start:
                shard = self._tensor_buffer(e, name)[1]
                buf, delta = shard.view(start, end)
                if buf is not shard.buffer:
                    # The bytes are a fetched piece that starts at byte `delta`: the
                    # local decoding reads them at the entry's offset within the piece.
                    shifted = _Shifted(e.dtype, e.shape, e.shard_id, e.offset - delta,
                                       e.size, e.crc, e.num_slices, buf, delta)
                    try:
                        return super()._read_plain(i, name, shifted, verify, index, writable)
                    except TFShardError as exc:
                        raise _relocated(exc, delta) from None
        return super()._read_plain(i, name, e, verify, index, writable)

    def _prefetch(self) -> None:
        """Schedule every stored byte, coalesced per data object, before a whole-
        checkpoint read; reads then wait only for their own ranges."""
        per_shard: dict = {}
        for shard, start, end in self._spans():
            per_shard.setdefault(shard, []).append((start, end))
        for shard_id, spans in sorted(per_shard.items()):
            # Runs of whole tensors, one request each, kept as the responses' bytes:
            # every tensor then lies inside one piece and is decoded from it without a
            # copy.  A tensor larger than CHUNK is a piece of its own.
            self._shard(shard_id, whole=False).fetch_pieces(
                storage.coalesce(spans, limit=storage.CHUNK))

    def _release(self, shards: dict, opened: dict) -> None:
        for shard in shards.values():
            shard.close()


class RemoteV1Checkpoint(V1Checkpoint):
    """A legacy V1 checkpoint at a URL, read whole at open (V1 values are protobuf
    fields that are decoded into copies anyway); then the API of
    :class:`tfshard.reader_v1.V1Checkpoint`."""

    def __init__(self, path, *, verify: bool = True, storage_options=None):
        found = self.__dict__.pop("_found", None)
        if found is None:
            found = _resolve(storage.Location.parse(path, storage_options))
        if found.v1_files is None:
            raise CheckpointNotFoundError(f"no V1 checkpoint at {path!r}", path=str(path))
        self._setup(found.prefix.url, found.v1_files, found.v1_contents, verify)

    def _prefetch(self) -> None:
        pass
