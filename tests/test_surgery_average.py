"""tfshard.conversion.average and ``tfshard average``: the mean of checkpoints, checked
against numpy's mean over the values TensorFlow reads, and restored by TensorFlow."""

import json
import os

import ml_dtypes
import numpy as np
import pytest

import tfshard
from tfshard import cli, conversion, formats


def _tf_checkpoints(tf, directory, n):
    """``n`` checkpoints of one tf.Module (float32, float16, float64, bfloat16, int64,
    bool variables), saved by TensorFlow with a CheckpointManager; returns (module,
    prefixes oldest first)."""
    rng = np.random.default_rng(5)

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.zeros([7, 5]))
            self.half = tf.Variable(tf.zeros([3], tf.float16))
            self.wide = tf.Variable(tf.zeros([4], tf.float64))
            self.brain = tf.Variable(tf.zeros([6], tf.bfloat16))
            self.step = tf.Variable(tf.constant(0, tf.int64))
            self.flag = tf.Variable(False)

    model = Model()
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(directory),
                                         max_to_keep=n)
    prefixes = []
    for i in range(n):
        model.kernel.assign(rng.standard_normal((7, 5)).astype(np.float32))
        model.half.assign(rng.standard_normal(3).astype(np.float16))
        model.wide.assign(rng.standard_normal(4))
        model.brain.assign(tf.cast(rng.standard_normal(6), tf.bfloat16))
        model.step.assign(100 * (i + 1))
        model.flag.assign(i % 2 == 0)
        prefixes.append(manager.save())
    return Model, prefixes


def test_average_equals_numpy_mean_of_tf_read_values(tmp_path):
    tf = pytest.importorskip("tensorflow")
    Model, prefixes = _tf_checkpoints(tf, tmp_path / "train", 4)
    report = conversion.average(tmp_path / "avg" / "ckpt", prefixes)
    readers = [tf.train.load_checkpoint(p) for p in prefixes]
    dtypes = readers[-1].get_variable_to_dtype_map()
    averaged = set()
    with tfshard.open(tmp_path / "avg" / "ckpt") as out:
        assert sorted(out) == sorted(dtypes)
        for name, dtype in dtypes.items():
            values = [r.get_tensor(name) for r in readers]
            got = out[name]
            if dtype.is_floating:
                averaged.add(name)
                want = np.mean(np.stack([np.asarray(v, np.float64) for v in values]), axis=0)
                assert got.dtype == np.asarray(values[0]).dtype
                # One rounding of the float64 mean: equal, or the neighbour when numpy's
                # pairwise summation order rounds the other way.
                np.testing.assert_array_max_ulp(got.astype(np.float64),
                                                want.astype(got.dtype).astype(np.float64), 1)
            elif dtype == tf.string:  # the object graph: the last checkpoint's
                assert got[()] == values[-1]
            else:  # integers and bool: the last checkpoint's
                assert np.asarray(values[-1]).tobytes() == got.tobytes(), name
    assert sorted(report.averaged) == sorted(averaged)
    assert "model/step/.ATTRIBUTES/VARIABLE_VALUE" in report.from_last
    assert report.inputs == prefixes and report.weights == [1.0] * 4
    # TensorFlow restores the average into the model.
    fresh = Model()
    tf.train.Checkpoint(model=fresh).restore(str(tmp_path / "avg" / "ckpt")).assert_consumed()
    with tfshard.open(tmp_path / "avg" / "ckpt") as out:
        np.testing.assert_array_equal(fresh.kernel.numpy(),
                                      out["model/kernel/.ATTRIBUTES/VARIABLE_VALUE"])
    assert fresh.step.numpy() == 400


def test_average_is_the_float64_sum_rounded_once(tmp_path):
    rng = np.random.default_rng(3)
    values = [{"w": rng.standard_normal((64, 33)).astype(np.float32),
               "b": rng.standard_normal(40).astype(ml_dtypes.bfloat16),
               "c": (rng.standard_normal(5) + 1j * rng.standard_normal(5)).astype(np.complex64),
               "e": np.zeros((0, 3), np.float32)} for _ in range(5)]
    paths = [tfshard.save(tmp_path / f"c{i}", v) for i, v in enumerate(values)]
    conversion.average(tmp_path / "avg", paths)
    got = tfshard.load(tmp_path / "avg")
    for name in ("w", "b", "c", "e"):
        wide = np.complex128 if name == "c" else np.float64
        acc = np.zeros(values[0][name].shape, wide)
        for v in values:
            acc += v[name].astype(wide)
        want = (acc / 5).astype(values[0][name].dtype)
        assert got[name].dtype == want.dtype and got[name].tobytes() == want.tobytes(), name


def test_weights_and_sum_integers(tmp_path):
    a = tfshard.save(tmp_path / "a", {"w": np.array([1.0, 2.0], np.float32),
                                      "step": np.int64(10), "n": np.array([250], np.uint8)})
    b = tfshard.save(tmp_path / "b", {"w": np.array([3.0, 6.0], np.float32),
                                      "step": np.int64(20), "n": np.array([3], np.uint8)})
    conversion.average(tmp_path / "w", [a, b], weights=[1, 3])
    got = tfshard.load(tmp_path / "w")
    assert got["w"].tolist() == [2.5, 5.0] and int(got["step"]) == 20 and got["n"][0] == 3
    report = conversion.average(tmp_path / "s", [a, b], sum_integers=True)
    assert sorted(report.summed) == ["n", "step"]
    got = tfshard.load(tmp_path / "s")
    assert int(got["step"]) == 30 and got["n"].dtype == np.uint8 and got["n"][0] == 253
    c = tfshard.save(tmp_path / "c", {"w": np.zeros(2, np.float32), "step": np.int64(1),
                                      "n": np.array([10], np.uint8)})
    with pytest.raises(tfshard.InvalidTensorError, match="'n'.*does not fit its dtype uint8"):
        conversion.average(tmp_path / "o", [a, b, c], sum_integers=True)
    big = [tfshard.save(tmp_path / f"big{i}", {"x": np.array([2**62], np.int64)})
           for i in range(2)]
    with pytest.raises(tfshard.InvalidTensorError, match="does not fit its dtype int64"):
        conversion.average(tmp_path / "o", big, sum_integers=True)
    assert not os.path.exists(tmp_path / "o.index")
    for bad in ([1], [1, -1], [0, 0], [1, float("nan")], ["x", 1]):
        with pytest.raises(tfshard.InvalidTensorError):
            conversion.average(tmp_path / "o", [a, b], weights=bad)


def test_mismatched_checkpoints_are_refused_with_every_difference(tmp_path):
    a = tfshard.save(tmp_path / "a", {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3),
                                      "only_a": np.zeros(1)})
    b = tfshard.save(tmp_path / "b", {"w": np.zeros((3, 2), np.float32),
                                      "b": np.zeros(3, np.float32), "only_b": np.zeros(1)})
    with pytest.raises(tfshard.InvalidTensorError) as info:
        conversion.average(tmp_path / "out", [a, b])
    assert [name for name, _ in info.value.mismatches] == ["b", "only_a", "only_b", "w"]
    message = str(info.value)
    assert "4 difference(s)" in message and "nothing was written" in message
    assert f"only_a: missing from {b}" in message
    assert f"w: {a}: float32 [2, 3]; {b}: float32 [3, 2]" in message
    assert f"b: {a}: float64 [3]; {b}: float32 [3]" in message
    assert not os.path.exists(tmp_path / "out.index")
    with pytest.raises(tfshard.InvalidTensorError, match="is one of the inputs"):
        conversion.average(a, [a, a], overwrite=True)


def test_last_n_from_the_state_file(tmp_path):
    manager = tfshard.CheckpointManager(tmp_path / "train", max_to_keep=5)
    for i in range(5):
        manager.save({"w": np.full(3, float(i), np.float32), "global_step": np.int64(i)})
    report = conversion.average(tmp_path / "avg", tmp_path / "train", last=3)
    assert [os.path.basename(p) for p in report.inputs] == ["ckpt-3", "ckpt-4", "ckpt-5"]
    got = tfshard.load(tmp_path / "avg")
    assert got["w"].tolist() == [3.0, 3.0, 3.0] and int(got["global_step"]) == 4
    with pytest.raises(tfshard.InvalidTensorError, match="lists 5 checkpoint.*last=6 needs 6"):
        conversion.average(tmp_path / "o", tmp_path / "train", last=6)
    with pytest.raises(tfshard.CheckpointNotFoundError, match="no 'checkpoint' state file"):
        conversion.average(tmp_path / "o", tmp_path, last=1)


def test_average_of_safetensors_files_keeps_their_metadata(tmp_path):
    save_file = pytest.importorskip("safetensors.numpy").save_file
    for i in range(3):
        save_file({"w": np.full((2, 2), i, np.float32)}, str(tmp_path / f"m{i}.safetensors"),
                  metadata={"format": "pt", "run": "r1"})
    conversion.average(tmp_path / "avg.safetensors",
                       [tmp_path / f"m{i}.safetensors" for i in range(3)])
    with formats.open_source(tmp_path / "avg.safetensors") as out:
        assert out.read("w").tolist() == [[1.0, 1.0], [1.0, 1.0]]
        assert {k: v for k, v in out.metadata.items() if k != formats.CHECKSUM_KEY} == \
            {"format": "pt", "run": "r1"}


def test_average_cli_text_and_json(tmp_path, capsys):
    paths = [tfshard.save(tmp_path / f"c{i}", {"w": np.full(2, i, np.float32),
                                               "global_step": np.int64(i)}) for i in range(3)]
    assert cli.main(["average", str(tmp_path / "avg"), *paths]) == 0
    out = capsys.readouterr().out
    assert "averaged 3 checkpoints" in out and "1 tensor averaged" in out
    assert "taken from the last checkpoint: global_step" in out
    assert cli.main(["average", str(tmp_path / "avg2"), *paths, "--weights", "0,0,1",
                     "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["weights"] == [0.0, 0.0, 1.0] and doc["averaged"] == ["w"]
    assert tfshard.load(tmp_path / "avg2")["w"].tolist() == [2.0, 2.0]
    # Existing output, mismatches and bad options.
    assert cli.main(["average", str(tmp_path / "avg"), *paths]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["average", str(tmp_path / "o"), *paths, "--last", "2"]) == 2
    assert cli.main(["average", str(tmp_path / "o"), *paths, "--weights", "1,x"]) == 2
    capsys.readouterr()
    assert cli.main(["average", "--help"]) == 0
    assert "--last 5" in capsys.readouterr().out


def test_tensors_longer_than_one_chunk_are_narrowed_in_place_correctly(tmp_path):
    from tfshard.surgery import average as average_module

    n = 2 * average_module._CHUNK + 12345  # three chunks: the in-place narrowing's edge cases
    rng = np.random.default_rng(8)
    values = [{"f32": rng.standard_normal(n).astype(np.float32),
               "bf16": rng.standard_normal(n).astype(ml_dtypes.bfloat16),
               "f64": rng.standard_normal(n)} for _ in range(3)]
    paths = [tfshard.save(tmp_path / f"c{i}", v) for i, v in enumerate(values)]
    weights = [0.5, 1.0, 2.5]
    conversion.average(tmp_path / "avg", paths, weights=weights)
    got = tfshard.load(tmp_path / "avg")
    for name in ("f32", "bf16", "f64"):
        acc = np.zeros(n)
        for v, w in zip(values, weights):
            acc += v[name].astype(np.float64) * w
        want = (acc / sum(weights)).astype(values[0][name].dtype)
        assert got[name].tobytes() == want.tobytes(), name
