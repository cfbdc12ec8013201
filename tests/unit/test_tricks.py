"""Each trick's effect on the built model, loss and optimizer."""

from typing import get_args

import keras
import numpy as np
import pytest

from core.spec import TRICKS, Architecture, JobSpec
from tests.support.data import tiny_images
from worker import tricks


def spec(*tricks_: object, **fields: object) -> JobSpec:
    return JobSpec.model_validate({"tricks": list(tricks_), **fields})


def layer_summary(model: keras.Model) -> list[tuple[str, str | float | None]]:
    summary = []
    for layer in model.layers[1:]:
        detail = None
        if isinstance(layer, keras.layers.Dense):
            detail = f"{layer.units} {layer.activation.__name__}"
        elif isinstance(layer, keras.layers.Dropout):
            detail = layer.rate
        elif isinstance(layer, keras.layers.Activation):
            detail = layer.activation.__name__
        summary.append((type(layer).__name__, detail))
    return summary


def test_base_model_is_the_notebooks_mlp():
    model = tricks.build_model(spec())
    assert layer_summary(model) == [
        ("Flatten", None),
        ("Dense", "128 relu"),
        ("Dense", "32 relu"),
        ("Dense", "10 softmax"),
    ]
    assert model.count_params() == 784 * 128 + 128 + 128 * 32 + 32 + 32 * 10 + 10
    optimizer = tricks.optimizer(spec(), steps_per_epoch=10)
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert float(optimizer.learning_rate) == pytest.approx(0.001)


def test_dropout_follows_each_hidden_layer():
    model = tricks.build_model(spec({"name": "dropout", "rate": 0.3}))
    assert layer_summary(model) == [
        ("Flatten", None),
        ("Dense", "128 relu"),
        ("HashDropout", 0.3),
        ("Dense", "32 relu"),
        ("HashDropout", 0.3),
        ("Dense", "10 softmax"),
    ]


def test_batch_norm_sits_between_linear_dense_and_relu_before_dropout():
    model = tricks.build_model(spec("batch_norm", "dropout"))
    assert layer_summary(model) == [
        ("Flatten", None),
        ("Dense", "128 linear"),
        ("BatchNormalization", None),
        ("Activation", "relu"),
        ("HashDropout", 0.1),
        ("Dense", "32 linear"),
        ("BatchNormalization", None),
        ("Activation", "relu"),
        ("HashDropout", 0.1),
        ("Dense", "10 softmax"),
    ]


def hidden_penalty(model: keras.Model, l2: float) -> float:
    hidden = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][:-1]
    return l2 * sum(float(np.sum(np.square(w))) for layer in hidden for w in layer.get_weights())


def losses(job):
    """The job's built model, its plain data loss on a few images, and the loss training
    minimises on them (with any penalty)."""
    model = tricks.build_model(job)
    x, y = tiny_images(8, seed=0)
    x = x.astype("float32") / 255
    loss, metrics = tricks.loss_and_metrics(job)
    model.compile(optimizer=tricks.optimizer(job, 1), loss=loss, metrics=metrics)
    y_pred = model(x, training=False)
    data_loss = float(np.mean(loss(y, y_pred)))
    return model, data_loss, float(model.compute_loss(x=x, y=y, y_pred=y_pred, training=True))


def test_weight_decay_penalty_enters_the_training_loss():
    model, data_loss, total = losses(spec({"name": "weight_decay", "l2": 0.01}))
    penalty = hidden_penalty(model, 0.01)
    assert penalty > 0.1  # kernels and biases of both hidden layers, not the output layer
    assert total == pytest.approx(data_loss + penalty, rel=1e-4)


def test_weight_decay_shrinks_the_trained_weights(data_dir):
    from core import datasets
    from worker import training

    splits = datasets.load("fashion_mnist", data_dir, 100)
    norms = {}
    jobs = {
        "plain": spec(epochs=3),
        "decayed": spec({"name": "weight_decay", "l2": 0.01}, epochs=3),
    }
    for name, job in jobs.items():
        trained = training.train(job, splits, lambda row, snapshot: True)
        norms[name] = hidden_penalty(trained.model, 1.0)
    # Same seed, same data order: without the penalty in the gradients the norms would match.
    assert norms["decayed"] < 0.75 * norms["plain"]


def test_momentum_is_real_nesterov_momentum():
    optimizer = tricks.optimizer(spec("momentum"), steps_per_epoch=10)
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer.momentum == 0.9
    assert optimizer.nesterov is True
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    custom = tricks.optimizer(spec({"name": "momentum", "momentum": 0.5, "nesterov": False}), 10)
    assert (custom.momentum, custom.nesterov) == (0.5, False)


def test_early_stopping_stops_after_patience_and_keeps_the_best_weights():
    model = tricks.build_model(spec(hidden_units=[4]))
    watch = tricks.best_epoch(spec({"name": "early_stopping", "patience": 2, "min_delta": 0.01}))
    snapshots = {}
    decisions = []
    for epoch, val_loss in enumerate([1.0, 0.8, 0.795, 0.9], start=1):
        model.set_weights([w + epoch for w in model.get_weights()])  # "training"
        snapshots[epoch] = model.get_weights()
        decisions.append(watch.update(epoch, val_loss, model))
    # 0.795 improves on 0.8 by less than min_delta: not an improvement; then patience runs out.
    assert decisions == [False, False, False, True]
    assert (watch.best_epoch, watch.best_loss, watch.wait) == (2, 0.8, 2)
    for kept, expected in zip(watch.best_weights, snapshots[2], strict=True):
        np.testing.assert_array_equal(kept, expected)


def test_without_early_stopping_the_best_epoch_is_followed_but_never_stops_training():
    model = tricks.build_model(spec(hidden_units=[4]))
    watch = tricks.best_epoch(spec())
    assert [
        watch.update(e, loss, model) for e, loss in enumerate([1.0, 0.5, 0.9, 0.9, 0.9], 1)
    ] == [False] * 5
    assert (watch.best_epoch, watch.best_weights) == (2, [])
    assert not watch.update(6, None, model)  # no validation split: nothing to follow


def test_label_smoothing_softens_one_hot_targets():
    job = spec({"name": "label_smoothing", "amount": 0.2})
    loss, metrics = tricks.loss_and_metrics(job)
    targets = np.eye(10, dtype="float32")[[3, 7]]
    probabilities = np.random.default_rng(0).dirichlet(np.ones(10), 2).astype("float32")
    smoothed = keras.losses.CategoricalCrossentropy(label_smoothing=0.2, reduction=None)
    np.testing.assert_allclose(loss(targets, probabilities), smoothed(targets, probabilities))
    assert tricks.one_hot_labels(job) and not tricks.one_hot_labels(spec())
    assert {m.name for m in metrics} == {"accuracy", "crossentropy"}


def test_cosine_decay_lowers_the_learning_rate_to_its_final_fraction():
    job = spec({"name": "cosine_decay", "final_fraction": 0.1}, epochs=4, learning_rate=0.02)
    optimizer = tricks.optimizer(job, steps_per_epoch=5)
    schedule = optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(0.02)
    assert float(schedule(10)) == pytest.approx(0.02 * (0.1 + 0.9 * 0.5))
    assert float(schedule(20)) == pytest.approx(0.002)


def test_augmentation_is_active_in_training_only():
    x = tiny_images(4, seed=3)[0].astype("float32") / 255
    augmented = tricks.build_model(spec("augmentation"))
    plain = tricks.build_model(spec())
    layer_types = {type(layer).__name__ for layer in augmented.layers}
    assert {"RandomFlip", "RandomTranslation"} <= layer_types
    # Same seed, same initial weights: at inference the augmentation layers are the identity.
    np.testing.assert_allclose(augmented(x, training=False), plain(x, training=False), rtol=1e-6)
    assert not np.allclose(augmented(x, training=True), augmented(x, training=True))


def test_the_same_seed_gives_the_same_initial_weights_whatever_the_tricks():
    def kernels(model):
        return [
            layer.get_weights()[0]
            for layer in model.layers
            if isinstance(layer, keras.layers.Dense)
        ]

    base = kernels(tricks.build_model(spec(seed=3)))
    for variant in (spec("dropout", seed=3), spec("batch_norm", "weight_decay", seed=3)):
        for a, b in zip(base, kernels(tricks.build_model(variant)), strict=True):
            np.testing.assert_array_equal(a, b)
    other_seed = kernels(tricks.build_model(spec(seed=4)))
    assert not np.array_equal(base[0], other_seed[0])


def test_every_trick_is_either_packable_or_refused_with_a_reason():
    # A new trick must be placed: packed only once the stacked model trains it as alone.
    assert tricks.PACKABLE.isdisjoint(tricks.NOT_PACKABLE)
    assert tricks.PACKABLE | tricks.NOT_PACKABLE.keys() == set(TRICKS)
    assert all(reason for reason in tricks.NOT_PACKABLE.values())
    assert tricks.packable(spec(*tricks.PACKABLE))
    assert not tricks.packable(spec("dropout", "augmentation"))


# ---- the same tricks on the CNN -----------------------------------------------------------

CNN = {"architecture": "cnn"}


def cnn_summary(model: keras.Model) -> list[tuple[str, str | float | None]]:
    summary: list[tuple[str, str | float | None]] = []
    for name, detail in layer_summary(model):
        layer = model.layers[len(summary) + 1]
        if isinstance(layer, keras.layers.Conv2D):
            detail = f"{layer.filters} {layer.kernel_size} {layer.activation.__name__}"
        elif isinstance(layer, keras.layers.Dropout) and layer.noise_shape is not None:
            detail = f"{layer.rate} {layer.noise_shape}"
        summary.append((name, detail))
    return summary


def test_base_cnn_is_two_conv_blocks_and_a_dense_head():
    model = tricks.build_model(spec(**CNN))
    assert model.name == "tricklab_cnn"
    assert cnn_summary(model) == [
        ("Reshape", None),
        ("Conv2D", "32 (3, 3) relu"),
        ("MaxPooling2D", None),
        ("Conv2D", "64 (3, 3) relu"),
        ("MaxPooling2D", None),
        ("Flatten", None),
        ("Dense", "128 relu"),
        ("Dense", "10 softmax"),
    ]
    # 28 → 26 → 13 → 11 → 5: a 5 × 5 × 64 map into the head
    assert model.count_params() == (9 * 32 + 32) + (9 * 32 * 64 + 64) + (1600 * 128 + 128) + (
        128 * 10 + 10
    )
    assert model.output_shape == (None, 10)


def test_cnn_shape_follows_its_fields():
    model = tricks.build_model(
        spec(**CNN, conv_filters=[8, 8, 16], kernel_size=2, dense_units=[64, 32])
    )
    assert [row for row in cnn_summary(model) if row[0] in ("Conv2D", "Dense")] == [
        ("Conv2D", "8 (2, 2) relu"),
        ("Conv2D", "8 (2, 2) relu"),
        ("Conv2D", "16 (2, 2) relu"),
        ("Dense", "64 relu"),
        ("Dense", "32 relu"),
        ("Dense", "10 softmax"),
    ]


def test_cnn_dropout_follows_each_block_and_each_dense_layer():
    model = tricks.build_model(spec({"name": "dropout", "rate": 0.3}, **CNN))
    assert cnn_summary(model) == [
        ("Reshape", None),
        ("Conv2D", "32 (3, 3) relu"),
        ("MaxPooling2D", None),
        ("HashDropout", 0.3),
        ("Conv2D", "64 (3, 3) relu"),
        ("MaxPooling2D", None),
        ("HashDropout", 0.3),
        ("Flatten", None),
        ("Dense", "128 relu"),
        ("HashDropout", 0.3),
        ("Dense", "10 softmax"),
    ]


def test_spatial_dropout_drops_whole_feature_maps_after_the_blocks_only():
    model = tricks.build_model(spec({"name": "dropout", "rate": 0.5, "spatial": True}, **CNN))
    drops = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert [layer.noise_shape for layer in drops] == [(None, 1, 1, None)] * 2 + [None]
    maps = np.ones((8, 5, 5, 64), np.float32)
    dropped = keras.ops.convert_to_numpy(drops[1](maps, training=True))
    per_map = dropped.reshape(8, 25, 64)
    # each (image, channel) map is all dropped or all kept (scaled by 1 / (1 - rate))
    assert np.all(per_map.min(axis=1) == per_map.max(axis=1))
    assert set(np.unique(per_map)) == {0.0, 2.0}
    plain = keras.ops.convert_to_numpy(drops[2](np.ones((8, 128), np.float32), training=True))
    assert 0.3 < np.mean(plain == 0) < 0.7  # the dense layer drops single units


def test_cnn_batch_norm_sits_between_each_linear_layer_and_its_relu():
    model = tricks.build_model(spec("batch_norm", "dropout", **CNN))
    assert cnn_summary(model) == [
        ("Reshape", None),
        ("Conv2D", "32 (3, 3) linear"),
        ("BatchNormalization", None),
        ("Activation", "relu"),
        ("MaxPooling2D", None),
        ("HashDropout", 0.1),
        ("Conv2D", "64 (3, 3) linear"),
        ("BatchNormalization", None),
        ("Activation", "relu"),
        ("MaxPooling2D", None),
        ("HashDropout", 0.1),
        ("Flatten", None),
        ("Dense", "128 linear"),
        ("BatchNormalization", None),
        ("Activation", "relu"),
        ("HashDropout", 0.1),
        ("Dense", "10 softmax"),
    ]
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert [layer.moving_mean.shape for layer in norms] == [(32,), (64,), (128,)]  # per channel


def test_cnn_weight_decay_penalises_every_conv_and_dense_kernel_and_bias():
    job = spec({"name": "weight_decay", "l2": 0.01}, **CNN, conv_filters=[4, 8], dense_units=[16])
    model, data_loss, total = losses(job)
    penalised = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense)
    ][:-1]  # the output layer is not, as on the MLP
    assert [type(layer).__name__ for layer in penalised] == ["Conv2D", "Conv2D", "Dense"]
    for layer in penalised:
        assert layer.kernel_regularizer is layer.bias_regularizer is not None
    penalty = 0.01 * sum(float(np.sum(np.square(w))) for x in penalised for w in x.get_weights())
    assert total == pytest.approx(data_loss + penalty, rel=1e-4)


def test_the_other_tricks_mean_on_the_cnn_what_they_mean_on_the_mlp():
    names = ["early_stopping", "momentum", "label_smoothing", "cosine_decay"]
    cnn, mlp = spec(*names, **CNN), spec(*names)
    for job in (cnn, mlp):
        optimizer = tricks.optimizer(job, steps_per_epoch=5)
        assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.nesterov
        assert isinstance(optimizer._learning_rate, keras.optimizers.schedules.CosineDecay)
        assert tricks.one_hot_labels(job)
        assert tricks.best_epoch(job).patience == 3
    smoothed = [getattr(tricks.per_sample(job).loss, "keywords", None) for job in (cnn, mlp)]
    assert smoothed == [{"label_smoothing": 0.1}] * 2


def test_cnn_augmentation_is_active_in_training_only():
    x = tiny_images(4, seed=3)[0].astype("float32") / 255
    augmented = tricks.build_model(spec("augmentation", **CNN))
    plain = tricks.build_model(spec(**CNN))
    np.testing.assert_allclose(augmented(x, training=False), plain(x, training=False), rtol=1e-5)
    assert not np.allclose(augmented(x, training=True), augmented(x, training=True))


def test_cnn_variants_of_one_seed_start_from_the_same_weights():
    def kernels(model):
        return [layer.get_weights()[0] for layer in model.layers if hasattr(layer, "kernel")]

    base = kernels(tricks.build_model(spec(**CNN, seed=3)))
    variant = kernels(tricks.build_model(spec("batch_norm", "dropout", **CNN, seed=3)))
    assert len(base) == 4
    for a, b in zip(base, variant, strict=True):
        np.testing.assert_array_equal(a, b)


def test_every_architecture_is_either_packable_or_refused_with_a_reason():
    assert tricks.PACKABLE_ARCHITECTURES | tricks.NOT_PACKABLE_ARCHITECTURES.keys() == set(
        get_args(Architecture)
    )
    assert all(tricks.NOT_PACKABLE_ARCHITECTURES.values())
    assert tricks.packable(spec("dropout"))
    assert not tricks.packable(spec("dropout", **CNN))
