"""Summary statistics of a tensor's values (what ``tfshard show --stats`` prints)."""

from __future__ import annotations

import math

__all__ = ["tensor_stats", "is_integral"]


def is_integral(dtype) -> bool:
    """Whether numpy ``dtype`` holds integers (bool, numpy's integer types, ml_dtypes'
    int4/int2...)."""
    if dtype.kind in "biu":
        return True
    if dtype.kind != "V":
        return False
    import ml_dtypes

    try:
        ml_dtypes.iinfo(dtype)
    except (TypeError, ValueError):
        return False
    return True


def tensor_stats(array, chunk: int = 1 << 20) -> dict | None:
    """Statistics of a real numeric array.

    Parameters
    ----------
    array : array_like
    chunk : int
        Elements converted to float64 at a time, which bounds the memory used.

    Returns
    -------
    dict or None
        ``count``, ``nan``, ``inf``, ``zeros``, ``min``, ``max``, ``mean``, ``std``;
        None when the dtype is not a real number type (strings, variants, complex).
        NaNs are ignored by min/max/mean/std (like ``np.nanmean``); std is the
        population one (ddof=0); min and max keep the array's own dtype (exact for
        64-bit integers); mean and std are None when no value counts.
    """
    import numpy as np

    a = np.asarray(array)
    if a.dtype.kind not in "biufV" or a.dtype.fields is not None:
        return None
    flat = a.reshape(-1)
    try:
        flat[:1].astype(np.float64)
    except (TypeError, ValueError):  # a void dtype that is not an ml_dtypes number
        return None
    exact = is_integral(a.dtype)
    n_nan = n_inf = n_zero = n = 0
    mean = m2 = 0.0
    lo = hi = None
    for start in range(0, flat.size, chunk):
        part = flat[start:start + chunk]
        values = part.astype(np.float64)
        if not exact:
            nan = np.isnan(values)
            chunk_nan = int(nan.sum())
            if chunk_nan:
                n_nan += chunk_nan
                part, values = part[~nan], values[~nan]
            n_inf += int(np.isinf(values).sum())
        n_zero += int((values == 0).sum())
        if not values.size:
            continue
        native = part if exact and part.dtype.kind in "biu" else values
        c_lo, c_hi = native.min(), native.max()
        lo = c_lo if lo is None else min(lo, c_lo)
        hi = c_hi if hi is None else max(hi, c_hi)
        # Chan et al.'s pairwise update of (count, mean, sum of squared deviations).
        with np.errstate(invalid="ignore", over="ignore"):
            c_n, c_mean = values.size, float(values.mean())
            c_m2 = float(np.square(values - c_mean).sum())
            delta = c_mean - mean
            total = n + c_n
            mean += delta * c_n / total
            m2 += c_m2 + delta * delta * n * c_n / total
        n = total
    as_type = a.dtype.type
    return {
        "count": int(a.size), "nan": n_nan, "inf": n_inf, "zeros": n_zero,
        "min": None if lo is None else as_type(lo), "max": None if hi is None else as_type(hi),
        "mean": mean if n else None,
        "std": math.sqrt(m2 / n) if n and m2 >= 0 else (float("nan") if n else None),
    }
