"""Merges concurrent predictions for one model into one forward pass.

A forward pass of a small model costs about the same for 1 image as for 100, so under load
serving one request at a time wastes nearly all of it. Requests queue here; one runner task
takes as many as fit in a batch, runs the model in a thread (the event loop keeps serving;
only a forward pass too short to be worth the hop runs in place), and hands each request
its own rows. Requests that arrive during a forward pass form the next batch, so batches grow
with the load by themselves; the optional window only makes a request that finds the model
idle wait a little for company.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class Overloaded(RuntimeError):
    """Too many images are already waiting for this model; try again shortly."""


@dataclass(frozen=True)
class Batched:
    probabilities: np.ndarray  # (images of this request, classes)
    batch_size: int  # images in the forward pass this request shared


@dataclass(frozen=True)
class _Waiting:
    inputs: np.ndarray
    future: asyncio.Future[Batched]


class Batcher:
    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        *,
        window_seconds: float,
        max_batch: int,
        max_queued: int,
        inline_max: int = 0,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        """inline_max: batches of up to this many images run on the event loop itself, for a
        forward pass that costs less than the hop to a thread and back. on_batch: told each
        batch's size."""
        self._forward = forward
        self._on_batch = on_batch
        self._inline_max = inline_max
        self._window = window_seconds
        self._max_batch = max_batch
        self._max_queued = max_queued
        self._waiting: deque[_Waiting] = deque()
        self._queued = 0  # images in self._waiting
        self._runner: asyncio.Task[None] | None = None

    async def run(self, inputs: np.ndarray) -> Batched:
        """inputs: (n, ...) model input → the model's output rows for them."""
        if self._queued + len(inputs) > self._max_queued:
            raise Overloaded(
                f"{self._queued} images are already waiting for this model "
                f"(the limit is {self._max_queued}); retry shortly"
            )
        future: asyncio.Future[Batched] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(inputs, future))
        self._queued += len(inputs)
        if self._runner is None:
            self._runner = asyncio.create_task(self._drain())
        return await future  # a client that goes away cancels only its own future

    async def _drain(self) -> None:
        try:
            if self._window and self._queued < self._max_batch:
                await asyncio.sleep(self._window)
            while self._waiting:
                await self._run_one_batch(self._take())
        finally:
            self._runner = None

    def _take(self) -> list[_Waiting]:
        """The oldest requests whose images fit in one batch (always at least one)."""
        batch: list[_Waiting] = []
        size = 0
        while self._waiting and (
            not batch or size + len(self._waiting[0].inputs) <= self._max_batch
        ):
            waiting = self._waiting.popleft()
            self._queued -= len(waiting.inputs)
            if not waiting.future.done():  # skip requests whose client has gone
                batch.append(waiting)
                size += len(waiting.inputs)
        return batch

    async def _run_one_batch(self, batch: list[_Waiting]) -> None:
        if not batch:
            return
        inputs = np.concatenate([waiting.inputs for waiting in batch])
        self._on_batch(len(inputs))
        try:
            if len(inputs) <= self._inline_max:
                outputs = self._forward(inputs)
            else:
                outputs = await asyncio.to_thread(self._forward, inputs)
        except Exception as error:  # every request of the batch gets the error, none hangs
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
            return
        start = 0
        for waiting in batch:
            end = start + len(waiting.inputs)
            if not waiting.future.done():
                waiting.future.set_result(Batched(outputs[start:end], len(inputs)))
            start = end
