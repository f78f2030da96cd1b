"""How `loraflow serve` runs uvicorn: connection-level bounds that no route can set.

- Header read timeout (`LORAFLOW_HEADER_TIMEOUT_S`, 10): uvicorn's h11 protocol has none (its
  `timeout_keep_alive` starts only after a response and stops at the next byte), so a client that opens
  a connection and trickles a header a byte at a time held it forever. `HeaderTimeoutH11` closes a
  connection whose request head is not complete that long after the connection opened or the next
  request's first byte arrived.
- Idle keep-alive connections close after `timeout_keep_alive` (5 s); a request head is at most
  `h11_max_incomplete_event_size` (16 KiB) or the client gets a 400.
- `X-Forwarded-Proto`/`-For` are believed only from `LORAFLOW_TRUSTED_PROXIES` (uvicorn's
  forwarded_allow_ips; default 127.0.0.1), so a TLS-terminating proxy there makes the session cookie
  `Secure`; `LORAFLOW_SECURE_COOKIES=1` forces it.

Not covered here: a body sent slowly (its size is capped by server/limits.py, not its pace) and many
idle connections from many addresses; put a reverse proxy with its own timeouts in front for those.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        if self._between_requests():
            self._arm()  # from the first byte of a request until its head is complete
        super().data_received(data)
        if not self._between_requests():
            self._disarm()

    def on_response_complete(self) -> None:
        self._disarm()  # the keep-alive timeout takes over until the next byte
        super().on_response_complete()

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._between_requests() and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def uvicorn_options(host: str, port: int) -> dict[str, Any]:
    """uvicorn.run / uvicorn.Config keyword arguments for the service."""
    protocol = type("LoraflowH11", (HeaderTimeoutH11,), {
        "header_timeout_s": float(os.environ.get("LORAFLOW_HEADER_TIMEOUT_S", 10)),
    })  # fmt: skip
    return {
        "host": host,
        "port": port,
        "http": protocol,
        "timeout_keep_alive": 5,
        "h11_max_incomplete_event_size": 16 << 10,
        "proxy_headers": True,
        "forwarded_allow_ips": os.environ.get("LORAFLOW_TRUSTED_PROXIES", "127.0.0.1"),
    }
