"""Following a server-sent event stream (`text/event-stream`) through dropped connections.

The format is small enough to read here (https://html.spec.whatwg.org/#event-stream-interpretation):
`field: value` lines, a blank line ending each event, `:` lines being comments (the server's
pings). A dropped stream is opened again with `Last-Event-ID` set to the last `id:` seen, so
that the server resumes after it: nothing is lost and nothing repeated."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from cli.client import UNREACHABLE, Api, Failure

# How long to keep trying to reconnect before giving up: a restarting service is back in
# seconds; a minute without one is a server that is gone.
RECONNECT_SECONDS = 60.0


@dataclass(frozen=True)
class Event:
    name: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


def parse(lines: Iterable[str]) -> Iterator[Event]:
    """Events from the stream's lines (without their line breaks)."""
    name, event_id = "", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:  # an event without data is not dispatched, as browsers do
                yield Event(name or "message", "\n".join(data), event_id)
            name, data, event_id = "", [], None
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
            # `retry:` and unknown fields are ignored: the reconnection delay is ours


def follow(
    api: Api,
    path: str,
    last_id: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Event]:
    """Every event of the stream at `path` until its `end` event, reconnecting when the
    connection drops. The first connection must succeed: a server that is down is an error at
    once, not a minute later."""
    connected = False
    lost_at: float | None = None
    delay = 0.25
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with api.stream(path, headers) as response:
                connected = True
                for event in parse(response.iter_lines()):
                    # Progress, not a mere connection, resets the patience: a server that
                    # accepts and closes at once must not be retried for ever.
                    lost_at, delay = None, 0.25
                    if event.id is not None:
                        last_id = event.id
                    yield event
                    if event.name == "end":
                        return
        except httpx.TransportError as error:
            if not connected:
                raise api.unreachable(error) from None
        except Failure as failure:
            # A proxy or a restarting service may answer 502/503 for a moment.
            if not connected or (failure.status or 0) < 500:
                raise
        # The stream ended without its `end` event, or broke: open it again.
        now = clock()
        lost_at = lost_at if lost_at is not None else now
        if now - lost_at > RECONNECT_SECONDS:
            raise Failure(
                f"lost the event stream {path} of {api.connection.url} and could not "
                f"reconnect for {RECONNECT_SECONDS:.0f} s",
                UNREACHABLE,
            )
        sleep(delay)
        delay = min(delay * 2, 5.0)
