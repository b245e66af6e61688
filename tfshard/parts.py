"""Merging checkpoint parts written separately into one checkpoint.

Several processes (or devices) each write a complete one-prefix checkpoint of
their own tensors; :func:`merge_parts` then turns the parts into a single
prefix with one data shard per part file, by renaming the data files and
writing one index: no tensor byte is copied.  This is what TensorFlow's
``MergeV2Checkpoints`` does (FORMAT.md §15), with two differences: a part
holding no tensors is merged correctly (it contributes no shard), and every
conflict is reported before any file is touched.
"""

from __future__ import annotations

import os

from . import _build, _commit
from ._util import create_exclusive, discard_file, remove_file, temp_name, write_failed, write_temp
from .errors import CheckpointNotFoundError, InvalidTensorError
from .paths import checkpoint_layout, data_filename, index_filename, shard_count_now
from .reader import Checkpoint

__all__ = ["merge_parts"]


def merge_parts(parts, prefix, *, fsync: bool = False) -> str:
    """Merge the checkpoints ``parts`` into one checkpoint at ``prefix``.

    Parameters
    ----------
    parts : sequence of str or os.PathLike
        Prefixes of the part checkpoints, in the order their shards get numbered.
    prefix : str or os.PathLike
        Prefix of the merged checkpoint (its directory is created if needed).
    fsync : bool
        Flush the new index and the directory to stable storage.

    Returns
    -------
    str
        ``prefix``.

    Raises
    ------
    InvalidTensorError
        If parts hold the same tensor, disagree on a partitioned tensor's dtype
        or shape, or differ in byte order or format version; nothing is changed.
    CheckpointNotFoundError
        If a part or one of its data files is missing; nothing is changed.

    Notes
    -----
    The merged index is written first; the data files are then renamed into
    place and the index installed by the commit protocol of
    :class:`~tfshard.CheckpointWriter` (an old checkpoint at ``prefix`` stays
    complete until the new one is), and the parts' ``.index`` files are deleted
    afterwards.  A crash in between leaves no index that points at missing
    data, but can leave parts whose data has already moved.
    """
    prefix = os.fspath(prefix)
    parts = [os.fspath(p) for p in parts]
    if not parts:
        raise InvalidTensorError("merge_parts needs at least one part")
    if prefix in parts:
        raise InvalidTensorError(f"the merged prefix {prefix!r} is also one of the parts")

    entries: dict[bytes, bytes] = {}
    partitioned: dict[bytes, tuple] = {}   # key -> (dtype code, shape, [slices])
    owner: dict[bytes, str] = {}
    moves: dict[str, int] = {}             # part data file -> merged shard id
    unused: list[str] = []                 # part data files no entry points at
    header = None
    for part in parts:
        with Checkpoint(part, verify=False) as ckpt:
            table = ckpt._table
            h = table.header()
            this = (h["endianness"], h["producer"], h["min_consumer"])
            if header is None:
                header = this
            elif this != header:
                raise InvalidTensorError(
                    f"part {part} has byte order / version {this}, but {parts[0]} has {header}; "
                    f"parts of one checkpoint must agree", path=part)
            used = set()
            for i in table.handles():
                key = table.key(i)
                code, shape, shard, offset, size, crc, nslices, _ = table.entry(i)
                if nslices:
                    slices = table.slices(i)
                    if key in partitioned:
                        known_code, known_shape, known = partitioned[key]
                        if (known_code, known_shape) != (code, shape):
                            raise _conflict(key, owner[key], part, "with another dtype or shape")
                        known.extend(slices)
                        continue
                    if key in entries:
                        raise _conflict(key, owner[key], part, "both as a plain tensor")
                    partitioned[key] = (code, shape, list(slices))
                    owner[key] = part
                    continue
                if key in entries or key in partitioned:
                    raise _conflict(key, owner[key], part, "twice")
                source = data_filename(ckpt.prefix, shard, ckpt.num_shards)
                new_id = moves.setdefault(source, len(moves))
                used.add(source)
                entries[key] = _build.encode_entry(code, shape, new_id, offset, size, crc)
                owner[key] = part
            unused += [f for f in (data_filename(ckpt.prefix, s, ckpt.num_shards)
                                   for s in range(ckpt.num_shards)) if f not in used]

    missing = [f for f in moves if not os.path.isfile(f)]
    if missing:
        raise CheckpointNotFoundError(f"data files of the parts are missing: {missing}",
                                      path=missing[0])
    for key, (code, shape, slices) in partitioned.items():
        entries[key] = _build.encode_partitioned_entry(code, shape, slices)
    keys = sorted(entries)
    num_shards = max(len(moves), 1)
    if shard_count_now(prefix) == num_shards:
        num_shards += 1  # an empty shard more keeps the old files' names free (as save does)
    index = _build.build_table([b""] + keys,
                               [_build.encode_header(num_shards, *header)]
                               + [entries[k] for k in keys])

    directory = os.path.dirname(prefix)
    renames = [(source, data_filename(prefix, shard_id, num_shards))
               for source, shard_id in moves.items()]
    index_fd, empties = -1, []
    try:
        if directory:
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise write_failed(exc, prefix, f"creating the directory {directory}") from None
        # Shards no part fills (every part empty: the format still wants shard 0; or
        # the one added above) are empty files.
        for shard_id in range(len(moves), num_shards):
            empty = temp_name(f"{prefix}.data-{shard_id:05d}")
            try:
                os.close(create_exclusive(empty))
            except OSError as exc:
                raise write_failed(exc, prefix, "creating an empty data shard") from None
            empties.append(empty)
            renames.append((empty, data_filename(prefix, shard_id, num_shards)))
        index_temp, index_fd = write_temp(index_filename(prefix), index, fsync=fsync,
                                          target=prefix, what="the merged index")
        try:
            _commit.install(checkpoint_layout(prefix), index_temp, renames, fsync=fsync,
                            target=prefix, what="the merged checkpoint")
        except BaseException:
            discard_file(index_temp)
            raise
    finally:
        if index_fd >= 0:
            os.close(index_fd)
        for empty in empties:
            discard_file(empty)  # gone if it was installed
    for part in parts:
        remove_file(index_filename(part))
    for f in unused:
        remove_file(f)
    for part in parts:
        # Parts often live in a scratch directory of their own: remove it once empty.
        part_dir = os.path.dirname(os.path.abspath(part))
        if part_dir != os.path.dirname(os.path.abspath(prefix)):
            try:
                os.rmdir(part_dir)
            except OSError:
                pass
    return prefix


def _conflict(key: bytes, first: str, second: str, how: str) -> InvalidTensorError:
    name = key.decode("utf-8", "surrogateescape")
    return InvalidTensorError(f"tensor {name!r} is in part {first} and in part {second} "
                              f"{how}; a merged checkpoint can hold it only once", key=name)
