"""Splitting a byte stream into lines on `\\n` or `\\r`, whatever the chunking (tqdm redraws with `\\r`)."""

from __future__ import annotations


class LineSplitter:
    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[str]:
        data = self._buf + chunk
        lines: list[str] = []
        start = 0
        for i, byte in enumerate(data):
            if byte in (0x0A, 0x0D):
                if i > start:
                    lines.append(data[start:i].decode("utf-8", errors="replace"))
                start = i + 1
        self._buf = data[start:]
        return lines

    def flush(self) -> list[str]:
        rest, self._buf = self._buf, b""
        return [rest.decode("utf-8", errors="replace")] if rest.strip() else []
