"""Averaging checkpoints: the element-wise (weighted) mean of N models.

What tensor2tensor's ``avg_checkpoints.py`` and fairseq's averaging do, without
holding the model in memory: tensors are averaged one at a time, each input's
tensor added into one float64 accumulator and released before the next input's
is read, and the mean is narrowed to the stored dtype inside the accumulator's
own buffer.  Memory is one float64 accumulator (plus one input tensor's mapped
pages) whatever the number of checkpoints.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from .. import dtypes
from ..conversion import _output_metadata, _Progress
from ..errors import CheckpointNotFoundError, InvalidTensorError
from ..formats import create_sink, detect_format, open_source
from ..objectgraph import OBJECT_GRAPH_KEY
from ..slices import prod

__all__ = ["average", "AverageReport"]

# Elements per step where a step needs a temporary (weighted sums, the final
# division): 1 Mi elements, 8 MiB of float64.
_CHUNK = 1 << 20

_PLAIN_INTEGERS = frozenset({"int8", "int16", "int32", "int64",
                             "uint8", "uint16", "uint32", "uint64"})
_COMPLEX = frozenset({"complex64", "complex128"})


def _floating(name: str) -> bool:
    return name.startswith(("float", "bfloat"))


@dataclass
class AverageReport:
    """What :func:`average` wrote.

    Attributes
    ----------
    inputs : list of str
        The checkpoints averaged, in order (TF prefixes resolved).
    weights : list of float
        Their weights (all 1.0 unless given).
    averaged : list of str
        Floating and complex tensors written as the weighted mean.
    summed : list of str
        Integer tensors written as the sum (``sum_integers``).
    from_last : list of str
        Tensors copied from the last input (integers unless summed, bool,
        string, quantized and variant tensors, the TF2 object graph).
    dropped : list of str
        Tensors not written (the object graph, for outputs other than TF).
    tensors : int
    nbytes : int
        Bytes of tensor data read from all inputs.
    outputs : list of str
        Files written.
    """

    inputs: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    averaged: list = field(default_factory=list)
    summed: list = field(default_factory=list)
    from_last: list = field(default_factory=list)
    dropped: list = field(default_factory=list)
    tensors: int = 0
    nbytes: int = 0
    outputs: list = field(default_factory=list)


def _last_checkpoints(directory, n) -> list:
    from ..state import read_state

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidTensorError(f"last must be a positive number of checkpoints, got {n!r}")
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise CheckpointNotFoundError(f"{directory} is not a directory; last=N takes the last "
                                      f"N checkpoints its 'checkpoint' state file lists",
                                      path=directory)
    state = read_state(directory)
    if state is None:
        raise CheckpointNotFoundError(f"{directory} has no 'checkpoint' state file to take "
                                      f"the last {n} checkpoints from", path=directory)
    listed = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    if len(listed) < n:
        raise InvalidTensorError(
            f"{os.path.join(directory, 'checkpoint')} lists {len(listed)} checkpoint(s) "
            f"({', '.join(os.path.basename(p) for p in listed)}); last={n} needs {n}",
            path=directory)
    return listed[-n:]


def _check_weights(weights, n) -> list:
    if weights is None:
        return [1.0] * n
    try:
        weights = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise InvalidTensorError(f"weights must be numbers, got {weights!r}") from None
    if len(weights) != n:
        raise InvalidTensorError(f"{len(weights)} weight(s) for {n} checkpoint(s); give one "
                                 f"per checkpoint")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise InvalidTensorError(f"weights must be finite, not negative, and not all zero; "
                                 f"got {weights}")
    return weights


def _mismatches(opened) -> list:
    """Every difference between the inputs' tensors: ``[(name, what), ...]``."""
    problems = []
    name_sets = [set(s.names()) for s in opened]
    for name in sorted(set().union(*name_sets)):
        lacking = [s.path for s, names in zip(opened, name_sets) if name not in names]
        if lacking:
            problems.append((name, "missing from " + ", ".join(lacking)))
            continue
        infos = [s.info(name) for s in opened]
        if any(info != infos[0] for info in infos):
            problems.append((name, "; ".join(f"{s.path}: {dt} {list(shape)}"
                                             for s, (dt, shape) in zip(opened, infos))))
    return problems


def average(out, sources, *, last: int | None = None, weights=None,
            sum_integers: bool = False, dst_format: str | None = None,
            max_shard_size: int | None = None, overwrite: bool = False,
            progress: bool | None = False) -> AverageReport:
    """Write the element-wise mean of several checkpoints (or other models) to ``out``.

    Parameters
    ----------
    out : str or os.PathLike
        The output, in any format :func:`tfshard.convert` writes (a TF prefix by
        default).  Written atomically.
    sources : iterable of str or os.PathLike, or one directory with ``last``
        The models to average, all with the same tensor names, dtypes and
        shapes (any formats tfshard reads).
    last : int, optional
        Average the last ``last`` checkpoints that the ``checkpoint`` state
        file of the directory ``sources`` lists (oldest first, as TF keeps it).
    weights : sequence of float, optional
        One per input: the result is ``sum(w_i * x_i) / sum(w_i)``.
    sum_integers : bool
        Write integer tensors as the sum over the inputs (checked for overflow)
        instead of the last input's value (the default, right for
        ``global_step``).  Weights do not apply to sums.
    dst_format, max_shard_size, overwrite, progress
        As for :func:`tfshard.convert`.

    Returns
    -------
    AverageReport

    Raises
    ------
    InvalidTensorError
        If the inputs differ in tensor names, dtypes or shapes (the message
        lists every difference, and the exception's ``mismatches`` attribute
        holds them as ``(name, description)`` pairs), for bad weights, an
        integer sum that overflows its dtype, or ``out`` naming an input.
        Nothing is written.

    Notes
    -----
    Floating tensors (float16/32/64, bfloat16, float8...) are accumulated in
    float64 and complex ones in complex128, in input order, then divided by the
    total weight and rounded once to the stored dtype.  One tensor is worked on
    at a time: memory holds its float64 accumulator and the pages of one input
    tensor, whatever the number of inputs.
    """
    if last is not None:
        if isinstance(sources, (list, tuple)):
            if len(sources) != 1:
                raise InvalidTensorError("last=N takes one directory, not a list of "
                                         "checkpoints")
            sources = sources[0]
        paths = _last_checkpoints(sources, last)
    else:
        paths = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not paths:
        raise InvalidTensorError("average needs at least one checkpoint")
    weights = _check_weights(weights, len(paths))
    out_format = dst_format or detect_format(out, for_output=True)
    opened = []
    try:
        for p in paths:
            opened.append(open_source(p))
        _refuse_input_as_output(out, out_format, opened)
        problems = _mismatches(opened)
        if problems:
            listing = "\n".join(f"  {name}: {what}" for name, what in problems)
            exc = InvalidTensorError(f"the {len(opened)} checkpoints do not hold the same "
                                     f"tensors ({len(problems)} difference(s)); nothing was "
                                     f"written:\n{listing}")
            exc.mismatches = problems
            raise exc
        return _write_average(out, opened, weights, sum_integers, out_format, dst_format,
                              max_shard_size, overwrite, progress)
    finally:
        for source in opened:
            source.close()


def _refuse_input_as_output(out, out_format, opened):
    if out_format != "tf":
        return
    prefix = os.fspath(out)
    prefix = prefix[:-len(".index")] if prefix.endswith(".index") else prefix
    for source in opened:
        if source.format == "tf" and os.path.realpath(source.path) == os.path.realpath(prefix):
            raise InvalidTensorError(f"the output {prefix} is one of the inputs; write the "
                                     f"average to a new prefix", path=prefix)


def _write_average(out, opened, weights, sum_integers, out_format, dst_format,
                   max_shard_size, overwrite, progress) -> AverageReport:
    last = opened[-1]
    report = AverageReport(inputs=[s.path for s in opened], weights=list(weights))
    plan, kinds = [], []
    for name in last.names():
        if name == OBJECT_GRAPH_KEY and out_format != "tf":
            report.dropped.append(name)
            continue
        dt_name, shape = last.info(name)
        if _floating(dt_name) or dt_name in _COMPLEX:
            kind, listed = "mean", report.averaged
        elif sum_integers and dt_name in _PLAIN_INTEGERS:
            kind, listed = "sum", report.summed
        else:
            kind, listed = "last", report.from_last
        listed.append(name)
        plan.append((name, dt_name, shape))
        kinds.append(kind)
    total = sum(s.nbytes(n) for s in opened for n, _, _ in plan)
    bar = _Progress(total, "averaging", progress)
    try:
        with create_sink(out, dst_format, plan=plan, max_shard_size=max_shard_size,
                         overwrite=overwrite,
                         metadata=_output_metadata([last], out_format, None, out)) as sink:
            for (name, dt_name, shape), kind in zip(plan, kinds):
                dt = dtypes.by_name(dt_name)
                if kind == "last":
                    value = last.read(name)
                    sink.add(name, value, dt_name)
                    del value
                    last.release(name)
                    bar.update(sum(s.nbytes(name) for s in opened))
                else:
                    combine = _mean if kind == "mean" else _sum
                    sink.add(name, combine(opened, name, weights, dt, shape, bar), dt_name)
                report.tensors += 1
            report.outputs = sink.commit()
    finally:
        bar.close()
    report.nbytes = total
    return report


def _each_input(opened, name, bar, add):
    """Call ``add(value, i)`` with each input's tensor ``name`` as a flat array,
    releasing it before the next is read: one input's pages are mapped at a time."""
    for i, source in enumerate(opened):
        value = source.read(name).reshape(-1)
        add(value, i)
        del value
        source.release(name)
        bar.update(source.nbytes(name))


def _mean(opened, name, weights, dt, shape, bar):
    import numpy as np

    acc_dtype = np.dtype(np.complex128 if dt.name in _COMPLEX else np.float64)
    n = prod(shape)
    acc = np.zeros(n, acc_dtype)

    def add(value, i):
        w = weights[i]
        if w == 1.0:
            # The cast happens in numpy's small buffers: no tensor-sized temporary.
            np.add(acc, value, out=acc, dtype=acc_dtype)
        elif w:
            for a in range(0, n, _CHUNK):
                b = min(n, a + _CHUNK)
                acc[a:b] += np.multiply(value[a:b], w, dtype=acc_dtype)

    _each_input(opened, name, bar, add)
    return _narrowed(acc, sum(weights), dt.numpy).reshape(shape)


def _narrowed(acc, total: float, dtype):
    """``acc / total`` as ``dtype``, written into ``acc``'s own buffer.

    Chunk k of the result occupies bytes the accumulator's chunks before k
    already gave up (the result's elements are narrower), so front to back
    nothing unread is overwritten; the first chunk's quotient is a temporary."""
    import numpy as np

    if dtype == acc.dtype:
        np.divide(acc, total, out=acc)
        return acc
    out = acc.view(np.uint8)[:acc.size * dtype.itemsize].view(dtype)
    for a in range(0, acc.size, _CHUNK):
        b = min(acc.size, a + _CHUNK)
        out[a:b] = acc[a:b] / total
    return out


def _sum(opened, name, weights, dt, shape, bar):
    import numpy as np

    unsigned = dt.numpy.kind == "u"
    acc_dtype = np.dtype(np.uint64 if unsigned else np.int64)
    n = prod(shape)
    acc = np.zeros(n, acc_dtype)
    info = np.iinfo(dt.numpy)
    def add(value, i):
        for a in range(0, n, _CHUNK):
            b = min(n, a + _CHUNK)
            x = value[a:b].astype(acc_dtype)
            before = acc[a:b]
            after = before + x  # wraps on overflow: detected below
            if unsigned:
                wrapped = after < before
            else:
                wrapped = ((x > 0) & (after < before)) | ((x < 0) & (after > before))
            if wrapped.any() or (after.size and (after.max() > info.max
                                                 or after.min() < info.min)):
                raise InvalidTensorError(f"the sum of integer tensor {name!r} over the inputs "
                                         f"does not fit its dtype {dt.name}; average without "
                                         f"sum_integers to take the last value", key=name)
            acc[a:b] = after

    _each_input(opened, name, bar, add)
    return acc.astype(dt.numpy).reshape(shape)
