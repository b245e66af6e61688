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
