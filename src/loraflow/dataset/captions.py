"""Caption files: decoding whatever encoding they came in, and placing the trigger word."""

from __future__ import annotations

import codecs
import re

from loraflow.spec import TRIGGER_PLACEHOLDER, CaptionPolicy


def decode_caption(data: bytes) -> tuple[str, str | None]:
    """Text of a caption file on one line, and a note when its encoding had to be guessed."""
    note = None
    if data.startswith(codecs.BOM_UTF8):
        text = data[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace")
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = data.decode("utf-16", errors="replace")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            if data.count(b"\x00") > len(data) // 4:
                text = data.decode("utf-16-le", errors="replace")
                note = "read as UTF-16 without a byte-order mark"
            else:
                text = data.decode("cp1252", errors="replace")
                note = "not UTF-8; read as Windows-1252"
    return " ".join(text.split()), note


def _contains_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE) is not None


def finish_caption(caption: str, trigger: str | None, policy: CaptionPolicy) -> str:
    """Apply trigger placement, prefix/suffix and the length cap, in that order."""
    text = caption.strip()
    if trigger:
        if policy.trigger_placement == "placeholder" or TRIGGER_PLACEHOLDER in text:
            text = text.replace(TRIGGER_PLACEHOLDER, trigger)
        elif policy.trigger_placement == "prepend" and not _contains_word(text, trigger):
            text = f"{trigger}, {text}" if text else trigger
    else:
        text = text.replace(TRIGGER_PLACEHOLDER, "").strip(" ,")
    if policy.prefix:
        text = f"{policy.prefix}{text}"
    if policy.suffix:
        text = f"{text}{policy.suffix}"
    if policy.max_length and len(text) > policy.max_length:
        text = text[: policy.max_length].rstrip(" ,")
    return " ".join(text.split())
