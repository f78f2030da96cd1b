"""How loraflow paces its calls to Vast.ai (status polls at the documented 10 s, a 429's Retry-After waited
out), slow image pulls, and what an instance's own key may do: the emulator answers as the real API."""

from __future__ import annotations

import time

import httpx
import pytest

from loraflow.engines import engine_needs
from loraflow.providers.vast_client import VastClient, VastError
from loraflow.providers.vastai import POLL_S, VastProvider, poll_interval
from tests.remote.conftest import Vast
from tests.remote.test_vast_api import spec


def test_status_is_polled_at_the_documented_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAFLOW_VAST_POLL_S", raising=False)
    assert poll_interval() == POLL_S == 10.0  # Vast's docs: poll every 10 s (the endpoint allows one per 2 s)
    monkeypatch.setenv("LORAFLOW_VAST_POLL_S", "0.5")
    assert poll_interval() == 0.5


def test_a_429_with_retry_after_is_waited_out(vast: Vast) -> None:
    """The show endpoint answers a second call within its threshold with 429 and Retry-After: the client
    waits that long (not its own short backoff, which would give up) and gets the answer."""
    client = VastClient(tries=3, backoff_s=0.01)  # its own backoff alone would be over in 0.03 s
    answer = client.create_instance(client.search_offers({"limit": 1})[0]["id"], {"image": "i", "disk": 10})
    inst = int(answer["new_contract"])
    vast.admin("faults/", {"rate_scale": 1.5})  # one show call per 3 s per key
    raw = httpx.get(f"{vast.url}/api/v0/instances/{inst}/", headers={"Authorization": f"Bearer {vast.key}"})
    raw = httpx.get(f"{vast.url}/api/v0/instances/{inst}/", headers={"Authorization": f"Bearer {vast.key}"})
    assert raw.status_code == 429 and 0 < float(raw.headers["Retry-After"]) <= 3
    assert raw.json()["error"] == "rate_limit_exceeded"
    started = time.monotonic()
    assert client.show_instance(inst) is not None
    assert time.monotonic() - started >= 0.3  # it waited as told
    assert vast.admin("state/")["throttled"] >= 2
    vast.admin("faults/", {"rate_limit": 0, "rate_scale": 0.05})
    client.destroy_instance(inst)


def test_a_retry_after_past_a_minute_is_not_waited_inline(vast: Vast) -> None:
    client = VastClient(tries=3, backoff_s=0.01)
    inst = int(client.create_instance(client.search_offers({"limit": 1})[0]["id"], {"image": "i", "disk": 10})
               ["new_contract"])  # fmt: skip
    vast.admin("faults/", {"rate_scale": 60})  # 120 s between show calls
    client.show_instance(inst)
    started = time.monotonic()
    with pytest.raises(VastError) as exc:
        client.show_instance(inst)
    assert exc.value.status == 429 and time.monotonic() - started < 5
    vast.admin("faults/", {"rate_scale": 0.05})
    client.destroy_instance(inst)


def test_wait_ready_through_a_slow_image_pull_without_going_over_the_rate_limit(vast: Vast,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance sits in `loading` while its image is pulled (Vast shows the pull in status_msg); polled
    at the configured pace the show endpoint never has to refuse us."""
    monkeypatch.setenv("LORAFLOW_VAST_POLL_S", "0.15")
    vast.admin("faults/", {"pull_s": 1.2})
    provider = VastProvider(needs=engine_needs)
    inst, _ = provider.create(spec(), "jobpull", provider.offers(spec()))
    seen: list[str] = []
    while (row := provider.status(inst)) is not None and row.get("actual_status") != "loading":
        time.sleep(0.15)
    assert row is not None and row["status_msg"].startswith("Pulling image")
    before = vast.admin("state/")["throttled"]
    provider.wait_ready(inst, lambda h, p: None, timeout_s=30, on_stage=seen.append)
    # At most the first poll may meet the rate window the test's own last status call opened (a busy machine
    # can put the two closer than the window); polling faster than the pace would be refused again and again.
    assert seen[0] == "waiting for the instance to run" and vast.admin("state/")["throttled"] - before <= 1
    provider.release(inst)


def test_an_instances_own_key_may_stop_read_logs_and_execute_on_itself_only(vast: Vast) -> None:
    """CONTAINER_API_KEY inside an instance acts on that instance as the account key would (show, label,
    stop, logs, execute, destroy) and on nothing else."""
    client = VastClient()
    offers = client.search_offers({"limit": 2})
    body = {"image": "i", "disk": 10, "onstart": "echo started-by-onstart"}
    mine, other = (client.create_instance(o["id"], body) for o in offers)
    own = VastClient(key=mine["instance_api_key"])
    inst = int(mine["new_contract"])
    deadline = time.monotonic() + 20
    while "started-by-onstart" not in (text := logs(own, inst)) and time.monotonic() < deadline:
        time.sleep(0.2)  # the container runs its onstart once it has booted
    assert "started-by-onstart" in text
    listed = own.request("PUT", f"/instances/command/{inst}/", {"command": "ls /root"})
    assert httpx.get(listed["result_url"]).status_code == 200
    with pytest.raises(VastError) as bad:
        own.request("PUT", f"/instances/command/{inst}/", {"command": "cat /etc/passwd"})
    assert bad.value.status == 400
    with pytest.raises(VastError) as escape:
        own.request("PUT", f"/instances/command/{inst}/", {"command": "rm -rf ../../.."})
    assert escape.value.status == 400
    from loraflow.errors import UserInputError

    with pytest.raises(UserInputError):  # 403: another instance is not its own
        own.request("PUT", f"/instances/{other['new_contract']}/", {"state": "stopped"})
    own.request("PUT", f"/instances/{inst}/", {"state": "stopped"})
    row = own.show_instance(inst)
    assert row is not None and row["intended_status"] == "stopped" and row["actual_status"] == "stopped"
    assert own.destroy_instance(inst) is True
    assert client.destroy_instance(int(other["new_contract"])) is True


def logs(client: VastClient, inst: int) -> str:
    answer = client.request("PUT", f"/instances/request_logs/{inst}/", {"tail": "100"})
    return httpx.get(answer["result_url"]).text
