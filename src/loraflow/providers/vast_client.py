"""A small typed client for Vast.ai's REST API over httpx (not the vastai SDK).

It smooths over the API's shapes (`{"instances": {...}}` vs `null`, v1 paging, whitespace in string
fields), retries what is worth retrying (429, 5xx, timeouts): a 429's Retry-After is waited out as the
official client does (up to a minute), otherwise the waits grow,
and turns auth failures (401, 403, and 404 carrying `auth_error`) into one clear message. The key
comes from VAST_API_KEY or Vast's own key files and is only ever sent in the Authorization header.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from loraflow.errors import LoraflowError, UserInputError

DEFAULT_URL = "https://console.vast.ai"
RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is not waited out inline (the official client's bound too)


class VastError(LoraflowError):
    def __init__(self, status: int, error: str, msg: str, body: dict[str, Any] | None = None) -> None:
        self.status = status
        self.error = error
        self.body = body or {}
        super().__init__(f"Vast.ai answered {status} {error}: {msg}".strip())

    @property
    def offer_gone(self) -> bool:
        """The offer was rented by someone else between search and create."""
        return self.status in (404, 410) and "no_such_ask" in f"{self.error} {self.body.get('msg', '')}"


def api_key() -> str:
    key = os.environ.get("VAST_API_KEY", "").strip()
    if not key:
        config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        for candidate in (config / "vastai" / "vast_api_key", Path.home() / ".vast_api_key"):
            if candidate.is_file():
                key = candidate.read_text().strip()
                break
    if not key:
        raise UserInputError(
            "no Vast.ai API key",
            fix="export VAST_API_KEY=... (from https://cloud.vast.ai/manage-keys/) or save it in "
            "~/.config/vastai/vast_api_key with mode 0600",
        )
    return key


def retry_after(resp: httpx.Response) -> float | None:
    """The seconds a 429/503 asks us to wait (Retry-After as a number), or None without a usable one."""
    try:
        return max(0.0, float(resp.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def _strip(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


class VastClient:
    def __init__(
        self,
        key: str | None = None,
        base_url: str | None = None,
        tries: int = 8,
        backoff_s: float | None = None,
        timeout_s: float = 60,
    ) -> None:
        self._key = key if key is not None else api_key()
        url = (base_url or os.environ.get("VAST_URL") or DEFAULT_URL).rstrip("/")
        self.tries = tries
        self.backoff_s = backoff_s if backoff_s is not None else float(os.environ.get("LORAFLOW_VAST_BACKOFF_S", 1.0))
        self.http = httpx.Client(base_url=url, timeout=timeout_s, headers={"User-Agent": "loraflow"})

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        if not path.startswith("/api/"):
            path = "/api/v0" + path
        headers = {"Authorization": f"Bearer {self._key}"}
        last: Exception | None = None
        for attempt in range(self.tries):
            wait = min(self.backoff_s * 2**attempt, 30)  # no Retry-After: back off on our own, doubling
            try:
                resp = self.http.request(method, path, json=body, params=params, headers=headers)
            except httpx.TransportError as exc:  # timeouts and refused connections
                last = exc
            else:
                if resp.status_code not in RETRY_STATUS:
                    return self._decode(resp)
                last = VastError(resp.status_code, "rate_limited" if resp.status_code == 429 else "server_error",
                                 resp.text[:200])  # fmt: skip
                after = retry_after(resp)
                if after is not None:
                    if after > MAX_RETRY_AFTER_S:
                        break
                    wait = after
            if attempt < self.tries - 1:
                time.sleep(wait)
        if isinstance(last, VastError):
            raise last
        raise LoraflowError(
            f"Vast.ai at {self.http.base_url} did not answer after {self.tries} tries ({type(last).__name__}: {last})",
            fix="check the network, or VAST_URL if you set it",
        )

    def _decode(self, resp: httpx.Response) -> Any:
        try:
            data = resp.json()
        except ValueError:
            data = {"msg": resp.text}
        if resp.status_code < 400:
            return _strip(data)
        body = data if isinstance(data, dict) else {"msg": str(data)}
        error = str(body.get("error", "")) or str(resp.status_code)
        msg = str(body.get("msg") or body.get("message") or body.get("detail") or "")
        if resp.status_code in (401, 403) or (resp.status_code == 404 and error == "auth_error"):
            raise UserInputError(
                f"Vast.ai refused the API key ({resp.status_code} {error}: {msg})",
                fix="check VAST_API_KEY; a scoped key needs instance read/write permissions",
            )
        raise VastError(resp.status_code, error, msg, body)

    # --- endpoints -------------------------------------------------------------------------------

    def search_offers(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self.request("POST", "/bundles/", query).get("offers") or [])

    def create_instance(self, offer_id: int, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", f"/asks/{offer_id}/", {"client_id": "me", **body})

    def show_instance(self, instance_id: int) -> dict[str, Any] | None:
        data = self.request("GET", f"/instances/{instance_id}/", params={"owner": "me"})
        inst = data.get("instances") if isinstance(data, dict) else None
        return inst if isinstance(inst, dict) and inst else None  # null or an empty payload: gone

    def list_instances(self, label_prefix: str | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 25, "order_by": json.dumps([{"col": "id", "dir": "asc"}])}
            if token:
                params["after_token"] = token
            data = self.request("GET", "/api/v1/instances/", params=params)
            rows += data.get("instances") or []
            token = data.get("next_token")
            if not token:
                break
        if label_prefix is not None:
            rows = [r for r in rows if str(r.get("label") or "").startswith(label_prefix)]
        return rows

    def destroy_instance(self, instance_id: int) -> bool:
        """True when it was destroyed now, False when it was already gone."""
        try:
            self.request("DELETE", f"/instances/{instance_id}/", {})
            return True
        except VastError as exc:
            if exc.status == 404 or exc.error in ("no_such_instance", "not_found"):
                return False
            raise

    def ssh_keys(self) -> list[str]:
        data = self.request("GET", "/ssh/")
        rows = data if isinstance(data, list) else data.get("keys", [])
        return [str(r.get("key") or r.get("public_key") or "").strip() for r in rows]

    def add_ssh_key(self, public_key: str) -> None:
        self.request("POST", "/ssh/", {"ssh_key": public_key})
