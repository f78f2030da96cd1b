"""Reading tensors out of a safetensors file one at a time, as float32 numpy arrays.

A LoRA is small, but the base model it is judged against is not: its file is opened with safetensors'
`safe_open` and only the layers a LoRA adapts are read. numpy has no bfloat16, so a BF16 tensor (what
most trainers save) is read from its byte range in the file and widened to float32 by hand (a bfloat16 is
the upper half of a float32), which needs neither torch nor a GPU.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open


class Unreadable(ValueError):
    """The file is not a whole safetensors file."""


class TensorFile:
    """One open safetensors file: its keys, metadata, shapes and dtypes, and each tensor on demand."""

    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self._f = handle
        self._header: dict[str, Any] | None = None

    def names(self) -> list[str]:
        return list(self._f.keys())

    def metadata(self) -> dict[str, str]:
        return dict(self._f.metadata() or {})

    def _entry(self, key: str) -> dict[str, Any]:
        if self._header is None:
            with self.path.open("rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                self._header = json.loads(f.read(n))
                self._header["__data_start__"] = 8 + n
        return self._header[key]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._f.get_slice(key).get_shape())

    def dtype(self, key: str) -> str:
        return str(self._f.get_slice(key).get_dtype())

    def get(self, key: str) -> np.ndarray:
        """The tensor as float32 (BF16 widened by hand; every other float dtype through safetensors)."""
        if self.dtype(key) != "BF16":
            return np.asarray(self._f.get_tensor(key), dtype=np.float32)
        entry = self._entry(key)
        start = int(self._header["__data_start__"]) + int(entry["data_offsets"][0])  # type: ignore[index]
        count = (int(entry["data_offsets"][1]) - int(entry["data_offsets"][0])) // 2
        raw = np.fromfile(self.path, dtype="<u2", count=count, offset=start)
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


@contextmanager
def open_tensors(path: Path) -> Iterator[TensorFile]:
    """`safe_open` the file (numpy); a cut-short or foreign file raises Unreadable with the reason."""
    try:
        handle = safe_open(str(path), "np")
    except Exception as exc:  # OSError, or safetensors' own SafetensorError (not an OSError)
        raise Unreadable(f"{path.name} is not a readable safetensors file: {exc}") from exc
    with handle as f:
        yield TensorFile(path, f)
