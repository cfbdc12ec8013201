"""The serving benchmark's load generator, run as a process of its own for each measurement so
that nothing else shares its event loop or its interpreter: a closed loop of `--concurrency`
keep-alive connections that sends the pickled requests, round robin, until `--count` are
answered, then prints what it saw as one JSON object on stdout.

It speaks raw HTTP/1.1 on asyncio streams (on uvloop, as the servers do) so that its own cost,
on the cores it shares with the servers, stays small.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any

BATCH_HEADER = b"tricklab-batch-size:"


async def connection(
    port: int, requests: list[bytes], left: list[int], seen: dict[str, Any]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while left[0] > 0:
            left[0] -= 1
            request = requests[left[0] % len(requests)]
            started = time.perf_counter()
            writer.write(request)
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            # The header line itself: "inference-header-content-length:" ends the same way.
            length = int(head.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            seen["latencies"].append(time.perf_counter() - started)
            if not head.startswith(b"http/1.1 2"):
                seen["errors"] += 1
            if BATCH_HEADER in head:
                seen["batch_sizes"].append(int(head.split(BATCH_HEADER)[1].split(b"\r")[0]))
    finally:
        writer.close()


async def load_test(
    port: int, requests: list[bytes], count: int, concurrency: int
) -> dict[str, Any]:
    seen: dict[str, Any] = {"latencies": [], "batch_sizes": [], "errors": 0}
    left = [count]
    started = time.perf_counter()
    await asyncio.gather(*(connection(port, requests, left, seen) for _ in range(concurrency)))
    seen["seconds"] = time.perf_counter() - started
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("requests", type=Path, help="a pickled list of complete HTTP requests")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args()
    requests = pickle.loads(args.requests.read_bytes())
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    seen = run(load_test(args.port, requests, args.count, args.concurrency))
    json.dump(seen, sys.stdout)


if __name__ == "__main__":
    main()
