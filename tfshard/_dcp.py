"""TensorFlow checkpoints as ``torch.distributed.checkpoint`` (DCP) storage.

:class:`DCPReader` is a DCP ``StorageReader``: its storage metadata is built
from the TF index (a partitioned TF1 variable becomes one chunk per stored
slice), and every rank copies only the elements of its own read items out of
the memory-mapped data files: row ranges for ``Shard(0)``, strided views for
other dimensions.  :class:`DCPWriter` is a DCP ``StorageWriter``: each rank
writes its items as one part checkpoint (a DTensor shard as a TF slice of the
full tensor), and the coordinator merges the parts into one TF checkpoint with
:func:`tfshard.merge_parts`.

DCP's contract (torch 2.13, ``torch/distributed/checkpoint/storage.py``):
reading calls ``reset``, ``read_metadata``, ``set_up_storage_reader``,
``prepare_local_plan`` on every rank, ``prepare_global_plan`` on the
coordinator, then ``read_data`` on every rank; writing calls ``reset``,
``set_up_storage_writer``, ``prepare_local_plan`` on every rank,
``prepare_global_plan`` on the coordinator, ``write_data`` on every rank and
``finish`` on the coordinator, only when every rank's ``write_data`` succeeded.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import uuid
from typing import NamedTuple

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, SavePlan, WriteItemType
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from . import dtypes
from ._util import TEMP_MARK, remove_file, temp_name
from .conversion import rename_map
from .errors import InvalidTensorError, UnsupportedError
from .formats._base import _TORCH_TYPES
from .formats._torch import numpy_to_tensor, tensor_to_numpy
from .parts import merge_parts
from .paths import index_filename, resolve_prefix
from .reader import Checkpoint
from .slices import bounds, covering, prod
from .writer import DEFAULT_ALIGNMENT, CheckpointWriter

__all__ = ["DCPReader", "DCPWriter"]

# TF dtype name -> torch dtype, for the dtypes torch holds (torch names them as TF
# does).  Quantized TF types are left out, as tfshard.torch.load_file leaves them:
# a checkpoint records no scale or zero point for them.
_TORCH_DTYPES = {name: getattr(torch, name) for name in _TORCH_TYPES}
# torch dtype -> the TF dtype a writer stores it as.
_TF_DTYPES = {t: name for name, t in _TORCH_DTYPES.items()}


class _Stored(NamedTuple):
    """Where one DCP chunk lives: the TF tensor, the stored slice of a partitioned
    one (its extents as the index lists them; None for a plain tensor) and the
    shape of what is stored."""

    name: str
    extents: tuple | None
    shape: tuple


def _copy_into(target: torch.Tensor, src: np.ndarray, name: str, path: str) -> None:
    """Copy the region ``src`` (numpy, TF's dtype) into ``target`` (a view of a
    state-dict tensor): straight from the map on CPU, else through one staged
    copy (other devices, or a target of another dtype, which torch converts)."""
    if tuple(target.shape) != src.shape:
        raise InvalidTensorError(
            f"{path}: the read of {name!r} has shape {list(src.shape)}, but its place in the "
            f"state dict has shape {list(target.shape)}", path=path, key=name)
    if target.device.type == "cpu" and _TF_DTYPES.get(target.dtype) == src.dtype.name:
        np.copyto(tensor_to_numpy(target), src, casting="no")
    else:
        target.copy_(numpy_to_tensor(np.array(src, order="C")))


class DCPReader(StorageReader):
    """Load a TensorFlow checkpoint with ``torch.distributed.checkpoint.load``.

    >>> import torch.distributed.checkpoint as dcp          # doctest: +SKIP
    >>> dcp.load(state_dict, storage_reader=tfshard.torch.DCPReader("train/ckpt-100"))

    The state dict may hold plain tensors and DTensors with any ``Shard(d)`` /
    ``Replicate()`` placements; every rank reads only the elements its own
    tensors (or local shards) need, straight from the memory-mapped data files.
    Every host must see the checkpoint's files (a shared or network file system).

    Parameters
    ----------
    path : str or os.PathLike
        A checkpoint prefix, its ``.index`` file or a directory with a
        ``checkpoint`` state file (as :func:`tfshard.open`).  A
        ``checkpoint_id`` given to ``dcp.load`` replaces it.
    rename : sequence of str, or callable, optional
        Maps TF names to state-dict keys: ``"REGEX=REPLACEMENT"`` rules applied
        in order (as ``tfshard rename``), or a callable ``name -> key`` that may
        return None to leave a tensor out.  Two names made one are refused.
    verify : bool
        Check the CRC-32C of each stored tensor or slice a rank reads whole (a
        partial read cannot check a checksum that covers the whole tensor).

    Attributes
    ----------
    bytes_read : int
        Tensor bytes this rank copied out of the data files in the last
        ``read_data`` (the elements of its read items, counted as they are read).
    skipped : list of (str, str)
        Tensors the storage metadata leaves out, with the reason, as
        :func:`tfshard.torch.load_file` refuses them: strings and variants,
        quantized types (no scale or zero point is recorded), 4- and 2-bit types.

    Raises
    ------
    CheckpointNotFoundError, CorruptCheckpointError
        From opening the checkpoint, which happens here so that a bad path fails
        on the calling rank before DCP's collectives start.
    InvalidTensorError
        If ``rename`` maps two tensors to one key.
    """

    def __init__(self, path, *, rename=None, verify: bool = True):
        super().__init__()
        self.path = os.fspath(path)
        self.rename = rename
        self.verify = bool(verify)
        self.bytes_read = 0
        self.skipped: list = []
        self.load_id = uuid.uuid4().hex
        self._storage: dict = {}
        self._ckpt: Checkpoint | None = None
        self._metadata = self._build_metadata()

    # ---- StorageReader ---------------------------------------------------

    def reset(self, checkpoint_id=None) -> None:
        if checkpoint_id is not None and os.fspath(checkpoint_id) != self.path:
            self.path = os.fspath(checkpoint_id)
            self.close()
            self._metadata = None
        self.load_id = uuid.uuid4().hex
        self.bytes_read = 0

    def read_metadata(self) -> Metadata:
        if self._metadata is None:
            self._metadata = self._build_metadata()
        md = self._metadata
        md.storage_meta = StorageMeta(checkpoint_id=self.path, load_id=self.load_id)
        return md

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args,
                              **kwargs) -> None:
        if not isinstance(metadata.storage_data, dict):
            raise UnsupportedError(f"DCPReader({self.path!r}) was given storage metadata it "
                                   f"did not build", path=self.path)
        self._storage = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list) -> list:
        return plans

    def read_data(self, plan: LoadPlan, planner) -> Future:
        ckpt = self._checkpoint()
        self.bytes_read = 0
        touched = set()
        for req in plan.items:
            stored = self._storage.get(req.storage_index)
            if stored is None:
                raise UnsupportedError(
                    f"{self.path}: DCP asked for {req.storage_index.fqn!r} at offset "
                    f"{list(req.storage_index.offset or ())}, which this checkpoint does not "
                    f"hold", path=self.path, key=req.storage_index.fqn)
            src = self._read(ckpt, stored, req.storage_offsets, req.lengths)
            target = planner.resolve_tensor(req).detach()
            _copy_into(target, src, stored.name, self.path)
            planner.commit_tensor(req, target)
            self.bytes_read += src.nbytes
            touched.add(stored.name)
        # The values now live in the state dict: let the mapped pages go, so the
        # process does not also keep its part of the checkpoint resident.
        for name in touched:
            ckpt.release(name)
        fut: Future = Future()
        fut.set_result(None)
        return fut

    @property
    def checkpoint_id(self):
        """The checkpoint this reader loads."""
        return self.path

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        try:
            return os.path.isfile(index_filename(resolve_prefix(os.fspath(checkpoint_id))))
        except (TypeError, ValueError, OSError):
            return False

    # ---- tfshard ----------------------------------------------------------

    def close(self) -> None:
        """Release the checkpoint's files (reopened on the next load)."""
        if self._ckpt is not None:
            self._ckpt.close()
            self._ckpt = None

    def _checkpoint(self) -> Checkpoint:
        if self._ckpt is None:
            self._ckpt = Checkpoint(self.path, verify=self.verify)
        return self._ckpt

    def _build_metadata(self) -> Metadata:
        ckpt = self._checkpoint()
        from .torch import _unsupported_reason  # the rule tfshard.torch.load_file follows

        self.skipped = []
        infos = {}
        for info in ckpt.infos():
            if info.dtype in _TORCH_DTYPES:
                infos[info.name] = info
            else:
                why = _unsupported_reason(dtypes.by_name(info.dtype))
                self.skipped.append((info.name, f"{info.dtype}: {why}"))
        keys = rename_map(list(infos), self.rename)
        tensors, storage = {}, {}
        for name, key in keys.items():
            info = infos[name]
            if info.slices:
                boxes = [bounds(s, info.shape) for s in info.slices]
                # Slices that overlap or leave gaps would load some elements twice
                # or leave them unset: refuse them, as TF does.
                covering(boxes, [(0, d) for d in info.shape], f"{ckpt.prefix}: tensor {name!r}",
                         path=ckpt.prefix, key=name)
                stored = [(s, box) for s, box in zip(info.slices, boxes)
                          if prod(hi - lo for lo, hi in box)]
            else:
                stored = [(None, [(0, d) for d in info.shape])]
            chunks = []
            for extents, box in stored:
                offsets = torch.Size(lo for lo, _ in box)
                chunks.append(ChunkStorageMetadata(offsets=offsets,
                                                   sizes=torch.Size(hi - lo for lo, hi in box)))
                storage[MetadataIndex(key, offsets)] = _Stored(
                    name, extents, tuple(hi - lo for lo, hi in box))
            tensors[key] = TensorStorageMetadata(
                properties=TensorProperties(dtype=_TORCH_DTYPES[info.dtype]),
                size=torch.Size(info.shape), chunks=chunks)
        # planner_data maps each key to its path in a nested state dict, which DCP's
        # planner for empty state dicts (``_load_state_dict_from_keys``) reads.
        return Metadata(state_dict_metadata=tensors, storage_data=storage,
                        planner_data={key: (key,) for key in tensors})

    def _read(self, ckpt: Checkpoint, stored: _Stored, offsets, lengths) -> np.ndarray:
        """The region ``offsets``/``lengths`` of one stored tensor or slice, as a view
        of the map where the bytes allow (only the region's elements are touched)."""
        whole = all(o == 0 and n == d for o, n, d in zip(offsets, lengths, stored.shape))
        index = None if whole else tuple(slice(o, o + n) for o, n in zip(offsets, lengths))
        if stored.extents is None:
            return ckpt.read(stored.name, index)
        return ckpt.read_slice(stored.name, stored.extents, index)


class _Part(NamedTuple):
    """The part checkpoint one rank writes (the coordinator's plan for it)."""

    prefix: str


class DCPWriter(StorageWriter):
    """Save with ``torch.distributed.checkpoint.save`` as one TensorFlow checkpoint.

    >>> dcp.save(state_dict, storage_writer=tfshard.torch.DCPWriter("out/ckpt-1"))  # doctest: +SKIP

    Every rank writes the items DCP's planner gives it (a plain tensor once, by
    one rank; each DTensor shard by the rank holding it) as one part checkpoint
    in a scratch directory beside ``prefix``; shards become TF slices of the full
    tensor, as a TF1 partitioned variable's.  When every rank has written its
    part, the coordinator merges the parts into ``prefix`` with
    :func:`tfshard.merge_parts` (data files are renamed, no byte is copied) and
    writes the index last, so ``prefix`` is complete or absent.
    ``tf.train.load_checkpoint(prefix)`` then reads every tensor whole.  Every
    rank must see the same file system.

    Parameters
    ----------
    prefix : str or os.PathLike
        The checkpoint to write; a ``checkpoint_id`` given to ``dcp.save``
        replaces it.  An existing checkpoint of that prefix is replaced.
    alignment : int
        Byte alignment of tensors in the data files (:data:`tfshard.DEFAULT_ALIGNMENT`).
    fsync : bool
        Flush parts, index and directory to stable storage before each rename.
    non_tensors : {"error", "skip"}
        What to do with state-dict values that are not tensors (a TF checkpoint
        holds only tensors): refuse the save before anything is written, or
        leave them out.

    Notes
    -----
    DCP calls ``finish`` only when every rank wrote its part.  If a rank fails,
    nothing appears under ``prefix``; the parts other ranks wrote stay in the
    scratch directory ``prefix.tempstate<random>/`` until the next successful
    save of the same prefix removes them.
    """

    def __init__(self, prefix, *, alignment: int = DEFAULT_ALIGNMENT, fsync: bool = False,
                 non_tensors: str = "error"):
        super().__init__()
        if non_tensors not in ("error", "skip"):
            raise InvalidTensorError(f"non_tensors must be 'error' or 'skip', got "
                                     f"{non_tensors!r}")
        self.prefix = self._check_prefix(prefix)
        self.alignment = alignment
        self.fsync = bool(fsync)
        self.non_tensors = non_tensors
        self.save_id = uuid.uuid4().hex
        self.bytes_written = 0
        self._parts: list = []

    @staticmethod
    def _check_prefix(prefix) -> str:
        prefix = os.fspath(prefix)
        if not isinstance(prefix, str) or not prefix or prefix.endswith(os.sep):
            raise InvalidTensorError(f"a checkpoint prefix must be a non-empty path that does "
                                     f"not end in a separator, got {prefix!r}", path=prefix)
        return prefix

    # ---- StorageWriter ---------------------------------------------------

    def reset(self, checkpoint_id=None) -> None:
        if checkpoint_id is not None:
            self.prefix = self._check_prefix(checkpoint_id)
        self.save_id = uuid.uuid4().hex
        self._parts = []

    def set_up_storage_writer(self, is_coordinator: bool, *args, **kwargs) -> None:
        self.is_coordinator = is_coordinator

    def storage_meta(self) -> StorageMeta:
        return StorageMeta(checkpoint_id=self.prefix, save_id=self.save_id)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        objects = [item.index.fqn for item in plan.items if item.type == WriteItemType.BYTE_IO]
        if objects and self.non_tensors == "error":
            raise UnsupportedError(
                f"{self.prefix}: a TF checkpoint holds only tensors, but the state dict has "
                f"{len(objects)} other value(s): {', '.join(map(repr, objects[:10]))}; leave "
                f"them out, or pass DCPWriter(..., non_tensors='skip')", path=self.prefix,
                key=objects[0])
        items = [item for item in plan.items if item.type != WriteItemType.BYTE_IO]
        bad = sorted({f"{item.index.fqn!r} ({item.tensor_data.properties.dtype})"
                      for item in items if item.tensor_data.properties.dtype not in _TF_DTYPES})
        if bad:
            raise UnsupportedError(
                f"{self.prefix}: TensorFlow has no dtype for tensors {', '.join(bad[:10])}",
                path=self.prefix)
        return dataclasses.replace(plan, items=items)

    def prepare_global_plan(self, plans: list) -> list:
        scratch = temp_name(self.prefix)
        n = len(plans)
        self._parts = [os.path.join(scratch, f"part-{i:05d}-of-{n:05d}") for i in range(n)]
        return [dataclasses.replace(plan, storage_data=_Part(part))
                for plan, part in zip(plans, self._parts)]

    def write_data(self, plan: SavePlan, planner) -> Future:
        part = plan.storage_data.prefix
        results = []
        self.bytes_written = 0
        with CheckpointWriter(part, alignment=self.alignment, fsync=self.fsync) as writer:
            for item in plan.items:
                name = item.index.fqn
                data = planner.resolve_data(item).detach()
                arr = tensor_to_numpy(data.cpu() if data.device.type != "cpu" else data)
                td = item.tensor_data
                full, offsets = tuple(td.size), tuple(td.chunk.offsets)
                sizes = tuple(td.chunk.sizes)
                if tuple(arr.shape) != sizes:
                    raise InvalidTensorError(
                        f"{name!r}: the planner resolved a tensor of shape {list(arr.shape)} "
                        f"for a chunk of shape {list(sizes)}", key=name)
                if sizes == full:
                    writer.add(name, arr)
                elif prod(sizes):
                    writer.add_slice(name, full, list(zip(offsets, sizes)), arr)
                # (an empty shard holds nothing to write)
                results.append(WriteResult(index=item.index, size_in_bytes=arr.nbytes,
                                           storage_data=part))
                self.bytes_written += arr.nbytes
        fut: Future = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list) -> None:
        parts = self._parts
        try:
            merge_parts(parts, self.prefix, fsync=self.fsync)
        except BaseException:
            _remove_parts(os.path.dirname(parts[0]))
            raise
        scratch = os.path.dirname(parts[0])
        for stale in glob.glob(glob.escape(self.prefix) + TEMP_MARK + "*"):
            if stale != scratch and os.path.isdir(stale):
                _remove_parts(stale)

    @property
    def checkpoint_id(self):
        """The prefix this writer saves to."""
        return self.prefix

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return isinstance(checkpoint_id, (str, os.PathLike))


def _remove_parts(directory: str) -> None:
    """Delete the part checkpoints in a scratch directory, then the directory if
    nothing else is in it (only files this writer names ``part-...`` go)."""
    for path in glob.glob(os.path.join(glob.escape(directory), "part-*-of-*")):
        if os.path.isfile(path):
            remove_file(path)
    try:
        os.rmdir(directory)
    except OSError:
        pass

