"""What keeps the web UI's origin safe: security headers on every answer, and CSRF protection on every
cookie-authenticated post.

Headers (`SecurityHeaders`, ASGI middleware): a Content-Security-Policy that runs only the UI's own
scripts (no inline script, no other origin), forbids framing (also X-Frame-Options: DENY),
`X-Content-Type-Options: nosniff` and `Referrer-Policy: same-origin`. A file of a job (anything a user
could have written, such as a caption) is served by deps.job_file_response as an attachment with a
sandboxing CSP of its own, which this middleware leaves in place. /docs (Swagger UI) needs its inline
start-up script, so only that page allows inline scripts.

CSRF (`check_csrf`, a dependency of the UI routers): a post is obeyed only when (1) the browser says it
comes from this origin (`Sec-Fetch-Site: same-origin` or absent, and `Origin`, when sent, equal to
this server's), and (2) it carries the session's CSRF token, in the `X-CSRF-Token` header (htmx sends it
from the body's hx-headers) or the `csrf` form field. The token is an HMAC of the session cookie under a
per-process key, so it changes with each session and needs no storage.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraflow.server.problems import Problem

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = PAGE_CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'")
FILE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"
HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"same-origin",
}
_KEY = secrets.token_bytes(32)
COOKIE = "loraflow_session"  # the web session (tokens.create_session), HttpOnly, SameSite=Strict
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


class SecurityHeaders:
    """Add the security headers to every HTTP answer that does not set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = (DOCS_CSP if scope.get("path") == "/docs" else PAGE_CSP).encode()

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in HEADERS.items() if k not in present]
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", csp))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def csrf_token(session: str) -> str:
    """The CSRF token of a session (the cookie's value; '' on a no-auth server)."""
    return hmac.new(_KEY, f"csrf:{session}".encode(), hashlib.sha256).hexdigest()[:40]


def request_token(request: Request) -> str:
    return csrf_token(request.cookies.get(COOKIE, ""))


async def check_csrf(request: Request) -> None:
    """Refuse (403) a state-changing UI request that another site could have made the browser send."""
    if request.method not in UNSAFE:
        return
    site = request.headers.get("sec-fetch-site")
    if site not in (None, "same-origin", "none"):
        raise Problem(403, "cross-site request refused", f"a {site} page cannot post to this server")
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise Problem(403, "cross-site request refused", f"a page of {origin} cannot post to this server")
    expected = request_token(request)
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        sent = str((await request.form()).get("csrf") or "")
    if not sent or not hmac.compare_digest(sent, expected):
        raise Problem(403, "missing CSRF token", "reload the page and try again")
