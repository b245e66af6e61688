"""Reading TensorFlow V2 checkpoints: :class:`Checkpoint` and helpers.

The index is decoded once at open time (in C); data shards are memory-mapped
on first use, and tensors are handed out as read-only numpy views of the maps
wherever the stored bytes are already in numpy's layout.
"""

from __future__ import annotations

import difflib
import mmap
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from . import _index, dtypes
from .errors import (
    CheckpointChangedError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    IncompatibleVersionError,
    TensorNotFoundError,
    UnsupportedError,
)
from ._util import close_map, drop_pages, gc_paused, open_regular, read_error
from .paths import checkpoint_version, data_filename, index_filename, resolve_prefix
from .slices import assemble, covering, prod, spec
from .storage import is_url as _is_url

if TYPE_CHECKING:
    import numpy as np

# numpy, ml_dtypes and the _data extension are imported where tensors are
# read, not at module level: opening and listing a checkpoint (all that
# `tfshard ls` does) then never pays for importing them.

__all__ = ["Checkpoint", "TensorInfo", "open", "load", "list_variables", "load_variable"]

# Up to this many data files are opened with the index (see
# Checkpoint._open_data_files); a checkpoint with more opens each on first use.
_OPEN_AT_ONCE = 64
# Tries at opening a checkpoint that saves keep replacing (see Checkpoint.__init__).
_OPEN_ATTEMPTS = 3

# A large tensor's CRC-32C is computed in pieces, one per core, by a pool of threads
# shared by every open checkpoint (made on first use; none on a single core).
_CORES = os.cpu_count() or 1
_pool = None
_pool_lock = threading.Lock()


def _crc_pool():
    global _pool
    if _pool is None and _CORES > 1:
        from concurrent.futures import ThreadPoolExecutor

        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(_CORES, thread_name_prefix="tfshard-crc")
    return _pool


# Version of the bundle format this reader implements (TF's kTensorBundleVersion
# consumer and kTensorBundleMinProducer).
_CONSUMER_VERSION = 1
_MIN_PRODUCER = 0


class TensorInfo(NamedTuple):
    """Metadata of one tensor, as recorded in the index.

    Attributes
    ----------
    name : str
    dtype : str
        TensorFlow's dtype name (``"float32"``, ``"bfloat16"``, ``"string"``...).
    shape : tuple of int
        The full shape (for a partitioned tensor, the assembled shape).
    nbytes : int
        Bytes the tensor occupies in the data files (all slices together).
    shard : int or None
        Data shard holding the bytes (None for a partitioned tensor).
    offset : int or None
        Byte offset in that shard (None for a partitioned tensor).
    slices : tuple
        For a partitioned tensor, one tuple per stored slice of
        ``(start, length)`` pairs per dimension (``length == -1``: the whole
        dimension).  Empty for ordinary tensors.
    """

    name: str
    dtype: str
    shape: tuple
    nbytes: int
    shard: int | None
    offset: int | None
    slices: tuple = ()


@dataclass(frozen=True)
class _Entry:
    dtype: dtypes.DType
    shape: tuple
    shard_id: int
    offset: int
    size: int
    crc: int | None
    num_slices: int


class _Shard:
    # private: the copy-on-write map writable reads view, made on the first of them
    # (None until then; False where the OS refused one, and such reads copy).
    __slots__ = ("path", "file", "buffer", "size", "private")

    def __init__(self, path, file, buffer, size):
        self.path, self.file, self.buffer, self.size = path, file, buffer, size
        self.private = None


def _read_index(path: str):
    """``(bytes, identity)`` of the index file; the identity (device, inode,
    ctime) tells later whether the file at that path is still this one."""
    with open_regular(path, "index file", missing=f"index file {path} does not exist") as f:
        try:
            st = os.fstat(f.fileno())
            return f.read(), _identity(st)
        except OSError as exc:
            raise read_error(exc, path, "index file") from None


def _identity(st) -> tuple:
    # Every rename of the file changes its ctime, so the commit protocol (which
    # moves an index aside before any data file of its prefix changes) can never
    # leave this identity unchanged while the data files are another save's.
    return st.st_dev, st.st_ino, st.st_ctime_ns


def _normalize_rows(index, dim0: int):
    """For ``index`` selecting along axis 0 by a unit-step slice or an int,
    return ``(start, stop, rest)`` such that ``full[index] ==
    full[start:stop][rest]``; otherwise None."""
    import numpy as np

    first, tail = (index[0], index[1:]) if isinstance(index, tuple) and index else (index, ())
    if isinstance(first, slice) and first.step in (None, 1):
        start, stop, _ = first.indices(dim0)
        return start, max(start, stop), (slice(None),) + tail
    if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
        i = int(first)
        if i < 0:
            i += dim0
        if not 0 <= i < dim0:
            raise IndexError(f"index {int(first)} is out of bounds for axis 0 with size {dim0}")
        return i, i + 1, (0,) + tail
    return None


_Self = TypeVar("_Self", bound="Checkpoint")


class Checkpoint(Mapping):
    """A TensorFlow V2 checkpoint opened for reading.

    ``Checkpoint(path)`` on a legacy V1 checkpoint returns a
    :class:`tfshard.reader_v1.V1Checkpoint`, a subclass with the same API.

    A read-only ``Mapping[str, numpy.ndarray]``: keys are the tensor names
    ``tf.train.list_variables`` reports; values are numpy arrays with TF's
    dtype and shape.  Use :func:`tfshard.open` to create one.

    Arrays of fixed-size dtypes are read-only zero-copy views of the memory-
    mapped data shard, except where the bytes need converting (big-endian
    bundles, sub-byte types, partitioned tensors), which get a copy.  Strings
    come back as object arrays of ``bytes``.  Views stay valid after
    :meth:`close`: each keeps its mapping alive.

    Checksums: with ``verify=True`` (the default) every whole-tensor read
    checks the tensor's CRC-32C the first time that tensor is read through
    this object; later reads of the same tensor reuse the result.  A row-range
    read (:meth:`read` with ``index``) touches only the selected rows and so
    does not check the CRC unless asked to with ``verify=True``, which checks
    the whole tensor once.
    """

    # The C fast paths (tfshard._views.Views), made on the first read; False where the
    # checkpoint is not one they serve (byte-swapped, too many shards, V1).
    _views = None

    def __new__(cls, path=None, *args, **kwargs):
        # A URL opens through the storage layer (tfshard.reader_remote), resolved once.
        if path is not None and _is_url(path):
            from . import reader_remote

            return reader_remote.new(cls, path, kwargs.get("storage_options"))
        # A legacy V1 checkpoint opens as a V1Checkpoint, so every caller of
        # Checkpoint(path) reads both formats.
        if cls is Checkpoint and path is not None and \
                checkpoint_version(resolve_prefix(path)) == 1:
            from .reader_v1 import V1Checkpoint

            return super().__new__(V1Checkpoint)
        return super().__new__(cls)

    def __init__(self, path, *, verify: bool = True, storage_options=None):
        # storage_options only matter for URLs (tfshard.reader_remote.RemoteCheckpoint).
        self.verify = bool(verify)
        self._shards: dict[int, _Shard] = {}
        self._verified: set[int] = set()
        self._lent: set[int] = set()  # tensors whose private-map bytes a caller holds
        self._lock = threading.Lock()
        self._closed = False
        self._opened: dict = {}
        # A save of the prefix can replace the checkpoint between finding it and
        # reading its index, or between the index and its data files: then look
        # again (a reader that meets a commit waits for it while resolving).
        for attempt in range(_OPEN_ATTEMPTS):
            last = attempt == _OPEN_ATTEMPTS - 1
            self.prefix = resolve_prefix(path)
            self.index_path = index_filename(self.prefix)
            try:
                raw, self._index_identity = _read_index(self.index_path)
            except CheckpointNotFoundError:
                if last:
                    raise
                continue
            self._table = _index.IndexTable(raw, self.index_path)
            header = self._table.header()
            self._check_header(header)
            self.num_shards = header["num_shards"]
            # Data bytes are little-endian unless the header says BIG (1).
            self.big_endian = header["endianness"] == 1
            self._swap = self.big_endian != (sys.byteorder == "big")
            self._opened = self._open_data_files()
            if self._opened is not None or last:
                self._opened = self._opened or {}
                break

    def _check_header(self, h):
        path = self.index_path
        _check_versions(path, h)
        if h["num_shards"] < 1:
            raise CorruptCheckpointError(
                f"{path}: the bundle header says {h['num_shards']} data shards; expected at "
                f"least 1", path=path, key="")
        if h["endianness"] not in (0, 1):
            raise CorruptCheckpointError(
                f"{path}: the bundle header has endianness {h['endianness']}; expected 0 "
                f"(little) or 1 (big)", path=path, key="")

    # ---- Mapping --------------------------------------------------------

    def __iter__(self):
        # Names are decoded on each pass rather than cached: an open
        # checkpoint holds little more than its index file.
        return iter(self._table.visible_names())

    def __len__(self) -> int:
        return self._table.visible_count

    def __contains__(self, name) -> bool:
        if not isinstance(name, str):
            return False
        return self._table.find_tensor(_encode(name)) >= 0

    def __getitem__(self, name) -> np.ndarray:
        views = self._views if self._views is not None else self._make_views()
        if views:
            arr = views.get(name, self.verify)
            if arr is not None:
                return arr
        return self.read(name)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self)} tensors"
        return f"<tfshard.Checkpoint {self.prefix!r}: {state}>"

    # ---- lookups ---------------------------------------------------------

    def _not_found(self, name) -> TensorNotFoundError:
        """The error for a name this checkpoint does not hold, with close matches."""
        if not isinstance(name, str):
            return TensorNotFoundError(
                f"tensor names are str, got {type(name).__name__} {name!r}", path=self.prefix,
                key=name)
        close = difflib.get_close_matches(name, list(self), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        return TensorNotFoundError(
            f"tensor {name!r} not found in checkpoint {self.prefix} ({len(self)} tensors){hint}",
            path=self.prefix, key=name)

    def _record(self, name) -> int:
        i = self._table.find_tensor(_encode(name)) if isinstance(name, str) else -1
        if i < 0:
            raise self._not_found(name)
        return i

    def _entry(self, i: int, name: str) -> _Entry:
        code, shape, shard, offset, size, crc, nslices, _unknown_rank = self._table.entry(i)
        try:
            dt = dtypes.by_code(code)
        except KeyError:
            raise UnsupportedError(
                f"{self.index_path}: tensor {name!r} has dtype {dtypes.describe_code(code)}, "
                f"which a checkpoint cannot hold", path=self.index_path, key=name) from None
        if nslices == 0:
            problem = None
            if not 0 <= shard < self.num_shards:
                problem = f"data shard {shard}, but the checkpoint has {self.num_shards}"
            elif offset < 0 or size < 0:
                problem = f"offset {offset} and size {size}"
            elif dt.itemsize and size != dt.itemsize * prod(shape):
                problem = (f"{size} bytes, but {dt.name} {list(shape)} needs "
                           f"{dt.itemsize * prod(shape)}")
            if problem:
                raise CorruptCheckpointError(
                    f"{self.index_path}: the index entry of tensor {name!r} records {problem}",
                    path=self.index_path, key=name)
        return _Entry(dt, shape, shard, offset, size, crc, nslices)

    def infos(self) -> list:
        """:class:`TensorInfo` of every tensor, sorted by name, from one pass over the index.

        Raises
        ------
        CorruptCheckpointError
            If an index entry is malformed.
        UnsupportedError
            If an entry has a dtype code no checkpoint can hold.
        """
        self._check_open()
        out = []
        make = tuple.__new__   # TensorInfo(...) without the namedtuple call overhead
        names = dtypes.NAMES
        with gc_paused():
            for name, code, shape, shard, offset, size, nslices in self._table.list_entries():
                if nslices or code not in names:
                    out.append(self.info(name))  # assembles slices, or raises the precise error
                else:
                    out.append(make(TensorInfo,
                                    (name, names[code], shape, size, shard, offset, ())))
        return out

    def info(self, name: str) -> TensorInfo:
        """Metadata of tensor ``name`` without reading its data.

        Raises
        ------
        TensorNotFoundError
            If there is no such tensor.
        CorruptCheckpointError
            If its index entry is malformed.
        """
        self._check_open()
        i = self._record(name)
        e = self._entry(i, name)
        if e.num_slices:
            slices = tuple(self._stored_slices(i, name, e))
            nbytes = sum(self._slice_entry(name, e, s)[1].size for s in slices)
            return TensorInfo(name, e.dtype.name, e.shape, nbytes, None, None, slices)
        return TensorInfo(name, e.dtype.name, e.shape, e.size, e.shard_id, e.offset)

    # ---- data access ----------------------------------------------------

    def _check_open(self):
        if self._closed:
            raise ValueError(f"checkpoint {self.prefix} is closed")

    def _shard(self, shard_id: int) -> _Shard:
        with self._lock:
            self._check_open()
            shard = self._shards.get(shard_id)
            if shard is None:
                path = data_filename(self.prefix, shard_id, self.num_shards)
                f = self._opened.pop(shard_id, None)
                if f is None:
                    try:
                        f = open_regular(path, "data shard", missing=(
                            f"data shard {path} is missing or not a file (the index "
                            f"{self.index_path} says the checkpoint has {self.num_shards} "
                            f"shard(s))"))
                    except CheckpointNotFoundError:
                        self._check_unchanged(path)
                        raise
                    opened_now = True
                else:
                    opened_now = False
                try:
                    # A file opened now is this checkpoint's only if the index was not
                    # replaced since it was read (a save replaces data files only
                    # after moving the old index away).  The file object keeps the
                    # opened inode, whatever later saves do.
                    if opened_now:
                        self._check_unchanged(path)
                    size = os.fstat(f.fileno()).st_size
                    buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
                except BaseException as exc:
                    f.close()
                    if isinstance(exc, OSError) and not isinstance(exc, CheckpointChangedError):
                        raise read_error(exc, path, "data shard") from None
                    raise
                shard = self._shards[shard_id] = _Shard(path, f, buffer, size)
            return shard

    def _open_data_files(self) -> dict | None:
        """``{shard id: file}`` of the data files, opened now, right after the index
        (unless there are too many to hold open): the checkpoint then reads the
        data of the save whose index it read, whatever later saves of the prefix
        do.  A file that cannot be opened now is left to the first read of it,
        which reports the problem.  None if the index was replaced meanwhile."""
        opened: dict = {}
        if self.num_shards > _OPEN_AT_ONCE:
            return opened
        try:
            for shard_id in range(self.num_shards):
                try:
                    opened[shard_id] = open_regular(
                        data_filename(self.prefix, shard_id, self.num_shards), "data shard")
                except OSError:  # TFShardErrors included: reported on first use
                    pass
            if self._is_unchanged():
                return opened  # opened before the index could have been replaced
        except BaseException:
            for f in opened.values():
                f.close()
            raise
        for f in opened.values():
            f.close()
        return None  # the checkpoint was replaced meanwhile

    def _is_unchanged(self) -> bool:
        try:
            return _identity(os.stat(self.index_path)) == self._index_identity
        except OSError:
            return False

    def _check_unchanged(self, data_path: str):
        """Raise CheckpointChangedError if ``P.index`` is no longer the file this
        checkpoint was opened from."""
        if not self._is_unchanged():
            try:
                now = _identity(os.stat(self.index_path))
            except OSError:
                now = None
            raise CheckpointChangedError(
                f"checkpoint {self.prefix} was replaced after it was opened (its index "
                f"{self.index_path} is {'gone' if now is None else 'another file'} now), so "
                f"{data_path} may hold another save's data and is not read; open the "
                f"checkpoint again", path=data_path)

    def _make_views(self):
        """The C fast paths for this checkpoint (see tfshard._views), made on first use
        (they import numpy); False where they do not apply."""
        from . import _views

        with self._lock:
            if self._views is None:
                if self._closed or self._swap or self.num_shards > _views.MAX_SHARDS:
                    self._views = False
                else:
                    from . import _data

                    parallel = 2 * _data.PARALLEL_PIECE if _CORES > 1 else 1 << 62
                    self._views = _views.Views(self._table, _view_dtypes(), self.num_shards,
                                               self._view_source, self._verified, parallel)
            return self._views

    def _view_source(self, shard_id: int):
        """``(buffer, fd)`` of a data shard, for the fast paths (opened as for any read);
        None for a shard they cannot use (not a memory map of a local file)."""
        shard = self._shard(shard_id)
        if not isinstance(shard.buffer, mmap.mmap):
            return None
        try:
            return shard.buffer, shard.file.fileno()
        except (AttributeError, OSError, ValueError):
            return None

    def _tensor_buffer(self, e: _Entry, name: str, private: bool = False):
        """(buffer, shard) with the tensor's bytes at ``e.offset`` checked to exist;
        with ``private``, the buffer is the shard's copy-on-write map where one exists."""
        shard = self._shard(e.shard_id)
        buffer = self._private_map(shard) if private else shard.buffer
        # Re-check the file size: a data file truncated after it was mapped
        # would otherwise fault (SIGBUS) when a view is read.
        try:
            current = os.fstat(shard.file.fileno()).st_size
        except OSError as exc:
            raise read_error(exc, shard.path, "data shard") from None
        end = e.offset + e.size
        if end > min(current, shard.size, len(buffer)):
            raise CorruptCheckpointError(
                f"{shard.path} is {min(current, shard.size, len(buffer))} bytes, but tensor "
                f"{name!r} needs bytes [{e.offset}, {end}) (the data file is truncated or from "
                f"another save)", path=shard.path, key=name, offset=e.offset)
        return buffer, shard

    def _private_map(self, shard: _Shard):
        """The shard's copy-on-write (``MAP_PRIVATE``) map, made on first use: views of
        it are writable, a write copies just the page it touches, and the file never
        changes.  The read-only map where the OS refuses one (strict overcommit
        accounting may); callers then copy."""
        with self._lock:
            self._check_open()
            if shard.private is None:
                try:
                    shard.private = (mmap.mmap(shard.file.fileno(), 0, access=mmap.ACCESS_COPY)
                                     if shard.size else b"")
                except OSError:
                    shard.private = False
            return shard.private if shard.private is not False else shard.buffer

    def _lend(self, i: int) -> bool:
        """Whether tensor ``i``'s private-map bytes are still unclaimed (claiming them).
        A caller may have written the first writable view, so later writable reads
        copy from the read-only map instead: two of them never share memory."""
        with self._lock:
            first = i not in self._lent
            self._lent.add(i)
            return first

    def _read_plain(self, i: int, name: str, e: _Entry, verify: bool, index=None,
                    writable: bool = False):
        import numpy as np

        from . import _data

        count = prod(e.shape)
        dt = e.dtype
        if count == 0 and dt.kind in (dtypes.FIXED, dtypes.SUBBYTE):
            out = np.empty(e.shape, dtype=dt.numpy)
            out.flags.writeable = writable
            return out if index is None else out[index]
        buf, shard = self._tensor_buffer(e, name, writable and self._lend(i))
        raw = memoryview(buf)[e.offset:e.offset + e.size]
        verify = verify and i not in self._verified
        if verify and dt.kind in (dtypes.FIXED, dtypes.SUBBYTE):
            pool = _crc_pool() if e.size >= 2 * _data.PARALLEL_PIECE else None
            _data.check_crc(raw, e.crc, shard.path, name, e.offset, pool, _CORES)
        if dt.kind == dtypes.STRING:
            flat = _data.decode_strings(raw, count, self.big_endian, e.crc, verify,
                                        shard.path, name, e.offset)
            arr = flat.reshape(e.shape)
        elif dt.kind == dtypes.VARIANT:
            if self._swap:
                raise UnsupportedError(
                    f"tensor {name!r} is a variant tensor in a big-endian bundle; byte-swapping "
                    f"variants is not possible without TensorFlow's type registry",
                    path=shard.path, key=name)
            flat = _data.decode_variants(raw, count, e.crc, verify, shard.path, name, e.offset)
            arr = flat.reshape(e.shape)
        else:
            arr = self._fixed(buf, e, count, index)
            index = None
        if verify:
            with self._lock:
                self._verified.add(i)
        arr = arr if index is None else arr[index]
        return _writable(arr) if writable else arr

    def _fixed(self, buf, e: _Entry, count: int, index):
        import numpy as np

        dt = e.dtype
        if dt.kind == dtypes.SUBBYTE:
            raw = np.frombuffer(buf, np.uint8, count, e.offset).reshape(e.shape)
            if index is not None:
                raw = raw[index]
            # TF writes the value in the low bits; ml_dtypes uses the same layout.
            return np.asarray(raw & np.uint8((1 << dt.bits) - 1)).view(dt.numpy)
        if self._swap and dt.swap:
            # Standard numpy types swap by byte order; ml_dtypes ones via uintN.
            stored = (dt.numpy.newbyteorder(">" if self.big_endian else "<")
                      if dt.numpy.kind in "biufc" else
                      np.dtype(f"{'>' if self.big_endian else '<'}u{dt.swap}"))
            raw = np.frombuffer(buf, stored, count, e.offset).reshape(e.shape)
            if index is not None:
                raw = raw[index]
            return np.asarray(raw.astype(stored.newbyteorder("="))).view(dt.numpy)
        arr = np.frombuffer(buf, dt.numpy, count, e.offset).reshape(e.shape)
        return arr if index is None else arr[index]

    def _slice_entry(self, name: str, full: _Entry, extents):
        """(record, entry) of one stored slice, checked against the full tensor."""
        where = f"{self.index_path}: tensor {name!r}"
        if not full.shape:
            raise CorruptCheckpointError(
                f"{where} is a scalar but lists stored slices (only tensors of rank 1 or more "
                f"can be partitioned)", path=self.index_path, key=name)
        if len(extents) != len(full.shape):
            raise CorruptCheckpointError(
                f"{where} has a slice of rank {len(extents)} but shape {list(full.shape)}",
                path=self.index_path, key=name)
        bounds = []
        for (start, length), dim in zip(extents, full.shape):
            stop = dim if length < 0 else start + length
            if length >= 0 and not 0 <= start <= stop <= dim:
                raise CorruptCheckpointError(
                    f"{where} has a slice {spec(extents)} outside its shape {list(full.shape)}",
                    path=self.index_path, key=name)
            bounds.append((0 if length < 0 else start, stop))
        key = _index.slice_key(_encode(name), extents)
        j = self._table.find(key)
        if j < 0:
            raise CorruptCheckpointError(
                f"{where}: the data entry of slice {spec(extents)} is missing from the index",
                path=self.index_path, key=name)
        e = self._entry(j, name)
        expect = tuple(hi - lo for lo, hi in bounds)
        if e.num_slices:
            raise CorruptCheckpointError(
                f"{where}: the entry of slice {spec(extents)} lists slices of its own; expected "
                f"a plain tensor", path=self.index_path, key=name)
        if e.dtype != full.dtype or e.shape != expect:
            raise CorruptCheckpointError(
                f"{where}: slice {spec(extents)} is stored as {e.dtype.name} {list(e.shape)}; "
                f"expected {full.dtype.name} {list(expect)}", path=self.index_path, key=name)
        return j, e, bounds

    def _stored_slices(self, i: int, name: str, full: _Entry) -> list:
        """The stored slices of a partitioned tensor.  Each needs an index entry of
        its own, so a list longer than the index is refused before any work that
        grows with it."""
        if full.num_slices > self._table.count:
            raise CorruptCheckpointError(
                f"{self.index_path}: tensor {name!r} lists {full.num_slices} stored slices, "
                f"but the index holds only {self._table.count} entries", path=self.index_path,
                key=name)
        return self._table.slices(i)

    def _read_partitioned(self, i: int, name: str, full: _Entry, verify: bool, rows=None):
        region = [(0, d) for d in full.shape]
        if rows is not None:
            region[0] = rows
        parts = [self._slice_entry(name, full, s) for s in self._stored_slices(i, name, full)]
        boxes = [bounds for _, _, bounds in parts]
        pieces = covering(boxes, region, f"{self.index_path}: tensor {name!r}",
                          path=self.index_path, key=name)
        values = (self._read_plain(parts[k][0], name, parts[k][1], verify) for k, _ in pieces)
        return assemble(region, boxes, pieces, values, full.dtype.numpy)

    def read(self, name: str, index=None, *, verify: bool | None = None,
             writable: bool = False) -> np.ndarray:
        """Read tensor ``name``, or the part of it selected by ``index``.

        Parameters
        ----------
        name : str
            Tensor name as listed by :meth:`keys`.
        index : numpy index, optional
            Anything numpy accepts, e.g. ``np.s_[1000:1100]``.  For ordinary
            tensors only the bytes of the selected elements are touched; for
            partitioned tensors only the slices that intersect a leading row
            range are read.
        verify : bool, optional
            Check the tensor's CRC-32C.  Defaults to the checkpoint's
            ``verify`` setting for whole reads and to False for reads with an
            ``index`` (a CRC covers the whole tensor; ``verify=True`` reads it
            all once).
        writable : bool
            Return an array the caller may write.  The first such read of a
            tensor views a private copy-on-write map of the data file
            (``MAP_PRIVATE``): writes copy only the pages they touch and
            never reach the file.  Later writable reads of the same tensor
            (the first caller may have written it) and bytes that need
            converting get copies, so writable arrays never share memory.

        Returns
        -------
        numpy.ndarray
            Read-only unless ``writable``; a view of the memory map where the
            bytes allow.

        Raises
        ------
        TensorNotFoundError
            If there is no such tensor.
        ChecksumMismatchError
            If verification fails.
        CorruptCheckpointError
            If the index entry or the data are malformed.
        """
        if index is None and not writable:
            views = self._views if self._views is not None else self._make_views()
            if views:
                arr = views.get(name, self.verify if verify is None else verify)
                if arr is not None:
                    return arr
        self._check_open()
        i = self._record(name)
        e = self._entry(i, name)
        if verify is None:
            verify = self.verify and index is None
        if e.num_slices:
            rows = None
            if index is not None and e.shape:
                norm = _normalize_rows(index, e.shape[0])
                if norm is not None:
                    rows, index = norm[:2], norm[2]
            arr = self._read_partitioned(i, name, e, verify, rows)
            arr = arr if index is None else arr[index]
            return _writable(arr) if writable else arr
        if index is not None and verify and i not in self._verified:
            self._read_plain(i, name, e, True)
        return self._read_plain(i, name, e, verify and index is None, index, writable)

    def read_slice(self, name: str, extents, index=None, *, verify: bool | None = None):
        """Read one stored slice of the partitioned tensor ``name``, or part of it.

        Distributed loaders read the slices as stored, each worker only the part
        it needs, rather than assembling the whole tensor first.

        Parameters
        ----------
        name : str
            A partitioned tensor (``info(name).slices`` is not empty).
        extents : sequence of (start, length)
            The slice, exactly as ``info(name).slices`` lists it.
        index : numpy index, optional
            Part of the slice, in the slice's own coordinates; only the bytes of
            the selected elements are touched.
        verify : bool, optional
            As for :meth:`read`: the slice's CRC-32C is checked on whole reads
            by default.

        Returns
        -------
        numpy.ndarray
            Read-only; a view of the memory map where the bytes allow.

        Raises
        ------
        TensorNotFoundError
            If there is no such tensor, or it has no stored slice ``extents``.
        ChecksumMismatchError, CorruptCheckpointError
            As for :meth:`read`.
        """
        self._check_open()
        i = self._record(name)
        full = self._entry(i, name)
        extents = _stored_slice(self, name, self._table.slices(i) if full.num_slices else (),
                                extents)
        j, e, _ = self._slice_entry(name, full, extents)
        if verify is None:
            verify = self.verify and index is None
        if index is not None and verify and j not in self._verified:
            self._read_plain(j, name, e, True)
        return self._read_plain(j, name, e, verify and index is None, index)

    def release(self, name: str) -> None:
        """Drop the pages holding ``name``'s bytes from this process's memory.

        A tensor read as a view stays resident after use until the kernel needs
        the memory; a tool that streams through a whole checkpoint calls this
        after each tensor so its footprint stays near one tensor.  The data stays
        in the OS file cache, and views still held re-read it on access, so
        this never changes a value.  A no-op where the OS cannot do it.
        """
        i = self._record(name)
        e = self._entry(i, name)
        if e.num_slices:
            parts = [self._entry(self._table.find(_index.slice_key(_encode(name), ext)), name)
                     for ext in self._table.slices(i)]
        else:
            parts = [e]
        for part in parts:
            shard = self._shards.get(part.shard_id)
            if shard is not None:
                drop_pages(shard.buffer, part.offset, min(part.offset + part.size, shard.size))

    def verify_all(self, *, threads: int | None = None) -> list:
        """Check every tensor's checksum, and that no two tensors share bytes of a
        data file; return ``[(name, error), ...]`` for the bad ones.

        Parameters
        ----------
        threads : int, optional
            Threads that checksum (and page in) the data, in C without the GIL;
            default: one per CPU core.
        """
        self._check_open()
        names = self._batch_pass(False, threads)[1]
        bad = []
        for name in names:
            try:
                self.read(name, verify=True)
            except (CorruptCheckpointError, CheckpointNotFoundError, UnsupportedError) as exc:
                bad.append((name, exc))
        return bad + self.overlaps()

    def _batch_pass(self, arrays: bool, threads, verify: bool = True):
        """One pass over every listed tensor in C (tfshard._views.Batch): checksums in
        ``threads`` threads when ``verify``.  Returns ``(dict of views or None, names
        left to the general path)``; without the fast paths, ``(None, all names)``."""
        count = _thread_count(threads)
        views = self._views if self._views is not None else self._make_views()
        if not views:
            return None, list(self)
        with gc_paused():
            batch = views.batch(arrays)
            if verify:
                ranges = batch.split(count)
                pool = _crc_pool() if len(ranges) > 1 else None
                if pool is None:
                    for lo, hi in ranges:
                        batch.checksum(lo, hi)
                else:
                    futures = [pool.submit(batch.checksum, lo, hi) for lo, hi in ranges[1:]]
                    try:
                        batch.checksum(*ranges[0])
                    finally:
                        for future in futures:
                            future.result()
            return batch.finish(verify)

    def _load_all(self, threads=None) -> dict:
        """Every tensor (the body of :func:`load`)."""
        out, names = self._batch_pass(True, threads, self.verify)
        if out is None:
            return {name: self[name] for name in names}
        for name in names:
            out[name] = self.read(name)
        return out

    def overlaps(self) -> list:
        """``[(name, CorruptCheckpointError)]`` for tensors whose bytes overlap another's
        in a data file (:meth:`verify_all` includes them).  A checksum cannot catch an entry that points at another tensor
        together with that tensor's CRC; TF's writer never lays tensors over each other."""
        views = self._views if self._views is not None else self._make_views()
        if views and not views.any_overlap():
            return []  # the common case, decided in one pass in C
        spans = []
        table = self._table
        for h in table.handles():
            _, _, shard, offset, size, _, nslices, _ = table.entry(h)
            if not nslices and size > 0:
                spans.append((shard, offset, offset + size, h))
        spans.sort()
        bad = []
        reach = None  # (shard, end, handle) of the span reaching furthest so far
        for shard_b, start_b, end_b, hb in spans:
            if reach is not None and reach[0] == shard_b and start_b < reach[1]:
                _, end_a, ha = reach
                a, b = self._display_name(ha), self._display_name(hb)
                bad.append((b, CorruptCheckpointError(
                    f"{self.index_path}: tensor {b!r} starts at byte {start_b} of data shard "
                    f"{shard_b}, inside tensor {a!r} (which ends at {end_a}); tensors must not "
                    f"share bytes", path=self.index_path, key=b, offset=start_b)))
            if reach is None or reach[0] != shard_b or end_b > reach[1]:
                reach = (shard_b, end_b, hb)
        return bad

    def _shapes(self) -> list:
        """``[(name, [dims...]), ...]`` in key order (the fast path of list_variables)."""
        return self._table.shapes()

    def _display_name(self, handle: int) -> str:
        """The tensor name of an index entry (a slice entry: ``name[spec]``)."""
        key = self._table.key(handle)
        if key[:1] == b"\0":
            name, extents = _index.decode_slice_key(key)
            return f"{name.decode('utf-8', 'surrogateescape')}[{spec(extents)}]"
        return key.decode("utf-8", "surrogateescape")

    # ---- lifetime -------------------------------------------------------

    def _prefetch(self) -> None:
        """Before a whole-checkpoint read: nothing to do for local files (a remote
        checkpoint schedules every byte at once)."""

    def close(self) -> None:
        """Release the files.  Idempotent; arrays already returned stay valid."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            shards, self._shards = self._shards, {}
            opened, self._opened = getattr(self, "_opened", {}), {}
            if self._views:
                self._views.close()  # drops its views of the maps, so they can close
        self._release(shards, opened)

    def _release(self, shards: dict, opened: dict) -> None:
        """Close the shards and files :meth:`close` took from the checkpoint (a remote
        checkpoint forgets the bytes it fetched instead)."""
        for shard in shards.values():
            close_map(shard.buffer)
            close_map(shard.private)
            shard.file.close()
        for f in opened.values():
            f.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


_VIEW_DTYPES = None


def _view_dtypes() -> list:
    """numpy dtype by DataType code for the dtypes whose stored bytes are the array's
    (None for the others); the table tfshard._views makes views with."""
    global _VIEW_DTYPES
    if _VIEW_DTYPES is None:
        table = []
        for code in range(134):  # every code by_code knows, _REF codes (101-133) included
            try:
                dt = dtypes.by_code(code)
            except KeyError:
                dt = None
            table.append(dt.numpy if dt is not None and dt.kind == dtypes.FIXED else None)
        _VIEW_DTYPES = table
    return _VIEW_DTYPES


def _thread_count(threads) -> int:
    if threads is None:
        return _CORES
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return threads


def _check_versions(path, v) -> None:
    """Refuse a checkpoint whose VersionDef (producer, min_consumer, bad_consumer_1)
    excludes this reader; V1 and V2 checkpoints share the version numbers."""
    if v["producer"] < _MIN_PRODUCER:
        raise IncompatibleVersionError(
            f"{path}: checkpoint producer version {v['producer']} is below the minimum "
            f"{_MIN_PRODUCER} this reader supports", path=path)
    if v["min_consumer"] > _CONSUMER_VERSION:
        raise IncompatibleVersionError(
            f"{path}: checkpoint needs a reader of version {v['min_consumer']} or newer; "
            f"tfshard implements version {_CONSUMER_VERSION}", path=path)
    if v["bad_consumer_1"]:
        raise IncompatibleVersionError(
            f"{path}: checkpoint disallows readers of version {_CONSUMER_VERSION}", path=path)


def _encode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _stored_slice(ckpt, name: str, stored, extents) -> tuple:
    """``extents`` as the matching entry of ``stored`` (the tensor's slices, empty
    when it is not partitioned); TensorNotFoundError when there is none."""
    stored = tuple(stored)
    try:
        wanted = tuple((int(start), int(length)) for start, length in extents)
    except (TypeError, ValueError):
        wanted = None
    for s in stored:
        if tuple(tuple(x) for x in s) == wanted:
            return s
    listed = ", ".join(spec(s) for s in stored[:8]) or "none: it is stored whole"
    raise TensorNotFoundError(
        f"tensor {name!r} in {ckpt.prefix} has no stored slice {extents!r} (its slices: "
        f"{listed})", path=ckpt.prefix, key=name)


def _writable(arr):
    """``arr`` made writable: readers build their converted arrays afresh, so only
    the caller sees them; a view of a read-only map (numpy refuses the flag) is
    copied instead."""
    if not arr.flags.writeable:
        try:
            arr.flags.writeable = True
        except ValueError:
            arr = arr.copy()
    return arr


# ---- module-level convenience functions ----------------------------------

def open(path, verify: bool = True, *, storage_options=None) -> Checkpoint:  # noqa: A001
    """Open a checkpoint for reading.

    Parameters
    ----------
    path : str or os.PathLike
        A checkpoint prefix (``.../model.ckpt-100``), its ``.index`` file, one
        of its data shards, or a directory whose ``checkpoint`` state file
        names the latest checkpoint.  A URL (``s3://bucket/train/ckpt-100``,
        ``gs://``, ``http(s)://``, any protocol fsspec knows) is read through
        fsspec, fetching only the byte ranges each read needs (see
        ``docs/remote.md``).
    verify : bool
        Check each tensor's CRC-32C on its first whole read.
    storage_options : dict, optional
        For a URL: options for fsspec's filesystem (credentials, endpoint...);
        without them fsspec's usual configuration applies.  Ignored for local
        paths.

    Returns
    -------
    Checkpoint
        A :class:`~tfshard.reader_v1.V1Checkpoint` (same API) for a legacy V1
        checkpoint: a single file, or ``P-SSSSS-of-NNNNN`` shards.

    Raises
    ------
    CheckpointNotFoundError
        If no checkpoint is found at ``path``.
    CorruptCheckpointError
        If the index is malformed.
    IncompatibleVersionError
        If the checkpoint's version record refuses this reader.
    RemoteStorageError
        For a URL, if the storage fails (credentials, timeout, lost connection).
    """
    return Checkpoint(path, verify=verify, storage_options=storage_options)


def load(path, verify: bool = True, *, threads: int | None = None,
         storage_options=None) -> dict:
    """Read every tensor of a checkpoint into a dict of numpy arrays.

    The arrays are read-only views of the memory-mapped shards where the
    bytes allow (they remain valid; copy them to modify).  With ``verify``,
    every CRC-32C is checked in ``threads`` threads (default: one per CPU
    core), in C without the GIL, before the arrays are made.  For a URL every
    stored byte is fetched once, by concurrent ranged requests, while the
    tensors already fetched are checked and decoded.
    """
    with Checkpoint(path, verify=verify, storage_options=storage_options) as ckpt:
        ckpt._prefetch()
        return ckpt._load_all(threads)


def list_variables(path, *, storage_options=None) -> list:
    """``[(name, shape), ...]`` sorted by name, as ``tf.train.list_variables``."""
    with Checkpoint(path, storage_options=storage_options) as ckpt, gc_paused():
        return ckpt._shapes()


def load_variable(path, name: str, verify: bool = True, *, storage_options=None) -> np.ndarray:
    """Read one tensor, as ``tf.train.load_variable``."""
    with Checkpoint(path, verify=verify, storage_options=storage_options) as ckpt:
        return ckpt.read(name)
