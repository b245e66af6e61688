"""TensorFlow ``DataType`` codes and how tfshard maps them to numpy.

One table, used by the reader and the writer alike.  Codes and names follow
TensorFlow's ``types.proto``; ``_REF`` codes (base + 100) map to their base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

__all__ = ["DType", "by_code", "by_name", "describe_code"]

# How the bytes of one element are stored in a data file.
FIXED = "fixed"      # raw element bytes (TF's "memcpy-able" types)
SUBBYTE = "subbyte"  # one byte per element, value in the low `bits` bits
STRING = "string"    # varint lengths, masked CRC, concatenated bytes
VARIANT = "variant"  # serialized VariantTensorDataProto per element


@dataclass(frozen=True)
class DType:
    """One TensorFlow dtype.

    Attributes
    ----------
    code : int
        The ``DataType`` enum value stored in checkpoints.
    name : str
        TensorFlow's name (``tf.DType.name``): ``"float32"``, ``"qint8"``, ...
    numpy : numpy.dtype
        The numpy dtype tfshard returns (``object`` for strings and variants);
        resolved on first use, so listing a checkpoint never imports numpy.
    kind : str
        ``"fixed"``, ``"subbyte"``, ``"string"`` or ``"variant"``.
    swap : int
        Byte-swap unit in bytes for big-endian bundles (0: nothing to swap).
    bits : int
        Significant bits per element of sub-byte types (0 otherwise).
    """

    code: int
    name: str
    numpy_name: str = field(repr=False)
    kind: str = FIXED
    swap: int = 0
    bits: int = 0

    @cached_property
    def numpy(self):
        import numpy as np

        if self.numpy_name.startswith("ml_dtypes."):
            import ml_dtypes

            return np.dtype(getattr(ml_dtypes, self.numpy_name[len("ml_dtypes."):]))
        return np.dtype(self.numpy_name)

    @property
    def itemsize(self) -> int:
        """Bytes per element on disk (0 for variable-length types)."""
        return self.numpy.itemsize if self.kind in (FIXED, SUBBYTE) else 0


def _t(code, name, np_type, kind=FIXED, swap=0, bits=0):
    return DType(code, name, np_type, kind, swap, bits)


_TABLE = [
    _t(1, "float32", "float32", swap=4),
    _t(2, "float64", "float64", swap=8),
    _t(3, "int32", "int32", swap=4),
    _t(4, "uint8", "uint8"),
    _t(5, "int16", "int16", swap=2),
    _t(6, "int8", "int8"),
    _t(7, "string", "object", kind=STRING),
    _t(8, "complex64", "complex64", swap=4),
    _t(9, "int64", "int64", swap=8),
    _t(10, "bool", "bool"),
    # Quantized types carry no scale or zero point: plain integers on disk.
    _t(11, "qint8", "int8"),
    _t(12, "quint8", "uint8"),
    _t(13, "qint32", "int32", swap=4),
    _t(14, "bfloat16", "ml_dtypes.bfloat16", swap=2),
    _t(15, "qint16", "int16", swap=2),
    _t(16, "quint16", "uint16", swap=2),
    _t(17, "uint16", "uint16", swap=2),
    _t(18, "complex128", "complex128", swap=8),
    _t(19, "float16", "float16", swap=2),
    _t(21, "variant", "object", kind=VARIANT),
    _t(22, "uint32", "uint32", swap=4),
    _t(23, "uint64", "uint64", swap=8),
    _t(24, "float8_e5m2", "ml_dtypes.float8_e5m2"),
    _t(25, "float8_e4m3fn", "ml_dtypes.float8_e4m3fn"),
    _t(26, "float8_e4m3fnuz", "ml_dtypes.float8_e4m3fnuz"),
    _t(27, "float8_e4m3b11fnuz", "ml_dtypes.float8_e4m3b11fnuz"),
    _t(28, "float8_e5m2fnuz", "ml_dtypes.float8_e5m2fnuz"),
    _t(29, "int4", "ml_dtypes.int4", kind=SUBBYTE, bits=4),
    _t(30, "uint4", "ml_dtypes.uint4", kind=SUBBYTE, bits=4),
    _t(31, "int2", "ml_dtypes.int2", kind=SUBBYTE, bits=2),
    _t(32, "uint2", "ml_dtypes.uint2", kind=SUBBYTE, bits=2),
    _t(33, "float4_e2m1fn", "ml_dtypes.float4_e2m1fn", kind=SUBBYTE, bits=4),
]

_BY_CODE = {t.code: t for t in _TABLE}
_BY_NAME = {t.name: t for t in _TABLE}
#: code -> TensorFlow name, for the listing fast path
NAMES = {t.code: t.name for t in _TABLE}
# Names TF no longer uses for the resource type and for invalid codes, so an
# error can say what the code means.
_KNOWN_UNSUPPORTED = {0: "DT_INVALID", 20: "resource"}


def by_code(code: int) -> DType:
    """Return the DType for a ``DataType`` code.

    ``_REF`` codes (101-133) map to their base type.

    Raises
    ------
    KeyError
        If the code is not a tensor dtype tfshard can represent.
    """
    if 100 < code <= 133:
        code -= 100
    return _BY_CODE[code]


def describe_code(code: int) -> str:
    """A human-readable name for any code, known or not (for error messages)."""
    if code in _KNOWN_UNSUPPORTED:
        return f"{_KNOWN_UNSUPPORTED[code]} (code {code})"
    t = _BY_CODE.get(code - 100 if 100 < code <= 133 else code)
    return f"{t.name} (code {code})" if t else f"unknown dtype code {code}"


def by_name(name: str) -> DType:
    """Return the DType whose TensorFlow name is ``name`` (``"float32"``...)."""
    return _BY_NAME[name]

