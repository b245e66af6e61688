"""Resharding a TF checkpoint: another number or size of data files, partitioned
variables merged into whole tensors or whole tensors cut into TF1 slices.

The output is a new checkpoint written tensor by tensor (atomically, through
:class:`tfshard.CheckpointWriter`): stored dtypes are kept, and so is each
partitioned tensor's slicing unless it is merged or re-cut.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

from ..conversion import _Progress
from ..errors import InvalidTensorError, OutputExistsError, UnsupportedError
from ..formats._base import _make_dirs
from ..objectgraph import OBJECT_GRAPH_KEY, serialized_graph
from ..paths import data_filename, index_filename
from ..slices import bounds, prod, spec
from .partitions import merged_graph, part_families, split_extents

__all__ = ["reshard", "ReshardReport", "parse_partition"]


@dataclass
class ReshardReport:
    """What :func:`reshard` wrote.

    Attributes
    ----------
    input : str
        The input's prefix.
    outputs : list of str
        Files written (data shards, then the index).
    num_shards : int
        Data files of the output.
    tensors : int
        Tensors written (a partitioned one counts once).
    nbytes : int
        Bytes of tensor data written.
    merged : dict
        ``{name: [its parts' keys]}`` for ``part_K`` families merged into one
        key, ``{name: ["N slices"]}`` for sliced tensors written whole.
    partitioned : dict
        ``{name: number of slices}`` for every tensor written in slices (kept
        or cut with ``partition``).
    """

    input: str = ""
    outputs: list = field(default_factory=list)
    num_shards: int = 0
    tensors: int = 0
    nbytes: int = 0
    merged: dict = field(default_factory=dict)
    partitioned: dict = field(default_factory=dict)


def parse_partition(text) -> tuple:
    """``(pattern, axis, k)`` from ``"NAME=AXIS:K"`` (``NAME`` a glob on tensor names)
    or from such a tuple.

    Raises
    ------
    InvalidTensorError
        For anything else, a negative axis or ``k`` below 1.
    """
    if isinstance(text, (tuple, list)):
        pattern, axis, k = text
    else:
        pattern, sep, rest = str(text).rpartition("=")
        axis, colon, k = rest.partition(":")
        if not (sep and pattern and colon):
            raise InvalidTensorError(f"partition {text!r} needs the form NAME=AXIS:K, e.g. "
                                     f"'emb=0:4'")
    try:
        axis, k = int(axis), int(k)
    except (TypeError, ValueError):
        raise InvalidTensorError(f"partition {text!r}: AXIS and K must be integers") from None
    if axis < 0 or k < 1:
        raise InvalidTensorError(f"partition {text!r}: AXIS must be >= 0 and K >= 1")
    return str(pattern), axis, k


def reshard(src, out, *, num_shards: int | None = None, max_shard_size: int | None = None,
            merge_partitions: bool = False, partition=(), overwrite: bool = False,
            progress: bool | None = False) -> ReshardReport:
    """Write the TF checkpoint ``src`` to the new prefix ``out`` with another layout.

    Parameters
    ----------
    src : str or os.PathLike
        A TF checkpoint (as :func:`tfshard.open` takes it).
    out : str or os.PathLike
        The output prefix (not ``src``'s).
    num_shards : int, optional
        Data files of the output (each tensor goes to the one holding the
        fewest bytes so far).  Default: as many as ``src`` has.
    max_shard_size : int, optional
        Instead of ``num_shards``: bytes per data file (a larger tensor gets a
        file of its own).
    merge_partitions : bool
        Write every partitioned variable whole: tensors stored as slices of one
        key (TF1 partitioned variables, TF2 ``ShardedVariable``) get one plain
        entry, and families of ``<path>/part_K/...`` keys of a TF2 checkpoint
        are concatenated along axis 0 under ``<path>/...``, with the object
        graph rewritten (see :func:`tfshard.surgery.partitions.merged_graph`)
        so that ``tf.train.Checkpoint.restore`` puts them into whole variables.
    partition : iterable of str or (str, int, int)
        ``"NAME=AXIS:K"``: cut each tensor whose name matches the glob ``NAME``
        into ``K`` TF1 slices along ``AXIS``, as ``fixed_size_partitioner(K,
        AXIS)`` does (TF restores them into partitioned or whole variables).
    overwrite : bool
        Replace an existing checkpoint at ``out``.
    progress : bool or None
        As for :func:`tfshard.convert`.

    Returns
    -------
    ReshardReport

    Raises
    ------
    InvalidTensorError
        Both ``num_shards`` and ``max_shard_size``, a bad or unmatched
        ``partition``, an axis or ``K`` the tensor's shape cannot take, ``out``
        being ``src``.
    OutputExistsError
        If ``out`` exists and ``overwrite`` is False.
    UnsupportedError
        Parts of one variable that cannot be concatenated (dtypes or shapes).
    """
    from ..reader import Checkpoint
    from ..writer import CheckpointWriter

    if num_shards is not None and max_shard_size is not None:
        raise InvalidTensorError("give num_shards or max_shard_size, not both")
    cuts = [parse_partition(p) for p in ([partition] if isinstance(partition, str)
                                          else partition or ())]
    prefix = os.fspath(out)
    prefix = prefix[:-len(".index")] if prefix.endswith(".index") else prefix
    with Checkpoint(src) as ckpt:
        if os.path.realpath(ckpt.prefix) == os.path.realpath(prefix):
            raise InvalidTensorError(f"the output {prefix} is the input; reshard writes a new "
                                     f"checkpoint", path=prefix)
        if not overwrite and os.path.exists(index_filename(prefix)):
            raise OutputExistsError(f"{index_filename(prefix)} already exists; pass "
                                    f"overwrite=True to replace it (nothing was written)",
                                    path=index_filename(prefix))
        infos = {info.name: info for info in ckpt.infos()}
        jobs, graph = _plan(ckpt, infos, cuts, merge_partitions)
        report = ReshardReport(input=ckpt.prefix)
        if max_shard_size is None and num_shards is None:
            num_shards = ckpt.num_shards
        bar = _Progress(sum(i.nbytes for i in infos.values()), "resharding", progress)
        created = _make_dirs(os.path.dirname(prefix))  # removed again if the write fails
        try:
            with CheckpointWriter(prefix, num_shards=num_shards or 1,
                                  max_shard_size=max_shard_size) as writer:
                for job in jobs:
                    _write(ckpt, writer, job, graph, infos, report, bar)
                    report.tensors += 1
        except BaseException:
            for directory in reversed(created):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass  # not empty: someone else's files
            raise
        finally:
            bar.close()
    with Checkpoint(prefix) as written:
        n = written.num_shards
    report.num_shards = n
    report.outputs = [data_filename(prefix, i, n) for i in range(n)] + [index_filename(prefix)]
    return report


def _plan(ckpt, infos, cuts, merge_partitions):
    """The jobs in output order, and the rewritten object graph (or None):
    ``("copy", name)``, ``("slices", name, extents list)``, ``("whole", name)``,
    ``("concat", merged name, part keys)``."""
    names = list(infos)
    cut_of = {}
    for pattern, axis, k in cuts:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise InvalidTensorError(f"no tensor of {ckpt.prefix} matches the partition "
                                     f"pattern {pattern!r} ('tfshard ls' lists them)")
        for name in matched:
            shape = infos[name].shape
            if axis >= len(shape) or k > max(shape[axis], 1):
                raise InvalidTensorError(
                    f"{name!r} has shape {list(shape)}: it cannot be cut into {k} slices "
                    f"along axis {axis}", key=name)
            cut_of[name] = split_extents(shape, axis, k)
    families, graph = [], None
    raw = serialized_graph(ckpt) if merge_partitions else None
    if raw is not None:
        families = [f for f in part_families(raw) if all(k in infos for k in f.part_keys)]
        if families:
            graph = merged_graph(raw)
    in_family = {k for f in families for k in f.part_keys}
    clash = [f.merged_key for f in families if f.merged_key in infos]
    if clash:
        raise UnsupportedError(f"merging partitions would write {clash[0]!r}, which the "
                               f"checkpoint already holds", key=clash[0])
    jobs = []
    for name in names:
        if name in in_family:
            continue
        if name in cut_of:
            jobs.append(("slices", name, cut_of[name]))
        elif infos[name].slices and not merge_partitions:
            jobs.append(("slices", name, [list(s) for s in infos[name].slices]))
        elif infos[name].slices:
            jobs.append(("whole", name))
        else:
            jobs.append(("copy", name))
    jobs += [("concat", f.merged_key, f.part_keys) for f in families]
    return sorted(jobs, key=lambda j: j[1]), graph


def _write(ckpt, writer, job, graph, infos, report, bar):
    import numpy as np

    kind, name = job[0], job[1]
    if kind == "concat":
        parts = job[2]
        _check_parts(name, [infos[k] for k in parts])
        value = np.concatenate([ckpt.read(k) for k in parts], axis=0)
        writer.add(name, value, dtype=infos[parts[0]].dtype)
        for k in parts:
            ckpt.release(k)
            bar.update(infos[k].nbytes)
        report.merged[name] = list(parts)
        report.nbytes += value.nbytes
        return
    info = infos[name]
    if kind == "copy":
        if name == OBJECT_GRAPH_KEY and graph is not None:
            value = np.empty((), dtype=object)
            value[()] = graph
        else:
            value = ckpt.read(name)
        writer.add(name, value, dtype=info.dtype)
    elif kind == "whole":
        writer.add(name, ckpt.read(name), dtype=info.dtype)
        report.merged[name] = [f"{len(info.slices)} slices"]
    else:  # slices: each read on its own where the slicing is along axis 0
        shape = info.shape
        along_rows = all(bounds(e, shape)[0] != (0, shape[0]) for e in job[2])
        whole = ckpt.read(name) if not (info.slices and along_rows) else None
        for extents in job[2]:
            box = bounds(extents, shape)
            if whole is not None:
                piece = whole[tuple(slice(lo, hi) for lo, hi in box)]
            else:
                rows = ckpt.read(name, index=np.s_[box[0][0]:box[0][1]])
                piece = rows[(slice(None),) + tuple(slice(lo, hi) for lo, hi in box[1:])]
            writer.add_slice(name, shape, spec(extents), piece, dtype=info.dtype)
            del piece
        report.partitioned[name] = len(job[2])
    ckpt.release(name)
    bar.update(info.nbytes)
    report.nbytes += info.nbytes


def _check_parts(name, infos):
    first = infos[0]
    for info in infos[1:]:
        if (info.dtype != first.dtype or len(info.shape) != len(first.shape)
                or not first.shape or info.shape[1:] != first.shape[1:]):
            raise UnsupportedError(
                f"the parts of {name!r} cannot be joined along axis 0: "
                + ", ".join(f"{i.name} is {i.dtype} {list(i.shape)}" for i in infos),
                key=name)
    if prod(first.shape[1:]) and any(i.slices for i in infos):
        raise UnsupportedError(f"the parts of {name!r} are themselves partitioned", key=name)
