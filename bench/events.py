"""What open event streams cost the API: its CPU time, memory and list latency with 100
streams open (following queued jobs: what open dashboards and `tricklab watch` hold), against
the same API with none, in alternating rounds. No worker runs: the cost measured is the
streams' own (the watch's poll and the pings), not training's.

    .venv/bin/python -m bench.events [--streams 100] [--rounds 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import httpx2 as httpx

from bench.common import Took, order, spread
from bench.serve import free_port, start, wait_ready

TOKEN = secrets.token_urlsafe(32)
AUTHORIZATION = {"Authorization": f"Bearer {TOKEN}"}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def hold_streams(url: str, job_ids: list[str], opened: asyncio.Event) -> None:
    """Keep one stream per job open until cancelled."""
    limits = httpx.Limits(max_connections=len(job_ids) + 8)
    async with httpx.AsyncClient(base_url=url, headers=AUTHORIZATION, limits=limits) as client:
        ready = 0

        async def one(job_id: str) -> None:
            nonlocal ready
            path = f"/v1/jobs/{job_id}/events"
            async with client.stream("GET", path, timeout=None) as response:
                async for _ in response.aiter_lines():
                    ready += 1  # the first event (status) arrived: the stream is open
                    if ready == len(job_ids):
                        opened.set()
                    break
                await asyncio.Event().wait()  # held open, read no further

        await asyncio.gather(*(one(job_id) for job_id in job_ids))


async def window(url: str, pid: int, seconds: float) -> tuple[float, list[float]]:
    """CPU seconds the API spent per wall second over the window, and the latency of
    GET /v1/jobs asked meanwhile, every 0.2 s."""
    latencies = []
    async with httpx.AsyncClient(base_url=url, headers=AUTHORIZATION) as client:
        before, started = cpu_seconds(pid), time.monotonic()
        while time.monotonic() - started < seconds:
            asked = time.perf_counter()
            (await client.get("/v1/jobs?limit=50")).raise_for_status()
            latencies.append((time.perf_counter() - asked) * 1000)
            await asyncio.sleep(0.2)
        used = cpu_seconds(pid) - before
    return used / (time.monotonic() - started), latencies


async def measure(url: str, pid: int, job_ids: list[str], args: argparse.Namespace) -> None:
    results: dict[str, list[tuple[float, float, float]]] = {"none": [], "open": []}
    for number in range(args.rounds):
        for side in order(["none", "open"], number):
            holder = None
            if side == "open":
                opened = asyncio.Event()
                holder = asyncio.create_task(hold_streams(url, job_ids, opened))
                await asyncio.wait_for(opened.wait(), 60)
            cpu, latencies = await window(url, pid, args.seconds)
            results[side].append((cpu * 100, statistics.median(latencies), rss_mib(pid)))
            if holder is not None:
                holder.cancel()
                await asyncio.gather(holder, return_exceptions=True)
                await asyncio.sleep(1)  # the API notices the closed streams
    for side, label in (("none", "no streams"), ("open", f"{len(job_ids)} streams open")):
        runs = results[side]
        print(
            f"  {label:>17}: API CPU {spread([r[0] for r in runs], 1, ' %')}, "
            f"GET /v1/jobs {spread([r[1] for r in runs], 1, ' ms')}, "
            f"RSS {spread([r[2] for r in runs], 0, ' MiB')}"
        )
    cpu_added = [o[0] - n[0] for o, n in zip(results["open"], results["none"], strict=True)]
    ratio = [o[1] / n[1] for o, n in zip(results["open"], results["none"], strict=True)]
    print(
        f"\n{len(job_ids)} open streams add {spread(cpu_added, 1, ' %')} of a core to the API; "
        f"list latency ratio open / none {spread(ratio)}"
    )


def main() -> None:
    took = Took("bench/events.py")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per side and round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tricklab-bench-") as tmp:
        root = Path(tmp)
        port = free_port()
        env = {
            **os.environ,
            "TRICKLAB_DATABASE_URL": f"sqlite:///{root / 'tricklab.db'}",
            "TRICKLAB_ARTIFACTS_DIR": str(root / "artifacts"),
            "TRICKLAB_PORT": str(port),
            "TRICKLAB_ADMIN_TOKEN": TOKEN,
            "TRICKLAB_LOG_LEVEL": "WARNING",
            "TRICKLAB_QUOTA_ACTIVE_JOBS": str(args.streams),
        }
        api = start(root, "api", env, "-m", "service")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, "/readyz")
            job_ids = [
                httpx.post(f"{url}/v1/jobs", json={"epochs": 1}, headers=AUTHORIZATION).json()["id"]
                for _ in range(args.streams)
            ]
            print(
                f"{args.streams} queued jobs, no worker; {args.rounds} rounds of "
                f"{args.seconds:g} s a side, alternating; median (min–max)\n",
                flush=True,
            )
            asyncio.run(measure(url, api.pid, job_ids, args))
        finally:
            api.terminate()
            api.wait()
    took.report()


if __name__ == "__main__":
    main()
