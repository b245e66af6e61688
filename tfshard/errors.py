"""The tfshard exception hierarchy.

Every error tfshard raises on purpose derives from :class:`TFShardError` and
from the built-in exception a caller would naturally catch: a missing tensor
is a ``KeyError``, a missing file a ``FileNotFoundError``, corrupt bytes a
``ValueError``.  Each carries ``path``, ``key`` and ``offset`` where known.
"""

from __future__ import annotations

__all__ = [
    "TFShardError",
    "CheckpointNotFoundError",
    "TensorNotFoundError",
    "CorruptCheckpointError",
    "ChecksumMismatchError",
    "IncompatibleVersionError",
    "UnsupportedError",
    "InvalidTensorError",
    "WriterClosedError",
    "OutputExistsError",
    "NothingSelectedError",
    "WriteFailedError",
    "ReadFailedError",
    "RemoteStorageError",
    "CheckpointChangedError",
    "RestoreError",
    "CorruptGraphError",
    "NodeNotFoundError",
]


class TFShardError(Exception):
    """Base class of every error raised by tfshard.

    Attributes
    ----------
    path : str or None
        The file involved, when known.
    key : str or None
        The tensor name (or index key) involved, when known.
    offset : int or None
        Byte offset in ``path`` where the problem was found, when known.
    """

    path: str | None
    key: str | None
    offset: int | None

    def __init__(self, message: str, *, path=None, key=None, offset=None):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)
        self.key = key
        self.offset = offset

    def __str__(self) -> str:
        return self.message


class CheckpointNotFoundError(TFShardError, FileNotFoundError):
    """A checkpoint, its index or one of its data shards does not exist."""


class TensorNotFoundError(TFShardError, KeyError):
    """The checkpoint holds no tensor of the requested name."""


class CorruptCheckpointError(TFShardError, ValueError):
    """The bytes on disk do not follow the checkpoint format."""


class ChecksumMismatchError(CorruptCheckpointError):
    """A stored CRC-32C does not match the bytes it covers."""


class CorruptGraphError(CorruptCheckpointError):
    """The bytes of a ``.meta`` (MetaGraphDef) or ``saved_model.pb`` (SavedModel) file do
    not follow their protobuf format (a checkpoint's graph: a subclass of
    :class:`CorruptCheckpointError`, so that code catching corrupt checkpoints catches
    it too)."""


class NodeNotFoundError(TFShardError, KeyError):
    """The graph holds no node (or node output) of the requested name."""


class IncompatibleVersionError(TFShardError, ValueError):
    """The checkpoint's version record says this reader must not read it."""


class UnsupportedError(TFShardError, ValueError):
    """Valid input that tfshard does not handle (e.g. an unknown dtype code)."""


class InvalidTensorError(TFShardError, ValueError):
    """A tensor given to the writer cannot be saved as it is (bad name, shape,
    dtype or slice); nothing of it was written."""


class WriterClosedError(TFShardError, ValueError):
    """The writer has already committed or aborted its checkpoint."""


class OutputExistsError(TFShardError, FileExistsError):
    """The output of a save or conversion already exists and ``overwrite`` was not
    given; nothing was written."""


class NothingSelectedError(TensorNotFoundError):
    """A selection of tensors (``include`` patterns, filters) chose none, or a pattern
    matched no tensor; nothing was written."""


class _OSFailure(TFShardError, OSError):
    """A failed system call: also an ``OSError`` whose ``errno``, ``strerror`` and
    ``filename`` are those of the failure (``filename`` the user's path)."""

    def __init__(self, message: str, *, errno=None, strerror=None, path=None, key=None,
                 offset=None):
        super().__init__(message, path=path, key=key, offset=offset)
        self.errno = errno
        self.strerror = strerror
        self.filename = self.path

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.errno, self.strerror, self.path,
                           self.key, self.offset))


def _rebuild(cls, message, errno, strerror, path, key, offset):
    return cls(message, errno=errno, strerror=strerror, path=path, key=key, offset=offset)


class WriteFailedError(_OSFailure):
    """Writing a checkpoint or model failed (disk full, file-size limit, I/O error,
    permission...): nothing was committed, the files written so far were removed,
    and whatever was at the output path before is still there, unchanged.

    ``path`` is the output the caller asked for (not a temporary name); the
    message also says what was being written.
    """


class ReadFailedError(_OSFailure):
    """A file of a checkpoint or model exists but the system refused to read it
    (a symlink loop, permissions, an I/O error...)."""


class RemoteStorageError(_OSFailure):
    """Reading or writing an object at a URL (``s3://``, ``gs://``, ``http://``...)
    failed for a reason other than its absence: refused credentials, a timeout, a
    lost or refused connection, a server error.  ``path`` is the object's URL and
    ``__cause__`` the exception fsspec (or its protocol package) raised.  No array
    is ever built from a response that did not arrive whole; a failed write
    leaves no index object behind.  A missing object is a
    :class:`CheckpointNotFoundError` instead."""


class CheckpointChangedError(TFShardError, RuntimeError):
    """The checkpoint was replaced (saved again) after it was opened: its data
    files may now belong to another save, so nothing is read from them.  Open
    the checkpoint again to read the new version."""


class RestoreError(TFShardError, ValueError):
    """:func:`tfshard.tf.restore` found variables it cannot restore (no tensor in
    the checkpoint, or one of another shape or dtype); nothing was assigned.

    Attributes
    ----------
    report : tfshard.tf.RestoreReport
        Every missing, mismatched and unused name, all at once.
    """

    def __init__(self, message: str, *, report, path=None):
        super().__init__(message, path=path)
        self.report = report
