"""Publishing to a Hugging Face model repo with huggingface_hub: one commit with the LoRA, the model
card, the samples and metadata.json. The token comes from HF_TOKEN only; HF_ENDPOINT is honoured."""

from __future__ import annotations

import os
import time
from typing import Any

from loraflow.errors import UserInputError

RETRIES = 4


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's "the connection failed" errors: huggingface_hub >= 1.0 raises httpx's (2.x its
    httpx2 fork's), which are not OSError as requests' were before it."""
    import importlib

    found: list[type[BaseException]] = [ConnectionError, TimeoutError, OSError]
    for name in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _transient(exc: Exception) -> bool:
    """Worth another try: the Hub's 429 and 5xx, and a dropped or timed-out connection."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", 0) or 0
        return status == 429 or status >= 500
    return isinstance(exc, _transport_errors())


def publish_files(
    files: dict[str, bytes],
    repo_id: str,
    private: bool,
    message: str,
    token: str | None = None,
    retry_base_s: float = 2.0,
) -> dict[str, Any]:
    """Create (or reuse) the repo and upload `files` in a single commit, retrying transient errors."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise UserInputError(
            "publishing to Hugging Face needs a token", fix="set HF_TOKEN (write access) in the environment"
        )
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    for attempt in range(RETRIES):
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in sorted(files.items())]
            info = api.create_commit(repo_id, operations=ops, commit_message=message, repo_type="model")
            return {"type": "huggingface", "repo_id": repo_id, "url": str(url), "commit": info.oid, "private": private}
        except HfHubHTTPError as exc:
            status = getattr(exc.response, "status_code", 0) or 0
            if status in (401, 403):
                raise UserInputError(
                    f"Hugging Face refused the upload to {repo_id} ({status})",
                    fix="use an HF_TOKEN with write access to that repo or organisation",
                ) from exc
            if not _transient(exc) or attempt == RETRIES - 1:
                raise
        except Exception as exc:  # httpx's (httpx2's) TransportError family, or requests' OSErrors before 1.0
            if not _transient(exc):
                raise
            if attempt == RETRIES - 1:
                raise UserInputError(f"could not reach Hugging Face: {type(exc).__name__}: {exc}",
                                     fix="try again later (`loraflow publish JOB`)") from exc
        time.sleep(retry_base_s * 2**attempt)
    raise AssertionError("unreachable")
