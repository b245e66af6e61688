"""Slices of partitioned tensors: TF's slice-spec strings and box arithmetic.

A slice is a list of extents, one per dimension, each ``(start, length)``;
``length == -1`` means the whole dimension (as in ``TensorSliceProto``).
"""

from __future__ import annotations

from .errors import CorruptCheckpointError, UnsupportedError

__all__ = ["parse_spec", "spec", "bounds_spec", "bounds", "find_overlap", "intersect", "prod",
           "covering", "assemble"]

# Cells of the boundary grid checked for overlaps; TF partitions along one
# axis, so real tensors need a handful.
_MAX_GRID_CELLS = 1 << 24


def prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def spec(extents) -> str:
    """TF's slice string: ``"0,5:-"``."""
    return ":".join("-" if length < 0 else f"{start},{length}" for start, length in extents)


def bounds_spec(bounds) -> str:
    return spec([(lo, hi - lo) for lo, hi in bounds])


def parse_spec(text: str) -> list:
    """Extents of a slice string such as ``"0,5:-"``.

    Raises ValueError on anything else; ranks are not checked here.
    """
    extents = []
    for item in text.strip().split(":"):
        item = item.strip()
        if item == "-":
            extents.append((0, -1))
            continue
        parts = item.split(",")
        if len(parts) != 2:
            raise ValueError(f"expected 'start,length' or '-', got {item!r}")
        start, length = (int(p) for p in parts)
        if start < 0 or length < 0:
            raise ValueError(f"start and length must not be negative, got {item!r}")
        extents.append((start, length))
    return extents


def bounds(extents, shape) -> list:
    """``[(lo, hi), ...]`` of a slice within ``shape`` (whole extents expanded)."""
    return [(0, dim) if length < 0 else (start, start + length)
            for (start, length), dim in zip(extents, shape)]


def intersect(a, b):
    """The common box of two boxes, or None when they do not meet."""
    out = []
    for (alo, ahi), (blo, bhi) in zip(a, b):
        lo, hi = max(alo, blo), min(ahi, bhi)
        if lo >= hi:
            return None
        out.append((lo, hi))
    return out


def find_overlap(boxes):
    """Two overlapping boxes among ``boxes`` (lists of (lo, hi) per dim), or None.

    O(n log n) for slices cut along one dimension (how TF partitions: the boxes
    agree on every other dimension), by sorting them along it.  Otherwise the
    boxes' boundaries cut each dimension into intervals and every box marks its
    cells of that grid once, so the work is bounded by the grid (at most
    ``_MAX_GRID_CELLS`` cells; larger grids are refused).
    """
    import numpy as np

    boxes = [b for b in boxes if all(lo < hi for lo, hi in b)]  # empty boxes overlap nothing
    if len(boxes) < 2:
        return None
    arr = np.array(boxes, dtype=np.int64).reshape(len(boxes), -1, 2)
    lo, hi = arr[:, :, 0], arr[:, :, 1]
    varying = [d for d in range(arr.shape[1])
               if (lo[:, d] != lo[0, d]).any() or (hi[:, d] != hi[0, d]).any()]
    if len(varying) <= 1:
        d = varying[0] if varying else 0
        order = np.argsort(lo[:, d], kind="stable")
        starts, ends = lo[order, d], hi[order, d]
        reach = np.maximum.accumulate(ends)  # the furthest end among boxes so far
        hits = np.flatnonzero(starts[1:] < reach[:-1])
        if not hits.size:
            return None
        k = int(hits[0]) + 1
        j = int(np.argmax(ends[:k]))  # a box that reaches past box k's start
        return boxes[int(order[j])], boxes[int(order[k])]
    cuts = [np.unique(np.concatenate([lo[:, d], hi[:, d]])) for d in range(arr.shape[1])]
    if prod(len(c) - 1 for c in cuts) > _MAX_GRID_CELLS:
        raise UnsupportedError(
            f"a partitioned tensor with {len(boxes)} slices cut on too many boundaries "
            f"({' x '.join(str(len(c) - 1) for c in cuts)} cells)")
    first = np.stack([np.searchsorted(c, lo[:, d]) for d, c in enumerate(cuts)], axis=1)
    last = np.stack([np.searchsorted(c, hi[:, d]) for d, c in enumerate(cuts)], axis=1)
    owner = np.full([len(c) - 1 for c in cuts], -1, dtype=np.int64)
    for k in range(len(boxes)):
        cells = tuple(slice(a, b) for a, b in zip(first[k].tolist(), last[k].tolist()))
        taken = owner[cells]
        if (taken >= 0).any():
            return boxes[int(taken[taken >= 0].flat[0])], boxes[k]
        owner[cells] = k
    return None


def covering(boxes, region, where: str, **error_args) -> list:
    """``[(k, intersection), ...]`` for the stored slices ``boxes[k]`` (lists of
    ``(lo, hi)`` per dimension) that meet ``region``, after checking that no two
    slices overlap and that together they cover ``region``.

    Raises CorruptCheckpointError (``where`` starts its message; ``error_args``
    are its path/key) otherwise, as TF refuses such tensors.
    """
    overlap = find_overlap(boxes)
    if overlap is not None:
        raise CorruptCheckpointError(
            f"{where} has overlapping slices {bounds_spec(overlap[0])} and "
            f"{bounds_spec(overlap[1])}", **error_args)
    pieces = []
    for k, box in enumerate(boxes):
        inter = intersect(box, region)
        if inter is not None:
            pieces.append((k, inter))
    # Without overlaps, the pieces' volumes measure the coverage.
    if sum(prod([h - l for l, h in inter]) for _, inter in pieces) != \
            prod([h - l for l, h in region]):
        raise CorruptCheckpointError(
            f"{where}: its stored slices do not cover {bounds_spec(region)}", **error_args)
    return pieces


def assemble(region, boxes, pieces, values, dtype):
    """The read-only array of ``region`` from ``pieces`` (as :func:`covering`
    returns them) and ``values[i]``, the whole stored slice of ``pieces[i]``."""
    import numpy as np

    out = np.empty([h - l for l, h in region], dtype=dtype)
    for (k, inter), value in zip(pieces, values):
        box = boxes[k]
        src = tuple(slice(l - b[0], h - b[0]) for (l, h), b in zip(inter, box))
        dst = tuple(slice(l - r[0], h - r[0]) for (l, h), r in zip(inter, region))
        out[dst] = value[src]
    out.flags.writeable = False
    return out
