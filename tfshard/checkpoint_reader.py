"""A drop-in for TensorFlow's checkpoint reader, without TensorFlow.

``tfshard.load_checkpoint(path)`` returns a :class:`CheckpointReader` with the
methods of the object ``tf.train.load_checkpoint`` returns, giving the same
results and the same Python types::

    reader = tfshard.load_checkpoint("train/ckpt-100")   # was tf.train.load_checkpoint
    reader.get_variable_to_shape_map()    # {name: [dims...]}
    reader.get_variable_to_dtype_map()    # {name: DType}: .name, .as_numpy_dtype as tf.DType's
    w = reader.get_tensor("dense/kernel")  # numpy array (a numpy scalar, or bytes, for scalars)
    "dense/kernel" in reader               # TF's reader has only has_tensor()

Arrays are writable and belong to the caller, as TF's copies do, but cost no
copy: each is a view of a private copy-on-write map of the data file (see
:meth:`tfshard.Checkpoint.read` with ``writable=True``), so writing one never
changes the file or another array.
"""

from __future__ import annotations

from typing import TypeVar

from . import dtypes
from .errors import UnsupportedError
from .reader import Checkpoint

__all__ = ["load_checkpoint", "CheckpointReader", "DType"]


class DType:
    """A tensor's dtype as TensorFlow's reader reports it (a stand-in for ``tf.DType``).

    Compares equal to the ``tf.DType`` of the same type, to another
    :class:`DType` of it, to its name (``reader_dtype == "float32"``) and to its
    numpy type (``numpy.float32``; a quantized type to none, as in TF), and
    hashes like its name, so ``tf.as_dtype(d)`` and ``tf.float32 == d`` work
    where TensorFlow is installed.

    Attributes
    ----------
    name : str
        TensorFlow's name: ``"float32"``, ``"bfloat16"``, ``"string"``, ``"qint8"``...
    as_numpy_dtype : type or numpy.dtype
        What ``tf.DType.as_numpy_dtype`` gives: the numpy scalar type
        (``numpy.float32``, ``ml_dtypes.bfloat16``...), ``object`` for
        strings (variants have none: UnsupportedError), and for quantized types TF's one-field structured
        dtype (``numpy.dtype([("qint8", "i1")])``).
    as_datatype_enum : int
        The ``DataType`` code stored in checkpoints.
    """

    __slots__ = ("_dt",)

    def __init__(self, dt: dtypes.DType):
        self._dt = dt

    @property
    def name(self) -> str:
        return self._dt.name

    @property
    def as_datatype_enum(self) -> int:
        return self._dt.code

    @property
    def as_numpy_dtype(self):
        import numpy as np

        dt = self._dt
        if dt.kind == dtypes.VARIANT:
            raise UnsupportedError("variant tensors have no numpy type (tf.variant's "
                                   "as_numpy_dtype fails too)")
        if dt.kind == dtypes.STRING:
            return object
        if self.is_quantized:
            return np.dtype([(dt.name, dt.numpy)])
        return dt.numpy.type

    @property
    def is_quantized(self) -> bool:
        return self._dt.name.startswith(("qint", "quint"))

    @property
    def is_floating(self) -> bool:
        return self._dt.name.startswith(("float", "bfloat"))

    @property
    def is_complex(self) -> bool:
        return self._dt.name.startswith("complex")

    @property
    def is_integer(self) -> bool:
        return self._dt.name.startswith(("int", "uint"))

    @property
    def is_bool(self) -> bool:
        return self._dt.name == "bool"

    @property
    def is_unsigned(self) -> bool:
        return self._dt.name.startswith("uint")  # as TF: not bool, not the quantized types

    @property
    def size(self) -> int:
        """Bytes per element, as ``tf.DType.size``: 1 for sub-byte types, 0 for strings
        and variants."""
        return self._dt.itemsize

    def __eq__(self, other) -> bool:
        if isinstance(other, DType):
            return other._dt.code == self._dt.code
        if isinstance(other, str):
            return other == self._dt.name
        code = getattr(other, "as_datatype_enum", None)  # tf.DType
        if isinstance(code, int):
            return code == self._dt.code
        import numpy as np

        if isinstance(other, (type, np.dtype)):  # numpy.float32, ml_dtypes.bfloat16...
            try:
                return np.dtype(other).name == self._dt.name
            except TypeError:
                pass
        return NotImplemented

    def __ne__(self, other) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(self._dt.name)

    def __repr__(self) -> str:
        return f"<dtype: {self._dt.name!r}>"


_DTYPE_OBJECTS: dict = {}


def _dtype_object(name: str) -> DType:
    d = _DTYPE_OBJECTS.get(name)
    if d is None:
        d = _DTYPE_OBJECTS[name] = DType(dtypes.by_name(name))
    return d


def _name(name) -> str:
    # TF's reader takes bytes names too.
    if isinstance(name, (bytes, bytearray)):
        return bytes(name).decode("utf-8", "surrogateescape")
    return name


_Self = TypeVar("_Self", bound="CheckpointReader")


class CheckpointReader:
    """Read a checkpoint the way ``tf.train.load_checkpoint``'s reader does.

    Create with :func:`load_checkpoint`.  Also a context manager (TF's reader
    is not) whose exit releases the files; arrays already returned stay valid.

    Parameters
    ----------
    path : str or os.PathLike
        As for :func:`tfshard.open`: a prefix, its ``.index`` file, a data
        shard, or a directory whose ``checkpoint`` file names the latest
        checkpoint; V1 checkpoints included.
    verify : bool
        Check each tensor's CRC-32C when it is first read, as TF does.
    storage_options : dict, optional
        For a URL path: options for fsspec's filesystem.
    """

    def __init__(self, path, *, verify: bool = True, storage_options=None):
        self._ckpt = Checkpoint(path, verify=verify, storage_options=storage_options)

    @property
    def prefix(self) -> str:
        """The resolved checkpoint prefix."""
        return self._ckpt.prefix

    def get_tensor(self, name):
        """The value of tensor ``name``, typed as TF's reader types it.

        Returns
        -------
        numpy.ndarray, numpy scalar or bytes
            A writable array the caller owns; for a scalar, a numpy scalar
            (``numpy.float32(...)``, ``ml_dtypes.bfloat16(...)``) or, for a
            string, ``bytes``.  Quantized tensors come back as their integer
            storage type, as from TF.

        Raises
        ------
        TensorNotFoundError
            If there is no such tensor (a ``KeyError``; TF raises
            ``tf.errors.NotFoundError``).
        UnsupportedError
            For a variant tensor: TF's reader cannot convert those to numpy
            either (``tfshard.open(path)[name]`` gives their serialized bytes).
        ChecksumMismatchError, CorruptCheckpointError
            If the stored bytes are damaged.
        """
        name = _name(name)
        info = self._ckpt.info(name)
        if info.dtype == "variant":
            raise UnsupportedError(
                f"tensor {name!r} of {self._ckpt.prefix} is a variant tensor, which has no "
                f"numpy type (TF's reader refuses it too); tfshard.open(path)[name] gives its "
                f"serialized VariantTensorDataProto bytes", path=self._ckpt.prefix, key=name)
        arr = self._ckpt.read(name, writable=True)
        if arr.ndim == 0:
            return arr[()]  # a numpy scalar, or bytes for a string, as TF returns
        if not arr.flags.aligned:  # TF packs tensors at any offset; TF's arrays are aligned
            arr = arr.copy()
        return arr

    def has_tensor(self, name) -> bool:
        """Whether the checkpoint holds a tensor ``name`` (str or bytes)."""
        return _name(name) in self._ckpt

    __contains__ = has_tensor

    def get_variable_to_shape_map(self) -> dict:
        """``{name: [dim, ...]}`` of every tensor, as TF's reader returns it."""
        return {info.name: list(info.shape) for info in self._ckpt.infos()}

    def get_variable_to_dtype_map(self) -> dict:
        """``{name: DType}`` of every tensor (see :class:`DType`)."""
        return {info.name: _dtype_object(info.dtype) for info in self._ckpt.infos()}

    def close(self) -> None:
        """Release the files.  Idempotent; arrays already returned stay valid."""
        self._ckpt.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<tfshard.CheckpointReader {self._ckpt.prefix!r}>"


def load_checkpoint(path, *, verify: bool = True, storage_options=None) -> CheckpointReader:
    """Open a checkpoint like ``tf.train.load_checkpoint``, without TensorFlow.

    Parameters
    ----------
    path : str or os.PathLike
        A checkpoint prefix, its ``.index`` file, a data shard, or a directory
        (its ``checkpoint`` state file names the latest checkpoint); or a URL
        (``gs://bucket/train``), read through fsspec.
    verify : bool
        Check each tensor's CRC-32C on its first read (TF always does).
    storage_options : dict, optional
        For a URL: options for fsspec's filesystem.

    Returns
    -------
    CheckpointReader

    Raises
    ------
    CheckpointNotFoundError
        If there is no checkpoint at ``path``.
    CorruptCheckpointError
        If its index is malformed.
    """
    return CheckpointReader(path, verify=verify, storage_options=storage_options)
