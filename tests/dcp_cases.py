"""The state dict the torch.distributed.checkpoint tests save, shared by the ranks
(tests/dcp_worker.py) and the test process that checks the result with TensorFlow."""

from __future__ import annotations

import zlib

import torch
from torch.distributed.tensor import Replicate, Shard

# name: (full shape, dtype, placements on a 1-D mesh; None: a plain tensor on every
# rank; "2d": [Shard(0), Shard(1)] on a 2x2 mesh, only with 4 ranks)
SAVE_CASES = {
    "plain": ((5, 3), torch.float32, None),
    "step": ((), torch.int64, None),                 # int64 scalar
    "rows": ((10, 6), torch.float32, [Shard(0)]),
    "cols": ((4, 9), torch.float64, [Shard(1)]),
    "bf16": ((8, 4), torch.bfloat16, [Shard(0)]),
    "one_row": ((1, 5), torch.float32, [Shard(0)]),  # only rank 0 holds a shard
    "repl": ((3, 3), torch.int32, [Replicate()]),
    "flags": ((7,), torch.bool, [Shard(0)]),
    "tiles": ((6, 8), torch.float32, "2d"),
}


def full_tensor(name: str, shape, dtype) -> torch.Tensor:
    """The same values on every rank and in the test process, from the name alone."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    values = torch.randn(shape, generator=g) * 100
    if dtype == torch.bool:
        return values > 0
    return values.to(dtype)
