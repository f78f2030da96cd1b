"""How dataset files are named: the stem a caption or control is paired by, and the safe, unique stem a file
gets in the prepared copy."""

from __future__ import annotations

import re
from pathlib import PurePosixPath


def stem_key(path: str) -> str:
    pure = PurePosixPath(path)
    return str(pure.with_suffix("")) if pure.suffix else path


def safe_stem(path: str, taken: set[str]) -> str:
    stem = "__".join(PurePosixPath(stem_key(path)).parts)
    stem = re.sub(r"[^\w.\-]+", "_", stem, flags=re.UNICODE).strip("._") or "image"
    candidate, n = stem, 2
    while candidate.lower() in taken:
        candidate, n = f"{stem}-{n}", n + 1
    taken.add(candidate.lower())
    return candidate


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
