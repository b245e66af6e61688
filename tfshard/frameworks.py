"""Checkpoint tensors handed to array frameworks: :func:`safe_open`, and what the
framework modules (:mod:`tfshard.torch`, :mod:`tfshard.jax`, :mod:`tfshard.tf`)
share.

``safe_open`` reads a TF checkpoint the way ``safetensors.safe_open`` reads a
``.safetensors`` file::

    with tfshard.safe_open("train/ckpt-100", framework="pt") as f:
        for name in f.keys():
            tensor = f.get_tensor(name)            # a torch.Tensor
        rows = f.get_slice("embeddings")[10:20]    # reads just those rows

Arrays reach a framework without a copy where it can take them in place:
host arrays are views of a private copy-on-write map of the data file
(``MAP_PRIVATE``), so a framework may write them and the file never changes.
A tensor whose bytes need converting, or whose offset in the file is not
aligned for its element type (TF packs tensors at any offset), is copied.

Each framework module defines a :class:`Framework` subclass; this module imports
no framework itself, only the module of the one asked for.
"""

from __future__ import annotations

import importlib
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from . import dtypes
from .errors import UnsupportedError
from .objectgraph import OBJECT_GRAPH_KEY
from .reader import Checkpoint

__all__ = ["safe_open", "SafeOpen", "TensorSlice", "Framework", "FRAMEWORKS"]

#: Framework names :func:`safe_open` accepts, and the module serving each.
FRAMEWORKS = {"np": "numpy", "numpy": "numpy", "pt": "torch", "torch": "torch",
              "jax": "jax", "flax": "jax", "tf": "tf", "tensorflow": "tf"}

# Verification runs in worker threads once a load has this many bytes to check;
# below it a thread costs more than it saves.
_PARALLEL_MIN_BYTES = 16 << 20
# Tensors are handed to a worker in batches of about this many bytes, so that
# checkpoints of many small tensors do not pay a task per tensor.
_BATCH_BYTES = 8 << 20
# Names an error lists per unsupported dtype.
_LISTED = 20


class Framework:
    """How one array framework takes checkpoint tensors.

    Subclasses (one per framework module) say which dtypes it holds and how a
    host array becomes one of its arrays; :meth:`load` may take a faster path
    for a device.
    """

    #: the name users see in messages ("torch")
    name = ""

    def unsupported(self, dt: dtypes.DType) -> str | None:
        """Why the framework cannot hold tensors of ``dt`` (None if it can)."""
        raise NotImplementedError

    def device(self, device):
        """``device`` as the framework names it; UnsupportedError if it has none such."""
        raise NotImplementedError

    def from_numpy(self, arr, dt: dtypes.DType, device):
        """A framework array of ``arr``'s values (``arr`` is writable and the caller's
        to give away: a view of a private map, or a copy)."""
        raise NotImplementedError

    def load(self, ckpt: Checkpoint, infos: list, device, verify: bool) -> dict:
        """``{name: array}`` of ``infos`` (``TensorInfo``) read from ``ckpt``."""
        return {info.name: self.from_numpy(arr, dtypes.by_name(info.dtype), device)
                for info, arr in host_arrays(ckpt, infos, verify=verify)}

    def load_file(self, path, device, *, verify: bool, exclude, skip_unsupported: bool,
                  storage_options=None) -> dict:
        """What every framework module's ``load_file`` does: the tensors :func:`select`
        picks, loaded onto ``device``."""
        dev = self.device(device)
        with Checkpoint(path, verify=verify, storage_options=storage_options) as ckpt:
            infos = select(ckpt, self, exclude=exclude, skip_unsupported=skip_unsupported)
            return self.load(ckpt, infos, dev, verify)


class _Numpy(Framework):
    name = "numpy"

    def unsupported(self, dt):
        return None

    def device(self, device):
        if device not in ("cpu", None):
            raise UnsupportedError(f"numpy arrays live on the CPU; got device={device!r}")
        return "cpu"

    def from_numpy(self, arr, dt, device):
        # numpy takes any offset, but other libraries handed the array may not.
        return arr if arr.flags.aligned else arr.copy()


def get_framework(name: str) -> Framework:
    """The :class:`Framework` for a :data:`FRAMEWORKS` name (importing its module).

    Raises
    ------
    UnsupportedError
        For an unknown name.
    ImportError
        If the framework is not installed (the message names the pip extra).
    """
    module = FRAMEWORKS.get(name) if isinstance(name, str) else None
    if module is None:
        raise UnsupportedError(f"unknown framework {name!r}; expected one of "
                               f"{', '.join(FRAMEWORKS)}")
    if module == "numpy":
        return _Numpy()
    return importlib.import_module(f".{module}", __package__).FRAMEWORK


# ---- choosing and reading tensors ---------------------------------------------------

def select(ckpt: Checkpoint, fw: Framework, *, exclude=None,
           skip_unsupported: bool = False) -> list:
    """The ``TensorInfo`` of every tensor a load of ``ckpt`` into ``fw`` takes, in key
    order: all but the object graph (restore metadata, not a weight) and those
    ``exclude`` names.

    ``exclude`` is an iterable of names or a callable ``name -> bool``.  Tensors
    ``fw`` cannot hold are an error naming all of them, raised before anything is
    read, unless ``skip_unsupported`` leaves them out.
    """
    if exclude is None:
        def excluded(name):
            return False
    elif callable(exclude):
        excluded = exclude
    else:
        names = {exclude} if isinstance(exclude, str) else set(exclude)
        excluded = names.__contains__
    infos = [i for i in ckpt.infos() if i.name != OBJECT_GRAPH_KEY and not excluded(i.name)]
    bad = [(i, why) for i in infos if (why := fw.unsupported(dtypes.by_name(i.dtype)))]
    if bad and not skip_unsupported:
        by_type: dict = {}
        for i, why in bad:
            by_type.setdefault((i.dtype, why), []).append(i.name)
        groups = [f"{dtype} ({why}): {', '.join(map(repr, names[:_LISTED]))}"
                  + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")
                  for (dtype, why), names in by_type.items()]
        raise UnsupportedError(
            f"{ckpt.prefix}: {len(bad)} tensor(s) cannot be loaded into {fw.name}: "
            f"{'; '.join(groups)}. Nothing was loaded; pass exclude=[...] naming them, or "
            f"skip_unsupported=True", path=ckpt.prefix, key=bad[0][0].name)
    if bad:
        skipped = {i.name for i, _ in bad}
        infos = [i for i in infos if i.name not in skipped]
    return infos


def check_supported(ckpt: Checkpoint, fw: Framework, name: str):
    """``(TensorInfo, DType)`` of tensor ``name``; UnsupportedError if ``fw`` cannot hold it."""
    info = ckpt.info(name)
    dt = dtypes.by_name(info.dtype)
    why = fw.unsupported(dt)
    if why:
        raise UnsupportedError(f"{ckpt.prefix}: tensor {name!r} is {dt.name}, which {fw.name} "
                               f"cannot hold: {why}", path=ckpt.prefix, key=name)
    return info, dt


def _batches(infos: list) -> list:
    out, current, size = [], [], 0
    for info in infos:
        current.append(info)
        size += info.nbytes
        if size >= _BATCH_BYTES:
            out.append(current)
            current, size = [], 0
    if current:
        out.append(current)
    return out


def host_arrays(ckpt: Checkpoint, infos: list, *, verify: bool, writable: bool = True,
                lookahead: int | None = None):
    """Yield ``(info, numpy array)`` for ``infos`` in order.

    Arrays are writable (views of the private copy-on-write map, or copies) unless
    ``writable=False`` (views of the read-only map, for a caller that only copies
    them elsewhere).  With ``verify``, CRC-32C checks run in worker threads ahead
    of the caller, which meanwhile consumes the arrays already checked; the first
    failure, in order, is raised.  ``lookahead`` bounds the bytes read ahead of
    the caller (None: no bound).
    """
    total = sum(info.nbytes for info in infos)
    workers = min(os.cpu_count() or 1, 8)
    if not verify or workers < 2 or total < _PARALLEL_MIN_BYTES:
        for info in infos:
            yield info, ckpt.read(info.name, verify=verify, writable=writable)
        return

    def read_batch(batch):
        return [ckpt.read(info.name, verify=True, writable=writable) for info in batch]

    batches = deque(_batches(infos))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="tfshard-verify")
    pending = deque()  # (batch, future, bytes)
    ahead = 0
    try:
        while batches or pending:
            while batches and (lookahead is None or ahead < lookahead or not pending):
                batch = batches.popleft()
                size = sum(info.nbytes for info in batch)
                pending.append((batch, pool.submit(read_batch, batch), size))
                ahead += size
            batch, future, size = pending.popleft()
            arrays = future.result()
            ahead -= size
            yield from zip(batch, arrays)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---- safe_open ------------------------------------------------------------------------

_BASIC = (int, slice, type(Ellipsis))


def _check_index(key, name: str):
    """``key`` if it is a basic index (ints, slices, ``...``), else UnsupportedError."""
    import numpy as np

    parts = key if isinstance(key, tuple) else (key,)
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (*_BASIC, np.integer)):
            raise UnsupportedError(
                f"get_slice({name!r})[...] takes basic indexes (integers, slices, ...); got "
                f"{type(part).__name__} {part!r}", key=name)
    return key


class TensorSlice:
    """A tensor not yet read: its shape and dtype, and ``[...]`` reading part of it.

    Returned by :meth:`SafeOpen.get_slice`.
    """

    def __init__(self, owner: SafeOpen, info, dt: dtypes.DType):
        self._owner, self._info, self._dt = owner, info, dt

    def get_shape(self) -> list:
        """The tensor's shape, as a list of int."""
        return list(self._info.shape)

    def get_dtype(self) -> str:
        """TensorFlow's name of the tensor's dtype (``"float32"``, ``"bfloat16"``...;
        safetensors says ``"F32"``, ``"BF16"``)."""
        return self._dt.name

    def __len__(self) -> int:
        if not self._info.shape:
            raise TypeError("len() of a scalar tensor")
        return self._info.shape[0]

    def __getitem__(self, key):
        """The part ``key`` selects (integers, slices and ``...``, as numpy reads them),
        in the framework's array type.  Only the bytes of the selected elements are
        read (for a partitioned tensor: the stored slices a leading row range
        meets); no checksum is checked, as it covers the whole tensor."""
        import numpy as np

        owner = self._owner
        key = _check_index(key, self._info.name)
        part = owner._ckpt.read(self._info.name, index=key)
        # A copy of just the selection: contiguous, writable, the caller's own.
        arr = np.array(part, order="C", copy=True)
        return owner._fw.from_numpy(arr, self._dt, owner._device)

    def __repr__(self) -> str:
        return f"<tfshard.TensorSlice {self._info.name!r} {self._dt.name} {self.get_shape()}>"


_Self = TypeVar("_Self", bound="SafeOpen")


class SafeOpen:
    """A checkpoint opened like ``safetensors.safe_open``; see :func:`safe_open`."""

    def __init__(self, path, framework: str = "np", device="cpu", *, verify: bool = True,
                 storage_options=None):
        fw = get_framework(framework)
        self._device = fw.device(device)
        self._fw = fw
        self._ckpt = Checkpoint(path, verify=verify, storage_options=storage_options)

    def keys(self) -> list:
        """Every tensor's name, sorted as the checkpoint stores them."""
        return list(self._ckpt)

    def get_tensor(self, name: str):
        """Tensor ``name`` as the framework's array, on the device; its CRC-32C is
        checked unless opened with ``verify=False``.

        Raises
        ------
        TensorNotFoundError
            If there is no such tensor.
        UnsupportedError
            If the framework cannot hold its dtype.
        """
        info, _ = check_supported(self._ckpt, self._fw, name)
        return self._fw.load(self._ckpt, [info], self._device, self._ckpt.verify)[info.name]

    def get_slice(self, name: str) -> TensorSlice:
        """Tensor ``name`` without reading it: ``get_shape()``, ``get_dtype()``, and
        ``[...]`` to read part of it.

        Raises
        ------
        TensorNotFoundError
            If there is no such tensor.
        UnsupportedError
            If the framework cannot hold its dtype.
        """
        info, dt = check_supported(self._ckpt, self._fw, name)
        return TensorSlice(self, info, dt)

    def metadata(self):
        """None: a TF checkpoint has no free-form metadata (safetensors' ``__metadata__``);
        each tensor's facts are in ``tfshard.open(path).info(name)``."""
        return None

    def close(self) -> None:
        """Release the files.  Idempotent; arrays already returned stay valid."""
        self._ckpt.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<tfshard.safe_open {self._ckpt.prefix!r} framework={self._fw.name}>"


def safe_open(path, framework: str = "np", device="cpu", *, verify: bool = True,
              storage_options=None) -> SafeOpen:
    """Open a TF checkpoint with ``safetensors.safe_open``'s interface.

    Parameters
    ----------
    path : str or os.PathLike
        A checkpoint prefix, its ``.index`` file, a data shard, or a directory
        whose ``checkpoint`` file names the latest checkpoint.
    framework : str
        ``"np"``/``"numpy"``, ``"pt"``/``"torch"``, ``"jax"``/``"flax"`` or
        ``"tf"``/``"tensorflow"``: the array type ``get_tensor`` returns.
    device : str
        Where arrays go: ``"cpu"``; for torch also ``"cuda"``, ``"cuda:N"`` or
        an int N; for JAX a ``jax.Device`` or ``"gpu"``, ``"gpu:N"``...; for
        TF ``"gpu:N"`` or a TF device string.
    verify : bool
        Check each whole tensor's CRC-32C when it is read.
    storage_options : dict, optional
        For a URL: options for its fsspec filesystem (see docs/remote.md).

    Returns
    -------
    SafeOpen
        A context manager with ``keys()``, ``get_tensor(name)``,
        ``get_slice(name)`` and ``metadata()``.

    Raises
    ------
    CheckpointNotFoundError
        If there is no checkpoint at ``path``.
    UnsupportedError
        For an unknown framework or device.
    ImportError
        If the framework is not installed.
    """
    return SafeOpen(path, framework, device, verify=verify, storage_options=storage_options)
