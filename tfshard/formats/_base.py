"""What every format adapter shares: the format names and the dtypes each
format holds, path helpers and :func:`detect_format`, the :class:`Source` and
:class:`Sink` base classes, and the plan checks that refuse, before any file is
created, a tensor a format cannot hold.  It imports no format module; the
per-format classes live in the sibling modules and :mod:`tfshard.formats`
dispatches to them."""

from __future__ import annotations

import contextlib
import difflib
import glob
import json
import os
from typing import TypeVar

from .. import dtypes
from .._util import discard_file, open_regular, read_error, write_failed
from ..errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    InvalidTensorError,
    OutputExistsError,
    TensorNotFoundError,
    TFShardError,
    UnsupportedError,
    WriterClosedError,
)
from ..paths import graph_file_hint, resolve_prefix


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


def format_by_name(path: str) -> str | None:
    """The format a name's suffix says (safetensors, npz, torch), or None."""
    low = path.lower()
    if low.endswith(_ST_INDEX_SUFFIX) or low.endswith(_ST_SUFFIX):
        return "safetensors"
    if low.endswith(".npz"):
        return "npz"
    if low.endswith(_TORCH_SUFFIXES):
        return "torch"
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
    by_name = format_by_name(path)
    if by_name is not None:
        return by_name
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
    hint = graph_file_hint(path) if not for_output and os.path.isfile(path) else None
    if hint is not None:
        raise UnsupportedError(hint, path=path)
    if path.lower().endswith(_FOREIGN_SUFFIXES):
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
    """A regular file opened for reading (a FIFO or device is refused without
    blocking); every failure a TFShardError (errno kept)."""
    return open_regular(path, what, missing=f"{what} {path} does not exist or is not a file")


@contextlib.contextmanager
def read_errors(path: str, what: str):
    """Turn an OSError escaping a read of ``path`` into a TFShardError."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, TFShardError):
            raise
        raise read_error(exc, path, what) from None


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

_Source = TypeVar("_Source", bound="Source")
_Sink = TypeVar("_Sink", bound="Sink")


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
        with read_errors(self.path, f"the {self.format} model"):
            return self._info(name)

    def nbytes(self, name: str) -> int:
        """Bytes of tensor ``name``'s data as stored (what reading it touches).

        Raises
        ------
        TensorNotFoundError
            If there is no such tensor.
        """
        self._check_open()
        with read_errors(self.path, f"the {self.format} model"):
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
        with read_errors(self.path, f"the {self.format} model"):
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

    def __enter__(self: _Source) -> _Source:
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
        problem = unsupported(fmt, name, dt.name)
        if problem:
            raise UnsupportedError(f"{problem} (nothing was written)", path=path, key=name)
        out[name] = (dt, shape)
    return out


def unsupported(fmt: str, name: str, dtype_name: str) -> str | None:
    """Why format ``fmt`` cannot store tensor ``name`` of TF dtype ``dtype_name``, or None
    when it can."""
    if not _holds(fmt, dtype_name):
        can = [f for f in FORMATS if _holds(f, dtype_name)]
        return (f"tensor {name!r} is {dtype_name}, which the {fmt} format cannot hold; write "
                f"it to {' or '.join(can)}, cast it, or leave it out")
    problem = _NAME_RULES.get(fmt, lambda n: None)(name)
    if problem:
        return f"tensor name {name!r} cannot be stored in {fmt}: {problem}"
    return None


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
    _on_write = None
    #: Whether the format's bytes are written at :meth:`commit` rather than by
    #: :meth:`add` (torch files); a progress display then counts them through the
    #: ``on_write`` callback of :meth:`commit`.
    writes_at_commit = False

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
        with self._writing(f"writing tensor {name!r}"):
            self._write(name, dt, shape, array)
        self._added.add(name)

    @contextlib.contextmanager
    def _writing(self, doing: str):
        """A failed write aborts the output (nothing of it is kept; what was at the
        path stays) and raises WriteFailedError naming the output and ``doing``."""
        try:
            yield
        except OSError as exc:
            self.abort()
            if isinstance(exc, TFShardError):
                raise
            raise write_failed(exc, self.path, doing) from None

    def commit(self, on_write=None) -> list:
        """Finish the output and move it into place.

        Parameters
        ----------
        on_write : callable, optional
            Called with a number of bytes as the commit writes them (only formats
            that write at commit, see :attr:`writes_at_commit`, call it).

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
            self._on_write = on_write
            with self._writing(f"finishing the {self.format} output"):
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

    def __enter__(self: _Sink) -> _Sink:
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


def _check_file_output(sink: Sink, path: str, overwrite: bool):
    if os.path.isdir(path):
        raise OutputExistsError(f"{path} is a directory; a {sink.format} output is a file",
                                path=path)
    if os.path.lexists(path) and not overwrite:
        raise sink._exists_error(path)


def _install_file(sink: Sink, temp: str, path: str) -> str:
    """Rename a finished temporary file into place (refusing to replace an output
    that appeared meanwhile unless overwriting).

    The rename replaces the old file atomically.  A hard link to the old file
    is made first, so the rename only drops a name and the old file's blocks
    are freed by deleting that link afterwards, outside the replacement (where
    the file system has no hard links, the rename frees them itself).
    """
    if not sink.overwrite and os.path.lexists(path):
        raise sink._exists_error(path)
    keep = None
    if os.path.isfile(path) and not os.path.islink(path):
        keep = f"{temp}.old"
        try:
            os.link(path, keep)
        except OSError:
            keep = None
    try:
        os.replace(temp, path)
    finally:
        if keep is not None:
            discard_file(keep)
    return path
