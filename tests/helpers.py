"""Shared helpers for tests that compare checkpoint contents against a manifest.

The manifests (``tests/data/golden/manifest.json`` and
``../shared/corpus/tf-serving/manifest.json``) are JSON objects of the form::

    {"<prefix relative to the manifest's folder>": {
        "<tensor name>": {"dtype": "float32", "shape": [2, 3], "sha256": "<hex>",
                          "numpy_dtype": "float32"},   # numpy_dtype: golden manifest only
        ...},
     ...}

``sha256`` follows one convention everywhere (see :func:`tensor_sha256`);
``tests/data/make_goldens.py`` uses this very module to write the golden manifest, so the
manifest writer and the tests cannot drift apart.

This module must not import TensorFlow or tfshard.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

__all__ = [
    "SHARED_CORPUS",
    "corpus_missing_reason",
    "TF_TO_NUMPY_DTYPE",
    "expected_numpy_dtype",
    "load_manifest",
    "tensor_sha256",
]


#: Real checkpoints kept beside the repository (``../shared/corpus``), never copied into it.
#: Optional for users; under CI=true every test that needs them must find them.
SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def corpus_missing_reason(name: str) -> str | None:
    """Why the shared corpus folder ``name`` (``"tf-serving"``, ``"realworld"``) cannot be
    used, or None when it is there: the reason of a skip outside CI."""
    folder = SHARED_CORPUS / name
    if (folder / "manifest.json").is_file():
        return None
    return (f"the shared corpus {folder} is absent (real checkpoints that live beside the "
            f"repository, not in it)")


def tensor_sha256(array) -> str:
    """Hex sha256 of a tensor's value, by the manifest convention.

    * Fixed-size dtypes: sha256 of the C-order bytes of the array
      (``np.ascontiguousarray(a).tobytes()``), i.e. the in-memory element encoding.
    * DT_STRING (numpy ``object`` arrays of ``bytes``, what TensorFlow's reader returns):
      sha256 over, for each element in C order, its length as an 8-byte little-endian
      unsigned integer followed by its bytes.

    A bare ``bytes`` object is taken as a scalar string tensor (TensorFlow's
    ``CheckpointReader.get_tensor`` returns one for a scalar DT_STRING; tfshard returns a
    0-d object array). A fixed-width ``S``/``U`` array or an object array holding
    anything other than ``bytes`` raises ``TypeError``: they cannot represent arbitrary byte strings
    faithfully (``S`` drops trailing NULs), so hashing them would hide reader bugs.
    """
    if isinstance(array, bytes):
        a = np.empty((), dtype=object)
        a[()] = array
    else:
        a = np.asarray(array)
    h = hashlib.sha256()
    if a.dtype.kind in "SU":
        raise TypeError(f"string tensors must be object arrays of bytes, got dtype {a.dtype}")
    if a.dtype.kind == "O":
        for element in a.ravel(order="C"):
            if not isinstance(element, bytes):
                raise TypeError(
                    f"string tensor elements must be bytes, got {type(element).__name__}"
                )
            h.update(len(element).to_bytes(8, "little"))
            h.update(element)
    else:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# numpy dtype (``str(array.dtype)``) that TensorFlow's ``CheckpointReader.get_tensor`` returns
# for each TF dtype name. The golden manifest records it per tensor as "numpy_dtype"; this
# table is the fallback for manifests that lack it (tf-serving). Note TF returns the
# quantized types as their plain integer storage type.
TF_TO_NUMPY_DTYPE = {
    "float32": "float32",
    "float64": "float64",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
    "complex64": "complex64",
    "complex128": "complex128",
    "qint8": "int8",
    "quint8": "uint8",
    "qint16": "int16",
    "quint16": "uint16",
    "qint32": "int32",
    "float8_e5m2": "float8_e5m2",
    "float8_e4m3fn": "float8_e4m3fn",
    "float8_e4m3fnuz": "float8_e4m3fnuz",
    "float8_e4m3b11fnuz": "float8_e4m3b11fnuz",
    "float8_e5m2fnuz": "float8_e5m2fnuz",
    "int4": "int4",
    "uint4": "uint4",
    "int2": "int2",
    "uint2": "uint2",
    "float4_e2m1fn": "float4_e2m1fn",
    "string": "object",
}


def expected_numpy_dtype(record: dict) -> str | None:
    """The ``str(dtype)`` a reader's array should have for one manifest record, or None
    when unknown (variant tensors)."""
    if "numpy_dtype" in record:
        return record["numpy_dtype"]
    return TF_TO_NUMPY_DTYPE.get(record["dtype"])


def load_manifest(path) -> dict[str, dict[str, dict]]:
    """Read a manifest; returns {prefix relative to the manifest's folder: {name: record}}."""
    with open(Path(path), encoding="utf-8") as f:
        return json.load(f)
