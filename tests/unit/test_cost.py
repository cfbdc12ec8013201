"""What a job costs, computed from its spec, against what Keras builds and the limits."""

import pytest

from core import cost
from core.config import Settings
from core.spec import JobSpec
from tests.support.data import TINY_TRAIN
from tests.support.inprocess import settings_in
from worker import tricks

SPECS = [
    {},
    {"hidden_units": [7]},
    {"hidden_units": [300, 100, 50], "tricks": ["batch_norm", "dropout"]},
    {"hidden_units": [64], "tricks": ["augmentation", "weight_decay", "momentum"]},
    {"architecture": "cnn"},
    {"architecture": "cnn", "tricks": ["batch_norm", "dropout"]},
    {"architecture": "cnn", "conv_filters": [3, 5, 7], "kernel_size": 2, "dense_units": [9, 4]},
    {"architecture": "cnn", "conv_filters": [8], "kernel_size": 7, "tricks": ["batch_norm"]},
]


@pytest.mark.parametrize("document", SPECS)
def test_parameters_are_what_keras_counts(document):
    spec = JobSpec.model_validate(document)
    assert cost.parameters(spec) == tricks.build_model(spec).count_params()


def test_memory_grows_with_the_model_the_batch_and_the_optimizer_state():
    base = JobSpec()
    assert cost.memory_bytes(JobSpec(batch_size=8192)) > cost.memory_bytes(base)
    assert cost.memory_bytes(JobSpec(hidden_units=[1024, 1024])) > cost.memory_bytes(base)
    assert cost.memory_bytes(JobSpec(tricks=["momentum"])) < cost.memory_bytes(base)  # 1 slot
    # The notebook's model: its weights, gradients, Adam's two slots and an inference batch.
    assert cost.memory_bytes(base) == 4 * (4 * 104_938 + 4096 * (784 + 160 + 10))


def test_cnn_memory_counts_its_feature_maps():
    cnn = JobSpec(architecture="cnn")
    # Its activations an image: the input, two conv outputs and their pooled maps, the head.
    activations = 784 + 32 * (26**2 + 13**2) + 64 * (11**2 + 5**2) + 128 + 10
    # Scored in calls of 2**24 floats' worth of its widest output, the first conv's maps.
    assert cost.eval_batch(cnn) == 2**24 // (32 * 26**2) == 775
    assert cost.eval_batch(JobSpec()) == cost.EVAL_BATCH
    assert cost.memory_bytes(cnn) == 4 * (4 * cost.parameters(cnn) + 775 * activations)
    wider = JobSpec(architecture="cnn", conv_filters=[64, 128])
    assert cost.memory_bytes(wider) > cost.memory_bytes(cnn)
    with_tricks = JobSpec(architecture="cnn", tricks=["batch_norm", "dropout"])
    assert cost.memory_bytes(with_tricks) > cost.memory_bytes(cnn)


def test_a_cnn_over_the_parameter_limit_is_told_which_shape_field_to_change(limited):
    head = JobSpec(architecture="cnn", validation_size=100, epochs=2, dense_units=[256])
    refused = {refusal.field: refusal for refusal in cost.refusals(head, limited)}
    assert "hidden_units" not in refused and "conv_filters" not in refused
    assert refused["dense_units"].message.startswith(
        f"the model would have {cost.parameters(head):,} parameters; the limit is 200,000"
    )
    convs = JobSpec(
        architecture="cnn", validation_size=100, conv_filters=[256, 256, 256], dense_units=[4]
    )
    assert "conv_filters" in [r.field for r in cost.refusals(convs, limited)]


def test_a_cnn_counts_its_steps_as_any_job(limited):
    spec = JobSpec(architecture="cnn", validation_size=100, epochs=3, batch_size=32)
    refused = {r.field: r.context["value"] for r in cost.refusals(spec, limited)}
    assert refused["epochs"] == 48  # 500 images: 16 steps an epoch, 48 > 40


@pytest.fixture
def limited(tmp_path, data_dir) -> Settings:
    return settings_in(
        tmp_path,
        data_dir,
        max_parameters=200_000,
        max_steps_per_job=40,
        max_pack_memory_bytes=2**25,
    )


def test_a_spec_within_the_limits_is_admitted(limited):
    assert cost.refusals(JobSpec(validation_size=100, epochs=2), limited) == []


def test_each_limit_a_spec_passes_is_named_with_its_value_and_setting(limited):
    spec = JobSpec(validation_size=100, epochs=41, batch_size=8192, hidden_units=[256, 256])
    refused = {refusal.field: refusal for refusal in cost.refusals(spec, limited)}
    assert set(refused) == {"hidden_units", "epochs", "batch_size"}
    assert refused["hidden_units"].message == (
        "the model would have 269,322 parameters; the limit is 200,000 "
        "(TRICKLAB_MAX_PARAMETERS, which the operator can raise)"
    )
    assert refused["epochs"].context == {
        "value": 41,  # 500 training images: one step of 8192 an epoch
        "limit": 40,
        "setting": "TRICKLAB_MAX_STEPS_PER_JOB",
    }
    assert refused["batch_size"].context == {
        "value": cost.memory_bytes(spec),
        "limit": 2**25,
        "setting": "TRICKLAB_MAX_PACK_MEMORY_BYTES",
    }


def test_steps_count_the_training_images_left_after_validation(limited):
    spec = JobSpec(validation_size=100, epochs=30, batch_size=10)  # 50 steps an epoch
    (refusal,) = cost.refusals(spec, limited)
    assert refusal.field == "epochs"
    assert refusal.context["value"] == 30 * (TINY_TRAIN - 100) // 10  # 1,500
    assert refusal.message.startswith("30 epochs × 50 steps per epoch (batch_size 10) would be")


def test_a_dataset_the_deployment_lacks_is_refused_naming_those_it_has(tmp_path, data_dir):
    from tests.support.data import write_dataset

    settings = settings_in(tmp_path, write_dataset(tmp_path / "only" / "fashion-mnist").parent)
    (refusal,) = cost.refusals(JobSpec(dataset="mnist", validation_size=100), settings)
    assert refusal.field == "dataset"
    assert "dataset 'mnist' is not available on this deployment (available: fashion_mnist)" in (
        refusal.message
    )
    assert str(tmp_path) not in refusal.message  # the server's paths are for its logs
    (split,) = cost.refusals(JobSpec(validation_size=TINY_TRAIN), settings)
    assert (split.field, split.message) == (
        "validation_size",
        f"validation_size {TINY_TRAIN} leaves no training images: fashion_mnist has "
        f"{TINY_TRAIN} training images",
    )
