"""The batcher: concurrent requests share forward passes, each gets exactly its own rows."""

import asyncio
import threading

import numpy as np
import pytest

from service.batching import Batcher, Overloaded


class Model:
    """Doubles its input, remembering each forward pass's batch size and thread."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.threads: set[int] = set()
        self.fail = fail

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        self.batches.append(len(inputs))
        self.threads.add(threading.get_ident())
        if self.fail:
            raise RuntimeError("out of cheese")
        return inputs * 2


def requests(*sizes: int) -> list[np.ndarray]:
    start = 0
    made = []
    for size in sizes:
        made.append(np.arange(start, start + size, dtype=np.float32))
        start += size
    return made


def run(batcher: Batcher, inputs: list[np.ndarray]) -> list:
    async def main() -> list:
        return await asyncio.gather(*(batcher.run(x) for x in inputs), return_exceptions=True)

    return asyncio.run(main())


def batcher(model: Model, window: float = 0.0, max_batch: int = 256, max_queued: int = 1000):
    return Batcher(model, window_seconds=window, max_batch=max_batch, max_queued=max_queued)


def test_concurrent_requests_share_one_forward_pass_off_the_event_loop():
    model = Model()
    inputs = requests(1, 3, 1, 2)
    answers = run(batcher(model), inputs)
    assert model.batches == [7]
    assert threading.get_ident() not in model.threads
    for x, answer in zip(inputs, answers, strict=True):
        np.testing.assert_array_equal(answer.probabilities, x * 2)
        assert answer.batch_size == 7


def test_batches_never_exceed_the_limit_and_keep_arrival_order():
    model = Model()
    inputs = requests(3, 3, 3, 1, 5)
    answers = run(batcher(model, max_batch=6), inputs)
    # A request is never split; one larger than the limit goes alone.
    assert model.batches == [6, 4, 5]
    assert [a.batch_size for a in answers] == [6, 6, 4, 4, 5]
    for x, answer in zip(inputs, answers, strict=True):
        np.testing.assert_array_equal(answer.probabilities, x * 2)


def test_requests_arriving_during_a_forward_pass_form_the_next_batch():
    model = Model()
    slow = batcher(model)

    async def main() -> None:
        first = asyncio.create_task(slow.run(requests(1)[0]))
        await asyncio.sleep(0)  # the first pass starts with one image
        later = [asyncio.create_task(slow.run(x)) for x in requests(2, 2, 2)]
        await asyncio.gather(first, *later)

    asyncio.run(main())
    assert model.batches == [1, 6]


def test_a_window_lets_a_lone_request_wait_for_company():
    model = Model()
    windowed = batcher(model, window=0.05)

    async def main() -> None:
        first = asyncio.create_task(windowed.run(requests(1)[0]))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, windowed.run(requests(1)[0]))

    asyncio.run(main())
    assert model.batches == [2]


def test_an_error_reaches_every_request_of_the_batch_and_the_next_batch_runs():
    failing = Model(fail=True)
    answers = run(batcher(failing), requests(1, 1))
    assert [str(a) for a in answers] == ["out of cheese"] * 2
    failing.fail = False
    b = batcher(failing)
    assert run(b, requests(1))[0].batch_size == 1


def test_too_many_waiting_images_are_refused_not_queued():
    model = Model()
    answers = run(batcher(model, max_queued=4), requests(2, 2, 1, 2))
    assert isinstance(answers[2], Overloaded) and isinstance(answers[3], Overloaded)
    assert "the limit is 4" in str(answers[2])
    assert model.batches == [4]


def test_a_request_whose_client_went_away_is_left_out():
    model = Model()
    b = batcher(model, window=0.05)

    async def main() -> None:
        gone = asyncio.create_task(b.run(requests(5)[0]))
        stays = asyncio.create_task(b.run(requests(2)[0]))
        await asyncio.sleep(0.01)
        gone.cancel()
        answer = await stays
        assert answer.batch_size == 2
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(main())
    assert model.batches == [2]
