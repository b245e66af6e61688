"""Remote storage: the one layer between tfshard and object stores.

A path that is a URL (``s3://``, ``gs://``, ``az://``, ``http(s)://``, ``memory://``,
``file://``, chained ``simplecache::s3://...``; any protocol fsspec knows) goes through
`fsspec <https://filesystem-spec.readthedocs.io>`_; any other path is a plain file and
never imports it.  The reader and writer see byte ranges, not protocols:

* :class:`Location` is one object (a URL and the fsspec filesystem serving it): read it
  whole or a byte range of it, ask its size, upload to it, remove it.  Every call runs
  under a deadline (:data:`REQUEST_TIMEOUT`) with a bounded retry, and every failure
  becomes a tfshard error naming the URL: a missing object a
  :class:`~tfshard.CheckpointNotFoundError`, anything else a
  :class:`~tfshard.RemoteStorageError` whose ``__cause__`` is fsspec's exception.
* :class:`RangeBuffer` holds the bytes of one data object as they are fetched: a map of
  the object's size (an in-memory file where the OS has one, else anonymous memory) in
  which each fetched range lands at its own offset, so the local reader's decoding,
  checksum and view code reads it unchanged, and memory is spent only on the bytes
  actually fetched; for a whole-object read, runs of whole tensors kept as the responses'
  own bytes (:meth:`RangeBuffer.fetch_pieces`).  Ranges are fetched concurrently (in
  pieces of at most :data:`CHUNK` bytes), each byte at most once, and a range counts as
  present only once its whole response has arrived.

fsspec's HTTP ``exists()`` sends a GET without a Range, and ``fs.open()`` reads ahead
several MiB: neither is used here.  Only ``cat_file`` (whole or ranged), ``info`` (a HEAD
on HTTP), ``put_file``/``pipe_file`` and ``rm_file`` are.
"""

from __future__ import annotations

import contextlib
import contextvars
import mmap
import os
import re
import threading
import time
import weakref

from .errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    RemoteStorageError,
    TFShardError,
    UnsupportedError,
)

__all__ = ["is_url", "default_options", "parse_option", "Location", "RangeBuffer",
           "REQUEST_TIMEOUT", "CHUNK", "IO_THREADS"]

#: Seconds one request may run (retries included) before it is reported as a
#: RemoteStorageError; a dead or silent server is reported within this time.
REQUEST_TIMEOUT = 45.0
#: Tries per request for failures other than a missing object or refused access.
ATTEMPTS = 2
#: The largest single ranged request; a larger read is split into concurrent ones.
CHUNK = 8 << 20
#: Requests in flight at once (threads, each waiting on one request).
IO_THREADS = 8
#: Tensors whose bytes lie at most this far apart are fetched by one request.
COALESCE_GAP = 4096

# scheme:// with a scheme of two letters or more (so a Windows drive is no URL),
# optionally after chained protocols ("simplecache::s3://...").
_URL_RE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.\-]*::)*[A-Za-z][A-Za-z0-9+.\-]+://")

# Protocols whose stores have no directories to create before writing an object.
_NO_DIRECTORIES = frozenset(("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl",
                             "memory", "http", "https", "oss", "r2"))

_pool = None
_pool_lock = threading.Lock()
# The storage_options used where a call gives none (see default_options).
_defaults: contextvars.ContextVar = contextvars.ContextVar("tfshard_storage_options",
                                                           default=None)


@contextlib.contextmanager
def default_options(storage_options):
    """Within the ``with`` block, URLs opened without ``storage_options`` of their own
    use these (a dict for fsspec; None: fsspec's configuration).  The command line's
    ``--storage-option`` works through this; library functions that take no
    ``storage_options`` argument (``tfshard.extract``, ``merge``...) honour it too.

    >>> with tfshard.storage.default_options({"anon": True}):   # doctest: +SKIP
    ...     tfshard.extract("gs://bucket/ckpt", "out.safetensors")
    """
    token = _defaults.set(storage_options)
    try:
        yield
    finally:
        _defaults.reset(token)


def is_url(path) -> bool:
    """Whether ``path`` is a URL for fsspec rather than a local path."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    return isinstance(path, str) and _URL_RE.match(path) is not None


def parse_option(text: str, into: dict) -> dict:
    """Add ``KEY=VALUE`` (the command line's ``--storage-option``) to the dict ``into``.

    VALUE is read as JSON where it parses (``true``, ``3``, ``{"a": 1}``), else taken as
    a string; a dotted KEY nests (``client_kwargs.endpoint_url=http://...`` sets
    ``into["client_kwargs"]["endpoint_url"]``).

    Raises
    ------
    ValueError
        If ``text`` has no ``=`` or an empty key.
    """
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ValueError(f"invalid storage option {text!r}: expected KEY=VALUE, e.g. "
                         f"anon=true or client_kwargs.endpoint_url=http://127.0.0.1:9000")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    *parents, last = key.strip().split(".")
    node = into
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = parsed
    return into


def _io_pool():
    # concurrent.futures loads on first use: local reads never need it.
    from concurrent.futures import ThreadPoolExecutor

    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="tfshard-io")
    return _pool


def _failure(exc: BaseException, url: str, doing: str, what: str) -> TFShardError:
    """The tfshard error for ``exc``, raised by fsspec while ``doing`` ``url``."""
    if isinstance(exc, TFShardError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return CheckpointNotFoundError(f"{what} {url} does not exist", path=url)
    if isinstance(exc, NotImplementedError):  # e.g. uploading over plain HTTP
        return UnsupportedError(f"{doing} {what} {url} is not possible: this protocol's "
                                f"fsspec filesystem cannot do it", path=url)
    text = str(exc) or repr(exc)
    if "416" in text or "InvalidRange" in text:
        return CorruptCheckpointError(
            f"{what} {url} is shorter than the checkpoint's index says (the server refused "
            f"the byte range: {text}); it is truncated or from another save", path=url)
    if isinstance(exc, PermissionError):
        cause = f"access denied ({text}); check the credentials or storage_options"
    else:
        cause = f"{type(exc).__name__}: {text}"
    err = RemoteStorageError(
        f"{doing} {what} {url} failed: {cause}",
        errno=exc.errno if isinstance(getattr(exc, "errno", None), int) else None,
        strerror=text, path=url)
    err.__cause__ = exc
    return err


def _raise(err: TFShardError, exc: BaseException):
    """Raise ``err``: a RemoteStorageError keeps ``exc`` as its cause; the others (a
    missing object, a short response) say all there is to say."""
    if err is exc:
        raise err
    if isinstance(err, RemoteStorageError):
        raise err from exc
    raise err from None


def _refused(exc: BaseException) -> bool:
    """Whether a refused connection lies behind ``exc`` (its causes and contexts)."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, ConnectionRefusedError):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _with_retries(call, url: str, doing: str, what: str):
    """``call()`` with up to :data:`ATTEMPTS` tries while the deadline allows; a missing
    object and refused access are not retried."""
    started = time.monotonic()
    for attempt in range(ATTEMPTS):
        try:
            return call()
        except (FileNotFoundError, PermissionError, NotImplementedError, TFShardError) as exc:
            _raise(_failure(exc, url, doing, what), exc)
        except Exception as exc:  # fsspec's protocols raise many kinds: all are failures
            pause = 0.25 * (attempt + 1)
            # A refused connection is not retried: nothing listens there, and protocol
            # packages (botocore) have already retried it for seconds.
            if attempt == ATTEMPTS - 1 or _refused(exc) or \
                    time.monotonic() - started + pause > REQUEST_TIMEOUT / 2:
                _raise(_failure(exc, url, doing, what), exc)
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


def _wait(futures, started: dict, url: str, doing: str, what: str) -> None:
    """Wait for ``futures``; raise the first failure, or a RemoteStorageError for one
    that has run longer than :data:`REQUEST_TIMEOUT` (``started`` maps a future to its
    start time once a thread has picked it up; queued ones are not yet late)."""
    from concurrent.futures import wait as _wait_futures

    pending = set(futures)
    while pending:
        done, pending = _wait_futures(pending, timeout=0.5)
        for f in done:
            exc = f.exception()
            if exc is not None:
                raise _failure(exc, url, doing, what)
        now = time.monotonic()
        for f in pending:
            t = started.get(f, (None,))[0]
            if t is not None and now - t > REQUEST_TIMEOUT:
                raise RemoteStorageError(
                    f"{doing} {what} {url} failed: no complete response within "
                    f"{REQUEST_TIMEOUT:g} s (the server is unreachable or stalled)", path=url)


class _Timed:
    """Runs calls in the I/O pool, recording when a thread starts each (``started``
    maps a future to a one-item list holding its start time, None while queued)."""

    def __init__(self):
        self.started: dict = {}

    def submit(self, fn, *args):
        cell = [None]

        def run():
            cell[0] = time.monotonic()
            return fn(*args)

        future = _io_pool().submit(run)
        self.started[future] = cell
        future.add_done_callback(lambda f: self.started.pop(f, None))
        return future


class Location:
    """One object (or directory) at a URL, with the fsspec filesystem that serves it.

    Use :meth:`parse` for a user's URL; :meth:`suffixed` and :meth:`child` name
    neighbours on the same filesystem without parsing again.
    """

    __slots__ = ("url", "fs", "path", "storage_options")

    def __init__(self, url: str, fs, path: str, storage_options=None):
        self.url, self.fs, self.path = url, fs, path
        self.storage_options = storage_options

    @classmethod
    def parse(cls, url, storage_options=None) -> Location:
        """The Location of ``url``; ``storage_options`` go to fsspec's filesystem.

        Raises
        ------
        UnsupportedError
            If fsspec, or the package of the URL's protocol, is not installed, or
            fsspec does not know the protocol.
        """
        url = os.fspath(url)
        if storage_options is None:
            storage_options = _defaults.get()
        if storage_options is not None and not isinstance(storage_options, dict):
            raise TypeError(f"storage_options must be a dict, got "
                            f"{type(storage_options).__name__}")
        try:
            import fsspec.core
        except ImportError:
            raise UnsupportedError(
                f"{url} is a URL: reading and writing URLs needs fsspec (pip install "
                f"'tfshard[remote]', plus the protocol's package such as s3fs or gcsfs)",
                path=url) from None
        trimmed = url.rstrip("/") if not url.endswith(":///") else url
        try:
            fs, path = fsspec.core.url_to_fs(trimmed, **(storage_options or {}))
        except ImportError as exc:
            raise UnsupportedError(f"cannot open {url}: {exc}", path=url) from None
        except ValueError as exc:
            raise UnsupportedError(f"cannot open {url}: {exc}", path=url) from None
        except Exception as exc:  # a protocol's constructor refusing its options
            _raise(_failure(exc, url, "connecting to", "storage for"), exc)
        return cls(trimmed, fs, path, storage_options)

    def suffixed(self, suffix: str) -> Location:
        """The object whose URL is this one's with ``suffix`` appended."""
        return Location(self.url + suffix, self.fs, self.path + suffix, self.storage_options)

    def trimmed(self, n: int) -> Location:
        """This URL with its last ``n`` characters removed."""
        return Location(self.url[:-n], self.fs, self.path[:-n], self.storage_options)

    def child(self, name: str) -> Location:
        """``name`` inside this directory."""
        return Location(f"{self.url.rstrip('/')}/{name}", self.fs,
                        f"{self.path.rstrip('/')}/{name}", self.storage_options)

    @property
    def lists(self) -> bool:
        """Whether the filesystem can list a directory (HTTP servers cannot)."""
        proto = self.fs.protocol
        protos = (proto,) if isinstance(proto, str) else tuple(proto)
        return not any(p in ("http", "https") for p in protos)

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    # ---- reading -----------------------------------------------------------

    def _cat(self, start, end) -> bytes:
        if start is None:
            return self.fs.cat_file(self.path)
        return self.fs.cat_file(self.path, start=start, end=end)

    def read(self, start: int | None = None, end: int | None = None, *,
             what: str = "object") -> bytes:
        """The object's bytes ``[start, end)`` (all of them without ``start``), in one
        request under the deadline.  A ranged read that returns fewer bytes than asked is
        a :class:`~tfshard.CorruptCheckpointError` (the object is shorter than expected).
        """
        timed = _Timed()
        future = timed.submit(_with_retries, lambda: self._cat(start, end), self.url,
                              "reading", what)
        _wait([future], timed.started, self.url, "reading", what)
        data = future.result()
        if start is not None and end is not None and len(data) != end - start:
            raise _short(self.url, what, start, end, len(data))
        return data

    def size(self, *, what: str = "object") -> int:
        """The object's size in bytes (a HEAD request on HTTP)."""
        timed = _Timed()
        future = timed.submit(_with_retries, lambda: self.fs.info(self.path), self.url,
                              "reading", what)
        _wait([future], timed.started, self.url, "reading", what)
        info = future.result()
        if info.get("type") == "directory":
            raise CheckpointNotFoundError(f"{what} {self.url} is a directory", path=self.url)
        size = info.get("size")
        if size is None:
            raise RemoteStorageError(f"the server did not say the size of {what} {self.url}",
                                     path=self.url)
        return int(size)

    def exists(self, *, what: str = "object") -> bool:
        """Whether the object exists, asked by its size (never fsspec's ``exists()``,
        which on HTTP downloads the start of the object)."""
        try:
            self.size(what=what)
            return True
        except CheckpointNotFoundError:
            return False

    def glob(self, pattern_suffix: str) -> list:
        """URLs of the objects named like ``self.url + pattern_suffix`` (a glob); empty
        where the filesystem cannot list."""
        if not self.lists:
            return []
        timed = _Timed()
        future = timed.submit(_with_retries, lambda: self.fs.glob(self.path + pattern_suffix),
                              self.url, "listing", "objects beside")
        _wait([future], timed.started, self.url, "listing", "objects beside")
        base_url, base_path = self.url, self.path
        return sorted(base_url + p[len(base_path):] for p in future.result()
                      if p.startswith(base_path))

    # ---- writing -----------------------------------------------------------

    def put_file(self, local: str, *, what: str = "object") -> None:
        """Upload the local file ``local`` to this object."""
        _with_retries(lambda: self.fs.put_file(local, self.path), self.url, "uploading", what)

    def put_bytes(self, data: bytes, *, what: str = "object") -> None:
        """Write ``data`` as this object's whole content."""
        _with_retries(lambda: self.fs.pipe_file(self.path, data), self.url, "uploading", what)

    def remove(self, *, what: str = "object", missing_ok: bool = True) -> None:
        """Delete the object (a missing one is fine unless ``missing_ok`` is false)."""
        try:
            _with_retries(lambda: self.fs.rm_file(self.path), self.url, "removing", what)
        except CheckpointNotFoundError:
            if not missing_ok:
                raise

    def make_parent(self) -> None:
        """Create this object's parent directory where the filesystem has directories
        (local files, SFTP, HDFS...); object stores have none (creating a "directory"
        there could create a bucket), so nothing is done for them."""
        protos = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else \
            tuple(self.fs.protocol)
        if any(p in _NO_DIRECTORIES for p in protos):
            return
        parent = self.path.rstrip("/").rsplit("/", 1)[0]
        if not parent:
            return
        try:
            self.fs.makedirs(parent, exist_ok=True)
        except Exception as exc:
            _raise(_failure(exc, self.url, "creating the folder of", "object"), exc)


def _short(url, what, start, end, got) -> TFShardError:
    """The error for a ranged response of ``got`` bytes where ``end - start`` were asked."""
    if got > end - start:
        return RemoteStorageError(
            f"reading {what} {url} failed: the server sent {got} bytes for the range "
            f"[{start}, {end}) of {end - start} (it ignores HTTP Range requests)", path=url)
    return CorruptCheckpointError(
        f"{what} {url} ended early: bytes [{start}, {end}) were asked for and {got} came "
        f"back (the object is truncated or from another save)", path=url, offset=start + got)


class RangeBuffer:
    """The bytes of one data object, fetched on demand.

    ``buffer`` is a read-only map of ``size`` bytes in which every fetched range sits at
    its own offset: an in-memory file (Linux's memfd; responses are written into it with
    ``pwrite`` and their buffers freed at once), else an anonymous map.  Unfetched parts
    are holes that cost no memory.  :meth:`request` schedules ranges without waiting;
    :meth:`ensure` waits until a range is present.  Each byte is fetched at most once; a
    range counts as present only after its whole response has been copied in, so a
    broken connection can never leave a partial tensor behind.
    """

    def __init__(self, location: Location, size: int, what: str = "data shard", *,
                 populate: bool = False):
        self.location, self.size, self.what = location, size, what
        self.path = location.url
        self._fd = -1
        try:
            if size:
                self._fd, self._map = _memory_file(size)
                if self._map is None:
                    self._map = _anonymous_map(size, populate)
            else:
                self._map = None
        except (OSError, OverflowError, ValueError) as exc:
            raise CorruptCheckpointError(
                f"cannot reserve {size} bytes of memory for {what} {location.url} "
                f"({exc}); the index records tensors up to that offset", path=location.url
            ) from None
        if self._fd >= 0:
            # The descriptor stays open while fetches may write through it: closed when
            # this buffer goes (in-flight fetches hold it), never reused under them.
            weakref.finalize(self, os.close, self._fd)
            self.buffer = self._map    # a read-only map: views of it are read-only
        else:
            self.buffer = memoryview(self._map).toreadonly() if size else b""
        self._done: list = []       # sorted, disjoint [start, end) ranges present
        self._pending: dict = {}    # (start, end) -> future of its fetch
        self._lock = threading.Lock()
        self._timed = _Timed()
        # Pieces fetched whole and kept as the response's own bytes (see fetch_pieces).
        self._piece_starts: list = []
        self._pieces: dict = {}     # start -> (end, future of its bytes)

    def _fetch(self, start: int, end: int) -> None:
        try:
            data = _with_retries(lambda: self.location._cat(start, end), self.path,
                                 "reading", self.what)
            if len(data) != end - start:
                raise _short(self.path, self.what, start, end, len(data))
            if self._fd >= 0:
                _pwrite_all(self._fd, data, start)
            else:
                _copy_into(self._map, start, data)
            with self._lock:
                _insert(self._done, start, end)
        finally:
            with self._lock:
                self._pending.pop((start, end), None)

    def request(self, start: int, end: int) -> list:
        """Schedule whatever of ``[start, end)`` is neither present nor in flight;
        return the futures that together cover the range."""
        start, end = max(0, start), min(end, self.size)
        futures = []
        if end <= start:
            return futures
        with self._lock:
            busy = []
            for (s, e), f in self._pending.items():
                if s < end and e > start:
                    futures.append(f)
                    busy.append((s, e))
            covered = sorted(self._done + busy)
            for gs, ge in _gaps(covered, start, end):
                for ps in range(gs, ge, CHUNK):
                    pe = min(ps + CHUNK, ge)
                    # The fetch cannot finish (it takes the lock) before it is recorded.
                    f = self._pending[(ps, pe)] = self._timed.submit(self._fetch, ps, pe)
                    futures.append(f)
        return futures

    def ensure(self, start: int, end: int) -> None:
        """Return once bytes ``[start, end)`` are present; raise the fetch's error."""
        futures = self.request(start, end)
        if futures:
            _wait(futures, self._timed.started, self.path, "reading", self.what)
        with self._lock:
            missing = _gaps(self._done, max(0, start), min(end, self.size))
        if missing:  # a failed fetch of another caller: fetch it again ourselves
            futures = self.request(start, end)
            _wait(futures, self._timed.started, self.path, "reading", self.what)

    def fetch_pieces(self, spans) -> None:
        """Schedule the disjoint ``spans`` ``[(start, end)]``, each as one request whose
        response is kept as it came (no copy into the map): :meth:`view` then hands out
        any range inside one piece zero-copy.  For reading a whole object, where the
        spans are runs of whole tensors."""
        import bisect

        with self._lock:
            for start, end in spans:
                start, end = max(0, start), min(end, self.size)
                if end > start and start not in self._pieces:
                    future = self._timed.submit(self._fetch_piece, start, end)
                    self._pieces[start] = (end, future)
                    bisect.insort(self._piece_starts, start)

    def _fetch_piece(self, start: int, end: int) -> bytes:
        data = _with_retries(lambda: self.location._cat(start, end), self.path, "reading",
                             self.what)
        if len(data) != end - start:
            raise _short(self.path, self.what, start, end, len(data))
        return data

    def view(self, start: int, end: int):
        """``(buffer, delta)`` once bytes ``[start, end)`` are present: byte ``x`` of the
        object is ``buffer[x - delta]``.  A range inside one piece is that piece's bytes
        (``delta`` its start); any other comes from the map (``delta`` 0)."""
        import bisect

        with self._lock:
            k = bisect.bisect_right(self._piece_starts, start) - 1
            piece = self._pieces.get(self._piece_starts[k]) if k >= 0 else None
            piece_start = self._piece_starts[k] if k >= 0 else 0
        if piece is not None and end <= piece[0]:
            future = piece[1]
            try:
                _wait([future], self._timed.started, self.path, "reading", self.what)
            except BaseException:
                with self._lock:  # a failed piece is fetched again by the next reader
                    if self._pieces.get(piece_start) is piece:
                        del self._pieces[piece_start]
                        self._piece_starts.remove(piece_start)
                raise
            return future.result(), piece_start
        self.ensure(start, end)
        return self.buffer, 0

    def close(self) -> None:
        """Forget the fetched bytes (arrays already returned keep their pages)."""
        self.buffer = b""
        self._pieces = {}
        self._piece_starts = []


def _memory_file(size: int):
    """``(fd, read-only map)`` of an anonymous in-memory file of ``size`` bytes (Linux's
    memfd), or ``(-1, None)`` where there is none.  Fetched bytes are written into it
    with ``pwrite`` (no page faults in this process, the GIL released), so the response
    buffers are freed at once and reused for the next responses; the map is what the
    reader views, holes never read."""
    create = getattr(os, "memfd_create", None)
    if create is None:
        return -1, None
    try:
        fd = create("tfshard-remote", getattr(os, "MFD_CLOEXEC", 0))
    except OSError:
        return -1, None
    try:
        os.ftruncate(fd, size)
        return fd, mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    except BaseException:
        os.close(fd)
        raise


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _anonymous_map(size: int, populate: bool):
    """An anonymous private map of ``size`` bytes; with ``populate`` (the caller will
    fill all of it) its pages are made at once, which costs far less than a fault per
    page (Linux's MAP_POPULATE; elsewhere the pages come on first touch as usual)."""
    flag = getattr(mmap, "MAP_POPULATE", 0)
    if populate and flag and hasattr(mmap, "MAP_ANONYMOUS"):
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flag)
    return mmap.mmap(-1, size)


def _copy_into(target, start: int, data) -> None:
    """``target[start:start + len(data)] = data`` with the GIL released (numpy's copy
    does): the event loop receiving the other responses keeps running meanwhile."""
    import numpy as np

    n = len(data)
    np.frombuffer(target, np.uint8, n, start)[:] = np.frombuffer(data, np.uint8, n)


def _insert(ranges: list, start: int, end: int) -> None:
    """Add ``[start, end)`` to the sorted disjoint ``ranges``, merging neighbours."""
    out = []
    for s, e in ranges:
        if e < start or s > end:
            out.append((s, e))
        else:
            start, end = min(s, start), max(e, end)
    out.append((start, end))
    out.sort()
    ranges[:] = out


def _gaps(ranges, start: int, end: int) -> list:
    """The parts of ``[start, end)`` that the sorted ``ranges`` (may overlap) leave out."""
    gaps = []
    at = start
    for s, e in ranges:
        if e <= at:
            continue
        if s >= end:
            break
        if s > at:
            gaps.append((at, s))
        at = max(at, e)
        if at >= end:
            break
    if at < end:
        gaps.append((at, end))
    return gaps


def coalesce(spans, gap: int = COALESCE_GAP, limit: int | None = None) -> list:
    """Sorted ``[(start, end)]`` merged where at most ``gap`` bytes apart, and (with
    ``limit``) only while the merged run stays within ``limit`` bytes: a span is never
    cut, so one larger than ``limit`` stays a run of its own."""
    out: list = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1] + gap and \
                (limit is None or max(e, out[-1][1]) - out[-1][0] <= limit):
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out
