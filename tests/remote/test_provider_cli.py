"""The money-and-machines commands cover every provider: `loraflow estimate` prices a rented job on each side
by side through its own API (the Vast.ai and RunPod emulators here) and says why one it could not ask is
missing; `instances` and `reap` list and destroy loraflow's machines on each."""

from __future__ import annotations

import json
from pathlib import Path

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
