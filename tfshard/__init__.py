"""tfshard: read and write TensorFlow checkpoints fast, without TensorFlow.

>>> import tfshard
>>> with tfshard.open("train/ckpt-100") as ckpt:      # doctest: +SKIP
...     kernel = ckpt["dense/kernel"]                  # zero-copy numpy view
"""

from .errors import (
    CheckpointNotFoundError,
    ChecksumMismatchError,
    CorruptCheckpointError,
    IncompatibleVersionError,
    InvalidTensorError,
    TensorNotFoundError,
    TFShardError,
    UnsupportedError,
    WriterClosedError,
)
from .paths import latest_checkpoint
from .reader import Checkpoint, TensorInfo, list_variables, load, load_variable, open
from .manager import CheckpointManager
from .parts import merge_parts
from .writer import DEFAULT_ALIGNMENT, CheckpointWriter, save

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
]
