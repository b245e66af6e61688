"""TF checkpoints as PyTorch tensors, named like ``safetensors.torch``::

    import tfshard.torch

    state = tfshard.torch.load_file("train/ckpt-100")           # {name: torch.Tensor}
    state = tfshard.torch.load_file("train/ckpt-100", device="cuda:0")
    tfshard.torch.save_file(model.state_dict(), "out/model.ckpt")  # TF restores it

On the CPU, tensors share memory with a private copy-on-write map of the data
file (``MAP_PRIVATE``): loading copies nothing, ``t.add_(1)`` works, and writes
copy only the pages they touch, never reaching the file.  A tensor is copied
where its bytes need converting or its offset in the file is not a multiple of
its element size (TF packs tensors densely: a complex128 may start at byte 20,
and torch faults writing through such a view).

For a CUDA device, the bytes are copied into pinned host buffers in chunks,
and each chunk's copy to the device runs on a side stream while the next
chunk is read; pages already copied are dropped from host memory, so a load
to the GPU needs little more host memory than its staging buffers.

Distributed training loads and saves through ``torch.distributed.checkpoint``
with :class:`DCPReader` and :class:`DCPWriter` (see docs/multihost.md)::

    dcp.load(state_dict, storage_reader=tfshard.torch.DCPReader("train/ckpt-100"))
    dcp.save(state_dict, storage_writer=tfshard.torch.DCPWriter("out/ckpt-1"))

This module imports torch; nothing else in tfshard imports this module.
"""

from __future__ import annotations

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised in a child without torch
    raise ImportError("tfshard.torch needs PyTorch: pip install tfshard[torch]") from exc

import numpy as np

from . import dtypes, writer
from .errors import InvalidTensorError, UnsupportedError
from .formats._base import _TORCH_TYPES
from .formats._torch import numpy_to_tensor, tensor_to_numpy
from .frameworks import Framework, host_arrays
from ._dcp import DCPReader, DCPWriter
from .reader import Checkpoint

__all__ = ["load_file", "save_file", "DCPReader", "DCPWriter"]

# Staging for device loads: buffers of this many bytes, one being filled while
# the others are copied to the device.
_CHUNK = 64 << 20
_BUFFERS = 3
# Bytes whose checksums worker threads may check ahead of the staging loop.
_LOOKAHEAD = 512 << 20


def _unsupported_reason(dt: dtypes.DType) -> str | None:
    if dt.name in _TORCH_TYPES:
        return None
    if dt.kind in (dtypes.STRING, dtypes.VARIANT):
        return "torch has no string type"
    if dt.name.startswith(("qint", "quint")):
        return ("torch's quantized tensors need a scale and zero point, which a checkpoint "
                "does not record")
    if dt.kind == dtypes.SUBBYTE:
        return "torch has no one-element-per-byte type for it"
    return "torch has no such dtype"


class _Torch(Framework):
    name = "torch"

    def unsupported(self, dt):
        return _unsupported_reason(dt)

    def device(self, device):
        if isinstance(device, int) and not isinstance(device, bool):
            device = f"cuda:{device}"  # as safetensors takes it
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise UnsupportedError(f"not a torch device: {device!r} ({exc})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UnsupportedError(f"device {device!r} asked for, but torch finds no CUDA device "
                                   f"(torch.cuda.is_available() is False)")
        return dev

    def from_numpy(self, arr, dt, device):
        t = _as_tensor(arr, dt)
        return t if device.type == "cpu" else t.to(device)

    def load(self, ckpt, infos, device, verify):
        total = sum(info.nbytes for info in infos)
        if device.type == "cuda" and total >= _CHUNK:
            return _load_staged(ckpt, infos, _CudaCopy(device, _CHUNK, _BUFFERS), verify)
        # Less than one staging buffer's worth (or not CUDA): pinning buffers would cost
        # more than it saves, so each tensor is copied from the host tensor directly.
        return super().load(ckpt, infos, device, verify)


FRAMEWORK = _Torch()


def _as_tensor(arr, dt: dtypes.DType):
    """A CPU tensor sharing ``arr``'s memory where it is aligned for the element type
    (a copy otherwise: torch faults writing through a misaligned view)."""
    if arr.dtype.itemsize and arr.ctypes.data % arr.dtype.itemsize:
        arr = arr.copy()
    return numpy_to_tensor(arr)


# ---- device loads ---------------------------------------------------------------------

class _CudaCopy:
    """The CUDA side of a staged load: pinned host buffers, a copy stream, events."""

    def __init__(self, device, chunk: int, count: int):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        # Memory the allocator hands out may still be in use by work queued on the
        # current stream; copies on the side stream start after it.
        self.stream.wait_stream(torch.cuda.current_stream(device))
        self.pinned = [torch.empty(chunk, dtype=torch.uint8, pin_memory=True)
                       for _ in range(count)]

    def empty(self, shape, dtype):
        return torch.empty(shape, dtype=dtype, device=self.device)

    def start(self, dst, src):
        """Begin copying pinned ``src`` into device ``dst``; returns what :meth:`wait` takes."""
        with torch.cuda.stream(self.stream):
            dst.copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return event

    def wait(self, event):
        event.synchronize()

    def finish(self):
        self.stream.synchronize()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)


def _load_staged(ckpt: Checkpoint, infos: list, copier, verify: bool) -> dict:
    """Load ``infos`` onto ``copier``'s device through its pinned buffers.

    Each tensor's bytes go, a chunk at a time, from the read-only map into the
    next free pinned buffer (this is where pages are read), then to the device
    on the copier's stream; a buffer is refilled only after its last copy has
    finished.  Checksums are checked by worker threads ahead of this loop.
    """
    out = {}
    pinned = [buf.numpy() for buf in copier.pinned]
    events = [None] * len(pinned)
    slot = 0
    for info, host in host_arrays(ckpt, infos, verify=verify, writable=False,
                                  lookahead=_LOOKAHEAD):
        dt = dtypes.by_name(info.dtype)
        dst = copier.empty(tuple(info.shape), getattr(torch, dt.name))  # TF's names
        src = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
        flat = dst.reshape(-1).view(torch.uint8)
        for start in range(0, src.size, pinned[0].size):
            n = min(pinned[0].size, src.size - start)
            if events[slot] is not None:
                copier.wait(events[slot])
            pinned[slot][:n] = src[start:start + n]
            events[slot] = copier.start(flat[start:start + n], copier.pinned[slot][:n])
            slot = (slot + 1) % len(pinned)
        out[info.name] = dst
        ckpt.release(info.name)  # its bytes are in pinned memory or on the device now
    copier.finish()
    return out


# ---- public API -----------------------------------------------------------------------

def load_file(path, device="cpu", *, verify: bool = True, exclude=None,
              skip_unsupported: bool = False, storage_options=None) -> dict:
    """Load a TF checkpoint as ``{name: torch.Tensor}`` (``safetensors.torch.load_file``).

    Parameters
    ----------
    path : str or os.PathLike
        A checkpoint prefix, its ``.index`` file, a data shard, or a directory
        whose ``checkpoint`` file names the latest checkpoint.
    device : str, torch.device or int
        ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"``, or N for ``"cuda:N"``.
    verify : bool
        Check every tensor's CRC-32C (in worker threads, on the cores the
        caller does not use) before returning.
    exclude : iterable of str, or callable, optional
        Names to leave out, or a predicate ``name -> bool`` saying which.
    skip_unsupported : bool
        Leave out tensors torch cannot hold instead of raising.
    storage_options : dict, optional
        For a URL: options for its fsspec filesystem (see docs/remote.md).

    Returns
    -------
    dict
        Every tensor but ``_CHECKPOINTABLE_OBJECT_GRAPH`` (restore metadata),
        in checkpoint key order, with TF's dtype (``torch.bfloat16``,
        ``torch.float8_e4m3fn``, ``torch.uint16``...) and shape.  CPU tensors
        are writable and share memory with a private copy-on-write map of the
        file where aligned; writing them never changes the file.

    Raises
    ------
    UnsupportedError
        Before anything is read, naming every tensor torch cannot hold
        (strings, quantized and 2/4-bit types, float8_e4m3b11fnuz), unless
        excluded; or for a CUDA device when torch has none.
    ChecksumMismatchError, CorruptCheckpointError
        If stored bytes are damaged.
    """
    return FRAMEWORK.load_file(path, device, verify=verify, exclude=exclude,
                               skip_unsupported=skip_unsupported,
                               storage_options=storage_options)


def _to_numpy(name, t):
    """A tensor's values as the numpy array tfshard writes (ml_dtypes for bfloat16
    and float8), brought to the host."""
    if not isinstance(t, torch.Tensor):
        raise InvalidTensorError(f"{name!r}: expected a torch.Tensor, got {type(t).__name__}",
                                 key=name)
    if t.layout != torch.strided or t.is_quantized:
        raise InvalidTensorError(f"{name!r}: cannot save a {t.layout} "
                                 f"{'quantized ' if t.is_quantized else ''}tensor", key=name)
    if str(t.dtype).replace("torch.", "") not in _TORCH_TYPES:
        raise InvalidTensorError(f"{name!r}: {t.dtype} has no TensorFlow dtype", key=name)
    return tensor_to_numpy(t.detach().cpu().contiguous())


def save_file(tensors, prefix, *, num_shards: int = 1, max_shard_size: int | None = None,
              alignment: int = writer.DEFAULT_ALIGNMENT, fsync: bool = False,
              storage_options=None) -> str:
    """Write ``{name: torch.Tensor}`` as a TF checkpoint (``safetensors.torch.save_file``).

    TensorFlow reads every value back bit for bit, in the same dtype:
    bfloat16, the float8 types, uint16/32/64, complex, bool and the rest.

    Parameters
    ----------
    tensors : mapping of str to torch.Tensor
        Dense tensors on any device; device tensors are brought to the host one
        at a time.  Names are the checkpoint keys.
    prefix : str or os.PathLike
        Checkpoint prefix (``out/model.ckpt`` writes ``out/model.ckpt.index``
        and its data files), committed atomically.
    num_shards, max_shard_size, alignment, fsync, storage_options
        As for :class:`tfshard.CheckpointWriter` (a URL prefix is uploaded).

    Returns
    -------
    str
        The prefix.

    Raises
    ------
    InvalidTensorError
        For a value that is not a dense tensor, or a dtype TF has none for
        (``torch.float8_e8m0fnu``, ``torch.uint4``, ``torch.complex32``...);
        nothing is written.
    """
    items = list(tensors.items())
    options = dict(num_shards=num_shards, max_shard_size=max_shard_size, alignment=alignment,
                   fsync=fsync, storage_options=storage_options)
    if all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for _, t in items):
        # Views of the tensors' memory: the writer copies nothing more.
        return writer.save(prefix, {name: _to_numpy(name, t) for name, t in items}, **options)
    # Device tensors come to the host one at a time, so host memory stays near one.
    with writer.CheckpointWriter(prefix, **options) as w:
        for name, t in items:
            w.add(name, _to_numpy(name, t))
    return w.prefix
