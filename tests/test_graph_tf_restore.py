"""``tfshard verify CKPT --graph G`` (graph.check_restore) against TensorFlow restoring the
same pairs: TF1 ``Saver.restore`` after ``import_meta_graph`` (V2 saver with reference,
resource and partitioned variables; a TF 0.12-style RestoreSlice saver with a V1
checkpoint, including the 2016 TF Serving export of the shared corpus) and TF2
``tf.saved_model.load``, for good pairs and pairs broken on purpose: a tensor left out,
another dtype, another shape, an extra tensor.  tfshard's verdict must be TF's."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import tfshard  # noqa: E402
from tfshard import graph  # noqa: E402

DATA = Path(__file__).parent / "data" / "graph"
TF1_META = DATA / "tf1" / "model.ckpt-3.meta"
TF1_CKPT = DATA / "tf1" / "model.ckpt-3"
LEGACY_META = DATA / "legacy" / "export.meta"
CORPUS_EXPORT = (Path(__file__).parents[2] / "shared" / "corpus" / "realworld"
                 / "v1-serving-export-2016" / "export")


def tf1_restore(meta, prefix):
    """(None, {variable: value}) when TF's Saver restores ``prefix`` into the graph of
    ``meta``; (the error, None) when it fails."""
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        saver = v1.train.import_meta_graph(str(meta))
        with v1.Session() as sess:
            try:
                saver.restore(sess, str(prefix))
            except (tf.errors.OpError, ValueError) as exc:
                return exc, None
            values = {}
            for v in v1.global_variables():
                try:
                    values[v.op.name] = sess.run(v)
                except tf.errors.OpError:   # not restored (local or uninitialized)
                    pass
            return None, values


def broken(tmp_path, name, change, source=TF1_CKPT):
    values = tfshard.load(source)
    change(values)
    return tfshard.save(tmp_path / name / "ckpt", values)


def _set(key, value):
    return lambda values: values.__setitem__(key, value)


TF1_CASES = {
    "good": lambda v: None,
    "extra_tensor": _set("unrelated/extra", np.ones(3, np.float32)),
    "missing_counts": lambda v: v.pop("counts"),
    "missing_partitioned": lambda v: v.pop("emb"),
    "kernel_float64": lambda v: v.__setitem__("dense/kernel", v["dense/kernel"].astype(np.float64)),
    "step_int32": lambda v: v.__setitem__("global_step", v["global_step"].astype(np.int32)),
    "kernel_shape": _set("dense/kernel", np.zeros((4, 2), np.float32)),   # ref variable
    "bias_shape": _set("dense/bias", np.zeros(3, np.float32)),            # resource variable
    "emb_full_shape": _set("emb", np.zeros((11, 4), np.float32)),         # sliced restore
}


@pytest.mark.parametrize("case", sorted(TF1_CASES))
def test_tf1_saver_restore_agrees(tmp_path, case):
    prefix = broken(tmp_path, case, TF1_CASES[case])
    check = graph.check_restore(TF1_META, prefix)
    error, values = tf1_restore(TF1_META, prefix)
    assert check.source == "saver"
    failing = [m for m in check.mismatched if not m.restores_anyway]
    # TF fails exactly when tfshard finds something missing or a mismatch TF checks.
    assert (error is None) == (not check.missing and not failing), (case, check, error)
    if case in ("good", "extra_tensor"):
        assert check.ok and values is not None
        assert check.unused == (["unrelated/extra"] if case == "extra_tensor" else [])
        expected = tfshard.load(prefix)
        for name in ("dense/kernel", "dense/bias", "counts", "global_step"):
            assert np.array_equal(values[name], expected[name]), name
        parts = [values[f"emb/part_{i}"] for i in range(3)]
        assert np.array_equal(np.concatenate(parts), expected["emb"])
    elif case.startswith("missing"):
        key = "counts" if case == "missing_counts" else "emb"
        assert {k for k, _ in check.missing} == {key} and not check.mismatched
        assert key in str(error) or "not found" in str(error).lower()
    elif case == "bias_shape":
        # A resource variable's AssignVariableOp does not check shapes: TF restores, and
        # the variable takes the checkpoint's shape; tfshard says so.
        assert error is None and values["dense/bias"].shape == (3,)
        m, = check.mismatched
        assert (m.key, m.what, m.expected, m.found, m.restores_anyway) == (
            "dense/bias", "shape", [2], [3], True)
        assert not check.ok
    else:
        key = {"kernel_float64": "dense/kernel", "step_int32": "global_step",
               "kernel_shape": "dense/kernel", "emb_full_shape": "emb"}[case]
        what = "dtype" if case in ("kernel_float64", "step_int32") else "shape"
        # a partitioned variable: one entry per partition
        assert len(check.mismatched) == (3 if key == "emb" else 1)
        for m in check.mismatched:
            assert (m.key, m.what, m.restores_anyway) == (key, what, False)
        if what == "dtype" or key == "emb":   # RestoreV2 names the tensor (Assign does not)
            assert key in str(error)


def test_tf1_whole_tensor_restores_partitions(tmp_path):
    """A checkpoint holding the partitioned variable whole (as tfshard.save writes it):
    TF restores each partition's slice from it, and tfshard agrees."""
    prefix = broken(tmp_path, "whole", lambda v: None)
    assert tfshard.open(prefix).info("emb").slices == ()
    check = graph.check_restore(TF1_META, prefix)
    error, values = tf1_restore(TF1_META, prefix)
    assert check.ok and error is None
    assert values["emb/part_1"].shape == (3, 4)


LEGACY_CASES = {
    "good": lambda v: None,
    "missing": lambda v: v.pop("Variable_1"),
    "float64": lambda v: v.__setitem__("Variable", v["Variable"].astype(np.float64)),
    "shape": _set("Variable", np.zeros(2, np.float32)),
}


@pytest.mark.parametrize("case", sorted(LEGACY_CASES))
def test_legacy_restore_slice_saver_agrees(tmp_path, case):
    """The TF 0.12-style graph (Variable ops, RestoreSlice saver) with its own V1
    checkpoint, and V2 checkpoints broken on purpose."""
    source = DATA / "legacy" / "export"
    prefix = source if case == "good" else broken(tmp_path, case, LEGACY_CASES[case], source)
    check = graph.check_restore(LEGACY_META, prefix)
    error, values = tf1_restore(LEGACY_META, prefix)
    assert check.source == "saver"
    assert (error is None) == check.ok, (case, check, error)
    if case == "good":
        assert values == {"Variable": 0.5, "Variable_1": 2.0}


def test_legacy_graph_restores_the_2016_export():
    """A V1 checkpoint TF wrote in 2016 (TF Serving's half_plus_two), restored by TF
    2.21 into the TF 0.12-style graph, as tfshard predicts."""
    if not CORPUS_EXPORT.is_file():
        assert not os.environ.get("CI"), f"{CORPUS_EXPORT} is missing in CI"
        pytest.skip(f"the shared corpus file {CORPUS_EXPORT} is absent")
    check = graph.check_restore(LEGACY_META, CORPUS_EXPORT)
    error, values = tf1_restore(LEGACY_META, CORPUS_EXPORT)
    assert check.ok and error is None
    assert values == {"Variable": 0.5, "Variable_1": 2.0}


def saved_model_variant(tmp_path, name, change):
    src = DATA / "tf2_module"
    out = tmp_path / name
    shutil.copytree(src, out)
    values = tfshard.load(src / "variables" / "variables")
    change(values)
    shutil.rmtree(out / "variables")
    tfshard.save(out / "variables" / "variables", values)
    return out


BIAS = "bias/.ATTRIBUTES/VARIABLE_VALUE"
TF2_CASES = {
    "good": lambda v: None,
    "extra": _set("extra", np.ones(2, np.float32)),
    "missing": lambda v: v.pop(BIAS),
    "float64": _set(BIAS, np.zeros(2, np.float64)),
    "shape": _set(BIAS, np.zeros(3, np.float32)),
    "kernel_shape": _set("inner/kernel/.ATTRIBUTES/VARIABLE_VALUE", np.zeros((2, 3), np.float32)),
}


@pytest.mark.parametrize("case", sorted(TF2_CASES))
def test_tf2_saved_model_load_agrees(tmp_path, case):
    directory = saved_model_variant(tmp_path, case, TF2_CASES[case])
    check = graph.check_restore(directory)
    assert check.source == "object_graph"
    try:
        loaded = tf.saved_model.load(str(directory))
        error = None
    except (tf.errors.OpError, ValueError, OSError) as exc:   # a missing key: OSError
        error, loaded = exc, None
    assert (error is None) == check.ok, (case, check, error)
    if loaded is not None:
        assert loaded.bias.numpy().tolist() == [0.5, -0.5]
        assert check.unused == (["extra"] if case == "extra" else [])
