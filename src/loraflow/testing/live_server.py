"""A real uvicorn server for an app, in a thread of this process, on loopback: what tests and the load
bench use when they need the event loop itself (a TestClient hides whether a route blocks it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def live_server(app: Any, **options: Any) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 (a free port) with `loraflow serve`'s uvicorn settings; yields its URL."""
    import uvicorn

    from loraflow.server.http_settings import uvicorn_options
    from loraflow.testing.vast_emulator import free_port

    port = free_port()
    config = uvicorn.Config(app, **{**uvicorn_options("127.0.0.1", port), "log_level": "error", **options})
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
