"""Writing TensorFlow V2 checkpoints: :class:`CheckpointWriter` and :func:`save`.

Tensor bytes are appended to data shards as they are added, under temporary
names; :meth:`CheckpointWriter.commit` writes the index beside them and then
installs the whole checkpoint by renames (:mod:`tfshard._commit`), so at every
moment the old checkpoint of the prefix or the new one is complete.  Every
write is checked: a full disk or a file-size limit raises
:class:`~tfshard.WriteFailedError` and leaves the old checkpoint as it was.
The index encoding (in C) reproduces TensorFlow's byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from . import _build, _commit, _index, dtypes
from ._util import create_exclusive, discard_file, gc_paused, temp_name, write_failed, write_temp
from .errors import InvalidTensorError, WriteFailedError, WriterClosedError
from .paths import checkpoint_layout, data_filename, index_filename, shard_count_now
from .reader import Checkpoint
from .slices import bounds, bounds_spec, find_overlap, parse_spec, spec
from .storage import is_url as _is_url

__all__ = ["CheckpointWriter", "save", "DEFAULT_ALIGNMENT"]

#: Default byte alignment of tensor offsets in data files.  64 bytes (a cache
#: line, and more than any dtype needs) makes every tensor a properly aligned
#: zero-copy view for numpy and friends, for at most 63 padding bytes per
#: tensor.  TF's own writer packs densely (alignment 1) and its readers follow
#: offsets, so both restore in TF; pass ``alignment=1`` for files
#: byte-identical to TensorFlow's.
DEFAULT_ALIGNMENT = 64


# A validated tensor, ready to append, is a plain tuple
#     (key, name, dtype, shape, payload, nbytes, crc)
# key: bytes; dtype: DType; payload: a C-contiguous buffer of the stored bytes;
# crc: the masked CRC when the encoding computed it (strings, variants), else None.
# Plain tuples because a named tuple costs ten times as much to create, which
# shows when saving tens of thousands of small tensors.
KEY, NAME, DTYPE, SHAPE, PAYLOAD, NBYTES, CRC = range(7)


class _Shard:
    """One data file being written under a temporary name."""

    def __init__(self, prefix: str, shard_id: int, alignment: int):
        self.id = shard_id
        # Where the file is now: a temporary name until the commit renames it.
        self.path = temp_name(f"{prefix}.data-{shard_id:05d}")
        # Locked while open: housekeeping never removes a live writer's file.
        self.fd = create_exclusive(self.path)
        self.sink = _build.DataFile(self.fd, alignment, self.path)
        self.planned = 0  # bytes assigned by add_all but not yet written

    def append(self, t: tuple, entries: dict, crc_pool=None):
        """Write one tensor; its encoded index entry goes to ``entries[key]``."""
        self.sink.append_all([t], self.id, entries, crc_pool)

    def append_all(self, tensors: list, entries: dict, crc_pool=None):
        """Write tensors in order, their index entries into ``entries``.  With
        ``crc_pool``, large tensors are checksummed there while being written."""
        self.sink.append_all(tensors, self.id, entries, crc_pool)

    def finish(self, fsync: bool):
        """Write out what is staged (and fsync); the file stays open, and locked,
        until the commit has renamed it."""
        self.sink.flush()
        if fsync:
            os.fsync(self.fd)

    def close(self):
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class _Partitioned:
    """What a partitioned tensor's full entry records: dtype, shape, slices."""

    def __init__(self, dtype: dtypes.DType, shape: tuple):
        self.dtype = dtype
        self.shape = shape
        self.slices: list = []


_Self = TypeVar("_Self", bound="CheckpointWriter")


class CheckpointWriter:
    """Write one checkpoint (``prefix.index`` + data shards) atomically.

    Use it as a context manager: on a clean exit the checkpoint is committed;
    if the block raises, every file written so far is removed and nothing
    appears under the checkpoint's names.

    >>> with tfshard.CheckpointWriter("out/model.ckpt") as w:   # doctest: +SKIP
    ...     w.add("dense/kernel", kernel)
    ...     w.add_slice("emb", [1000, 64], "0,500:-", emb[:500])
    ...     w.add_slice("emb", [1000, 64], "500,500:-", emb[500:])

    Parameters
    ----------
    prefix : str or os.PathLike
        Checkpoint prefix; its directory is created if needed.  An existing
        checkpoint of the same prefix is replaced at commit; when it has as many
        data shards as this one, one empty data file is added so that the two
        never share file names (the old checkpoint stays whole until the new
        index replaces it; TF reads both).
    num_shards : int
        Number of data files.  Each tensor goes to the shard holding the fewest
        bytes so far; :meth:`add_all` writes the shards in parallel threads.
    max_shard_size : int, optional
        Instead of ``num_shards``: start a new data file whenever the next
        tensor would take the current one past this many bytes (a larger tensor
        gets a file of its own).
    alignment : int
        Byte alignment of every tensor's offset (default
        :data:`DEFAULT_ALIGNMENT`; 1 packs like TensorFlow).
    fsync : bool
        Flush data and index to stable storage before each rename, so the
        checkpoint survives a power loss once :meth:`commit` returns.
    storage_options : dict, optional
        For a URL prefix (``s3://bucket/run/ckpt-5``): options for fsspec's
        filesystem.  A URL prefix is written to a local staging folder and
        uploaded at commit, data objects first and the index last
        (:class:`tfshard.writer_remote.RemoteCheckpointWriter`).

    Notes
    -----
    Bytes are written as tensors are added, so memory stays at one tensor's
    encoding.  A tensor whose validation fails raises
    :class:`~tfshard.InvalidTensorError` before any of its bytes are written.
    """

    def __new__(cls, prefix=None, *args, **kwargs):
        # A URL prefix writes through a local staging folder, then uploads
        # (tfshard.writer_remote).
        if cls is CheckpointWriter and prefix is not None and _is_url(prefix):
            from .writer_remote import RemoteCheckpointWriter

            return super().__new__(RemoteCheckpointWriter)
        return super().__new__(cls)

    def __init__(self, prefix, *, num_shards: int = 1, max_shard_size: int | None = None,
                 alignment: int = DEFAULT_ALIGNMENT, fsync: bool = False,
                 storage_options=None):
        # storage_options only matter for URLs (RemoteCheckpointWriter).
        prefix = os.fspath(prefix)
        if not isinstance(prefix, str) or not prefix or prefix.endswith(os.sep):
            raise InvalidTensorError(f"a checkpoint prefix must be a non-empty path that does "
                                     f"not end in a separator, got {prefix!r}", path=prefix)
        if max_shard_size is not None and num_shards != 1:
            raise InvalidTensorError("pass num_shards or max_shard_size, not both")
        if not isinstance(num_shards, int) or num_shards < 1:
            raise InvalidTensorError(f"num_shards must be a positive integer, got {num_shards!r}")
        if max_shard_size is not None and (not isinstance(max_shard_size, int)
                                           or max_shard_size < 1):
            raise InvalidTensorError(
                f"max_shard_size must be a positive number of bytes, got {max_shard_size!r}")
        if not isinstance(alignment, int) or not 1 <= alignment <= 1 << 20:
            raise InvalidTensorError(
                f"alignment must be an integer from 1 to 1 MiB, got {alignment!r}")
        self.prefix = prefix
        self.alignment = alignment
        self.fsync = fsync
        self._max_shard_size = max_shard_size
        self._entries: dict[bytes, bytes] = {}
        self._partitioned: dict[bytes, _Partitioned] = {}
        self._shards: list[_Shard] = []
        self._pool = None
        self._index_temp = None
        self._state = "open"
        directory = os.path.dirname(prefix)
        try:
            if directory:
                try:
                    os.makedirs(directory, exist_ok=True)
                except OSError as exc:
                    raise write_failed(exc, prefix, f"creating the directory {directory}") \
                        from None
            for _ in range(num_shards if max_shard_size is None else 1):
                self._new_shard()
        except BaseException:
            self.abort()
            raise

    # ---- adding tensors ----------------------------------------------------

    def add(self, name: str, array, *, dtype: str | None = None) -> None:
        """Add one tensor and write its bytes.

        Parameters
        ----------
        name : str
            The checkpoint key (e.g. ``"dense/kernel"``); unique, non-empty.
        array : array_like
            numpy array or anything ``numpy.asarray`` accepts.  ``object``,
            ``bytes_`` or ``str_`` arrays are saved as TF strings (elements
            ``bytes`` or ``str``, the latter UTF-8 encoded).
        dtype : str, optional
            TensorFlow dtype name to store (``"bfloat16"``, ``"qint8"``,
            ``"variant"``...); values are converted as ``numpy.astype`` does.
            By default the array's own dtype.

        Raises
        ------
        InvalidTensorError
            Bad name, duplicate, or data that cannot be saved.
        """
        self._check_open()
        t = self._prepare(name, array, dtype)
        self._claim(t[KEY], name)
        self._write(t)

    def add_slice(self, name: str, full_shape, slice_spec, array, *,
                  dtype: str | None = None) -> None:
        """Add one slice of a partitioned tensor (TF1 partitioned variables).

        Parameters
        ----------
        name : str
            The full tensor's name.
        full_shape : sequence of int
            Shape of the whole tensor; the same for every slice of ``name``.
        slice_spec : str or sequence of (start, length)
            Which part ``array`` is: TF's form ``"0,5:-"`` (``-`` = the whole
            dimension) or pairs such as ``[(0, 5), (0, -1)]``.
        array : array_like
            The slice's values; its shape must be the slice's extent.
        dtype : str, optional
            As in :meth:`add`.

        A slice covering the whole tensor is stored as a plain tensor, as TF does.
        Slices must not overlap; they need not cover the whole tensor (reading
        an uncovered region is an error).
        """
        self._check_open()
        full_shape = self._shape(name, full_shape)
        extents = self._extents(name, full_shape, slice_spec)
        if all(length < 0 or (start == 0 and length == dim)
               for (start, length), dim in zip(extents, full_shape)):
            # The whole tensor: stored as a plain one, as TF does.
            t = self._prepare(name, array, dtype)
            if t[SHAPE] != full_shape:
                raise InvalidTensorError(
                    f"slice {spec(extents)} covers all of {name!r} {list(full_shape)}, but the "
                    f"array's shape is {list(t[SHAPE])}", key=name)
            self._claim(t[KEY], name)
            self._write(t)
            return
        key = self._key(name)
        t = self._prepare(name, array, dtype)
        expect = tuple(hi - lo for lo, hi in bounds(extents, full_shape))
        if t[SHAPE] != expect:
            raise InvalidTensorError(
                f"slice {spec(extents)} of {name!r} {list(full_shape)} has shape {list(expect)}, "
                f"but the array's shape is {list(t[SHAPE])}", key=name)
        full = self._partitioned.get(key)
        if full is None:
            if key in self._entries:
                raise InvalidTensorError(f"tensor {name!r} was already added unpartitioned",
                                         key=name)
            full = _Partitioned(t[DTYPE], full_shape)
        elif (full.dtype, full.shape) != (t[DTYPE], full_shape):
            raise InvalidTensorError(
                f"slices of {name!r} disagree: {full.dtype.name} {list(full.shape)} before, "
                f"{t[DTYPE].name} {list(full_shape)} now", key=name)
        slice_key = _index.slice_key(key, extents)
        if slice_key in self._entries:
            raise InvalidTensorError(f"slice {spec(extents)} of {name!r} was already added",
                                     key=name)
        self._partitioned[key] = full
        full.slices.append(extents)
        self._write((slice_key,) + t[1:])

    def add_all(self, tensors) -> None:
        """Add many tensors: a mapping or an iterable of ``(name, array)`` pairs.

        An open :class:`~tfshard.Checkpoint` is copied with its stored dtypes
        (quantized and variant tensors stay what they were, where a plain dict of
        its arrays would store their numpy types).  Every tensor is validated
        before any is written; with several shards the shards are then written
        in parallel threads.
        """
        self._check_open()
        overrides = {}
        if isinstance(tensors, Checkpoint):
            overrides = {info.name: info.dtype for info in tensors.infos()
                         if _stored_as_other_type(dtypes.by_name(info.dtype))}
        with gc_paused():
            if type(tensors) is dict and self._add_dict(tensors):
                return
            self._add_all(tensors.items() if isinstance(tensors, Mapping) else tensors,
                          overrides)

    def _add_dict(self, tensors: dict) -> bool:
        """A fresh one-shard writer given a dict of plain arrays (str keys) writes it in
        one C loop, with no per-tensor Python objects but the index entries (dict keys
        are unique, so there is nothing to check twice).  False where that does not
        apply and nothing was written."""
        if self._entries or self._partitioned or len(self._shards) != 1 \
                or self._max_shard_size is not None:
            return False
        shard = self._shards[0]
        try:
            done = shard.sink.append_mapping(tensors, shard.id, self._entries,
                                             self._crc_pool())
        except OSError as exc:
            raise self._failed(exc, shard) from None
        return done >= 0

    def _failed(self, exc: OSError, shard: _Shard | None = None, doing: str | None = None,
                abort: bool = True):
        """Abort (unless told not to: other threads may still be writing), and the
        WriteFailedError for an OSError of a write (naming the prefix, the tensor
        and the shard)."""
        if abort:
            self.abort()
        if isinstance(exc, WriteFailedError):
            return exc
        if doing is None:
            name = getattr(shard.sink, "failed", None) if shard is not None else None
            where = (f"data shard {shard.id} (written as {os.path.basename(shard.path)})"
                     if shard is not None else "a data shard")
            doing = (f"writing tensor {name!r} to {where}" if name is not None
                     else f"writing {where}")
        return write_failed(exc, self.prefix, doing)

    def _add_all(self, items, overrides):
        pairs = list(items)
        # The common case (str names, contiguous numeric arrays) is prepared in one
        # C loop: per-tensor cost is what bounds saves of many small tensors.
        prepared = _build.prepare_plain(pairs, _DTYPES_BY_CODE)
        for i, t in enumerate(prepared):
            if t is None or (overrides and pairs[i][0] in overrides):
                prepared[i] = self._prepare(*pairs[i], overrides.get(pairs[i][0]))
        keys = [t[KEY] for t in prepared]
        if len(set(keys)) != len(keys) or (self._entries and not self._entries.keys().isdisjoint(
                keys)) or (self._partitioned and not self._partitioned.keys().isdisjoint(keys)):
            seen = set(self._entries) | set(self._partitioned)
            for t in prepared:
                if t[KEY] in seen:
                    raise InvalidTensorError(f"tensor {t[NAME]!r} is added twice", key=t[NAME])
                seen.add(t[KEY])
        plan: dict[int, list] = {}
        if len(self._shards) == 1 and self._max_shard_size is None:
            plan[0] = prepared
            align = self.alignment
            self._shards[0].sink.preallocate(sum(t[NBYTES] + -t[NBYTES] % align
                                                 for t in prepared))
        else:
            for t in prepared:
                plan.setdefault(self._shard_for(t[NBYTES], reserve=True).id, []).append(t)
            for shard in self._shards:
                shard.sink.preallocate(shard.planned)
                shard.planned = 0

        if len(plan) > 1:
            # One thread per shard; CRC and write() both run without the GIL.
            def write(shard_id):
                shard = self._shards[shard_id]
                try:
                    shard.append_all(plan[shard_id], self._entries)
                except OSError as exc:
                    raise self._failed(exc, shard, abort=False) from None

            try:
                # Leaving the block waits for every thread, failed or not.
                with ThreadPoolExecutor(min(len(plan), os.cpu_count() or 1)) as pool:
                    list(pool.map(write, plan))
            except BaseException:
                self.abort()
                raise
        else:
            for shard_id, tensors in plan.items():
                shard = self._shards[shard_id]
                try:
                    shard.append_all(tensors, self._entries, self._crc_pool())
                except OSError as exc:
                    raise self._failed(exc, shard) from None

    # ---- validation --------------------------------------------------------

    def _check_open(self):
        if self._state != "open":
            raise WriterClosedError(f"the writer of {self.prefix!r} is already {self._state}",
                                    path=self.prefix)

    @staticmethod
    def _key(name) -> bytes:
        if not isinstance(name, str):
            raise InvalidTensorError(f"tensor names must be str, got {type(name).__name__} "
                                     f"{name!r}")
        if not name:
            raise InvalidTensorError("tensor names must not be empty (the empty key holds the "
                                     "checkpoint header)")
        try:
            # surrogateescape: names the reader returned from non-UTF-8 keys round-trip.
            return name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as exc:
            raise InvalidTensorError(f"tensor name {name!r} cannot be encoded: {exc}",
                                     key=name) from None

    def _claim(self, key: bytes, name: str):
        if key in self._entries or key in self._partitioned:
            raise InvalidTensorError(f"tensor {name!r} was already added", key=name)

    @staticmethod
    def _shape(name, shape) -> tuple:
        try:
            shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise InvalidTensorError(f"shape of {name!r} must be a sequence of integers, got "
                                     f"{shape!r}", key=name) from None
        if any(d < 0 for d in shape) or len(shape) > 254:
            raise InvalidTensorError(f"shape {list(shape)} of {name!r} is invalid (negative "
                                     f"dimension or rank above 254)", key=name)
        return shape

    @staticmethod
    def _extents(name, full_shape, slice_spec) -> list:
        try:
            if isinstance(slice_spec, str):
                extents = parse_spec(slice_spec)
            else:
                extents = [(0, -1) if length is None or length < 0 else (int(start), int(length))
                           for start, length in slice_spec]
        except (TypeError, ValueError) as exc:
            raise InvalidTensorError(f"slice spec {slice_spec!r} of {name!r} is invalid: {exc}",
                                     key=name) from None
        if len(extents) != len(full_shape) or not full_shape:
            raise InvalidTensorError(
                f"slice spec {slice_spec!r} has {len(extents)} dimensions but {name!r} has shape "
                f"{list(full_shape)}", key=name)
        for (start, length), dim in zip(extents, full_shape):
            if length >= 0 and not (0 <= start and start + length <= dim):
                raise InvalidTensorError(
                    f"slice {spec(extents)} lies outside the shape {list(full_shape)} of "
                    f"{name!r}", key=name)
        return extents

    def _prepare(self, name, array, dtype_name) -> tuple:
        """Validate one tensor and produce its stored bytes (no I/O)."""
        import numpy as np

        if dtype_name is None:
            ready = _build.prepare_plain([(name, array)], _DTYPES_BY_CODE)[0]
            if ready is not None:
                return ready
        key = self._key(name)
        try:
            dt = None if dtype_name is None else dtypes.by_name(dtype_name)
        except KeyError:
            raise InvalidTensorError(f"unknown dtype {dtype_name!r} for {name!r}; expected a "
                                     f"TensorFlow dtype name such as 'float32'",
                                     key=name) from None
        try:
            arr = array if isinstance(array, np.ndarray) else _as_array(array)
        except Exception as exc:  # numpy raises many types for unconvertible input
            raise InvalidTensorError(f"{name!r}: cannot convert {type(array).__name__} to an "
                                     f"array: {exc}", key=name) from None
        if arr.ndim > 254:
            raise InvalidTensorError(f"{name!r} has rank {arr.ndim}; the format allows 254",
                                     key=name)
        if dt is None:
            dt = _dtype_of(arr, name)
        if dt.kind in (dtypes.STRING, dtypes.VARIANT):
            items = _as_bytes_list(arr, name, dt)
            payload, crc = (_build.encode_strings(items) if dt.kind == dtypes.STRING
                            else _build.encode_variants(items))
            return key, name, dt, arr.shape, payload, len(payload), crc
        if arr.dtype != dt.numpy:
            if arr.dtype.kind in "OSUV":
                raise InvalidTensorError(f"{name!r}: cannot store a {arr.dtype} array as "
                                         f"{dt.name}", key=name)
            try:
                arr = arr.astype(dt.numpy)
            except (TypeError, ValueError) as exc:
                raise InvalidTensorError(f"{name!r}: cannot convert {arr.dtype} to {dt.name}: "
                                         f"{exc}", key=name) from None
        shape = arr.shape
        if dt.kind == dtypes.SUBBYTE:
            # One byte per element with the value in the low bits and the high
            # bits zero, as TensorFlow writes them.
            arr = np.ascontiguousarray(arr).view(np.uint8) & np.uint8((1 << dt.bits) - 1)
        elif not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        if dt.numpy_name.startswith("ml_dtypes."):
            arr = arr.reshape(-1).view(np.uint8)  # numpy cannot export these dtypes as buffers
        return key, name, dt, shape, arr, arr.nbytes, None

    # ---- shards ------------------------------------------------------------

    def _write(self, t: tuple):
        """Append one prepared tensor to the shard it belongs in; record its entry."""
        shard = None
        try:
            shard = self._shard_for(t[NBYTES])
            shard.append(t, self._entries, self._crc_pool())
        except OSError as exc:
            raise self._failed(exc, shard, None if shard is not None else
                               f"creating a data shard for tensor {t[NAME]!r}") from None

    def _crc_pool(self):
        """A one-thread executor that checksums large tensors while they are
        written (on one core the two passes would add up)."""
        if self._pool is None and (os.cpu_count() or 1) > 1:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="tfshard-crc")
        return self._pool

    def _new_shard(self) -> _Shard:
        try:
            shard = _Shard(self.prefix, len(self._shards), self.alignment)
        except OSError as exc:
            raise write_failed(exc, self.prefix, f"creating data shard {len(self._shards)}") \
                from None
        self._shards.append(shard)
        return shard

    def _shard_for(self, nbytes: int, reserve: bool = False) -> _Shard:
        """The shard the next tensor of ``nbytes`` goes to.  With ``reserve`` the
        bytes are only counted (for planning parallel writes)."""
        def used(s):
            return s.sink.position + s.planned

        if self._max_shard_size is None:
            shard = min(self._shards, key=used) if len(self._shards) > 1 else self._shards[0]
        else:
            shard = self._shards[-1]
            if used(shard) and used(shard) + nbytes > self._max_shard_size:
                shard = self._new_shard()
        if reserve:
            pad = -nbytes % self.alignment
            shard.planned += nbytes + pad
        return shard

    # ---- commit / abort ----------------------------------------------------

    def commit(self) -> str:
        """Finish the checkpoint: flush the data files, write ``prefix.index``
        beside them, then install both in place of any old checkpoint of the
        prefix.  Returns the prefix.

        At every moment the old checkpoint or the new one is complete (see
        :mod:`tfshard._commit`); a failure at any step leaves the old one.

        Raises
        ------
        InvalidTensorError
            If two slices of a partitioned tensor overlap (then nothing is kept).
        WriteFailedError
            If a write, fsync or rename fails (disk full, file-size limit, I/O
            error...): the new files are removed and the old checkpoint is intact.
        """
        self._check_open()
        index_fd = -1
        try:
            if shard_count_now(self.prefix) == len(self._shards):
                # The new data files would take the names of the old checkpoint's, so
                # that for a moment neither index could be in place.  One empty data
                # file more gives them other names ("-of-(N+1)"): the old checkpoint
                # then stays whole under its own names until the new index replaces
                # its index in one rename.  TF reads such a checkpoint as any other.
                self._new_shard()
            index = self._index_bytes()
            shard = None
            try:
                for shard in self._shards:
                    shard.finish(self.fsync)
            except OSError as exc:
                raise self._failed(exc, shard, f"flushing data shard {shard.id}") from None
            index_temp, index_fd = write_temp(index_filename(self.prefix), index,
                                              fsync=self.fsync, target=self.prefix,
                                              what="the index")
            self._index_temp = index_temp
            if not _commit.LOCKS_HELD_OPEN:
                self._close_files()  # where open files cannot be renamed
            n = len(self._shards)
            moves = [(s.path, data_filename(self.prefix, s.id, n)) for s in self._shards]
            _commit.install(checkpoint_layout(self.prefix), index_temp, moves,
                            fsync=self.fsync, target=self.prefix, what="the checkpoint")
            self._state = "committed"
        except BaseException:
            self.abort()
            raise
        finally:
            if index_fd >= 0:
                os.close(index_fd)
            self._close_files()
            self._shutdown_pool()
        return self.prefix

    def _close_files(self):
        for shard in self._shards:
            try:
                shard.close()
            except OSError:
                pass

    def _shutdown_pool(self):
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _index_bytes(self) -> bytes:
        entries = dict(self._entries) if self._partitioned else self._entries
        for key, full in self._partitioned.items():
            overlap = find_overlap([bounds(e, full.shape) for e in full.slices])
            if overlap:
                name = key.decode("utf-8", "surrogateescape")
                raise InvalidTensorError(
                    f"slices {bounds_spec(overlap[0])} and {bounds_spec(overlap[1])} of {name!r} "
                    f"overlap", key=name)
            entries[key] = _build.encode_partitioned_entry(full.dtype.code, full.shape,
                                                           full.slices)
        # The header under the empty key, which sorts first; values are looked up
        # by key in C (a list of a million values would be built just to be read).
        keys = sorted(entries)
        keys.insert(0, b"")
        return _build.build_table(keys, entries, _build.encode_header(len(self._shards)))

    def abort(self) -> None:
        """Discard the checkpoint: close and delete everything written.  Idempotent."""
        if self._state == "committed":
            return
        self._state = "aborted"
        self._shutdown_pool()
        self._close_files()
        for shard in self._shards:
            discard_file(shard.path)
        if self._index_temp is not None:
            discard_file(self._index_temp)

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    def __del__(self):
        if getattr(self, "_state", None) == "open":
            self.abort()

    def __repr__(self) -> str:
        return (f"<tfshard.CheckpointWriter {self.prefix!r} {self._state}, "
                f"{len(self._entries)} entries, {len(self._shards)} shards>")


#: What ``save(num_shards=None)`` (its default) looks at: a mapping of at least
#: AUTO_SHARDS_MIN_BYTES whose tensors average AUTO_SHARDS_MIN_MEAN bytes or more is
#: written as two data files, by two threads, on a machine with two or more cores.
AUTO_SHARDS_MIN_BYTES = 64 << 20
AUTO_SHARDS_MIN_MEAN = 64 << 10


def auto_shards(tensors) -> int:
    """The shard count :func:`save` picks for ``tensors`` by default: 2 for a large
    model on a machine with two or more cores (the page cache takes writes from two
    threads at nearly twice the speed of one, and each thread also checksums its
    shard), 1 otherwise: small checkpoints, many small tensors (whose cost is per
    tensor, which one C loop minimizes), one core, and iterables, which are written
    as they come."""
    if (os.cpu_count() or 1) < 2:
        return 1
    if isinstance(tensors, Checkpoint):
        sizes = [info.nbytes for info in tensors.infos()]
    elif isinstance(tensors, Mapping):
        sizes = [getattr(v, "nbytes", 0) for v in tensors.values()]
    else:
        return 1
    total = sum(sizes) if all(isinstance(n, int) for n in sizes) else 0
    if total >= AUTO_SHARDS_MIN_BYTES and total >= AUTO_SHARDS_MIN_MEAN * len(sizes):
        return 2
    return 1


def save(prefix, tensors, *, num_shards: int | None = None, max_shard_size: int | None = None,
         alignment: int = DEFAULT_ALIGNMENT, fsync: bool = False,
         storage_options=None) -> str:
    """Write ``tensors`` as a checkpoint at ``prefix``, atomically.

    Parameters
    ----------
    prefix : str or os.PathLike
    tensors : mapping, iterable of (name, array), or Checkpoint
        Arrays as :meth:`CheckpointWriter.add` accepts them.  Pass an open
        :class:`~tfshard.Checkpoint` to copy one with every dtype kept.
    num_shards : int, optional
        Number of data files.  By default (None) :func:`auto_shards` decides: two,
        written in parallel, for a model of 64 MiB or more (tensors of 64 KiB
        on average) on a machine with two or more cores, else one.  Pass
        ``num_shards=1, alignment=1`` for TensorFlow's own layout, byte for byte.
    max_shard_size, alignment, fsync, storage_options
        As for :class:`CheckpointWriter` (a URL prefix is uploaded).

    Returns
    -------
    str
        The prefix, for ``tfshard.open`` or ``tf.train.load_checkpoint``.

    Raises
    ------
    InvalidTensorError
        Before anything is written, if any tensor cannot be saved.
    """
    if num_shards is None:
        num_shards = 1 if max_shard_size is not None else auto_shards(tensors)
    with CheckpointWriter(prefix, num_shards=num_shards, max_shard_size=max_shard_size,
                          alignment=alignment, fsync=fsync,
                          storage_options=storage_options) as w:
        w.add_all(tensors)
    return w.prefix


# ---- helpers ---------------------------------------------------------------

def _dtype_or_none(code):
    try:
        return dtypes.by_code(code)
    except KeyError:
        return None


# DType by code for the C fast path (_build.prepare_plain), which only returns
# codes of numeric types.
_DTYPES_BY_CODE = [_dtype_or_none(code) for code in range(34)]


def _stored_as_other_type(dt: dtypes.DType) -> bool:
    """Whether arrays the reader returns for ``dt`` would be saved as another dtype
    (quantized types come back as plain integers, variants as bytes)."""
    return dt.kind == dtypes.VARIANT or (dt.kind != dtypes.STRING and dt.numpy.name != dt.name)


def _dtype_of(arr, name) -> dtypes.DType:
    kind = arr.dtype.kind
    if kind in "OSU":
        return dtypes.by_name("string")
    try:
        return dtypes.by_name(arr.dtype.name)
    except KeyError:
        raise InvalidTensorError(f"{name!r}: numpy dtype {arr.dtype} has no TensorFlow "
                                 f"equivalent", key=name) from None


def _as_array(value):
    """numpy.asarray, except that bytes and str values stay exact: numpy's fixed-width
    ``S``/``U`` arrays would drop trailing NUL characters (which serialized protos and
    binary strings can end with), so such values become object arrays."""
    import numpy as np

    if isinstance(value, (bytes, bytearray, str)):
        arr = np.empty((), dtype=object)
        arr[()] = bytes(value) if isinstance(value, bytearray) else value
        return arr
    arr = np.asarray(value)
    if arr.dtype.kind in "SU" and not isinstance(value, np.generic):
        arr = np.array(value, dtype=object)
    return arr


def _as_bytes_list(arr, name, dt) -> list:
    """The elements of a string or variant array, row-major, as bytes."""
    items = arr.ravel().tolist()
    for i, v in enumerate(items):
        if type(v) is bytes:
            continue
        if isinstance(v, str) and dt.kind == dtypes.STRING:
            try:
                items[i] = v.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError as exc:
                raise InvalidTensorError(f"{name!r}: element {i} cannot be encoded as UTF-8: "
                                         f"{exc}", key=name) from None
        elif isinstance(v, (bytes, bytearray, memoryview)):
            items[i] = bytes(v)
        else:
            raise InvalidTensorError(
                f"{name!r}: element {i} of a {dt.name} tensor is {type(v).__name__}; expected "
                f"bytes{' or str' if dt.kind == dtypes.STRING else ''}", key=name)
    return items
