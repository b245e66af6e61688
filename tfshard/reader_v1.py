"""Reading legacy V1 ("TensorSlice") checkpoints: :class:`V1Checkpoint`.

A V1 checkpoint is one SSTable file (``model.ckpt``) or several
(``model.ckpt-SSSSS-of-NNNNN``).  Each file starts with a metadata record
listing its tensors (name, dtype, shape, stored slices); every slice's values
are a protobuf record of their own.  Files are read whole at open (every
block checksum is verified then); values are decoded on each read, so arrays
returned are copies, never views.

``tfshard.open`` and ``tfshard.Checkpoint`` return this class for V1 input.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field

from . import _index, _v1, dtypes
from ._util import read_regular
from .errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsupportedError,
)
from .paths import resolve_prefix, v1_files
from .reader import (
    Checkpoint,
    TensorInfo,
    _check_versions,
    _encode,
    _normalize_rows,
    _stored_slice,
    _writable,
)
from .slices import assemble, covering, prod, spec

__all__ = ["V1Checkpoint"]


@dataclass
class _Part:
    """One stored slice of a tensor: the file holding it, and where it lies."""

    file: int
    extents: tuple
    bounds: list


@dataclass
class _Tensor:
    name: str
    code: int
    shape: tuple
    parts: list = field(default_factory=list)


def _key(name: str, extents) -> bytes:
    """The SSTable key of one stored slice (TF's EncodeTensorNameSlice), scalars included."""
    return _index.slice_key(_encode(name), list(extents))


def _read_file(path: str) -> bytes:
    # A regular file only (a FIFO is refused, not blocked on); errors keep the errno.
    return read_regular(path, "V1 checkpoint file",
                        missing=f"V1 checkpoint file {path} does not exist")


class V1Checkpoint(Checkpoint):
    """A legacy V1 ("TensorSlice") TensorFlow checkpoint opened for reading.

    The same read-only ``Mapping[str, numpy.ndarray]`` API as
    :class:`tfshard.Checkpoint`: ``info``/``infos``, ``read`` (with row
    ranges), ``release``, ``verify_all``, ``close``.  Differences: arrays are
    decoded copies (V1 stores values as protobuf fields, not raw bytes);
    :class:`TensorInfo` has ``shard`` and ``offset`` None and ``nbytes`` the
    decoded size (for strings, the total length of the elements); V1 has no
    per-tensor checksums, so ``verify`` changes nothing (the SSTable block
    checksums are all checked at open).  ``num_shards`` is the number of files.
    Tensors saved as several slices (partitioned variables, possibly spread
    over several files) are assembled; slices that overlap or leave part of
    the tensor uncovered are an error, as in TF.
    """

    _views = False  # values are decoded, never views: no C fast paths

    def __init__(self, path, *, verify: bool = True, storage_options=None):
        # storage_options only matter for URLs, which open as RemoteV1Checkpoint.
        prefix = resolve_prefix(path)
        files = v1_files(prefix)
        if not files:
            raise CheckpointNotFoundError(f"no V1 checkpoint at {prefix!r}", path=prefix)
        self._setup(prefix, files, (_read_file(p) for p in files), verify)

    def _setup(self, prefix: str, files: list, contents, verify: bool) -> None:
        """Parse the V1 files ``files`` (names for messages) whose bytes ``contents``
        yields in order; a remote checkpoint passes the bytes it fetched."""
        self.prefix = prefix
        self.files = files
        self.num_shards = len(files)
        self.index_path = files[0]
        self.verify = bool(verify)
        self.big_endian = False
        self._swap = False
        self._lock = threading.Lock()
        self._closed = False
        self._shards = {}
        self._verified = set()
        self._tables = []
        self._tensors: dict[str, _Tensor] = {}
        for i, (path, raw) in enumerate(zip(files, contents)):
            table = _index.IndexTable(raw, path)
            versions, tensors = _v1.parse_meta(table.header_value, path)
            _check_versions(path, versions)
            self._tables.append(table)
            for name, code, shape, slices in tensors:
                self._register(i, name, code, shape, slices)
        self._names = sorted(self._tensors, key=_encode)

    def _register(self, file: int, name: str, code: int, shape: tuple, slices) -> None:
        """Add one file's record of a tensor: its dtype and shape must agree with
        other records of it, and each slice must fit the shape."""
        path = self.files[file]
        t = self._tensors.get(name)
        if t is None:
            t = self._tensors[name] = _Tensor(name, code, shape)
        elif t.code != code or t.shape != shape:
            raise CorruptCheckpointError(
                f"{path}: tensor {name!r} is recorded as {dtypes.describe_code(code)} "
                f"{list(shape)}, but earlier as {dtypes.describe_code(t.code)} "
                f"{list(t.shape)}", path=path, key=name)
        if not slices:
            raise CorruptCheckpointError(
                f"{path}: the metadata of tensor {name!r} lists no stored slice (expected at "
                f"least one)", path=path, key=name)
        for extents in slices:
            if len(extents) != len(shape):
                raise CorruptCheckpointError(
                    f"{path}: tensor {name!r} of shape {list(shape)} has a slice of rank "
                    f"{len(extents)} ({spec(extents)}); expected rank {len(shape)}",
                    path=path, key=name)
            bounds = []
            for (start, length), dim in zip(extents, shape):
                stop = dim if length < 0 else start + length
                if not 0 <= start <= stop <= dim:
                    raise CorruptCheckpointError(
                        f"{path}: tensor {name!r} has a slice {spec(extents)} outside its "
                        f"shape {list(shape)}", path=path, key=name)
                bounds.append((start, stop))
            t.parts.append(_Part(file, tuple(extents), bounds))

    # ---- Mapping ------------------------------------------------------------

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self._tensors

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self)} tensors"
        return f"<tfshard.Checkpoint {self.prefix!r} (V1, {self.num_shards} file(s)): {state}>"

    # ---- lookups --------------------------------------------------------------

    def _tensor(self, name) -> _Tensor:
        t = self._tensors.get(name) if isinstance(name, str) else None
        if t is None:
            raise self._not_found(name)
        return t

    def _dtype(self, t: _Tensor, *, decoding: bool) -> dtypes.DType:
        try:
            dt = dtypes.by_code(t.code)
        except KeyError:
            dt = None
        if dt is None or (decoding and not _v1.supported(t.code)):
            raise UnsupportedError(
                f"{self.files[t.parts[0].file]}: tensor {t.name!r} has dtype "
                f"{dtypes.describe_code(t.code)}, which a V1 checkpoint cannot hold",
                path=self.files[t.parts[0].file], key=t.name)
        return dt

    @staticmethod
    def _is_whole(t: _Tensor, part: _Part) -> bool:
        return all(lo == 0 and hi == dim for (lo, hi), dim in zip(part.bounds, t.shape))

    def _slices(self, t: _Tensor) -> tuple:
        """Stored slices as TensorInfo lists them: empty for a tensor stored whole."""
        if len(t.parts) == 1 and self._is_whole(t, t.parts[0]):
            return ()
        return tuple(p.extents for p in t.parts)

    def info(self, name: str) -> TensorInfo:
        """Metadata of tensor ``name``; ``nbytes`` is the decoded size.

        Raises
        ------
        TensorNotFoundError
            If there is no such tensor.
        UnsupportedError
            If its dtype code is unknown.
        CorruptCheckpointError
            If a string tensor's records are malformed (their sizes are read).
        """
        self._check_open()
        t = self._tensor(name)
        dt = self._dtype(t, decoding=False)
        if dt.kind == dtypes.STRING:
            nbytes = 0
            for part in t.parts:
                path, proto = self._record(t, part)
                nbytes += _v1.string_nbytes(proto, path, name)
        else:
            nbytes = dt.itemsize * prod(t.shape)
        return TensorInfo(name, dt.name, t.shape, nbytes, None, None, self._slices(t))

    def infos(self) -> list:
        """:class:`TensorInfo` of every tensor, sorted by name."""
        self._check_open()
        return [self.info(name) for name in self._names]

    def _shapes(self) -> list:
        return [(name, list(self._tensors[name].shape)) for name in self._names]

    # ---- data -----------------------------------------------------------------

    def _record(self, t: _Tensor, part: _Part):
        """(file path, TensorProto bytes) of one stored slice, checked against the meta."""
        path = self.files[part.file]
        table = self._tables[part.file]
        h = table.find(_key(t.name, part.extents))
        if h < 0:
            raise CorruptCheckpointError(
                f"{path}: the metadata lists slice {spec(part.extents) or '(scalar)'} of "
                f"tensor {t.name!r}, but the file holds no data record for it",
                path=path, key=t.name)
        name, extents, proto = _v1.parse_data(table.value(h), path, t.name)
        if name != t.name or (extents is not None and tuple(extents) != part.extents):
            raise CorruptCheckpointError(
                f"{path}: the data record of tensor {t.name!r} slice {spec(part.extents)} "
                f"names tensor {name!r} slice {spec(extents or ())}", path=path, key=t.name)
        return path, proto

    def _decode(self, t: _Tensor, dt: dtypes.DType, part: _Part):
        import numpy as np

        path, proto = self._record(t, part)
        shape = tuple(hi - lo for lo, hi in part.bounds)
        count = prod(shape)
        flat = _v1.decode(proto, t.code, dt.numpy if dt.kind != dtypes.STRING else np.object_,
                          count, path, t.name)
        return flat.reshape(shape)

    def _assemble(self, t: _Tensor, dt: dtypes.DType, rows=None):
        """The tensor (or rows ``rows`` of it) from its stored slices."""
        if len(t.parts) == 1 and self._is_whole(t, t.parts[0]):
            arr = self._decode(t, dt, t.parts[0])
            if rows is not None:
                arr = arr[rows[0]:rows[1]]
            arr.flags.writeable = False
            return arr
        region = [(0, d) for d in t.shape]
        if rows is not None:
            region[0] = rows
        boxes = [p.bounds for p in t.parts]
        pieces = covering(boxes, region, f"{self.prefix}: tensor {t.name!r}",
                          path=self.prefix, key=t.name)
        # Decode first: each slice's value count is checked against the bytes
        # present, so the output is only allocated for values that exist.
        values = [self._decode(t, dt, t.parts[k]) for k, _ in pieces]
        return assemble(region, boxes, pieces, values,
                        dt.numpy if dt.kind != dtypes.STRING else object)

    def read(self, name: str, index=None, *, verify: bool | None = None,
             writable: bool = False):
        """Read tensor ``name``, or the part of it selected by ``index``.

        Parameters
        ----------
        name : str
            Tensor name as listed by :meth:`keys`.
        index : numpy index, optional
            Anything numpy accepts; a leading row range decodes only the
            stored slices that intersect it.
        verify : bool, optional
            Accepted for API compatibility; V1 has no per-tensor checksum.
        writable : bool
            Return the decoded copy writable.

        Returns
        -------
        numpy.ndarray
            A decoded copy, read-only unless ``writable``.

        Raises
        ------
        TensorNotFoundError
            If there is no such tensor.
        UnsupportedError
            If its dtype cannot be decoded.
        CorruptCheckpointError
            If its records are malformed, hold another number of values than
            the shape needs, or its slices overlap or leave gaps.
        """
        self._check_open()
        t = self._tensor(name)
        dt = self._dtype(t, decoding=True)
        # numpy bounds the byte size of an empty array by its non-zero dimensions;
        # TF's shapes only by the element count.  (A non-empty tensor that large
        # fails its value count: the file cannot hold its values.)
        if prod(t.shape) == 0 and prod(d for d in t.shape if d) * max(dt.itemsize, 8) > \
                sys.maxsize:
            raise UnsupportedError(
                f"{self.prefix}: tensor {name!r} has shape {list(t.shape)}, which numpy "
                f"cannot represent as {dt.name}", path=self.prefix, key=name)
        rows = None
        if index is not None and t.shape:
            norm = _normalize_rows(index, t.shape[0])
            if norm is not None:
                rows, index = norm[:2], norm[2]
        arr = self._assemble(t, dt, rows)
        arr = arr if index is None else arr[index]
        return _writable(arr) if writable else arr

    def read_slice(self, name: str, extents, index=None, *, verify: bool | None = None):
        """Read one stored slice of a partitioned tensor, or part of it (see
        :meth:`tfshard.Checkpoint.read_slice`); V1 decodes the whole slice."""
        self._check_open()
        t = self._tensor(name)
        dt = self._dtype(t, decoding=True)
        extents = _stored_slice(self, name, self._slices(t), extents)
        part = next(p for p in t.parts if p.extents == extents)
        arr = self._decode(t, dt, part)
        arr.flags.writeable = False
        return arr if index is None else arr[index]

    def release(self, name: str) -> None:
        """A no-op for V1 (values are decoded copies); checks that ``name`` exists."""
        self._tensor(name)

    def verify_all(self, *, threads: int | None = None) -> list:
        """Decode every tensor; ``[(name, error), ...]`` for the ones that fail.
        ``threads`` is accepted for the V2 reader's signature (decoding runs on this
        thread)."""
        bad = []
        for name in self:
            try:
                self.read(name)
            except (CorruptCheckpointError, CheckpointNotFoundError, UnsupportedError) as exc:
                bad.append((name, exc))
        return bad

    def overlaps(self) -> list:
        """Always empty: V1 records hold their own values, so tensors cannot share bytes."""
        return []

    def close(self) -> None:
        """Release the files' contents.  Idempotent; arrays already returned stay valid."""
        with self._lock:
            self._closed = True
            self._tables = []
