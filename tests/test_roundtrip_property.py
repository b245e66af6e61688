"""Property-based round trips: random tensors written by the independent test builder read
back identically (names, dtypes, shapes, shard counts, alignment, byte order, compression)."""

import ml_dtypes
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bundle_builder as bb
import tfshard

FIXED = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8,
         np.uint16, np.uint32, np.uint64, np.bool_, np.complex64, np.complex128]
ML = [ml_dtypes.bfloat16, ml_dtypes.float8_e5m2, ml_dtypes.int4, ml_dtypes.uint4]

names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
                max_size=40)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def tensors(draw):
    shape = draw(shapes)
    kind = draw(st.sampled_from(["fixed", "ml", "string"]))
    if kind == "fixed":
        return draw(hnp.arrays(draw(st.sampled_from(FIXED)), shape))
    if kind == "ml":
        dt = draw(st.sampled_from(ML))
        raw = draw(hnp.arrays(np.int8, shape, elements=st.integers(-8, 7)))
        return (raw.astype(np.float32) if dt in (ml_dtypes.bfloat16, ml_dtypes.float8_e5m2)
                else (raw & 0x7 if dt == ml_dtypes.uint4 else raw)).astype(dt)
    flat = draw(st.lists(st.binary(max_size=30), min_size=int(np.prod(shape)),
                         max_size=int(np.prod(shape))))
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(shape)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(contents=st.dictionaries(names, tensors(), min_size=1, max_size=8),
       num_shards=st.integers(1, 3), alignment=st.sampled_from([1, 8, 64]),
       big_endian=st.booleans(), compress=st.booleans(), seed=st.integers(0, 2**16))
def test_round_trip(tmp_path_factory, contents, num_shards, alignment, big_endian, compress,
                    seed):
    rng = np.random.default_rng(seed)
    b = bb.Bundle(big_endian=big_endian)
    for name, array in contents.items():
        b.add(name, array, shard=int(rng.integers(num_shards)))
    prefix = b.write(str(tmp_path_factory.mktemp("rt") / "ckpt"), num_shards=num_shards,
                     alignment=alignment, compress=compress)
    with tfshard.open(prefix) as ckpt:
        assert sorted(ckpt) == sorted(contents)
        for name, expected in contents.items():
            actual = ckpt[name]
            assert actual.shape == expected.shape and actual.dtype == expected.dtype
            if expected.dtype == object:
                assert actual.tolist() == expected.tolist()
            else:
                assert actual.tobytes() == np.ascontiguousarray(expected).tobytes()
