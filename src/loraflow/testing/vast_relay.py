"""A TCP relay on loopback in front of an emulated instance's sshd, which can drop a connection on demand."""

from __future__ import annotations

import contextlib
import socket
import threading


class Relay:
    """TCP relay (Vast's proxy/direct port) that can cut a connection after some bytes, once."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.drop_after: int | None = None
        self.closed = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._conns += [client, upstream]
            budget = {"left": self.drop_after}
            self.drop_after = None
            threading.Thread(target=self._pump, args=(client, upstream, budget), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, {"left": None}), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, budget: dict[str, int | None]) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if budget["left"] is not None:
                    budget["left"] -= len(data)
                    if budget["left"] <= 0:  # the connection drops mid-stream, as a flaky proxy does
                        break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        for s in self._conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
