"""Format adapters for model conversion: one reading and one writing interface
over TF checkpoints, safetensors, ``.npz``, directories of ``.npy`` files and
PyTorch files.

>>> with open_source("model.safetensors") as src:                  # doctest: +SKIP
...     plan = [(n, *src.info(n)) for n in src.names()]
...     with create_sink("out/ckpt", plan=plan) as sink:            # a TF checkpoint
...         for name, dtype, _ in plan:
...             sink.add(name, src.read(name), dtype)

A :class:`Source` holds no tensor data of its own: :meth:`Source.read` returns
a read-only view of a memory map wherever the format allows, so converting a
model keeps about one tensor in memory.  A :class:`Sink` is told every tensor
(name, TF dtype, shape) up front, so formats that need a header first
(safetensors) still write tensor by tensor, and a tensor a format cannot hold is
refused before any file is created.  Every output is written under temporary
names and renamed into place by :meth:`Sink.commit`; an exception inside
``with create_sink(...)`` leaves neither output nor temporary files behind.

Dtypes are TensorFlow's names everywhere (``"float32"``, ``"bfloat16"``,
``"qint8"``, ``"string"``...), as :mod:`tfshard.dtypes` lists them.  What each
format holds:

==============  ===========================================================
``tf``          every dtype (quantized, string and variant tensors kept)
``safetensors`` float16/32/64, bfloat16, (u)int8-64, bool, complex64 and the
                float8 types e5m2, e4m3fn, e5m2fnuz, e4m3fnuz
``npz``/``npy`` numpy's own types: float16/32/64, (u)int8-64, bool,
                complex64/128 (numpy's format records bfloat16 and float8
                arrays as raw bytes, so they would not load back as numbers)
``torch``       the safetensors types plus complex128 (output is not
                streaming: ``torch.save`` writes one dict at commit)
==============  ===========================================================
"""

from __future__ import annotations

import os
from typing import NamedTuple

from .._util import write_failed
from ..errors import CheckpointNotFoundError, InvalidTensorError, TFShardError, UnsupportedError
from . import _base, _numpy
from ..objectgraph import serialized_graph
from ._base import (
    FORMATS,
    Sink,
    Source,
    _check_format,
    _check_plan,
    _fspath,
    detect_format,
    read_errors,
    unsupported,
)
from ._numpy import _NpySink, _NpySource, _NpzSink, _NpzSource
from ._safetensors import CHECKSUM_KEY, _SafetensorsSink, _SafetensorsSource
from ._tf import _TFSink, _TFSource
from ._torch import _TorchSink, _TorchSource
from ..storage import is_url


def fmt_of_url(url: str) -> str:
    """The format of a model at a URL, from its name (see :mod:`tfshard.formats._remote`)."""
    from . import _remote

    return _remote.detect_format(url)

__all__ = ["FORMATS", "detect_format", "Source", "Sink", "open_source", "create_sink",
           "TensorListing", "list_tensors", "unsupported", "CHECKSUM_KEY"]

# Private helpers the tests reach through this module (``formats._npy_filenames``).
_is_plain_filename = _base._is_plain_filename
_npy_filenames = _numpy._npy_filenames


def open_source(path, fmt: str | None = None, *, verify: bool = True,
                storage_options=None) -> Source:
    """Open a model for reading, tensor by tensor.

    Parameters
    ----------
    path : str or os.PathLike
        The model (see :func:`detect_format` for the forms each format takes).
    fmt : str, optional
        One of :data:`FORMATS`; told from ``path`` when omitted.
    verify : bool
        Check checksums when tensors are read: a TF checkpoint's CRC-32C of each
        tensor, and those tfshard records in a safetensors file's metadata
        (:data:`CHECKSUM_KEY`).  Other formats have none.
    storage_options : dict, optional
        For a URL (``s3://...``, ``https://...``): options for fsspec's filesystem.
        A TF checkpoint at a URL is read by ranged requests; other formats are
        downloaded whole into a temporary folder, removed when the source closes.

    Returns
    -------
    Source

    Raises
    ------
    CheckpointNotFoundError
        If the model does not exist.
    CorruptCheckpointError
        If its structure is malformed (safetensors headers, npz archives and
        npy headers are validated when opened or first looked at).
    UnsupportedError
        If the format is unknown, or (torch) torch is not installed or the file
        holds objects other than tensors and containers.
    ChecksumMismatchError
        From ``read``, when ``verify`` is set and a tensor's bytes do not match
        their recorded checksum.
    """
    path = _fspath(path)
    if is_url(path):
        from . import _remote

        fmt = _remote.detect_format(path) if fmt is None else _check_format(fmt)
        if fmt == "tf":
            return _TFSource(path, verify=bool(verify), storage_options=storage_options)
        return _remote.open_source(path, fmt, lambda local: open_source(local, fmt,
                                                                         verify=verify),
                                   storage_options)
    fmt = detect_format(path) if fmt is None else _check_format(fmt)
    with read_errors(path, f"the {fmt} model"):
        if fmt in ("tf", "safetensors"):
            return _SOURCES[fmt](path, verify=bool(verify))
        return _SOURCES[fmt](path)


class TensorListing(NamedTuple):
    """What :func:`list_tensors` finds in a model.

    Attributes
    ----------
    path : str
        What was read (for TF checkpoints, the resolved prefix).
    format : str
        One of :data:`FORMATS`.
    num_shards : int or None
        Data shards of a TF checkpoint; None for other formats.
    tensors : list of tfshard.TensorInfo
        Sorted by name.  ``shard``, ``offset`` and ``slices`` are filled in for TF
        checkpoints only.
    object_graph : bytes or None
        With ``object_graph=True``, the serialized TF2 object graph (None when
        the model has none).
    """

    path: str
    format: str
    num_shards: int | None
    tensors: list
    object_graph: bytes | None = None


def list_tensors(path, *, object_graph: bool = False, storage_options=None) -> TensorListing:
    """List the tensors of any model tfshard reads, without reading their data.

    Parameters
    ----------
    path : str or os.PathLike
        A TF checkpoint (as :func:`tfshard.open` takes it) or a model in another
        format (see :func:`detect_format`).
    object_graph : bool
        Also read the serialized object graph of a TF2 checkpoint (its only
        tensor read, CRC checked).

    Raises
    ------
    CheckpointNotFoundError
        If nothing exists at ``path``.
    """
    from ..reader import Checkpoint, TensorInfo

    path = _fspath(path)
    if is_url(path) and fmt_of_url(path) != "tf":
        ckpt = None
    else:
        try:
            ckpt = Checkpoint(path, storage_options=storage_options)
        except CheckpointNotFoundError:
            if is_url(path) or not os.path.exists(path):
                raise
            ckpt = None  # something that exists but is no TF checkpoint: another format
    if ckpt is not None:
        with ckpt:
            graph = serialized_graph(ckpt) if object_graph else None
            return TensorListing(ckpt.prefix, "tf", ckpt.num_shards, ckpt.infos(), graph)
    with open_source(path, storage_options=storage_options) as source:
        infos = [TensorInfo(name, *source.info(name), source.nbytes(name), None, None)
                 for name in source.names()]
        return TensorListing(source.path, source.format, None, infos)


_SOURCES = {"tf": _TFSource, "safetensors": _SafetensorsSource, "npz": _NpzSource,
            "npy": _NpySource, "torch": _TorchSource}


def create_sink(path, fmt: str | None = None, *, plan, max_shard_size: int | None = None,
                overwrite: bool = False, metadata: dict | None = None,
                storage_options=None) -> Sink:
    """Start writing a model.

    Parameters
    ----------
    path : str or os.PathLike
        The output: a TF checkpoint prefix, ``*.safetensors`` (with
        ``max_shard_size``: ``<stem>-00001-of-0000N.safetensors`` files beside a
        ``<stem>.safetensors.index.json``), ``*.safetensors.index.json``, a
        directory (``safetensors``: ``model.safetensors`` or shards inside it;
        ``npy``: one ``.npy`` file per tensor plus ``names.json``), ``*.npz`` or
        a torch file.  Missing parent directories are created.
    fmt : str, optional
        One of :data:`FORMATS`; told from ``path`` when omitted (see
        :func:`detect_format`).
    plan : iterable of (str, str, sequence of int)
        ``(name, TF dtype name, shape)`` of every tensor that will be added,
        in the order they will be (the order of safetensors shards and of
        ``.npz`` members).
    max_shard_size : int, optional
        Bytes per output file, for ``tf`` and ``safetensors`` outputs: a new
        file starts when the next tensor would pass it (a larger tensor gets a
        file of its own).
    overwrite : bool
        Replace an existing output at commit.  A directory is only replaced if
        it holds an npy output; stale shards of an older sharding are removed.
    metadata : dict of str to str, optional
        The ``__metadata__`` of a safetensors output (every file of it), e.g.
        ``{"format": "pt"}``, which transformers expects of files meant for
        torch.  tfshard adds :data:`CHECKSUM_KEY` itself (a value given for it
        is replaced).  Other formats have no place for metadata and ignore it.
    storage_options : dict, optional
        For a URL output: options for fsspec's filesystem.  A TF checkpoint is
        uploaded data objects first, index last; other formats are written to a
        temporary folder and uploaded at commit (safetensors shards before their
        index JSON).

    Returns
    -------
    Sink

    Raises
    ------
    OutputExistsError
        If the output exists and ``overwrite`` is False.
    UnsupportedError
        If the format cannot hold a planned tensor's dtype or name (the message
        names it and the formats that can), or ``max_shard_size`` is given
        for a format without shards.
    InvalidTensorError
        If the plan is malformed (duplicate or empty names, unknown dtypes).
    """
    path = _fspath(path)
    if is_url(path):
        fmt = fmt_of_url(path) if fmt is None else _check_format(fmt)
        if fmt != "tf":
            from . import _remote

            return _remote.RemoteSink(
                path, fmt, lambda local: create_sink(
                    local, fmt, plan=plan, max_shard_size=max_shard_size, overwrite=True,
                    metadata=metadata), storage_options, overwrite=bool(overwrite))
        extra_tf = {"storage_options": storage_options}
    else:
        fmt = detect_format(path, for_output=True) if fmt is None else _check_format(fmt)
        extra_tf = {}
    if max_shard_size is not None:
        if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, int) \
                or max_shard_size < 1:
            raise InvalidTensorError(f"max_shard_size must be a positive number of bytes, got "
                                     f"{max_shard_size!r}")
        if fmt not in ("tf", "safetensors"):
            raise UnsupportedError(f"max_shard_size applies to tf and safetensors outputs, "
                                   f"not {fmt}", path=path)
    checked = _check_plan(plan, fmt, path)
    extra = {}
    if fmt == "safetensors":
        if metadata is not None and not (isinstance(metadata, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
            raise InvalidTensorError(f"safetensors metadata maps strings to strings, got "
                                     f"{metadata!r}", path=path)
        extra["metadata"] = metadata
    if fmt == "tf":
        extra.update(extra_tf)
    try:
        return _SINKS[fmt](path, checked, max_shard_size=max_shard_size,
                           overwrite=bool(overwrite), **extra)
    except OSError as exc:  # the sink removed what it had created
        if isinstance(exc, TFShardError):
            raise
        raise write_failed(exc, path, f"creating the {fmt} output") from None


_SINKS = {"tf": _TFSink, "safetensors": _SafetensorsSink, "npz": _NpzSink, "npy": _NpySink,
          "torch": _TorchSink}
