"""TensorFlow checkpoints into sharded ``jax.Array``: :func:`load`.

Each tensor becomes a ``jax.Array`` with the caller's sharding through
``jax.make_array_from_callback``, which asks this process only for the index
ranges of its addressable devices; each range is read straight from the
memory-mapped data files (a row range, or a strided view for other
dimensions), so in a multi-process JAX job every process reads only its own
shards, and no process ever holds a whole tensor it does not keep.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax

from . import dtypes
from .conversion import rename_map
from .errors import InvalidTensorError, TensorNotFoundError, TFShardError
from .frameworks import select
from .reader import Checkpoint
from .slices import assemble, bounds, covering

__all__ = ["load"]


def _sharding_for(shardings, key: str, info, np_dtype):
    if isinstance(shardings, jax.sharding.Sharding):
        return shardings
    if isinstance(shardings, Mapping):
        return shardings[key]
    sharding = shardings(key, info.shape, np_dtype)
    if sharding is not None and not isinstance(sharding, jax.sharding.Sharding):
        raise InvalidTensorError(f"shardings({key!r}, {list(info.shape)}, {np_dtype}) returned "
                                 f"{sharding!r}; expected a jax.sharding.Sharding or None",
                                 key=key)
    return sharding


def _read_region(ckpt: Checkpoint, info, index, verify: bool):
    """The elements of tensor ``info`` selected by ``index`` (a tuple of unit-step
    slices, as JAX hands them out), touching only their bytes."""
    region = [s.indices(d)[:2] for s, d in zip(index, info.shape)]
    whole = all(lo == 0 and hi == d for (lo, hi), d in zip(region, info.shape))
    if not info.slices:
        # A whole read checks the CRC (once per tensor); a range cannot.
        return ckpt.read(info.name, verify=verify) if whole else ckpt.read(info.name, index)
    # A partitioned TF1 variable: copy the region out of the stored slices it meets,
    # each a view of the map of which only the region's part is read.
    boxes = [bounds(s, info.shape) for s in info.slices]
    pieces = covering(boxes, region, f"{ckpt.prefix}: tensor {info.name!r}",
                      path=ckpt.prefix, key=info.name)
    values = (ckpt.read_slice(info.name, info.slices[k], verify=verify and inter == boxes[k])
              for k, inter in pieces)
    return assemble(region, boxes, pieces, values, dtypes.by_name(info.dtype).numpy)


class _Regions:
    """The callback of one tensor: JAX asks once per device, and devices that
    replicate a shard ask for the same range, which is read only once."""

    def __init__(self, ckpt: Checkpoint, info, verify: bool):
        self.ckpt, self.info, self.verify = ckpt, info, verify
        self.seen: dict = {}

    def __call__(self, index):
        key = tuple(s.indices(d)[:2] for s, d in zip(index, self.info.shape))
        value = self.seen.get(key)
        if value is None:
            value = self.seen[key] = _read_region(self.ckpt, self.info, index, self.verify)
        return value


def load(path, shardings, *, rename=None, verify: bool = True,
         skip_unsupported: bool = False) -> dict:
    """Read a TensorFlow checkpoint into ``jax.Array`` values with the given shardings.

    >>> mesh = jax.make_mesh((2, 4), ("data", "model"))               # doctest: +SKIP
    >>> params = tfshard.jax.load("train/ckpt-100", NamedSharding(mesh, P(None, "model")))

    Each array is built with ``jax.make_array_from_callback``, which asks this
    process only for the index ranges of its own (addressable) devices; each
    range is read straight from the memory-mapped files, and devices holding
    the same range share one read.

    Parameters
    ----------
    path : str or os.PathLike
        A checkpoint prefix, its ``.index`` file or a directory with a
        ``checkpoint`` state file (as :func:`tfshard.open`).
    shardings : jax.sharding.Sharding, mapping, or callable
        One sharding for every tensor; a mapping ``{name: Sharding}`` (exactly
        the tensors it names are loaded); or a callable ``(name, shape, dtype)
        -> Sharding or None`` (None leaves the tensor out).  ``name`` is the
        name after ``rename``; ``dtype`` is a numpy dtype.
    rename : sequence of str, or callable, optional
        ``"REGEX=REPLACEMENT"`` rules applied in order (as ``tfshard rename``),
        or a callable ``name -> new name or None``.
    verify : bool
        Check the CRC-32C of each tensor (or stored slice) a process reads whole
        (a range cannot be checked against a checksum of the whole tensor).
    skip_unsupported : bool
        Leave out tensors JAX cannot hold instead of raising.

    Returns
    -------
    dict
        ``{name: jax.Array}``, each with exactly the sharding asked for, in
        checkpoint key order; the object graph (restore metadata) is left out.
        On CPU devices JAX may keep a shard as a view of the memory-mapped file
        instead of a copy.

    Raises
    ------
    UnsupportedError
        Before anything is read, naming the tensors JAX cannot hold (strings,
        quantized types, and 64-bit types unless ``jax_enable_x64`` is on), as
        :func:`load_file` does, unless ``skip_unsupported``.
    TensorNotFoundError
        If the mapping names a tensor the checkpoint does not hold.
    InvalidTensorError
        If a sharding does not fit its tensor, or ``rename`` merges two names.
    CorruptCheckpointError, CheckpointNotFoundError
        As for :func:`tfshard.open` and :meth:`tfshard.Checkpoint.read`.
    """
    from .jax import FRAMEWORK   # the dtype rules of load_file (imported once it exists)

    out = {}
    with Checkpoint(path, verify=verify) as ckpt:
        keys = rename_map(list(ckpt), rename)
        if isinstance(shardings, Mapping):
            by_key = {key: name for name, key in keys.items()}
            missing = [k for k in shardings if k not in by_key]
            if missing:
                raise TensorNotFoundError(
                    f"{ckpt.prefix} holds no tensor {', '.join(map(repr, missing[:10]))} (after "
                    f"renaming, if any)", path=ckpt.prefix, key=missing[0])
            keys = {by_key[k]: k for k in shardings}
        infos = select(ckpt, FRAMEWORK, exclude=lambda name: name not in keys,
                       skip_unsupported=skip_unsupported)
        for info in infos:
            key = keys[info.name]
            dt = dtypes.by_name(info.dtype)
            sharding = _sharding_for(shardings, key, info, dt.numpy)
            if sharding is None:
                continue
            try:
                out[key] = jax.make_array_from_callback(
                    info.shape, sharding, _Regions(ckpt, info, verify), dtype=dt.numpy)
            except TFShardError:
                raise
            except (ValueError, TypeError, IndexError) as exc:  # JAX's, for a misfit
                raise InvalidTensorError(
                    f"tensor {key!r} ({info.dtype} {list(info.shape)}) cannot take the sharding "
                    f"{sharding}: {exc}", key=key) from exc
            # Shards JAX copied need the mapped pages no more, and shards it kept as
            # views of the map fault them back in when read: either way the process
            # keeps at most one tensor's pages of the file resident.
            ckpt.release(info.name)
    return out
