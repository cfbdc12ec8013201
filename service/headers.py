"""Security headers on every answer: what a browser may load into tricklab's pages and do with
them, so that a page of another site cannot frame the dashboard (clickjacking), a response is
never sniffed into a type it is not, and an injected script has nowhere to run from.

The policy fits what the pages load, all of it from this origin: the dashboard's vendored htmx,
uPlot and its own script and styles, the Swagger UI at /docs. Inline styles are allowed (the
dashboard's bars set a width in a style attribute, htmx adds its indicator's <style>, uPlot and
Swagger UI style elements as they draw); inline scripts are not, nor eval, so the dashboard
uses no `hx-on` attribute and no script in its templates. A page that must run an inline script
of its own (the Swagger UI's start) allows exactly that script, by its hash: `with_inline_scripts`.

An answer served over https (by uvicorn itself, or by a proxy the API trusts,
TRICKLAB_FORWARDED_ALLOW_IPS, whose X-Forwarded-Proto uvicorn has applied) also carries HTTP Strict
Transport Security: the browser then uses https alone for this site, so that a later plain-HTTP
request (a typed address, an old link) never carries the session cookie or a token in clear.
Over plain HTTP browsers ignore it, so it is left out there; and no `includeSubDomains`, since
the operator's other hosts under the same domain are not ours to pin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from typing import TypeVar

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

R = TypeVar("R", bound=Response)
CSP = "content-security-policy"
POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self' 'unsafe-inline'",
    "img-src": "'self' data:",  # the dashboard's empty icon, the Swagger UI's inline SVGs
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
HEADERS = {
    CSP: "; ".join(f"{name} {value}" for name, value in POLICY.items()),
    "x-frame-options": "DENY",  # frame-ancestors for browsers that predate it
    "x-content-type-options": "nosniff",
    # Not no-referrer: under it, a browser sends `Origin: null` with a same-origin POST, which
    # the dashboard's cross-site check (service.auth) must refuse.
    "referrer-policy": "same-origin",
}
HSTS = b"strict-transport-security"
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def policy(**changed: str) -> str:
    """The Content-Security-Policy with some directives changed."""
    return "; ".join(f"{name} {value}" for name, value in {**POLICY, **changed}.items())


def with_inline_scripts(response: R) -> R:
    """`response` (an HTML page) with a policy that allows its own inline scripts, by their
    SHA-256, and no other."""
    hashes = (
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(response.body)
    )
    response.headers[CSP] = policy(**{"script-src": " ".join(["'self'", *hashes])})
    return response


class SecurityHeaders:
    """Pure ASGI middleware (BaseHTTPMiddleware would buffer streams and cost CPU on every
    request): adds HEADERS to every HTTP answer that does not set them itself, and
    Strict-Transport-Security (`hsts_seconds`, 0: never) to those served over https."""

    def __init__(
        self,
        app: ASGIApp,
        headers: Iterable[tuple[str, str]] = HEADERS.items(),
        hsts_seconds: int = 0,
    ) -> None:
        self.app = app
        self.headers = [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers
        ]
        self.secure_headers = self.headers
        if hsts_seconds:
            hsts = (HSTS, f"max-age={hsts_seconds}".encode())
            self.secure_headers = [*self.headers, hsts]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added = self.secure_headers if scope.get("scheme") == "https" else self.headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [header for header in added if header[0] not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
