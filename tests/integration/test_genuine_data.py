"""The base model on the genuine Fashion-MNIST (TRICKLAB_DATA_DIR, set by `make test`)."""

import os
from pathlib import Path

import pytest

from core.datasets import DatasetError, find_dataset
from core.spec import JobSpec
from jobqueue.models import ADMIN
from jobqueue.states import JobStatus
from tests.support.inprocess import drain_queue

pytestmark = pytest.mark.slow


@pytest.fixture
def genuine_data() -> Path:
    folder = Path(os.environ.get("TRICKLAB_DATA_DIR", "../shared/data/fashion-mnist"))
    try:
        find_dataset("fashion_mnist", folder)
    except DatasetError as error:
        pytest.skip(f"the genuine Fashion-MNIST is not available: {error}")
    return folder


def test_one_epoch_of_the_base_model_reaches_80_percent(settings, store, reads, genuine_data):
    settings.data_dir = genuine_data
    job = store.enqueue(JobSpec(epochs=1), ADMIN)[0]
    drain_queue(settings)

    done = store.get(job.id)
    assert done.status == JobStatus.SUCCEEDED, done.error_message
    (epoch,) = reads.metrics(job.id)
    assert epoch.test_accuracy >= 0.80
    assert done.result.test_accuracy == pytest.approx(epoch.test_accuracy, abs=1e-6)
    assert done.result.parameters == 104_938
