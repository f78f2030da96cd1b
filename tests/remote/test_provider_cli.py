"""The money-and-machines commands cover every provider: `loraflow estimate` prices a rented job on each side
by side through its own API (the Vast.ai and RunPod emulators here) and says why one it could not ask is
missing; `instances` and `reap` list and destroy loraflow's machines on each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraflow.providers.base import Provider
from loraflow.providers.registry import RENTED, provider_for
from tests.remote.conftest import RunPod, Vast


def write(tmp_path: Path, provider: str) -> Path:
    path = tmp_path / "spec.yaml"
    spec = {
        "name": "side-by-side",
        "dataset": {"path": str(tmp_path), "trigger_word": "lfx"},
        "base_model": "tiny-flux",
        "compute": {"provider": provider, "gpu": {"names": ["RTX 4090", "H100 SXM"]}},
        "budget": {"max_usd": 0.5},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def test_estimate_lists_vast_and_runpod_side_by_side(tmp_path: Path, cli, vast: Vast, runpod: RunPod) -> None:
    for name in RENTED:  # every registered provider fills the same verbs
        provider = provider_for(name)
        assert isinstance(provider, Provider) and provider.name == name
    out = cli("estimate", write(tmp_path, "runpod"), "--json")
    assert out.code == 0, out.err
    report = json.loads(out.out)
    rows = {(e["provider"], e["gpu"]) for e in report["estimates"]}
    assert rows == {(p, g) for p in ("Vast.ai", "RunPod") for g in ("RTX 4090", "H100 SXM")}
    assert report["estimates"][0]["provider"] == "RunPod"  # the spec's own provider first
    for e in report["estimates"]:
        assert e["cost_usd"] == pytest.approx(e["usd_per_hour"] * e["total_s"] / 3600, abs=1e-3)
    table = cli("estimate", write(tmp_path, "vastai")).out
    assert "Vast.ai" in table and "RunPod" in table and "budget $0.50" in table


def test_a_provider_without_a_key_is_named_not_fatal(tmp_path: Path, cli, vast: Vast, monkeypatch) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.runpod/config.toml either
    out = cli("estimate", write(tmp_path, "vastai"), "--json")
    assert out.code == 0, out.err
    report = json.loads(out.out)
    assert {e["provider"] for e in report["estimates"]} == {"Vast.ai"}
    assert "API key" in report["unpriced"]["RunPod"]
    table = cli("estimate", write(tmp_path, "vastai")).out
    assert "RunPod: not priced (RunPod needs an API key)" in " ".join(table.split())
    refused = cli("estimate", write(tmp_path, "runpod"))  # its own provider has no key, but Vast.ai prices it
    assert refused.code == 0 and "Vast.ai" in refused.out


def test_instances_and_reap_cover_every_provider(tmp_path: Path, cli, vast: Vast, runpod: RunPod) -> None:
    from loraflow.engines import engine_needs
    from loraflow.providers.vast_client import VastClient
    from loraflow.spec import load_spec

    client = VastClient()
    body = {"image": "i", "disk": 10, "label": "loraflow:deadbeef0000"}
    on_vast = client.create_instance(client.search_offers({"limit": 1})[0]["id"], body)["new_contract"]
    pods = provider_for("runpod", needs=engine_needs)
    spec = load_spec(write(tmp_path, "runpod"))
    on_runpod, _ = pods.create(spec, "cafe00000000", pods.offers(spec), max_hours=1)
    listed = json.loads(cli("instances", "--json").out)
    assert {(d["provider"], d["id"], d["job"]) for d in listed} == {
        ("vastai", on_vast, "deadbeef0000"), ("runpod", on_runpod, "cafe00000000")
    }
    assert cli("reap").code == 0
    assert client.show_instance(on_vast) is None and runpod.pods() == {}
    assert "nothing to reap" in cli("reap").out


def _service(monkeypatch, providers: str) -> tuple[Any, dict[str, str]]:
    from fastapi.testclient import TestClient

    from loraflow.jobs.store import Store
    from loraflow.server.app import create_app
    from loraflow.server.tokens import create_token

    monkeypatch.setenv("LORAFLOW_SERVICE_PROVIDERS", providers)
    store = Store()
    return TestClient(create_app(store)), {"Authorization": f"Bearer {create_token(store, 'alice')}"}


def test_api_estimate_lists_every_offered_provider(tmp_path: Path, monkeypatch, vast: Vast, runpod: RunPod) -> None:
    spec = yaml.safe_dump({"name": "api", "base_model": "tiny-flux", "dataset": {"trigger_word": "lfx"},
                           "compute": {"provider": "vastai", "gpu": {"names": ["RTX 4090", "H100 SXM"]}}})  # fmt: skip
    client, auth = _service(monkeypatch, "local,vastai,runpod")
    with client:
        answer = client.post("/api/estimate", json={"spec": spec}, headers=auth)
        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert {e["gpu"] for e in report["estimates"]} == {"RTX 4090", "H100 SXM"}  # the spec's own provider
        by_provider = {p["provider"]: p for p in report["providers"]}
        assert list(by_provider) == ["vastai", "runpod"] and by_provider["runpod"]["title"] == "RunPod"
        assert {e["gpu"] for e in by_provider["runpod"]["estimates"]} == {"RTX 4090", "H100 SXM"}
        assert by_provider["runpod"]["note"] is None
        pods = client.get("/api/offers", params={"provider": "runpod", "limit": 5}, headers=auth)
        assert pods.status_code == 200, pods.text
        costs = [r["estimate"]["cost_usd"] for r in pods.json()]
        assert costs and costs == sorted(costs)
    client, auth = _service(monkeypatch, "local,vastai")  # the operator does not rent on RunPod
    with client:
        report = client.post("/api/estimate", json={"spec": spec}, headers=auth).json()
        assert [p["provider"] for p in report["providers"]] == ["vastai"]
        refused = client.get("/api/offers", params={"provider": "runpod"}, headers=auth)
        assert refused.status_code in (400, 422) and "not offered on this service" in refused.text


def test_wizard_estimate_names_the_other_providers(tmp_path: Path, vast: Vast, runpod: RunPod) -> None:
    from loraflow.server.routes.wizard import _rented_estimate
    from loraflow.spec import load_spec

    spec = load_spec(write(tmp_path, "vastai"))
    both = _rented_estimate(spec, frozenset({"local", "vastai", "runpod"}))
    assert 'id="estimate-text"' in both and "on a rented" in both
    assert "elsewhere: RunPod $" in both
    assert "elsewhere" not in _rented_estimate(spec, frozenset({"local", "vastai"}))


def test_offers_command_asks_the_provider_named(tmp_path: Path, cli, vast: Vast, runpod: RunPod) -> None:
    path = write(tmp_path, "runpod")
    pods = cli("offers", path, "--provider", "runpod", "--json")
    assert pods.code == 0, pods.err
    rows = json.loads(pods.out)
    assert {r["estimate"]["gpu"] for r in rows} == {"RTX 4090", "H100 SXM"}
    assert [r["estimate"]["cost_usd"] for r in rows] == sorted(r["estimate"]["cost_usd"] for r in rows)
    table = cli("offers", path, "--provider", "runpod").out
    assert "RunPod offers for this job" in " ".join(table.split())
    assert "Vast.ai offers" in " ".join(cli("offers", path).out.split())  # the default stays Vast.ai
    wrong = cli("offers", path, "--provider", "lambda")
    assert wrong.code == 2 and "--provider" in wrong.err and "runpod" in wrong.err
