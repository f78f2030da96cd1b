"""Secrets never live in a spec: values that look like a token or key are refused, naming the variable to use."""

from __future__ import annotations

import re
from typing import Any

_SECRET_PATTERNS = [
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), "HF_TOKEN"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "AWS_ACCESS_KEY_ID"),
    # An AWS secret access key: 40 base64 characters mixing cases and digits (a word never does).
    (
        re.compile(r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[0-9])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])"
                   r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
        "AWS_SECRET_ACCESS_KEY",
    ),
    (re.compile(r"(?<![0-9A-Fa-f])[0-9a-f]{64}(?![0-9A-Fa-f])"), "VAST_API_KEY"),  # Vast.ai keys are 64 hex
    # fal.ai keys are '<key id (a UUID)>:<secret (32 hex)>'
    (re.compile(r"\b[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}:[0-9a-f]{32}\b"), "FAL_KEY"),
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})"), "GITHUB_TOKEN"),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), "SLACK_TOKEN"),
    (re.compile(r"\b[MNO][A-Za-z0-9_-]{23,25}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,}"), "DISCORD_TOKEN"),
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"), "url_env (a URL with a password in it)"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a key file referenced by path"),
    (re.compile(r"https://discord(?:app)?\.com/api/webhooks/\d+/[\w-]{20,}"), "url_env"),
    (re.compile(r"https://hooks\.slack\.com/services/[\w/]{20,}"), "url_env"),
    (re.compile(r"api\.telegram\.org/bot\d+:[\w-]{20,}"), "url_env"),
]


def find_secrets(value: Any, path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        for key, sub in value.items():
            found += find_secrets(sub, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            found += find_secrets(sub, f"{path}[{i}]")
    elif isinstance(value, str):
        for pattern, where in _SECRET_PATTERNS:
            if pattern.search(value):
                found.append(
                    f"{path}: looks like a secret; secrets never go in a spec. Fix: remove it and set {where}"
                    " in the environment instead."
                )
    return found
