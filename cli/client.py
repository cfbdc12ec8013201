"""Requests to the API, and what each way of failing means for the exit status."""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from cli.config import Connection

# The exit statuses, documented in `tricklab --help` and docs/cli.md.
OK = 0
JOB_FAILED = 1  # the job (or study) that was waited for failed or was cancelled
USAGE = 2  # a wrong command line, or a request the API refused as invalid
UNREACHABLE = 3  # no answer from the server, or it does not accept the token
NOT_FOUND = 4

# Pings come every 15 s on an event stream: a minute of silence is a dead connection.
TIMEOUT = httpx.Timeout(60.0, connect=5.0)


class Failure(Exception):
    """An expected way for a command to fail: a message for people, and an exit status."""

    def __init__(self, message: str, code: int, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status  # the HTTP status, when the server answered


def exit_code(status: int) -> int:
    """The exit status for an HTTP error status."""
    if status == 404:
        return NOT_FOUND
    if status in (401, 403) or status >= 500:
        return UNREACHABLE  # who you are is refused, or the server cannot serve you now
    return USAGE  # 400, 409, 410, 413, 415, 422, 429: this request cannot be done as it is


def describe_issue(issue: dict[str, Any]) -> str:
    """One entry of a 422's detail as a line; an unknown trick with the catalogue's names."""
    field = str(issue.get("field") or ".".join(map(str, issue.get("loc", []))))
    ctx = issue.get("ctx") or {}
    if issue.get("type") == "union_tag_invalid" and "expected_tags" in ctx:
        # pydantic's words ("Input tag ... found using 'name' ...") say it for programmers.
        names = re.findall(r"'([^']*)'", str(ctx["expected_tags"]))
        tag = str(ctx.get("tag", ""))
        close = difflib.get_close_matches(tag, names, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{field}: unknown trick {tag!r}{guess}; the tricks are: {', '.join(names)}"
    message = str(issue.get("msg", ""))
    return message if message.startswith(f"{field}:") else f"{field}: {message}"


def error_message(response: httpx.Response) -> str:
    """The API's own words for an error answer, a 422 field by field."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    status = f"{response.status_code} {response.reason_phrase}".strip()
    if isinstance(detail, list):
        lines = [describe_issue(issue) for issue in detail if isinstance(issue, dict)]
        return f"the request was refused ({status}):\n" + "\n".join(f"  {line}" for line in lines)
    if isinstance(detail, str):
        return f"{detail} ({status})"
    return f"{status} from {response.request.method} {response.request.url.path}"


class Api:
    """An HTTP client for one server and token; every error becomes a Failure."""

    def __init__(
        self, connection: Connection, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.connection = connection
        headers = {"Authorization": f"Bearer {connection.token}"} if connection.token else {}
        self.http = httpx.Client(
            base_url=connection.url, headers=headers, timeout=TIMEOUT, transport=transport
        )

    def unreachable(self, error: httpx.TransportError) -> Failure:
        reason = str(error) or type(error).__name__
        return Failure(
            f"cannot reach the tricklab API at {self.connection.url}: {reason}. Is it running "
            "(make up)? Point at another with --url or TRICKLAB_URL.",
            UNREACHABLE,
        )

    def failure(self, response: httpx.Response) -> Failure:
        message = error_message(response)
        if response.status_code == 401:
            where = self.connection.token_from
            message += (
                f"; the token came from {where}"
                if self.connection.token
                else "; give a token with --token or TRICKLAB_TOKEN, or run `tricklab login`"
            )
        return Failure(message, exit_code(response.status_code), response.status_code)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise self.unreachable(error) from None
        if response.is_error:
            raise self.failure(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        query = {key: value for key, value in params.items() if value is not None}
        return self.request("GET", path, params=query).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs).json()

    @contextmanager
    def stream(self, path: str, headers: dict[str, str] | None = None) -> Iterator[httpx.Response]:
        """A streamed GET. Transport errors are left to the caller, which may reconnect."""
        with self.http.stream("GET", path, headers=headers) as response:
            if response.is_error:
                response.read()
                raise self.failure(response)
            yield response

    def download(self, path: str, target: Path, **params: Any) -> None:
        """Save a GET's body to `target` (`-`: standard output) as it arrives."""
        try:
            with self.http.stream("GET", path, params=params) as response:
                if response.is_error:
                    response.read()
                    raise self.failure(response)
                if str(target) == "-":
                    for chunk in response.iter_bytes():
                        sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
                    return
                with target.open("wb") as file:
                    for chunk in response.iter_bytes():
                        file.write(chunk)
        except httpx.TransportError as error:
            raise self.unreachable(error) from None
        except OSError as error:
            raise Failure(f"cannot write {target}: {error.strerror or error}", USAGE) from None
        print(f"saved {target} ({target.stat().st_size:,} bytes)", file=sys.stderr)
