"""tfshard: read and write TensorFlow checkpoints fast, without TensorFlow.

>>> import tfshard
>>> with tfshard.open("train/ckpt-100") as ckpt:      # doctest: +SKIP
...     kernel = ckpt["dense/kernel"]                  # zero-copy numpy view
"""

from typing import TYPE_CHECKING

from .errors import (
    CheckpointChangedError,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    CorruptCheckpointError,
    CorruptGraphError,
    IncompatibleVersionError,
    InvalidTensorError,
    NodeNotFoundError,
    NothingSelectedError,
    OutputExistsError,
    ReadFailedError,
    RemoteStorageError,
    RestoreError,
    TensorNotFoundError,
    TFShardError,
    UnsupportedError,
    WriteFailedError,
    WriterClosedError,
)
from .paths import latest_checkpoint
from .reader import Checkpoint, TensorInfo, list_variables, load, load_variable, open

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "TensorInfo",
    "open",
    "load",
    "list_variables",
    "load_variable",
    "latest_checkpoint",
    "save",
    "CheckpointWriter",
    "CheckpointManager",
    "merge_parts",
    "DEFAULT_ALIGNMENT",
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
    "graph",
    "load_checkpoint",
    "CheckpointReader",
    "safe_open",
    "convert",
    "extract",
    "merge",
    "rename",
    "strip",
    "diff",
    "verify",
    "average",
    "reshard",
]

# Writing and conversion load on first use: they import numpy and the format
# adapters, which listing a checkpoint (`tfshard ls`) never needs.
_LAZY = {
    "save": "writer", "CheckpointWriter": "writer", "DEFAULT_ALIGNMENT": "writer",
    "CheckpointManager": "manager", "merge_parts": "parts",
    "load_checkpoint": "checkpoint_reader", "CheckpointReader": "checkpoint_reader",
    "safe_open": "frameworks",
    **{name: "conversion" for name in
       ("convert", "extract", "merge", "rename", "strip", "diff", "verify", "average",
        "reshard")},
}

if TYPE_CHECKING:
    from .checkpoint_reader import CheckpointReader, load_checkpoint  # noqa: F401
    from .frameworks import safe_open  # noqa: F401
    from .conversion import (  # noqa: F401
        average,
        convert,
        diff,
        extract,
        merge,
        rename,
        reshard,
        strip,
        verify,
    )
    from .manager import CheckpointManager  # noqa: F401
    from .parts import merge_parts  # noqa: F401
    from .writer import DEFAULT_ALIGNMENT, CheckpointWriter, save  # noqa: F401


def __getattr__(name):
    if name == "graph":  # the subpackage (.meta files, SavedModels), on first use
        import importlib

        return importlib.import_module(".graph", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tfshard' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | {"graph"})
