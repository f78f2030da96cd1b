"""The HTTP side every provider emulator shares: a threaded server on 127.0.0.1 that hands each request to
the emulator's `handle(method, url, headers, body)` and writes its answer back as a real server would."""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# (method, url, lower-cased headers, body) -> (status, payload) or (status, payload, extra headers);
# a str payload is sent as text/plain, anything else as JSON.
Handle = Callable[[str, str, dict[str, str], bytes], tuple[Any, ...]]


def serve(handle: Handle, port: int = 0) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            extra: dict[str, str] = {}
            try:
                status, payload, *more = handle(self.command, self.path, headers, body)
                extra = more[0] if more else {}
            except Exception as exc:  # a bug in the emulator must look like a 500, as a real server's would
                status, payload = 500, {"success": False, "error": "server_error", "msg": repr(exc)}
            raw = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)
            except (BrokenPipeError, ConnectionResetError):  # a machine's own destroy call dies with it
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server
