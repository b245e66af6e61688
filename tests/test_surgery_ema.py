"""--prefer-ema: moving averages written under their variables' names, on checkpoints
made by TensorFlow (tf.compat.v1 ExponentialMovingAverage + Saver, TF2 averaged variables,
an optimizer's "average" slots) and by Keras 3 (use_ema=True), restored by TensorFlow."""

import numpy as np
import pytest

import tfshard
from tfshard import conversion, formats

tf = pytest.importorskip("tensorflow")


def _tf1_ema_checkpoint(prefix):
    """dense/kernel and dense/bias with moving averages that differ from them, plus a
    variable without one and the global step.  Returns {name: value TF saved}."""
    g = tf.Graph()
    with g.as_default():
        kernel = tf.compat.v1.get_variable(
            "dense/kernel", initializer=np.arange(6, dtype=np.float32).reshape(2, 3))
        bias = tf.compat.v1.get_variable("dense/bias", initializer=np.zeros(3, np.float32))
        tf.compat.v1.get_variable("other", initializer=np.ones(2, np.float32))
        tf.compat.v1.train.get_or_create_global_step()
        ema = tf.compat.v1.train.ExponentialMovingAverage(0.5)
        update = ema.apply([kernel, bias])
        step = [kernel.assign(kernel * 3), bias.assign(bias + 1)]
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            session.run(update)
            session.run(step)
            session.run(update)
            path = tf.compat.v1.train.Saver().save(session, str(prefix))
    reader = tf.train.load_checkpoint(path)
    return path, {n: reader.get_tensor(n) for n, _ in tf.train.list_variables(path)}


def test_tf1_moving_averages_replace_their_variables(tmp_path):
    path, saved = _tf1_ema_checkpoint(tmp_path / "tf1" / "model.ckpt")
    assert not np.array_equal(saved["dense/kernel"], saved["dense/kernel/ExponentialMovingAverage"])
    report = conversion.convert(path, tmp_path / "out.safetensors", prefer_ema=True)
    assert report.replaced == {"dense/bias": "dense/bias/ExponentialMovingAverage",
                               "dense/kernel": "dense/kernel/ExponentialMovingAverage"}
    assert report.ema_not_found == ["other"]  # global_step is an integer: not listed
    with formats.open_source(tmp_path / "out.safetensors") as out:
        assert sorted(out.names()) == ["dense/bias", "dense/kernel", "global_step", "other"]
        for name in ("dense/bias", "dense/kernel"):
            np.testing.assert_array_equal(out.read(name),
                                          saved[f"{name}/ExponentialMovingAverage"])
        np.testing.assert_array_equal(out.read("other"), saved["other"])
    # Without the flag nothing is replaced.
    plain = conversion.convert(path, tmp_path / "plain.safetensors")
    assert plain.replaced == {} and plain.tensors == 6


def test_tf2_averaged_variables_restore_into_the_model(tmp_path):
    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.ones([2, 3]), name="dense/kernel")
            self.bias = tf.Variable(tf.zeros([3]), name="dense/bias")

    model = Model()
    ema = tf.train.ExponentialMovingAverage(0.5)
    variables = [model.kernel, model.bias]
    ema.apply(variables)
    model.kernel.assign(model.kernel * 3)
    model.bias.assign(model.bias - 2)
    ema.apply(variables)
    averages = [ema.average(v) for v in variables]
    path = tf.train.Checkpoint(model=model, averaged_weights=averages).save(
        str(tmp_path / "tf2" / "ckpt"))
    report = conversion.convert(path, tmp_path / "out" / "ckpt", prefer_ema=True)
    assert report.replaced == {"model/kernel/.ATTRIBUTES/VARIABLE_VALUE":
                               "averaged_weights/0/.ATTRIBUTES/VARIABLE_VALUE",
                               "model/bias/.ATTRIBUTES/VARIABLE_VALUE":
                               "averaged_weights/1/.ATTRIBUTES/VARIABLE_VALUE"}
    assert report.ema_not_found == []
    with tfshard.open(tmp_path / "out" / "ckpt") as out:
        assert not any(n.startswith("averaged_weights/") for n in out)
    fresh = Model()
    fresh.kernel.assign(tf.zeros([2, 3]))
    status = tf.train.Checkpoint(model=fresh).restore(str(tmp_path / "out" / "ckpt"))
    status.assert_existing_objects_matched()
    np.testing.assert_array_equal(fresh.kernel.numpy(), averages[0].numpy())
    np.testing.assert_array_equal(fresh.bias.numpy(), averages[1].numpy())
    assert not np.array_equal(averages[0].numpy(), model.kernel.numpy())


def test_optimizer_average_slots_are_moving_averages(tmp_path):
    class AveragingSGD(tf.compat.v1.train.GradientDescentOptimizer):
        """Keeps an "average" slot per variable, as TF Addons' MovingAverage does."""

        def _create_slots(self, var_list):
            for v in var_list:
                self._zeros_slot(v, "average", self._name)

    class Model(tf.Module):
        pass

    model = Model()
    model.k = tf.Variable([1.0, 2.0])
    model.j = tf.Variable([5.0])
    opt = AveragingSGD(0.1)
    opt.apply_gradients([(tf.ones_like(model.k), model.k), (tf.ones_like(model.j), model.j)])
    opt.get_slot(model.k, "average").assign([7.0, 8.0])
    opt.get_slot(model.j, "average").assign([9.0])
    path = tf.train.Checkpoint(model=model, optimizer=opt).save(str(tmp_path / "s" / "ckpt"))
    report = conversion.convert(path, tmp_path / "out", prefer_ema=True)
    assert sorted(report.replaced) == ["model/j/.ATTRIBUTES/VARIABLE_VALUE",
                                       "model/k/.ATTRIBUTES/VARIABLE_VALUE"]
    fresh = Model()
    fresh.k = tf.Variable([0.0, 0.0])
    fresh.j = tf.Variable([0.0])
    tf.train.Checkpoint(model=fresh).restore(str(tmp_path / "out")) \
        .assert_existing_objects_matched()
    assert fresh.k.numpy().tolist() == [7.0, 8.0] and fresh.j.numpy().tolist() == [9.0]


def _keras_model(keras):
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2),
                             keras.layers.BatchNormalization()])


def test_keras3_use_ema_weights_replace_the_model_weights(tmp_path):
    keras = pytest.importorskip("keras")
    model = _keras_model(keras)
    model(np.ones((4, 3), np.float32), training=True)  # moves the BatchNorm statistics
    opt = keras.optimizers.Adam(learning_rate=0.1, use_ema=True, ema_momentum=0.5)
    opt.build(model.trainable_variables)
    for scale in (1.0, -3.0):
        opt.apply([tf.fill(v.shape, scale) for v in model.trainable_variables],
                  model.trainable_variables)
    averages = [v.numpy() for v in opt._model_variables_moving_average]
    weights = [v.numpy() for v in model.trainable_variables]
    assert not any(np.array_equal(a, w) for a, w in zip(averages, weights))
    path = tf.train.Checkpoint(model=model, optimizer=opt).save(str(tmp_path / "k" / "ckpt"))

    report = conversion.convert(path, tmp_path / "out" / "ckpt", prefer_ema=True)
    assert len(report.replaced) == len(averages) == 4
    # The BatchNorm statistics are not trained, so no average exists for them.
    assert sorted(n.split("/")[-3] for n in report.ema_not_found) == ["moving_mean",
                                                                      "moving_variance"]
    fresh = _keras_model(keras)
    status = tf.train.Checkpoint(model=fresh).restore(str(tmp_path / "out" / "ckpt"))
    status.assert_existing_objects_matched()
    for variable, average in zip(fresh.trainable_variables, averages):
        np.testing.assert_array_equal(variable.numpy(), average)
    for variable, original in zip(fresh.non_trainable_variables, model.non_trainable_variables):
        np.testing.assert_array_equal(variable.numpy(), original.numpy())

    # extract writes the same values, named as the checkpoint names the variables.
    extracted = conversion.extract(path, tmp_path / "w.safetensors", prefer_ema=True)
    assert extracted.replaced == report.replaced
    with formats.open_source(tmp_path / "w.safetensors") as out, tfshard.open(path) as src:
        for name, ema in report.replaced.items():
            np.testing.assert_array_equal(out.read(name), src[ema])
            assert ema not in out


def test_find_ema_needs_matching_dtype_and_shape(tmp_path):
    path = tfshard.save(tmp_path / "c", {
        "a": np.zeros(3, np.float32), "a/ExponentialMovingAverage": np.ones(3, np.float32),
        "b": np.zeros(3, np.float32), "b/ExponentialMovingAverage": np.ones(4, np.float32)})
    assert conversion.find_ema(path) == {"a": "a/ExponentialMovingAverage"}
    report = conversion.convert(path, tmp_path / "o.npz", prefer_ema=True)
    # b's "average" has another shape: b is written as it is and so is that tensor.
    assert report.replaced == {"a": "a/ExponentialMovingAverage"}
    assert report.ema_not_found == ["b", "b/ExponentialMovingAverage"]
