"""PyTorch files as a format adapter: ``torch.save``'d dicts of tensors, loaded
with ``weights_only=True`` (never running pickled code) and mapped where the
file allows.  torch is imported only when a torch file is opened or written;
output is not streaming (``torch.save`` writes one dict at commit)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

from .. import dtypes
from .._util import create_exclusive, remove_file, temp_name
from ..errors import CorruptCheckpointError, UnsupportedError
from ._base import (
    _TORCH_TYPES,
    Sink,
    Source,
    _check_file_output,
    _install_file,
    _make_dirs,
    _open_binary,
)


# ---- torch ---------------------------------------------------------------------------

def _import_torch():
    try:
        import torch
    except ImportError:
        raise UnsupportedError("reading or writing PyTorch files needs torch: install torch "
                               "(pip install torch)") from None
    return torch


def tensor_to_numpy(t):
    """A numpy array sharing the memory of the CPU tensor ``t`` (any strides), in the
    numpy dtype tfshard uses for ``t``'s TF dtype (ml_dtypes' bfloat16 and float8
    types, which numpy and torch.Tensor.numpy lack).  ``t`` must not need grad.

    Raises KeyError when the dtype has no TF equivalent.
    """
    torch = _import_torch()
    t = t.resolve_conj().resolve_neg()
    dt = dtypes.by_name(str(t.dtype).replace("torch.", ""))
    if _bits_only(dt.numpy):
        return t.view(getattr(torch, f"uint{8 * dt.itemsize}")).numpy().view(dt.numpy)
    return t.numpy()


def numpy_to_tensor(arr):
    """A CPU tensor sharing the memory of the writable numpy array ``arr`` (the
    inverse of :func:`tensor_to_numpy`; torch names its dtypes as TF does)."""
    torch = _import_torch()
    if _bits_only(arr.dtype):
        bits = torch.from_numpy(arr.view(f"u{arr.dtype.itemsize}"))
        return bits.view(getattr(torch, arr.dtype.name))
    return torch.from_numpy(arr)


def _bits_only(dtype) -> bool:
    """Whether numpy ``dtype`` is an ml_dtypes type (bfloat16, float8...), which torch
    exchanges with numpy only as the raw bits of an unsigned integer of its size."""
    return dtype.type.__module__.split(".")[0] == "ml_dtypes"


class _TorchSource(Source):
    """A ``torch.save``'d dict of tensors, loaded with ``weights_only=True`` (no
    arbitrary unpickling) and ``mmap=True`` (zero-copy, where the file is in
    torch's zip format; older files are read whole).  Nested dicts are flattened
    with ``.`` joining keys; other values are skipped and listed in ``skipped``."""

    format = "torch"

    def __init__(self, path):
        super().__init__(path)
        torch = _import_torch()
        # Checked (and refused if not a regular file) without blocking, before torch
        # opens it by name.
        _open_binary(path, "torch file").close()
        obj = self._load(torch, path)
        if not isinstance(obj, Mapping):
            raise UnsupportedError(f"{path} holds a {type(obj).__name__}; expected a dict of "
                                   f"tensors (a state dict)", path=path)
        self._tensors: dict = {}
        stack = [("", obj)]  # iterative: nesting depth is the file's choice
        while stack:
            prefix, mapping = stack.pop()
            for key, value in mapping.items():
                name = f"{prefix}.{key}" if prefix else str(key)
                if isinstance(value, torch.Tensor):
                    why = self._unreadable(torch, value)
                    if why:
                        self.skipped.append((name, why))
                    elif name in self._tensors:
                        raise UnsupportedError(f"{path}: two entries flatten to the name "
                                               f"{name!r}", path=path, key=name)
                    else:
                        self._tensors[name] = value
                elif isinstance(value, Mapping):
                    stack.append((name, value))
                else:
                    self.skipped.append((name, type(value).__name__))
        self._sorted = sorted(self._tensors)
        if self.skipped:
            listed = ", ".join(f"{n} ({why})" for n, why in self.skipped[:10])
            more = f" and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
            warnings.warn(f"{path}: skipped {len(self.skipped)} entries that are not readable "
                          f"tensors: {listed}{more}", stacklevel=3)

    @staticmethod
    def _load(torch, path):
        import pickle

        def load(use_mmap):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)

        try:
            try:
                return load(True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return load(False)  # the legacy (pre-1.6) format cannot be mapped
        except pickle.UnpicklingError as exc:
            if "weights only" in str(exc).lower():
                raise UnsupportedError(
                    f"{path} holds objects other than tensors and containers; tfshard loads "
                    f"torch files with weights_only=True and never runs pickled code "
                    f"({str(exc).splitlines()[0]})", path=path) from None
            raise CorruptCheckpointError(f"{path}: cannot load: {exc}", path=path) from None
        except OSError:
            raise
        except Exception as exc:  # torch reports corrupt files with many types
            raise CorruptCheckpointError(f"{path}: cannot load as a torch file: "
                                         f"{type(exc).__name__}: {exc}", path=path) from None

    @staticmethod
    def _unreadable(torch, t) -> str | None:
        if t.layout != torch.strided:
            return f"{t.layout} tensor"
        if t.is_quantized:
            return "quantized tensor"
        name = str(t.dtype).replace("torch.", "")
        if name not in _TORCH_TYPES:
            return f"dtype {t.dtype}"
        return None

    def _names(self):
        return self._sorted

    def _tensor(self, name):
        t = self._tensors.get(name) if isinstance(name, str) else None
        if t is None:
            raise self._not_found(name)
        return t

    def _info(self, name):
        t = self._tensor(name)
        return str(t.dtype).replace("torch.", ""), tuple(int(d) for d in t.shape)

    def _nbytes(self, name):
        t = self._tensor(name)
        return t.numel() * t.element_size()

    def _read(self, name):
        import numpy as np

        arr = np.asarray(tensor_to_numpy(self._tensor(name).detach()))
        arr.flags.writeable = False  # as every source's arrays: views of the file
        return arr


# ---- torch output --------------------------------------------------------------------

class _TorchSink(Sink):
    """A ``torch.save``'d dict of tensors.  Not streaming: the tensors are kept (as
    copies where the input arrays are read-only views) until :meth:`commit`
    writes them all at once, so memory grows to the whole model."""

    format = "torch"
    writes_at_commit = True
    _temp = None

    def __init__(self, path, plan, *, max_shard_size, overwrite):
        super().__init__(path, plan, max_shard_size=max_shard_size, overwrite=overwrite)
        self._tensors: dict = {}
        self._torch = _import_torch()
        _check_file_output(self, path, overwrite)

    def _write(self, name, dt, shape, array):
        import numpy as np

        arr = self._array(name, dt, shape, array)
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            # torch.from_numpy shares memory: a read-only map must not become a
            # writable tensor, and torch cannot take negative strides.
            arr = np.array(arr, order="C", copy=True)
        self._tensors[name] = numpy_to_tensor(arr)

    def _commit(self):
        self._created_dirs = _make_dirs(os.path.dirname(self.path))
        self._temp = temp_name(self.path)
        with os.fdopen(create_exclusive(self._temp), "wb") as f:
            out = f if self._on_write is None else _CountingWriter(f, self._on_write)
            try:
                self._torch.save({n: self._tensors[n] for n in self._plan}, out)
            except Exception as exc:
                # torch reports a failed write() of its zip writer as a RuntimeError
                # ("unexpected pos ..."), the OSError only in the exception chain.
                cause = _os_error_in(exc)
                if cause is not None and cause is not exc:
                    raise cause from None
                raise
        self._tensors.clear()
        return [_install_file(self, self._temp, self.path)]

    def _abort(self):
        self._tensors.clear()
        if self._temp is not None:
            remove_file(self._temp)


class _CountingWriter:
    """A binary file that reports each write's size: torch.save has no progress hook."""

    def __init__(self, file, on_write):
        self._file, self._on_write = file, on_write

    def write(self, data) -> int:
        n = self._file.write(data)
        self._on_write(n)
        return n

    def flush(self):
        self._file.flush()


def _os_error_in(exc):
    """The first OSError in ``exc``'s chain of causes and contexts, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
