"""Submissions per second through the real API, on SQLite and PostgreSQL, beside the
database's own rate of durable single-row transactions measured in the same run.

For each database: one API process (`python -m service`, as `make up` runs it) and no worker.
Closed-loop clients (bench/loadgen.py, a process of its own) post one spec at a time
(`POST /v1/jobs`) and batches (`POST /v1/jobs:batch`) at each concurrency, in rounds that
take turns. Beside them, as many threads commit one-row inserts straight to the same kind of
database: the baseline, so the API's cost is a ratio. The same inserts without waiting for
the disk (SQLite synchronous=NORMAL, PostgreSQL synchronous_commit=off) show what making each
commit durable costs; tricklab never skips it, since an acknowledged job must survive.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg

from bench.common import Took, order, spread
from bench.queueing import AUTHORIZATION, TOKEN, add_postgres_url, postgres_databases, start_api
from bench.serve import load_test
from jobqueue.db import init_db, make_engine

SPEC = {"epochs": 1, "hidden_units": [32], "validation_size": 100}


def post(port: int, path: str, body: dict, token: str) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def submissions(
    port: int,
    folder: Path,
    path: str,
    body: dict,
    tokens: list[str],
    per_request: int,
    count: int,
    concurrency: int,
) -> float:
    """Jobs queued per second by `count` requests from `concurrency` clients, sent as each
    of `tokens`' users in turn."""
    requests = folder / f"requests-{port}-{per_request}-{len(tokens)}.pickle"
    requests.write_bytes(pickle.dumps([post(port, path, body, token) for token in tokens]))
    run = load_test(requests, port, count, concurrency)
    if run.errors:
        sys.exit(f"bench: {run.errors} of {count} submissions to {path} were refused")
    return count * per_request / run.seconds


def commits(connect: Callable[[], Callable[[], None]], threads: int, seconds: float) -> float:
    """One-row transactions per second from `threads` threads, each with its own connection."""
    done = [0] * threads
    stop = time.monotonic() + seconds

    def loop(index: int) -> None:
        insert = connect()
        while time.monotonic() < stop:
            insert()
            done[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    began = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done) / (time.monotonic() - began)


def sqlite_insert(path: Path, synchronous: str) -> Callable[[], Callable[[], None]]:
    def connect() -> Callable[[], None]:
        connection = sqlite3.connect(
            path, timeout=30, isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={synchronous}")
        connection.execute("CREATE TABLE IF NOT EXISTS baseline (id INTEGER PRIMARY KEY, v TEXT)")

        def insert() -> None:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO baseline (v) VALUES (?)", ("x" * 200,))
            connection.execute("COMMIT")

        return insert

    return connect


def postgres_insert(dsn: str, synchronous_commit: str) -> Callable[[], Callable[[], None]]:
    def connect() -> Callable[[], None]:
        connection = psycopg.connect(dsn, autocommit=True)
        connection.execute(f"SET synchronous_commit = {synchronous_commit}")
        connection.execute("CREATE TABLE IF NOT EXISTS baseline (id serial PRIMARY KEY, v text)")

        def insert() -> None:
            connection.execute("INSERT INTO baseline (v) VALUES (%s)", ("x" * 200,))

        return insert

    return connect


def bench(
    label: str,
    url: str,
    baseline: Callable[[str], Callable[[], Callable[[], None]]],
    durable: str,
    fast: str,
    folder: Path,
    args: argparse.Namespace,
) -> None:
    init_db(make_engine(url))
    api, api_url = start_api(folder, label, url)
    port = int(api_url.rsplit(":", 1)[1])
    # One user per client, with room for every job: a user's submissions take turns at
    # the quota check, so one user's clients and many users' differ.
    users = [
        httpx.post(
            f"{api_url}/v1/users",
            json={"name": f"client{n}", "role": "user", "quota_active_jobs": 10_000_000},
            headers=AUTHORIZATION,
        ).json()["token"]
        for n in range(max(args.concurrency))
    ]
    batch = {"jobs": [SPEC] * args.batch}
    sides = ["one user", "a user each", "batches", "database", "no fsync"]
    figures: dict[tuple[str, int], list[float]] = {}
    try:
        for round_number in range(args.rounds):
            for concurrency in args.concurrency:
                for side in order(sides, round_number):
                    if side in ("database", "no fsync"):
                        mode = durable if side == "database" else fast
                        value = commits(baseline(mode), concurrency, args.seconds)
                    elif side == "batches":
                        count = max(args.requests // args.batch, concurrency * 2)
                        value = submissions(
                            port,
                            folder,
                            "/v1/jobs:batch",
                            batch,
                            [TOKEN],
                            args.batch,
                            count,
                            concurrency,
                        )
                    else:
                        tokens = [TOKEN] if side == "one user" else users[:concurrency]
                        value = submissions(
                            port, folder, "/v1/jobs", SPEC, tokens, 1, args.requests, concurrency
                        )
                    figures.setdefault((side, concurrency), []).append(value)
    finally:
        api.terminate()
        api.wait()
    print(
        f"\n{label}: jobs (or rows) made durable per second, median (min–max) of "
        f"{args.rounds} rounds, and each beside the database's own single-row commits"
    )
    print(f"{'clients':>8}" + "".join(f"  {side:>24}" for side in sides) + "  one user / database")
    for concurrency in args.concurrency:
        row = [figures[side, concurrency] for side in sides]
        ratio = [a / d for a, d in zip(row[0], row[3], strict=True)]
        print(
            f"{concurrency:>8}"
            + "".join(f"  {spread(v, 0):>24}" for v in row)
            + f"  {spread(ratio):>20}"
        )
    durable_ms = 1000 / statistics.median(figures["database", args.concurrency[0]])
    fast_ms = 1000 / statistics.median(figures["no fsync", args.concurrency[0]])
    print(
        f"one client's durable commit: {durable_ms:.2f} ms, of which waiting for the disk "
        f"about {max(durable_ms - fast_ms, 0):.2f} ms"
    )


def main() -> None:
    took = Took("bench/submit.py")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="single submissions a turn")
    parser.add_argument("--batch", type=int, default=100, help="specs in one batch request")
    parser.add_argument("--seconds", type=float, default=2.0, help="of each baseline turn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    add_postgres_url(parser)
    args = parser.parse_args()
    print(f"each job: {json.dumps(SPEC)}")
    with tempfile.TemporaryDirectory(prefix="tricklab-bench-") as tmp:
        folder = Path(tmp)
        bench(
            "SQLite",
            f"sqlite:///{folder / 'tricklab.db'}",
            lambda mode: sqlite_insert(folder / "baseline.db", mode),
            "FULL",
            "NORMAL",
            folder,
            args,
        )
        if args.postgres_url:
            with postgres_databases(
                args.postgres_url, ["bench_submit_api", "bench_submit_db"]
            ) as urls:
                dsn = urls[1].set(drivername="postgresql").render_as_string(hide_password=False)
                bench(
                    "PostgreSQL",
                    urls[0].render_as_string(hide_password=False),
                    lambda mode: postgres_insert(dsn, mode),
                    "on",
                    "off",
                    folder,
                    args,
                )
    took.report()


if __name__ == "__main__":
    main()
