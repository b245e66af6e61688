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
import os
from pathlib import Path

import numpy as np


def skips_forbidden() -> bool:
    """Under CI=true nothing may be skipped; TFSHARD_ALLOW_SKIPS=1 lifts that for what
    is optional (the frameworks), for the wheel checks that test without them.  The
    shared corpus and the system tools stay required in CI either way."""
    return bool(os.environ.get("CI")) and not os.environ.get("TFSHARD_ALLOW_SKIPS")

__all__ = [
    "SHARED_CORPUS",
    "skips_forbidden",
    "private_tmpfs_missing_reason",
    "corpus_missing_reason",
    "TF_TO_NUMPY_DTYPE",
    "SAVEV2_DTYPES",
    "corpus_checkpoints",
    "expected_numpy_dtype",
    "load_manifest",
    "random_savev2_checkpoint",
    "random_tf_tensor",
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


def private_tmpfs_missing_reason() -> str | None:
    """None if a tmpfs can be mounted in a private mount namespace (``unshare -rm``:
    root, or unprivileged user namespaces), else why not.  Tests use one for real
    full-disk and read-only file systems."""
    import shutil
    import subprocess

    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare(1) is not installed"
    probe = subprocess.run([unshare, "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True, text=True)
    if probe.returncode:
        return f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()}"
    return None


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


GOLDEN_DIR = Path(__file__).resolve().parent / "data" / "golden"
SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def corpus_checkpoints() -> tuple[list[tuple[str, str, str]], list[str]]:
    """Every checkpoint of the goldens and of ``../shared/corpus`` (tf-serving and
    realworld): ``([(id, prefix, kind), ...], [reasons a source is missing])``.

    ``kind`` is ``"v2"``, ``"v1"``, ``"v1+v2"`` or ``"index-only"`` (realworld's
    manifest says; the goldens and tf-serving are V2).  The shared corpus is optional
    outside CI; in CI (env ``CI`` set) a missing corpus raises instead of skipping.
    """
    found, missing = [], []
    for rel in sorted(load_manifest(GOLDEN_DIR / "manifest.json")):
        found.append((f"golden:{rel}", str(GOLDEN_DIR / rel), "v2"))
    for source in ("tf-serving", "realworld"):
        root = SHARED_CORPUS / source
        if not (root / "manifest.json").is_file():
            if os.environ.get("CI"):
                raise RuntimeError(f"CI is set but the shared corpus {root} is missing")
            missing.append(f"{root} is absent")
            continue
        for key, entry in sorted(load_manifest(root / "manifest.json").items()):
            if source == "realworld":  # {folder: {"kind", "prefix"}}
                found.append((f"{source}:{key}", str(root / entry["prefix"]), entry["kind"]))
            else:  # {prefix: {name: record}}
                found.append((f"{source}:{key}", str(root / key), "v2"))
    return found, missing


# dtypes tf.raw_ops.SaveV2 takes that random_tf_tensor makes.
SAVEV2_DTYPES = ["float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64",
                 "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128",
                 "string", "float8_e5m2", "float8_e4m3fn", "int4", "uint4"]


def random_tf_tensor(tf, rng, dtype: str, shape):
    """A TensorFlow tensor (or numpy array TF takes) of ``dtype`` and ``shape`` with
    random values covering the type's range."""
    tdt = tf.as_dtype(dtype)
    if dtype == "string":
        flat = [bytes(rng.integers(0, 256, size=rng.integers(0, 20), dtype=np.uint8))
                for _ in range(int(np.prod(shape)))]
        return tf.constant(np.array(flat, dtype=object).reshape(shape), dtype=tf.string)
    if dtype == "bool":
        return tf.constant(rng.integers(0, 2, size=shape).astype(bool))
    if dtype.startswith("complex"):
        return tf.complex(tf.constant(rng.normal(size=shape), tf.float64),
                          tf.constant(rng.normal(size=shape), tf.float64)).numpy().astype(dtype)
    if tdt.is_floating:
        return tf.cast(tf.constant(rng.normal(size=shape) * 4), tdt)
    if dtype in ("int4", "uint4"):
        lo, hi = (-8, 7) if dtype == "int4" else (0, 15)
        return tf.cast(tf.constant(rng.integers(lo, hi, size=shape, endpoint=True)), tdt)
    return tf.constant(rng.integers(tdt.min, tdt.max, size=shape, dtype=tdt.as_numpy_dtype,
                                    endpoint=True))


def random_savev2_checkpoint(tf, rng, prefix: str, max_tensors: int = 12) -> list[str]:
    """Write a checkpoint of 1 to ``max_tensors`` random tensors (random dtypes from
    :data:`SAVEV2_DTYPES`, ranks 0-3, empty dimensions included) with TF's own
    ``SaveV2`` kernel; returns the names."""
    names, tensors = [], []
    for i in range(int(rng.integers(1, max_tensors))):
        dtype = SAVEV2_DTYPES[int(rng.integers(len(SAVEV2_DTYPES)))]
        rank = int(rng.integers(0, 4))
        shape = [int(rng.integers(0, 5)) for _ in range(rank)]
        names.append(f"scope_{i % 3}/{dtype}_{i}")
        tensors.append(random_tf_tensor(tf, rng, dtype, shape))
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=tensors)
    return names
