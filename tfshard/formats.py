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

import builtins
import contextlib
import difflib
import glob
import hashlib
import io
import json
import mmap
import os
import re
import shutil
import struct
import sys
import unicodedata
import warnings
import zipfile
from collections.abc import Mapping

from . import dtypes
from ._util import atomic_write, remove_file, temp_name
from .errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    InvalidTensorError,
    OutputExistsError,
    TensorNotFoundError,
    UnsupportedError,
    WriterClosedError,
)
from .paths import data_filename, index_filename, resolve_prefix
from .slices import prod

__all__ = ["FORMATS", "detect_format", "Source", "Sink", "open_source", "create_sink"]

#: The format names :func:`open_source` and :func:`create_sink` accept.
FORMATS = ("tf", "safetensors", "npz", "npy", "torch")

_ST_SUFFIX = ".safetensors"
_ST_INDEX_SUFFIX = ".safetensors.index.json"
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_NAMES_FILE = "names.json"  # an npy directory's file -> tensor name table
# Model files of other frameworks, refused by name rather than taken for a TF
# prefix (a prefix can hold dots, so "no known suffix" alone means tf).
_FOREIGN_SUFFIXES = (".h5", ".hdf5", ".keras", ".onnx", ".gguf", ".ggml", ".msgpack", ".json",
                     ".pb", ".tflite", ".npy", ".zip", ".tar", ".gz", ".mlmodel")

_ACCEPTED = (
    "accepted: a TF checkpoint (its prefix, .index file or a data shard, or a directory with a "
    "'checkpoint' state file; any other output path without a known suffix is a prefix), "
    "*.safetensors, *.safetensors.index.json or a directory of .safetensors files, *.npz, "
    "a directory of .npy files with names.json ('npy'; for output pass fmt='npy'), "
    "*.pt/*.pth/*.bin (torch); or name the format explicitly, one of " + ", ".join(FORMATS))

# ---- dtypes each format holds ---------------------------------------------------

# safetensors dtype -> TF dtype name.  The float8 fnuz types are in the format
# since safetensors 0.4 (the library maps them for torch).
_ST_TO_TF = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "C64": "complex64",
}
_TF_TO_ST = {tf: st for st, tf in _ST_TO_TF.items()}
# safetensors dtypes TF has no type for, with their bits per element: files
# holding them are valid and open, but those tensors cannot be read.
_ST_FOREIGN_BITS = {"F8_E8M0": 8, "F6_E2M3": 6, "F6_E3M2": 6, "F4": 4}
# The safetensors library refuses headers above this size; so do we, which
# also bounds what a hostile length field makes us read.
_ST_MAX_HEADER = 100_000_000

_NUMPY_TYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64",
                          "uint8", "uint16", "uint32", "uint64", "bool", "complex64",
                          "complex128"})
# torch's dtype attributes carry these very names (torch.bfloat16, torch.uint16...).
_TORCH_TYPES = frozenset(_TF_TO_ST) | {"complex128"}

_HOLDS = {
    "tf": None,  # everything
    "safetensors": frozenset(_TF_TO_ST),
    "npz": _NUMPY_TYPES,
    "npy": _NUMPY_TYPES,
    "torch": _TORCH_TYPES,
}


def _holds(fmt: str, dtype_name: str) -> bool:
    allowed = _HOLDS[fmt]
    return allowed is None or dtype_name in allowed


def _tf_name_of_numpy(dt) -> str | None:
    """The TF dtype of a numpy dtype read from an .npy header (None if it has none)."""
    if dt.kind in "SU":
        return "string"
    if dt.hasobject or dt.kind == "V":
        return None
    name = dt.newbyteorder("=").name
    return name if name in _NUMPY_TYPES else None


# ---- paths ------------------------------------------------------------------------

def _fspath(path) -> str:
    path = os.fspath(path)
    return os.fsdecode(path) if isinstance(path, bytes) else path


def _ends_with_separator(path: str) -> bool:
    return path.endswith(os.sep) or bool(os.altsep and path.endswith(os.altsep))


def _directory_format(directory: str) -> str | None:
    """The format of the model stored in ``directory``, from the files it holds."""
    def has(pattern):
        return bool(glob.glob(os.path.join(glob.escape(directory), pattern)))

    if os.path.isfile(os.path.join(directory, _NAMES_FILE)):
        return "npy"
    if os.path.isfile(os.path.join(directory, "checkpoint")):
        return "tf"
    if has("*" + _ST_SUFFIX) or has("*" + _ST_INDEX_SUFFIX):
        return "safetensors"
    if has("*.index") or os.path.isfile(os.path.join(directory, "variables", "variables.index")):
        return "tf"
    return None


def detect_format(path, *, for_output: bool = False) -> str:
    """Tell a model's format from its path (and, for inputs, what is on disk).

    Parameters
    ----------
    path : str or os.PathLike
        ``*.safetensors``, ``*.safetensors.index.json`` (a sharded Hugging Face
        model) or a directory of them: ``"safetensors"``; ``*.npz``: ``"npz"``;
        ``*.pt``, ``*.pth``, ``*.bin``: ``"torch"``; a directory holding
        ``names.json`` and ``.npy`` files: ``"npy"``; a TF checkpoint prefix,
        its ``.index`` file, a data shard, or a directory with a ``checkpoint``
        state file: ``"tf"``.  An output path with no known suffix is a TF
        prefix.
    for_output : bool
        Whether ``path`` is to be written (nothing need exist yet).

    Returns
    -------
    str
        One of :data:`FORMATS`.

    Raises
    ------
    UnsupportedError
        If the path names no format tfshard handles, or a directory is
        ambiguous (the message lists the accepted forms).
    CheckpointNotFoundError
        For an input path that does not exist and has no known suffix (it is
        taken for a missing TF checkpoint; the message suggests near names).
    """
    path = _fspath(path)
    low = path.lower()
    if low.endswith(_ST_INDEX_SUFFIX) or low.endswith(_ST_SUFFIX):
        return "safetensors"
    if low.endswith(".npz"):
        return "npz"
    if low.endswith(_TORCH_SUFFIXES):
        return "torch"
    if os.path.isdir(path):
        found = _directory_format(path)
        if found == "tf" and for_output:
            raise UnsupportedError(
                f"{path} is a directory holding a TF checkpoint; to write one pass a "
                f"checkpoint prefix such as {os.path.join(path, 'ckpt')!r}", path=path)
        if found is None:
            what = ("pass fmt='npy' or fmt='safetensors' to write into a directory"
                    if for_output else "it holds no model tfshard recognizes")
            raise UnsupportedError(f"cannot tell the format of directory {path}: {what}; "
                                   f"{_ACCEPTED}", path=path)
        return found
    if low.endswith(_FOREIGN_SUFFIXES):
        raise UnsupportedError(f"{path}: unsupported model format; {_ACCEPTED}", path=path)
    if for_output:
        if _ends_with_separator(path):
            raise UnsupportedError(
                f"{path} names a directory: pass fmt='npy' or fmt='safetensors' to write one, "
                f"or a checkpoint prefix for a TF checkpoint", path=path)
        return "tf"
    try:
        resolve_prefix(path)
    except CheckpointNotFoundError:
        if os.path.exists(path):
            raise UnsupportedError(f"{path} is not a model file tfshard recognizes; {_ACCEPTED}",
                                   path=path) from None
        raise
    return "tf"


def _check_format(fmt) -> str:
    if fmt not in FORMATS:
        raise UnsupportedError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def _missing_file(path: str, what: str):
    return CheckpointNotFoundError(f"{what} {path} does not exist or is not a file", path=path)


def _open_binary(path: str, what: str):
    try:
        return builtins.open(path, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise _missing_file(path, what) from None


def _read_json(path: str, what: str, limit: int):
    """A small JSON file; CorruptCheckpointError for anything malformed."""
    with _open_binary(path, what) as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise CorruptCheckpointError(f"{what} {path} is larger than {limit} bytes",
                                     path=path)
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise CorruptCheckpointError(f"{what} {path} is not valid JSON: {exc}",
                                     path=path) from None


def _is_plain_filename(name) -> bool:
    """Whether ``name`` is a file name without any directory part (so joining it
    to a directory stays inside that directory)."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "\0" not in name
            and "/" not in name and "\\" not in name and os.sep not in name
            and not (os.altsep and os.altsep in name))


# ---- reading ------------------------------------------------------------------------

class Source:
    """A model opened for reading, one tensor at a time.  Create with :func:`open_source`.

    Attributes
    ----------
    path : str
        What was opened (for TF checkpoints, the resolved prefix).
    format : str
        One of :data:`FORMATS`.
    skipped : list of (str, str)
        Entries of the input that are not tensors tfshard can read, as
        ``(name, reason)``; only torch files have any (a warning lists them
        when the file is opened).

    Notes
    -----
    A source is a context manager; :meth:`close` is idempotent and never
    invalidates an array already returned.
    """

    format = ""

    def __init__(self, path: str):
        self.path = path
        self.skipped: list = []
        self._closed = False

    def names(self) -> list:
        """Every tensor's name, sorted.

        Returns
        -------
        list of str
        """
        self._check_open()
        return list(self._names())

    def info(self, name: str) -> tuple:
        """``(dtype, shape)`` of tensor ``name`` without reading its data.

        Returns
        -------
        tuple
            The TF dtype name (``"float32"``, ``"bfloat16"``, ``"qint8"``,
            ``"string"``...) and the shape as a tuple of int.

        Raises
        ------
        TensorNotFoundError
            If there is no such tensor.
        UnsupportedError
            If the tensor has a dtype TF has no type for.
        """
        self._check_open()
        return self._info(name)

    def nbytes(self, name: str) -> int:
        """Bytes of tensor ``name``'s data as stored (what reading it touches).

        Raises
        ------
        TensorNotFoundError
            If there is no such tensor.
        """
        self._check_open()
        return self._nbytes(name)

    def read(self, name: str):
        """Read tensor ``name``.

        Returns
        -------
        numpy.ndarray
            The dtype is TF's numpy type (``ml_dtypes`` for bfloat16 and
            float8; plain integers for quantized types); string tensors are
            object arrays of ``bytes``.  A read-only view of a memory map
            where the format allows.

        Raises
        ------
        TensorNotFoundError
            If there is no such tensor.
        CorruptCheckpointError
            If the stored bytes are malformed or truncated.
        UnsupportedError
            If the tensor has a dtype TF has no type for.
        """
        self._check_open()
        return self._read(name)

    def release(self, name: str) -> None:
        """Let the memory that reading ``name`` mapped in go (after the caller is
        done with the array): streaming tools call it after each tensor so their
        footprint stays near one tensor.  Never changes a value; a no-op for
        formats that hold no map."""
        if not self._closed:
            self._release(name)

    def close(self) -> None:
        """Release the files.  Idempotent; arrays already returned stay valid."""
        if not self._closed:
            self._closed = True
            self._close()

    # ---- for subclasses ----------------------------------------------------------

    def _release(self, name):
        pass

    def _names(self):
        raise NotImplementedError

    def _info(self, name):
        raise NotImplementedError

    def _nbytes(self, name):
        raise NotImplementedError

    def _read(self, name):
        raise NotImplementedError

    def _close(self):
        pass

    def _check_open(self):
        if self._closed:
            raise ValueError(f"the {self.format} source {self.path} is closed")

    def _not_found(self, name):
        names = list(self._names())
        close = difflib.get_close_matches(str(name), names, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        return TensorNotFoundError(f"tensor {name!r} not found in {self.path} "
                                   f"({len(names)} tensors){hint}", path=self.path, key=name)

    # ---- conveniences --------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.names())

    def __iter__(self):
        return iter(self.names())

    def __contains__(self, name) -> bool:
        return name in set(self.names())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(list(self._names()))} tensors"
        return f"<tfshard.formats.Source {self.format} {self.path!r}: {state}>"


def open_source(path, fmt: str | None = None) -> Source:
    """Open a model for reading, tensor by tensor.

    Parameters
    ----------
    path : str or os.PathLike
        The model (see :func:`detect_format` for the forms each format takes).
    fmt : str, optional
        One of :data:`FORMATS`; told from ``path`` when omitted.

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
    """
    path = _fspath(path)
    fmt = detect_format(path) if fmt is None else _check_format(fmt)
    return _SOURCES[fmt](path)


class _TFSource(Source):
    """A TF checkpoint through :class:`tfshard.Checkpoint`; stored dtypes are kept
    (``info`` says ``qint8`` where ``read`` returns int8)."""

    format = "tf"

    def __init__(self, path):
        from .reader import Checkpoint

        self._ckpt = Checkpoint(path)
        super().__init__(self._ckpt.prefix)
        self._list = list(self._ckpt)

    def _names(self):
        return self._list

    def _info(self, name):
        info = self._ckpt.info(name)
        return info.dtype, tuple(info.shape)

    def _nbytes(self, name):
        return self._ckpt.info(name).nbytes

    def _read(self, name):
        return self._ckpt.read(name)

    def _release(self, name):
        self._ckpt.release(name)

    def _close(self):
        self._ckpt.close()


# ---- safetensors ------------------------------------------------------------------

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
            self.buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def close(self):
        if isinstance(self.buffer, mmap.mmap):
            try:
                self.buffer.close()
            except BufferError:
                pass  # views still use it; the map goes when they do


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

    def __init__(self, path):
        super().__init__(path)
        self._files: list = []
        self._entries: dict = {}
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
        if e is not None and isinstance(e.file.buffer, mmap.mmap) and e.end > e.begin:
            start = e.file.data_start + e.begin
            aligned = start - start % mmap.PAGESIZE
            try:
                e.file.buffer.madvise(mmap.MADV_DONTNEED, aligned,
                                      e.file.data_start + e.end - aligned)
            except (AttributeError, OSError, ValueError):
                pass  # no madvise here: the kernel reclaims the pages when it must

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
        if count == 0:
            return _empty(e.shape, dt.numpy, e.file.path, name)
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
        arr = np.frombuffer(f.buffer, dtype=dt.numpy, count=count, offset=start)
        if sys.byteorder == "big" and dt.swap:
            arr = _byteswapped(arr, dt)
        return arr.reshape(e.shape)

    def _close(self):
        for f in self._files:
            f.close()


def _empty(shape, dtype, path, name):
    """A read-only zero-size array of ``shape``."""
    import numpy as np

    try:
        arr = np.empty(shape, dtype=dtype)
    except ValueError as exc:  # numpy refuses huge dimensions even beside a zero one
        raise UnsupportedError(f"{path}: tensor {name!r} has shape {list(shape)}, which numpy "
                               f"cannot represent: {exc}", path=path, key=name) from None
    arr.flags.writeable = False
    return arr


def _byteswapped(arr, dt):
    """A native-order copy of little-endian data (big-endian hosts only)."""
    import numpy as np

    out = arr.view(np.dtype(f"u{dt.swap}")).byteswap().view(dt.numpy)
    out.flags.writeable = False
    return out


# ---- npy headers (npz members and npy directories) ---------------------------------

class _NpyHeader:
    __slots__ = ("dtype", "tf_name", "shape", "fortran", "data_offset", "nbytes", "where",
                 "name")

    def __init__(self, dtype, tf_name, shape, fortran, data_offset, nbytes, where, name):
        self.dtype, self.tf_name, self.shape = dtype, tf_name, shape
        self.fortran, self.data_offset, self.nbytes = fortran, data_offset, nbytes
        self.where, self.name = where, name


def _parse_npy_header(read, total: int, where: str, name: str) -> _NpyHeader:
    """Parse an .npy header through ``read(n)`` (the array's ``total`` bytes start
    there); ``data_offset`` is relative to the header's start.  The array must
    fit in ``total``, so a hostile shape never causes a large allocation."""
    import numpy as np

    def corrupt(message):
        return CorruptCheckpointError(f"{where}: {message}", path=where, key=name)

    prefix = read(10)
    if len(prefix) < 10 or prefix[:6] != b"\x93NUMPY":
        raise corrupt("not an .npy array (bad magic)")
    major = prefix[6]
    if major == 1:
        length_field, start = prefix[8:10], 10
    elif major in (2, 3):
        length_field, start = prefix[8:10] + read(2), 12
    else:
        raise UnsupportedError(f"{where}: .npy format version {major}.{prefix[7]} is not "
                               f"supported", path=where, key=name)
    length = int.from_bytes(length_field, "little")
    if start + length > total:
        raise corrupt(f"the header claims {length} bytes, more than the {total} stored")
    text = read(length)
    if len(text) != length:
        raise corrupt("the header is truncated")
    parse = (np.lib.format.read_array_header_1_0 if major == 1
             else np.lib.format.read_array_header_2_0)
    try:
        shape, fortran, dtype = parse(io.BytesIO(length_field + text))
    except Exception as exc:  # numpy's parser (ast, tokenize) raises many types on bad text
        raise corrupt(f"bad .npy header: {type(exc).__name__}: {exc}") from None
    tf_name = _tf_name_of_numpy(dtype)
    if tf_name is None:
        why = ("pickled Python objects (tfshard never unpickles)" if dtype.hasobject
               else f"dtype {dtype}, which has no TensorFlow equivalent")
        raise UnsupportedError(f"{where}: array {name!r} holds {why}", path=where, key=name)
    if dtype.itemsize == 0:
        raise UnsupportedError(f"{where}: array {name!r} has zero-width dtype {dtype}",
                               path=where, key=name)
    if len(shape) > 64:
        raise UnsupportedError(f"{where}: array {name!r} has rank {len(shape)}; numpy "
                               f"allows 64", path=where, key=name)
    if any(d < 0 for d in shape):  # numpy's parser lets them through
        raise corrupt(f"array {name!r} has negative dimensions {list(shape)}")
    nbytes = prod(shape) * dtype.itemsize
    if start + length + nbytes > total:
        raise corrupt(f"array {name!r} is {dtype} {list(shape)} ({nbytes} bytes), but only "
                      f"{total - start - length} bytes follow its header")
    return _NpyHeader(dtype, tf_name, tuple(shape), fortran, start + length, nbytes, where,
                      name)


def _buffer_reader(buffer, position: int):
    """``read(n)`` over a buffer, for :func:`_parse_npy_header`."""
    def read(n):
        nonlocal position
        chunk = bytes(buffer[position:position + n])
        position += len(chunk)
        return chunk
    return read


def _npy_array(buffer, data_start: int, h: _NpyHeader):
    """The array described by ``h`` whose data starts at ``data_start`` in
    ``buffer``: a read-only view when the bytes allow, else a converted copy."""
    import numpy as np

    count = prod(h.shape)
    if count == 0:
        arr = _empty(h.shape, h.dtype, h.where, h.name)
    else:
        arr = np.frombuffer(buffer, dtype=h.dtype, count=count, offset=data_start)
        arr = arr.reshape(h.shape[::-1]).T if h.fortran else arr.reshape(h.shape)
    return _normalized(arr)


def _normalized(arr):
    """Arrays as TF's dtypes are returned: native byte order, strings as object
    arrays of bytes."""
    import numpy as np

    if arr.dtype.kind in "SU":
        flat = [v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")
                for v in arr.ravel().tolist()]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(arr.shape)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
        arr.flags.writeable = False
    return arr


@contextlib.contextmanager
def _zip_errors(path: str, doing: str, name=None, where=None):
    """Turn what :mod:`zipfile` raises into tfshard errors.  It parses the archive
    in Python and, on hostile bytes, raises nearly anything (struct.error,
    zlib.error, OSError for a negative seek, ...)."""
    try:
        yield
    except (CorruptCheckpointError, UnsupportedError):
        raise
    except (RuntimeError, NotImplementedError) as exc:  # encrypted, unknown method/version
        raise UnsupportedError(f"{where or path}: {doing}: {exc}", path=path,
                               key=name) from None
    except Exception as exc:
        raise CorruptCheckpointError(f"{where or path}: {doing}: {type(exc).__name__}: {exc}",
                                     path=path, key=name) from None


class _NpzSource(Source):
    """An ``.npz`` archive.  Stored members (``numpy.savez``, tfshard) are zero-copy
    views of a map of the archive; compressed ones are decompressed on read."""

    format = "npz"

    def __init__(self, path):
        super().__init__(path)
        self._file = _open_binary(path, "npz archive")
        self._zip = self._map = None
        try:
            self._size = os.fstat(self._file.fileno()).st_size
            with _zip_errors(path, "not a valid zip archive"):
                self._zip = zipfile.ZipFile(self._file)
            self._members = {}
            for zi in self._zip.infolist():
                if zi.filename.endswith(".npy") and not zi.is_dir():
                    self._members[zi.filename[:-4]] = zi
                else:
                    self.skipped.append((zi.filename, "not an .npy member"))
            self._sorted = sorted(self._members)
            self._headers: dict = {}
            if self._size:
                self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except BaseException:
            self.close()
            raise

    def _names(self):
        return self._sorted

    def _member(self, name) -> zipfile.ZipInfo:
        zi = self._members.get(name) if isinstance(name, str) else None
        if zi is None:
            raise self._not_found(name)
        return zi

    def _stored_start(self, zi) -> int | None:
        """Offset in the archive of a stored member's bytes (None if compressed)."""
        if zi.compress_type != zipfile.ZIP_STORED or zi.flag_bits & 0x1:
            return None
        where = f"{self.path}:{zi.filename}"
        local = zi.header_offset
        if local + 30 > self._size or self._map[local:local + 4] != b"PK\x03\x04":
            raise CorruptCheckpointError(f"{where}: bad local file header at {local}",
                                         path=self.path, key=zi.filename, offset=local)
        name_len, extra_len = struct.unpack("<HH", self._map[local + 26:local + 30])
        start = local + 30 + name_len + extra_len
        if zi.compress_size != zi.file_size or start + zi.file_size > self._size:
            raise CorruptCheckpointError(
                f"{where}: member data [{start}, {start + zi.file_size}) lies past the end of "
                f"the {self._size}-byte archive", path=self.path, key=zi.filename, offset=start)
        return start

    def _header(self, name):
        h = self._headers.get(name)
        if h is None:
            zi = self._member(name)
            where = f"{self.path}:{zi.filename}"
            start = self._stored_start(zi)
            with _zip_errors(self.path, "cannot read member", name, where):
                if start is not None:
                    h = _parse_npy_header(_buffer_reader(self._map, start), zi.file_size,
                                          where, name)
                else:
                    with self._zip.open(zi) as fp:
                        h = _parse_npy_header(fp.read, zi.file_size, where, name)
            self._headers[name] = h
        return h

    def _info(self, name):
        h = self._header(name)
        return h.tf_name, h.shape

    def _nbytes(self, name):
        return self._header(name).nbytes

    def _read(self, name):
        h = self._header(name)
        zi = self._members[name]
        start = self._stored_start(zi)
        if start is not None:
            return _npy_array(self._map, start + h.data_offset, h)
        where = f"{self.path}:{zi.filename}"
        with _zip_errors(self.path, "cannot read member", name, where):
            with self._zip.open(zi) as fp:
                fp.read(h.data_offset)
                data = fp.read(h.nbytes)
                fp.read(1)  # reach the end, so zipfile checks the member's CRC
        if len(data) != h.nbytes:
            raise CorruptCheckpointError(f"{where}: member data is truncated", path=self.path,
                                         key=name)
        return _npy_array(data, 0, h)

    def _close(self):
        if self._zip is not None:
            self._zip.close()
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # views still use it; the map goes when they do
        self._file.close()


class _NpySource(Source):
    """A directory of ``.npy`` files with ``names.json`` (``{file: tensor name}``),
    as the npy sink writes it.  Files are mapped on read."""

    format = "npy"

    def __init__(self, path):
        super().__init__(path)
        table_path = os.path.join(path, _NAMES_FILE)
        if not os.path.isdir(path):
            raise CheckpointNotFoundError(f"{path} is not a directory (an npy model is a "
                                          f"directory of .npy files with {_NAMES_FILE})",
                                          path=path)
        table = _read_json(table_path, "npy name table", 1 << 30)
        if not isinstance(table, dict):
            raise CorruptCheckpointError(f"{table_path}: expected an object mapping file "
                                         f"names to tensor names", path=table_path)
        self._files = {}
        for file, name in table.items():
            # The table must not send reads outside the directory.
            if not (_is_plain_filename(file) and file.endswith(".npy") and isinstance(name, str)):
                raise CorruptCheckpointError(f"{table_path}: entry {file!r}: {name!r} is not "
                                             f"'<file>.npy': '<tensor name>'", path=table_path)
            if name in self._files:
                raise CorruptCheckpointError(f"{table_path}: tensor {name!r} is listed twice",
                                             path=table_path, key=name)
            self._files[name] = os.path.join(path, file)
        self._sorted = sorted(self._files)
        self._headers: dict = {}

    def _names(self):
        return self._sorted

    def _open(self, name):
        """(map or b"", header) of tensor ``name``'s file."""
        file = self._files.get(name) if isinstance(name, str) else None
        if file is None:
            raise self._not_found(name)
        with _open_binary(file, f"array file of tensor {name!r}") as f:
            size = os.fstat(f.fileno()).st_size
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        h = _parse_npy_header(_buffer_reader(buffer, 0), size, file, name)
        self._headers[name] = h
        return buffer, h

    def _header(self, name):
        h = self._headers.get(name)
        return h if h is not None else self._open(name)[1]

    def _info(self, name):
        h = self._header(name)
        return h.tf_name, h.shape

    def _nbytes(self, name):
        return self._header(name).nbytes

    def _read(self, name):
        buffer, h = self._open(name)
        return _npy_array(buffer, h.data_offset, h)


# ---- torch ---------------------------------------------------------------------------

def _import_torch():
    try:
        import torch
    except ImportError:
        raise UnsupportedError("reading or writing PyTorch files needs torch: install torch "
                               "(pip install torch)") from None
    return torch


class _TorchSource(Source):
    """A ``torch.save``'d dict of tensors, loaded with ``weights_only=True`` (no
    arbitrary unpickling) and ``mmap=True`` (zero-copy, where the file is in
    torch's zip format; older files are read whole).  Nested dicts are flattened
    with ``.`` joining keys; other values are skipped and listed in ``skipped``."""

    format = "torch"

    def __init__(self, path):
        super().__init__(path)
        torch = _import_torch()
        if not os.path.isfile(path):
            raise _missing_file(path, "torch file")
        obj = self._load(torch, path)
        if not isinstance(obj, Mapping):
            raise UnsupportedError(f"{path} holds a {type(obj).__name__}; expected a dict of "
                                   f"tensors (a state dict)", path=path)
        self._tensors: dict = {}
        stack = [("", obj)]  # iterative: nesting depth is the file's choice
        while stack:
            prefix, mapping = stack.pop()
            for key, value in mapping.items():
                name = f"{prefix}.{key}" if prefix else str(key)
                if isinstance(value, torch.Tensor):
                    why = self._unreadable(torch, value)
                    if why:
                        self.skipped.append((name, why))
                    elif name in self._tensors:
                        raise UnsupportedError(f"{path}: two entries flatten to the name "
                                               f"{name!r}", path=path, key=name)
                    else:
                        self._tensors[name] = value
                elif isinstance(value, Mapping):
                    stack.append((name, value))
                else:
                    self.skipped.append((name, type(value).__name__))
        self._sorted = sorted(self._tensors)
        if self.skipped:
            listed = ", ".join(f"{n} ({why})" for n, why in self.skipped[:10])
            more = f" and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
            warnings.warn(f"{path}: skipped {len(self.skipped)} entries that are not readable "
                          f"tensors: {listed}{more}", stacklevel=3)

    @staticmethod
    def _load(torch, path):
        import pickle

        def load(use_mmap):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)

        try:
            try:
                return load(True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return load(False)  # the legacy (pre-1.6) format cannot be mapped
        except pickle.UnpicklingError as exc:
            if "weights only" in str(exc).lower():
                raise UnsupportedError(
                    f"{path} holds objects other than tensors and containers; tfshard loads "
                    f"torch files with weights_only=True and never runs pickled code "
                    f"({str(exc).splitlines()[0]})", path=path) from None
            raise CorruptCheckpointError(f"{path}: cannot load: {exc}", path=path) from None
        except OSError:
            raise
        except Exception as exc:  # torch reports corrupt files with many types
            raise CorruptCheckpointError(f"{path}: cannot load as a torch file: "
                                         f"{type(exc).__name__}: {exc}", path=path) from None

    @staticmethod
    def _unreadable(torch, t) -> str | None:
        if t.layout != torch.strided:
            return f"{t.layout} tensor"
        if t.is_quantized:
            return "quantized tensor"
        name = str(t.dtype).replace("torch.", "")
        if name not in _TORCH_TYPES:
            return f"dtype {t.dtype}"
        return None

    def _names(self):
        return self._sorted

    def _tensor(self, name):
        t = self._tensors.get(name) if isinstance(name, str) else None
        if t is None:
            raise self._not_found(name)
        return t

    def _info(self, name):
        t = self._tensor(name)
        return str(t.dtype).replace("torch.", ""), tuple(int(d) for d in t.shape)

    def _nbytes(self, name):
        t = self._tensor(name)
        return t.numel() * t.element_size()

    def _read(self, name):
        import numpy as np

        torch = _import_torch()
        t = self._tensor(name).detach().resolve_conj().resolve_neg()
        dt = dtypes.by_name(str(t.dtype).replace("torch.", ""))
        if dt.name == "bfloat16":
            arr = t.view(torch.int16).numpy().view(dt.numpy)
        elif dt.name.startswith("float8"):
            arr = t.view(torch.uint8).numpy().view(dt.numpy)
        else:
            arr = t.numpy()
        arr = np.asarray(arr)
        arr.flags.writeable = False  # as every source's arrays: views of the file
        return arr


_SOURCES = {"tf": _TFSource, "safetensors": _SafetensorsSource, "npz": _NpzSource,
            "npy": _NpySource, "torch": _TorchSource}


# ---- writing ------------------------------------------------------------------------

def _check_plan(plan, fmt: str, path: str) -> dict:
    """Validate ``plan`` for format ``fmt``: ``{name: (DType, shape)}`` in plan order.

    Everything a format cannot hold is refused here, before any file exists."""
    if isinstance(plan, (str, bytes)) or not hasattr(plan, "__iter__"):
        raise InvalidTensorError(f"plan must be a list of (name, dtype, shape), got {plan!r}")
    out = {}
    for item in plan:
        try:
            name, dtype_name, shape = item
        except (TypeError, ValueError):
            raise InvalidTensorError(f"plan entries are (name, dtype, shape), got "
                                     f"{item!r}") from None
        if not isinstance(name, str) or not name:
            raise InvalidTensorError(f"tensor names must be non-empty str, got {name!r}")
        if name in out:
            raise InvalidTensorError(f"tensor {name!r} is planned twice", key=name)
        try:
            dt = dtypes.by_name(dtype_name)
        except (KeyError, TypeError):
            raise InvalidTensorError(f"tensor {name!r}: unknown dtype {dtype_name!r}; expected "
                                     f"a TensorFlow dtype name such as 'float32'",
                                     key=name) from None
        try:
            shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise InvalidTensorError(f"tensor {name!r}: shape must be a sequence of integers, "
                                     f"got {shape!r}", key=name) from None
        if any(d < 0 for d in shape):
            raise InvalidTensorError(f"tensor {name!r}: negative dimension in {list(shape)}",
                                     key=name)
        if not _holds(fmt, dt.name):
            can = [f for f in FORMATS if _holds(f, dt.name)]
            raise UnsupportedError(
                f"tensor {name!r} is {dt.name}, which the {fmt} format cannot hold; write it to "
                f"{' or '.join(can)}, cast it, or leave it out (nothing was written)",
                path=path, key=name)
        problem = _NAME_RULES.get(fmt, lambda n: None)(name)
        if problem:
            raise UnsupportedError(f"tensor name {name!r} cannot be stored in {fmt}: {problem} "
                                   f"(nothing was written)", path=path, key=name)
        out[name] = (dt, shape)
    return out


def _has_surrogates(name: str) -> bool:
    # Names read from non-UTF-8 TF keys carry lone surrogates (surrogateescape).
    return any("\ud800" <= ch <= "\udfff" for ch in name)


def _safetensors_name_problem(name):
    if name == "__metadata__":
        return "the name is reserved for the file's metadata"
    if _has_surrogates(name):
        return "it is not valid Unicode (the header is UTF-8 JSON)"
    return None


def _npz_name_problem(name):
    if "\0" in name:
        return "zip member names end at a NUL character"
    if _has_surrogates(name):
        return "it is not valid Unicode (zip member names are UTF-8)"
    if len(name.encode("utf-8")) > 65000:
        return "zip member names are limited to 64 KiB"
    return None


_NAME_RULES = {"safetensors": _safetensors_name_problem, "npz": _npz_name_problem}


def _make_dirs(directory: str) -> list:
    """Create ``directory`` and its missing parents; return those created,
    outermost first (an aborted write removes them again)."""
    missing = []
    current = os.path.abspath(directory or ".")
    while not os.path.exists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    created = []
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            continue  # made meanwhile by someone else: not ours to remove
        created.append(d)
    return created


class Sink:
    """A model being written.  Create with :func:`create_sink`.

    A context manager: a clean exit commits; an exception removes everything
    written so far.  Outputs appear under their final names only at
    :meth:`commit`.

    Attributes
    ----------
    path : str
        The output as given.
    format : str
        One of :data:`FORMATS`.
    """

    format = ""

    def __init__(self, path: str, plan: dict, *, max_shard_size, overwrite: bool):
        self.path = path
        self.overwrite = overwrite
        self._plan = plan
        self._added: set = set()
        self._created_dirs: list = []
        self._state = "open"

    def add(self, name: str, array, dtype: str | None = None) -> None:
        """Write tensor ``name``.

        Parameters
        ----------
        name : str
            A name from the plan, each added once (in any order; the plan's
            order is the cheapest for formats written front to back).
        array : array_like
            Its value, of the planned shape; converted to the planned dtype as
            ``numpy.astype`` does where its dtype differs.
        dtype : str, optional
            The TF dtype to store; when given it must be the planned one.

        Raises
        ------
        InvalidTensorError
            A name not in the plan or added twice, another dtype or shape than
            planned, or a value that cannot be converted; nothing of it is
            written and the sink stays usable.
        """
        self._check_open()
        planned = self._plan.get(name) if isinstance(name, str) else None
        if planned is None:
            raise InvalidTensorError(f"tensor {name!r} is not in the plan of {self.path}",
                                     path=self.path, key=name)
        if name in self._added:
            raise InvalidTensorError(f"tensor {name!r} was already added", path=self.path,
                                     key=name)
        dt, shape = planned
        if dtype is not None and dtype != dt.name:
            raise InvalidTensorError(f"tensor {name!r} is planned as {dt.name} but added as "
                                     f"{dtype}", path=self.path, key=name)
        self._write(name, dt, shape, array)
        self._added.add(name)

    def commit(self) -> list:
        """Finish the output and move it into place.

        Returns
        -------
        list of str
            The paths of the files written.

        Raises
        ------
        InvalidTensorError
            If planned tensors were never added (then nothing is kept).
        OutputExistsError
            If the output appeared meanwhile and ``overwrite`` is False.
        """
        self._check_open()
        try:
            missing = [n for n in self._plan if n not in self._added]
            if missing:
                listed = ", ".join(map(repr, missing[:5]))
                raise InvalidTensorError(
                    f"{len(missing)} planned tensor(s) were never added ({listed}"
                    f"{', ...' if len(missing) > 5 else ''}); nothing was written to {self.path}",
                    path=self.path)
            files = self._commit()
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        return files

    def abort(self) -> None:
        """Discard the output: remove every file written so far.  Idempotent."""
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._abort()
        finally:
            for d in reversed(self._created_dirs):
                try:
                    os.rmdir(d)
                except OSError:
                    pass  # not empty (someone else's files): keep it

    # ---- for subclasses ----------------------------------------------------------

    def _write(self, name, dt, shape, array):
        raise NotImplementedError

    def _commit(self) -> list:
        raise NotImplementedError

    def _abort(self):
        raise NotImplementedError

    def _check_open(self):
        if self._state != "open":
            raise WriterClosedError(f"the {self.format} output {self.path!r} is already "
                                    f"{self._state}", path=self.path)

    def _exists_error(self, existing: str, extra: str = ""):
        return OutputExistsError(f"{existing} already exists{extra}; pass overwrite=True to "
                                 f"replace it (nothing was written)", path=existing)

    def _array(self, name, dt, shape, array):
        """``array`` as a numpy array of ``dt``'s type and the planned shape."""
        import numpy as np

        try:
            arr = array if isinstance(array, np.ndarray) else np.asarray(array)
        except Exception as exc:  # numpy raises many types for unconvertible input
            raise InvalidTensorError(f"{name!r}: cannot convert {type(array).__name__} to an "
                                     f"array: {exc}", path=self.path, key=name) from None
        if arr.shape != shape:
            raise InvalidTensorError(f"tensor {name!r} is planned with shape {list(shape)} but "
                                     f"added with {list(arr.shape)}", path=self.path, key=name)
        if arr.dtype != dt.numpy:
            if arr.dtype.kind in "OSUV":
                raise InvalidTensorError(f"{name!r}: cannot store a {arr.dtype} array as "
                                         f"{dt.name}", path=self.path, key=name)
            try:
                arr = arr.astype(dt.numpy)
            except (TypeError, ValueError) as exc:
                raise InvalidTensorError(f"{name!r}: cannot convert {arr.dtype} to {dt.name}: "
                                         f"{exc}", path=self.path, key=name) from None
        return arr

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            if self._state == "open":
                self.commit()
        else:
            self.abort()
        return False

    def __del__(self):
        if getattr(self, "_state", None) == "open":
            try:
                self.abort()
            except Exception:
                pass

    def __repr__(self) -> str:
        return (f"<tfshard.formats.Sink {self.format} {self.path!r} {self._state}, "
                f"{len(self._added)}/{len(self._plan)} tensors>")


def create_sink(path, fmt: str | None = None, *, plan, max_shard_size: int | None = None,
                overwrite: bool = False) -> Sink:
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
    fmt = detect_format(path, for_output=True) if fmt is None else _check_format(fmt)
    if max_shard_size is not None:
        if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, int) \
                or max_shard_size < 1:
            raise InvalidTensorError(f"max_shard_size must be a positive number of bytes, got "
                                     f"{max_shard_size!r}")
        if fmt not in ("tf", "safetensors"):
            raise UnsupportedError(f"max_shard_size applies to tf and safetensors outputs, "
                                   f"not {fmt}", path=path)
    checked = _check_plan(plan, fmt, path)
    return _SINKS[fmt](path, checked, max_shard_size=max_shard_size, overwrite=bool(overwrite))


class _TFSink(Sink):
    """A TF checkpoint through :class:`tfshard.CheckpointWriter` (itself atomic);
    planned dtypes are stored as they are (``qint8``, ``variant``...)."""

    format = "tf"
    _writer = None

    def __init__(self, path, plan, *, max_shard_size, overwrite):
        from .writer import CheckpointWriter

        super().__init__(path, plan, max_shard_size=max_shard_size, overwrite=overwrite)
        self.prefix = path[:-len(".index")] if path.endswith(".index") else path
        if not overwrite and os.path.exists(index_filename(self.prefix)):
            raise self._exists_error(index_filename(self.prefix))
        self._created_dirs = _make_dirs(os.path.dirname(self.prefix))
        try:
            self._writer = CheckpointWriter(self.prefix, max_shard_size=max_shard_size)
        except BaseException:
            self.abort()
            raise

    def _write(self, name, dt, shape, array):
        import numpy as np

        if np.shape(array) != shape:
            raise InvalidTensorError(f"tensor {name!r} is planned with shape {list(shape)} but "
                                     f"added with {list(np.shape(array))}", path=self.path,
                                     key=name)
        self._writer.add(name, array, dtype=dt.name)

    def _commit(self):
        from .reader import Checkpoint

        index = index_filename(self.prefix)
        if not self.overwrite and os.path.exists(index):
            raise self._exists_error(index)
        self._writer.commit()
        with Checkpoint(self.prefix) as ckpt:
            n = ckpt.num_shards
        return [data_filename(self.prefix, i, n) for i in range(n)] + [index]

    def _abort(self):
        if self._writer is not None:
            self._writer.abort()


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
    """One safetensors file being written: its header, and each tensor's offset."""

    def __init__(self, final: str, names: list, plan: dict):
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
        raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self.data_start = 8 + len(raw)
        self.data_size = offset
        with builtins.open(self.path, "xb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)


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
    _handle = _handle_shard = None

    def __init__(self, path, plan, *, max_shard_size, overwrite):
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
        self._created_dirs = _make_dirs(directory)
        try:
            for final, names in zip(finals, groups):
                shard = _STShard(final, names, plan)
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
        if self._handle_shard is not shard:
            self._close_handle()
            self._handle = builtins.open(shard.path, "r+b")
            self._handle_shard = shard
        # Tensors are laid out by element size, so a tensor's place need not
        # follow the previous one's: seek there (holes are filled by later adds).
        self._handle.seek(shard.data_start + shard.offsets[name])
        if arr.nbytes:
            self._handle.write(_raw_bytes(arr))

    def _close_handle(self):
        if self._handle is not None:
            handle, self._handle, self._handle_shard = self._handle, None, None
            handle.close()

    def _commit(self):
        self._close_handle()
        for shard in self._shards:
            size = os.path.getsize(shard.path)
            if size != shard.data_start + shard.data_size:  # every byte written exactly once
                raise CorruptCheckpointError(
                    f"{shard.path} is {size} bytes after writing; expected "
                    f"{shard.data_start + shard.data_size}", path=shard.path)
        if not self.overwrite:
            existing = [p for p in self._outputs(self._finals) if os.path.lexists(p)]
            if existing:
                raise self._exists_error(existing[0])
        # No index may describe a mix of old and new shards, even for a moment.
        remove_file(self._old_index)
        for shard in self._shards:
            os.replace(shard.path, shard.final)
            shard.path = shard.final  # abort() removes it from here until the index exists
        files = [s.final for s in self._shards]
        if self._index is not None:
            weight_map = {name: os.path.basename(self._where[name].final)
                          for name in sorted(self._plan)}
            total = sum(s.data_size for s in self._shards)
            atomic_write(self._index, json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map},
                indent=2, ensure_ascii=False).encode("utf-8") + b"\n")
            files.append(self._index)
        for stale in self._outputs([]):
            if stale not in files:
                remove_file(stale)
        return files

    def _abort(self):
        self._close_handle()
        for shard in self._shards:
            remove_file(shard.path)


_SHARD_RE = re.compile(r".*-\d{5}-of-\d{5}" + re.escape(_ST_SUFFIX) + "$")


class _NpzSink(Sink):
    """An ``.npz`` archive (uncompressed, zip64), each tensor streamed into its
    member as it is added."""

    format = "npz"
    # Member data starts on this boundary (an alignment record in each local
    # header's extra field), so the reader's views of the mapped archive are
    # aligned for every dtype.
    _ALIGN = 64
    _file = _zip = _temp = None

    def __init__(self, path, plan, *, max_shard_size, overwrite):
        super().__init__(path, plan, max_shard_size=max_shard_size, overwrite=overwrite)
        _check_file_output(self, path, overwrite)
        self._created_dirs = _make_dirs(os.path.dirname(path))
        self._temp = temp_name(path)
        try:
            self._file = builtins.open(self._temp, "xb+")
            self._zip = zipfile.ZipFile(self._file, "w", zipfile.ZIP_STORED, allowZip64=True)
        except BaseException:
            self.abort()
            raise

    def _write(self, name, dt, shape, array):
        import numpy as np

        arr = self._array(name, dt, shape, array)
        member = name + ".npy"
        info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        # Local header: 30 bytes, the name, our extra record (id, size, 2-byte
        # alignment, padding) and the 20-byte zip64 record force_zip64 adds.
        # numpy pads its header to 64 bytes, so the array data is aligned too.
        encoded = member.encode("ascii" if member.isascii() else "utf-8")
        pad = -(self._file.tell() + 30 + len(encoded) + 6 + 20) % self._ALIGN
        info.extra = struct.pack("<HHH", 0xD935, 2 + pad, self._ALIGN) + b"\0" * pad
        with self._zip.open(info, "w", force_zip64=True) as fp:
            np.lib.format.write_array(fp, arr, allow_pickle=False)

    def _commit(self):
        self._zip.close()
        self._file.close()
        return [_install_file(self, self._temp, self.path)]

    def _abort(self):
        for closeable in (self._zip, self._file):
            if closeable is not None:
                try:
                    closeable.close()
                except Exception:
                    pass  # a half-written archive: it is removed below
        if self._temp is not None:
            remove_file(self._temp)


def _check_file_output(sink: Sink, path: str, overwrite: bool):
    if os.path.isdir(path):
        raise OutputExistsError(f"{path} is a directory; a {sink.format} output is a file",
                                path=path)
    if os.path.lexists(path) and not overwrite:
        raise sink._exists_error(path)


def _install_file(sink: Sink, temp: str, path: str) -> str:
    """Rename a finished temporary file into place (refusing to replace an output
    that appeared meanwhile unless overwriting)."""
    if not sink.overwrite and os.path.lexists(path):
        raise sink._exists_error(path)
    os.replace(temp, path)
    return path


# ---- npy directories ---------------------------------------------------------------

# Names Windows reserves whatever the extension; a file may not be called so.
_WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(10)}
                              | {f"LPT{i}" for i in range(10)})
_MAX_STEM_BYTES = 200  # file names are limited to 255 bytes on common filesystems
_UNSAFE_CHARS = frozenset('<>:"|?*')
# Control and format characters (NUL, newlines, bidi overrides that make a name
# display as another), lone surrogates, line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _npy_stem(name: str) -> str:
    """A readable file stem for tensor ``name`` that has no directory part:
    separators become ``__`` (``dense/kernel`` -> ``dense__kernel``); NUL,
    control characters, characters Windows refuses and lone surrogates become
    ``_``; no leading dot (so neither ``.`` nor ``..``, nor a hidden file)."""
    out = []
    for ch in name:
        if ch in "/\\":
            out.append("__")
        elif ch in _UNSAFE_CHARS or unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            out.append("_")
        else:
            out.append(ch)
    stem = "".join(out)
    if stem.startswith("."):
        stem = "_" + stem[1:]
    stem = stem.rstrip(" .") or "_"  # Windows drops trailing dots and spaces
    if stem.split(".")[0].upper() in _WINDOWS_RESERVED:
        stem = "_" + stem
    if len(stem.encode("utf-8")) > _MAX_STEM_BYTES:
        cut = stem.encode("utf-8")[:_MAX_STEM_BYTES - 9].decode("utf-8", "ignore")
        stem = f"{cut}~{_name_hash(name)}"
    return stem


def _name_hash(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _npy_filenames(names) -> dict:
    """``{tensor name: file name}``, distinct even on case- or normalization-
    insensitive filesystems (Windows, macOS)."""
    def folded(file):
        return unicodedata.normalize("NFC", file).casefold()

    taken: set = set()
    out = {}
    for name in names:
        stem = _npy_stem(name)
        candidate, n = stem, 1
        while folded(candidate + ".npy") in taken:
            # Deterministic: the hash of the name, then a counter if even that collides.
            candidate = f"{stem}~{_name_hash(name)}" + (f"~{n}" if n > 1 else "")
            n += 1
        out[name] = candidate + ".npy"
        taken.add(folded(out[name]))
    return out


def _is_npy_output(directory: str) -> bool:
    """Whether ``directory`` looks like what the npy sink writes (and so may be
    replaced by it): ``names.json`` and ``.npy`` files only."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return False
    return _NAMES_FILE in entries and all(
        e == _NAMES_FILE or (e.endswith(".npy") and os.path.isfile(os.path.join(directory, e)))
        for e in entries)


class _NpySink(Sink):
    """A directory of one ``.npy`` per tensor plus ``names.json``, written as a
    temporary directory renamed into place."""

    format = "npy"
    _temp = None

    def __init__(self, path, plan, *, max_shard_size, overwrite):
        # "out/" and "out" are the same directory; a temporary name is made beside it.
        path = path.rstrip(os.sep + (os.altsep or "")) or path
        super().__init__(path, plan, max_shard_size=max_shard_size, overwrite=overwrite)
        self._check_target()
        self._files = _npy_filenames(plan)
        self._created_dirs = _make_dirs(os.path.dirname(path))
        self._temp = temp_name(path)
        try:
            os.mkdir(self._temp)
        except BaseException:
            self.abort()
            raise

    def _check_target(self):
        path = self.path
        if not os.path.lexists(path):
            return
        if not self.overwrite:
            raise self._exists_error(path)
        if not os.path.isdir(path) or os.path.islink(path) or not _is_npy_output(path):
            raise OutputExistsError(
                f"{path} exists and is not an npy output (a directory of .npy files and "
                f"{_NAMES_FILE}); it is not replaced, even with overwrite=True", path=path)

    def _write(self, name, dt, shape, array):
        import numpy as np

        arr = self._array(name, dt, shape, array)
        with builtins.open(os.path.join(self._temp, self._files[name]), "xb") as f:
            np.lib.format.write_array(f, arr, allow_pickle=False)

    def _commit(self):
        table = {file: name for name, file in self._files.items()}
        # ASCII JSON: names from non-UTF-8 TF keys (lone surrogates) round-trip as escapes.
        with builtins.open(os.path.join(self._temp, _NAMES_FILE), "x", encoding="ascii") as f:
            json.dump(table, f, indent=1)
        self._check_target()
        old = None
        if os.path.lexists(self.path):
            old = temp_name(self.path)
            os.rename(self.path, old)
        try:
            os.rename(self._temp, self.path)
        except BaseException:
            if old is not None:
                os.rename(old, self.path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return [os.path.join(self.path, _NAMES_FILE)] + [
            os.path.join(self.path, self._files[n]) for n in self._plan]

    def _abort(self):
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)


# ---- torch output --------------------------------------------------------------------

class _TorchSink(Sink):
    """A ``torch.save``'d dict of tensors.  Not streaming: the tensors are kept (as
    copies where the input arrays are read-only views) until :meth:`commit`
    writes them all at once, so memory grows to the whole model."""

    format = "torch"
    _temp = None

    def __init__(self, path, plan, *, max_shard_size, overwrite):
        super().__init__(path, plan, max_shard_size=max_shard_size, overwrite=overwrite)
        self._tensors: dict = {}
        self._torch = _import_torch()
        _check_file_output(self, path, overwrite)

    def _write(self, name, dt, shape, array):
        import numpy as np

        torch = self._torch
        arr = self._array(name, dt, shape, array)
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            # torch.from_numpy shares memory: a read-only map must not become a
            # writable tensor, and torch cannot take negative strides.
            arr = np.array(arr, order="C", copy=True)
        if dt.name == "bfloat16":
            t = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        elif dt.name.startswith("float8"):
            t = torch.from_numpy(arr.view(np.uint8)).view(getattr(torch, dt.name))
        else:
            t = torch.from_numpy(arr)
        self._tensors[name] = t

    def _commit(self):
        self._created_dirs = _make_dirs(os.path.dirname(self.path))
        self._temp = temp_name(self.path)
        with builtins.open(self._temp, "xb") as f:
            self._torch.save({n: self._tensors[n] for n in self._plan}, f)
        self._tensors.clear()
        return [_install_file(self, self._temp, self.path)]

    def _abort(self):
        self._tensors.clear()
        if self._temp is not None:
            remove_file(self._temp)


_SINKS = {"tf": _TFSink, "safetensors": _SafetensorsSink, "npz": _NpzSink, "npy": _NpySink,
          "torch": _TorchSink}
