"""Opening ``.meta`` and ``saved_model.pb`` files: paths, the file's bytes, errors."""

from __future__ import annotations

import builtins
import mmap
import os
from contextlib import contextmanager

from .. import _graphdef as N
from .. import _metagraph as W
from .. import _v1, dtypes, paths
from ..errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    CorruptGraphError,
    UnsupportedError,
)
from ._meta import MetaGraph

__all__ = ["open", "GraphFile", "SAVED_MODEL_FILENAME"]

SAVED_MODEL_FILENAME = "saved_model.pb"
_TEXT_SAVED_MODEL = "saved_model.pbtxt"
_META_SUFFIX = ".meta"
# Files up to this size are read into memory; larger ones are mapped, and walked in
# windows of _WINDOW bytes whose pages are handed back once read, so that decoding a
# large graph does not keep all of it resident.
_MAP_THRESHOLD = 16 << 20
_WINDOW = 32 << 20
_KINDS = ("meta_graph", "saved_model")


class _Source:
    """The bytes of one open file, and the calls into the wire decoder on them (which
    name the file in their errors)."""

    def __init__(self, path: str, file, buffer, size: int):
        self.path, self._file, self.buffer, self.size = path, file, buffer, size
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if isinstance(self.buffer, mmap.mmap):
            self.buffer.close()
        self.buffer = b""
        if self._file is not None:
            self._file.close()

    def _check(self) -> None:
        if self.closed:
            raise ValueError(f"graph file {self.path} is closed")
        # A mapped file only (a small one is read into memory).
        if self._file is not None and os.fstat(self._file.fileno()).st_size < self.size:
            # Reading a mapped page past the new end would fault (SIGBUS).
            raise CorruptGraphError(f"{self.path} was truncated while open (it was "
                                    f"{self.size} bytes)", path=self.path)

    def _named(self, exc: CorruptCheckpointError) -> CorruptGraphError:
        """The decoder's error (or the TensorProto decoder's), naming the file."""
        if isinstance(exc, CorruptGraphError) and exc.path is not None:
            return exc
        message = exc.message if exc.path is not None else f"{self.path}: {exc.message}"
        return CorruptGraphError(message, path=self.path, key=exc.key, offset=exc.offset)

    @contextmanager
    def errors(self):
        """Name the file in the decoder's errors."""
        try:
            yield
        except CorruptCheckpointError as exc:
            raise self._named(exc) from None

    def call(self, fn, *args, data=None):
        """``fn(buffer, *args)``; with ``data``, ``fn(data, *args)`` (bytes held in a
        field of the file, such as an Any's value)."""
        self._check()
        try:
            return fn(self.buffer if data is None else data, *args)
        except CorruptCheckpointError as exc:
            raise self._named(exc) from None

    def scan(self, spans, field: int, mode: int, arg, each_window=None) -> None:
        """Run :func:`tfshard._graphdef.scan` over every span, window by window;
        ``each_window(end)``, if given, runs after each window is walked and before its
        pages are handed back (to decode the nodes found in it while they are mapped:
        decoding them later would fault their pages, and those around them, back in)."""
        for start, end in spans:
            pos = start
            while pos < end:
                new = self.call(N.scan, pos, end, min(end, pos + _WINDOW), field, mode, arg)
                if each_window is not None:
                    each_window(end)
                self._release(pos, new)
                pos = new

    def _release(self, start: int, end: int) -> None:
        if end - start < _WINDOW // 2 or not isinstance(self.buffer, mmap.mmap) or \
                not hasattr(mmap, "MADV_DONTNEED"):
            return
        first = start - start % mmap.PAGESIZE
        try:
            self.buffer.madvise(mmap.MADV_DONTNEED, first, end - first)
        except OSError:
            pass   # only a hint: the pages stay resident

    def tensor_value(self, start: int, end: int, owner: str, max_bytes: int):
        """The numpy value of the TensorProto at ``buffer[start:end]`` (see
        :meth:`tfshard.graph.TensorValue.value`)."""
        import numpy as np

        code, shape = self.call(N.tensor_head, start, end)
        where = f"{self.path}: the tensor of {owner!r}"
        try:
            dt = dtypes.by_code(code)
        except KeyError:
            raise UnsupportedError(f"{where} has dtype {dtypes.describe_code(code)}, which "
                                   f"has no numpy value", path=self.path, key=owner) from None
        if code > 100:
            raise CorruptGraphError(f"{where} has the reference dtype "
                                    f"{dtypes.describe_code(code)}", path=self.path, key=owner)
        if shape is None or any(d < 0 for d in shape):
            raise CorruptGraphError(f"{where} has no full shape ({shape})", path=self.path,
                                    key=owner)
        count = 1
        for d in shape:
            count *= d
        if count * max(dt.itemsize, 8 if dt.kind != dtypes.FIXED else 1) > max_bytes:
            raise UnsupportedError(f"{where} of shape {list(shape)} ({dt.name}) is larger than "
                                   f"max_bytes={max_bytes}", path=self.path, key=owner)
        self._check()
        with self.errors(), memoryview(self.buffer) as view, view[start:end] as proto:
            found = _v1.count_values(proto, code, self.path, owner)
            if found < 0:
                raise UnsupportedError(f"{where} has dtype {dt.name}, whose stored values "
                                       f"tfshard does not decode", path=self.path, key=owner)
            if found > count:
                raise CorruptGraphError(f"{where} holds {found} values for a shape of "
                                        f"{count} elements", path=self.path, key=owner)
            values = _v1.decode(proto, code, dt.numpy, found, self.path, owner)
        if found == count:
            return values.reshape(shape)
        # TF keeps a tensor whose last values repeat with those values left out.
        out = np.empty(count, dtype=dt.numpy)
        out[:found] = values
        out[found:] = values[-1] if found else (b"" if dt.kind == dtypes.STRING else 0)
        return out.reshape(shape)


class GraphFile:
    """An open ``.meta`` file (one ``MetaGraphDef``) or ``saved_model.pb`` (a
    ``SavedModel``: one or more).  Use as a context manager, or call :meth:`close`.

    Attributes
    ----------
    path : str
        The file.
    kind : str
        ``"meta_graph"`` or ``"saved_model"``.
    schema_version : int or None
        A SavedModel's ``saved_model_schema_version`` (None for a ``.meta``).
    meta_graphs : list of MetaGraph
        The meta graphs, in file order.
    directory : str or None
        The SavedModel directory the file is in (None for a ``.meta``).
    """

    def __init__(self, path: str, kind: str):
        self.path, self.kind = path, kind
        self.directory = os.path.dirname(path) if kind == "saved_model" else None
        self._source = _open_source(path)
        try:
            size = self._source.size
            if kind == "saved_model":
                self.schema_version, spans = self._source.call(W.saved_model, 0, size)
            else:
                self.schema_version, spans = None, [(0, size)]
            self.meta_graphs = [MetaGraph(self._source, start, end, i)
                                for i, (start, end) in enumerate(spans)]
        except BaseException:
            self._source.close()
            raise

    @property
    def variables_prefix(self):
        """A SavedModel's checkpoint prefix (``DIR/variables/variables``) if it exists; for
        a ``.meta``, the checkpoint prefix beside it (``P`` of ``P.meta``) if it exists."""
        if self.directory is not None:
            prefix = os.path.join(self.directory, "variables", "variables")
        else:
            prefix = self.path[: -len(_META_SUFFIX)] if self.path.endswith(_META_SUFFIX) \
                else None
        return prefix if prefix and paths.checkpoint_version(prefix) else None

    def meta_graph(self, tags=None) -> MetaGraph:
        """The meta graph with exactly these tags (a string or a list); without tags, the
        only one, or the one tagged ``serve``.

        Raises
        ------
        UnsupportedError
            If none, or more than one, matches.
        """
        if isinstance(tags, str):
            tags = [t for t in tags.split(",") if t]
        graphs = self.meta_graphs
        if tags is not None:
            matches = [g for g in graphs if set(g.tags) == set(tags)]
        elif len(graphs) == 1:
            matches = graphs
        else:
            matches = [g for g in graphs if g.tags == ["serve"]]
        if len(matches) != 1:
            found = "; ".join(",".join(g.tags) or "(no tags)" for g in graphs) or "none"
            raise UnsupportedError(
                f"{self.path} has {len(matches) or 'no'} meta graph(s) "
                f"{'with tags ' + ','.join(tags) if tags is not None else 'to choose'}; "
                f"its meta graphs have tags: {found}", path=self.path)
        return matches[0]

    def close(self) -> None:
        """Unmap the file; idempotent.  Values already returned stay valid."""
        self._source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._source.closed else f"{len(self.meta_graphs)} meta graph(s)"
        return f"<tfshard.graph.GraphFile {self.kind} {self.path}: {state}>"


def _open_source(path: str) -> _Source:
    try:
        f = builtins.open(path, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise CheckpointNotFoundError(f"graph file {path} does not exist or is not a file "
                                      f"({exc.strerror})", path=path) from None
    try:
        size = os.fstat(f.fileno()).st_size
        if size <= _MAP_THRESHOLD:
            data = f.read()
            f.close()
            return _Source(path, None, data, len(data))
        return _Source(path, f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size)
    except BaseException:
        f.close()
        raise


def resolve(path) -> tuple:
    """``(file, kind)`` for what a user passes: a ``.meta`` file, a ``saved_model.pb``, a
    SavedModel directory, a checkpoint prefix ``P`` with ``P.meta`` beside it, or a
    directory whose ``checkpoint`` state file names such a prefix.

    Raises
    ------
    CheckpointNotFoundError
        If none of these is found (the message says what was looked for).
    UnsupportedError
        For a text-format ``saved_model.pbtxt``.
    """
    path = os.fsdecode(os.fspath(path))
    if os.path.isdir(path):
        inside = os.path.join(path, SAVED_MODEL_FILENAME)
        if os.path.isfile(inside):
            return inside, "saved_model"
        if os.path.isfile(os.path.join(path, _TEXT_SAVED_MODEL)):
            raise UnsupportedError(f"{path} holds a text-format {_TEXT_SAVED_MODEL}, which "
                                   f"tfshard does not read; only binary saved_model.pb",
                                   path=path)
        prefix = paths.latest_checkpoint(path)
        if prefix is not None and os.path.isfile(prefix + _META_SUFFIX):
            return prefix + _META_SUFFIX, "meta_graph"
        raise CheckpointNotFoundError(
            f"{path} is not a SavedModel directory (no {SAVED_MODEL_FILENAME})"
            + ("" if prefix is None else f" and its latest checkpoint {prefix} has no "
               f"{_META_SUFFIX} file"), path=path)
    if os.path.isfile(path):
        if path.endswith(_TEXT_SAVED_MODEL):
            raise UnsupportedError(f"{path} is a text-format SavedModel, which tfshard does "
                                   f"not read; only binary {SAVED_MODEL_FILENAME}", path=path)
        if os.path.basename(path) == SAVED_MODEL_FILENAME:
            return path, "saved_model"
        return path, "meta_graph"
    if os.path.isfile(path + _META_SUFFIX):
        return path + _META_SUFFIX, "meta_graph"
    raise CheckpointNotFoundError(
        f"no graph at {path!r}: expected a .meta file, a {SAVED_MODEL_FILENAME}, a SavedModel "
        f"directory or a checkpoint prefix with a .meta file beside it", path=path)


def open(path, *, kind: str | None = None) -> GraphFile:  # noqa: A001 - as tfshard.open
    """Open a ``.meta`` file, a ``saved_model.pb`` or a SavedModel directory.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.meta`` file (a ``MetaGraphDef``, as a TF1 ``Saver`` writes it), a
        ``saved_model.pb`` (a ``SavedModel``), a directory holding one, or a checkpoint
        prefix ``P`` (or a directory whose ``checkpoint`` file names one) with ``P.meta``.
    kind : {"meta_graph", "saved_model"}, optional
        What the file holds, for a file not named ``*.meta`` / ``saved_model.pb`` as usual
        (default: told by the name; any other name is read as a ``MetaGraphDef``).

    Returns
    -------
    GraphFile

    Raises
    ------
    CheckpointNotFoundError
        If there is no such file.
    CorruptGraphError
        If its bytes are not a ``SavedModel`` / ``MetaGraphDef`` (parts are decoded on
        first use, so later calls can raise it too).
    UnsupportedError
        For a text-format ``saved_model.pbtxt``.
    """
    file, found_kind = resolve(path)
    if kind is not None and kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(_KINDS)}, not {kind!r}")
    return GraphFile(file, kind or found_kind)
