"""TF checkpoints as JAX arrays, named like ``safetensors.flax``::

    import tfshard.jax

    params = tfshard.jax.load_file("train/ckpt-100")        # {name: jax.Array}
    params = tfshard.jax.load_file("train/ckpt-100", device=jax.devices("gpu")[0])
    tfshard.jax.save_file(params, "out/model.ckpt")          # TF restores it

On the CPU, JAX takes a tensor's bytes in place where they start at a 64-byte
boundary of the data file (XLA's alignment); elsewhere it copies them.  The
host memory it is given is a private copy-on-write map of the file
(``MAP_PRIVATE``), so nothing JAX does (donated buffers included) can change
the file.

On an accelerator, each tensor is handed to ``jax.device_put`` as soon as its
checksum is checked; the transfers are asynchronous, so reading and checking
the next tensors overlaps them (JAX stages the bytes through its own pinned
buffers).  Host pages are dropped once a transfer is done.

JAX holds 64-bit values (float64, int64, uint64, complex128) only with
``jax.config.update("jax_enable_x64", True)``; without it, loading such
tensors raises :class:`~tfshard.UnsupportedError` rather than truncating them.

:func:`load` builds arrays with given shardings instead, each process reading
only the ranges of its own devices (see docs/multihost.md)::

    params = tfshard.jax.load("train/ckpt-100", NamedSharding(mesh, P(None, "model")))

This module imports JAX; nothing else in tfshard imports this module.
"""

from __future__ import annotations

try:
    import jax
except ImportError as exc:  # pragma: no cover - exercised in a child without jax
    raise ImportError("tfshard.jax needs JAX: pip install tfshard[jax]") from exc

import numpy as np

from . import dtypes, writer
from .errors import InvalidTensorError, UnsupportedError
from .frameworks import Framework, host_arrays
from ._jax_sharding import load
from .reader import Checkpoint

__all__ = ["load", "load_file", "save_file"]

# Bytes of device transfers left in flight (and read ahead of them) before the
# load waits for the oldest.
_IN_FLIGHT = 512 << 20

_WIDE = frozenset({"float64", "int64", "uint64", "complex128"})


def _x64() -> bool:
    return jax.dtypes.canonicalize_dtype(np.int64) == np.int64


class _Jax(Framework):
    name = "JAX"

    def unsupported(self, dt):
        if dt.kind in (dtypes.STRING, dtypes.VARIANT):
            return "JAX has no string type"
        if dt.name.startswith(("qint", "quint")):
            return "quantized types carry no scale or zero point JAX could use"
        if dt.name in _WIDE and not _x64():
            return ("JAX would truncate it to 32 bits; enable 64-bit values with "
                    "jax.config.update('jax_enable_x64', True)")
        return None

    def device(self, device):
        if device is None or isinstance(device, jax.Device):
            return device or jax.devices()[0]
        if not isinstance(device, str):
            raise UnsupportedError(f"expected a jax.Device or a name such as 'cpu' or 'gpu:0', "
                                   f"got {device!r}")
        platform, _, index = device.partition(":")
        platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
        try:
            found = jax.devices(platform)
            return found[int(index or 0)]
        except (RuntimeError, ValueError, IndexError) as exc:
            raise UnsupportedError(f"JAX has no device {device!r} ({exc})") from None

    def from_numpy(self, arr, dt, device):
        return jax.device_put(arr, device)

    def load(self, ckpt, infos, device, verify):
        if device.platform == "cpu":
            return super().load(ckpt, infos, device, verify)
        return _load_to_accelerator(ckpt, infos, device, verify)


FRAMEWORK = _Jax()


def _load_to_accelerator(ckpt: Checkpoint, infos: list, device, verify: bool) -> dict:
    """Hand each tensor to an asynchronous ``device_put`` as soon as it is checked,
    keeping at most :data:`_IN_FLIGHT` bytes in flight; host pages go once their
    transfer is done."""
    out, flight, flying = {}, [], 0
    for info, host in host_arrays(ckpt, infos, verify=verify, writable=False,
                                  lookahead=_IN_FLIGHT):
        out[info.name] = arr = jax.device_put(host, device)
        flight.append((info.name, arr, info.nbytes))
        flying += info.nbytes
        while flying > _IN_FLIGHT and len(flight) > 1:
            name, done, nbytes = flight.pop(0)
            done.block_until_ready()
            ckpt.release(name)
            flying -= nbytes
    for name, done, _ in flight:
        done.block_until_ready()
        ckpt.release(name)
    return out


def load_file(path, device=None, *, verify: bool = True, exclude=None,
              skip_unsupported: bool = False, storage_options=None) -> dict:
    """Load a TF checkpoint as ``{name: jax.Array}`` (``safetensors.flax.load_file``).

    Parameters
    ----------
    path : str or os.PathLike
        A checkpoint prefix, its ``.index`` file, a data shard, or a directory
        whose ``checkpoint`` file names the latest checkpoint.
    device : jax.Device or str, optional
        Where the arrays go: a ``jax.Device``, or ``"cpu"``, ``"gpu"``,
        ``"gpu:N"`` (``"cuda:N"``), ``"tpu:N"``; default JAX's default device.
    verify : bool
        Check every tensor's CRC-32C (in worker threads) before returning.
    exclude : iterable of str, or callable, optional
        Names to leave out, or a predicate ``name -> bool`` saying which.
    skip_unsupported : bool
        Leave out tensors JAX cannot hold instead of raising.
    storage_options : dict, optional
        For a URL: options for its fsspec filesystem (see docs/remote.md).

    Returns
    -------
    dict
        Every tensor but ``_CHECKPOINTABLE_OBJECT_GRAPH`` (restore metadata),
        in checkpoint key order, with TF's dtype (``bfloat16``, float8, int4
        and the rest as JAX names them) and shape.

    Raises
    ------
    UnsupportedError
        Before anything is read, naming every tensor JAX cannot hold (strings,
        quantized types, and 64-bit types unless ``jax_enable_x64`` is on),
        unless excluded; or for a device JAX does not have.
    ChecksumMismatchError, CorruptCheckpointError
        If stored bytes are damaged.
    """
    return FRAMEWORK.load_file(path, device, verify=verify, exclude=exclude,
                               skip_unsupported=skip_unsupported,
                               storage_options=storage_options)


def _to_numpy(name, value):
    try:
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            raise InvalidTensorError(f"{name!r} is spread over other processes' devices "
                                     f"(not fully addressable); gather it first", key=name)
        arr = np.asarray(jax.device_get(value))
    except InvalidTensorError:
        raise
    except Exception as exc:  # jax and numpy raise many types for values they cannot take
        raise InvalidTensorError(f"{name!r}: cannot read {type(value).__name__} as an array: "
                                 f"{exc}", key=name) from None
    return arr


def save_file(tensors, prefix, *, num_shards: int = 1, max_shard_size: int | None = None,
              alignment: int = writer.DEFAULT_ALIGNMENT, fsync: bool = False,
              storage_options=None) -> str:
    """Write ``{name: jax.Array}`` as a TF checkpoint (``safetensors.flax.save_file``).

    TensorFlow reads every value back bit for bit in the same dtype (bfloat16,
    float8, int4 and the rest).  Arrays come to the host one at a time.

    Parameters
    ----------
    tensors : mapping of str to jax.Array
        Arrays (numpy arrays are taken too).  Names are the checkpoint keys.
    prefix : str or os.PathLike
        Checkpoint prefix, committed atomically.
    num_shards, max_shard_size, alignment, fsync, storage_options
        As for :class:`tfshard.CheckpointWriter` (a URL prefix is uploaded).

    Returns
    -------
    str
        The prefix.

    Raises
    ------
    InvalidTensorError
        For a value that is not an array on this process's devices, or of a
        dtype TF has none for; nothing is written.
    """
    with writer.CheckpointWriter(prefix, num_shards=num_shards, max_shard_size=max_shard_size,
                                 alignment=alignment, fsync=fsync,
                                 storage_options=storage_options) as w:
        for name, value in tensors.items():
            w.add(name, _to_numpy(name, value))
    return w.prefix
