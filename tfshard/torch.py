"""TensorFlow checkpoints for PyTorch: ``torch.distributed.checkpoint`` storage.

Importing this module imports torch; ``import tfshard`` never does.
"""

from ._dcp import DCPReader, DCPWriter

__all__ = ["DCPReader", "DCPWriter"]
