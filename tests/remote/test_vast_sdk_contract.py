"""Contract: Vast.ai's official client (the `vastai` package, its VastAI SDK class) drives the emulator through
every call loraflow relies on, and loraflow's own client reads the same answers. Where the SDK and the
emulator disagree the emulator is wrong; where loraflow's client reads them otherwise, loraflow is."""

from __future__ import annotations

import time

import pytest

from loraflow.engines import engine_needs
from loraflow.providers.vast_client import VastClient
from loraflow.providers.vastai import VastProvider, label_for, offer_query
from tests.remote.conftest import Vast
from tests.remote.test_vast_api import spec

vastai = pytest.importorskip("vastai", reason="the official vastai SDK (the dev extra) is the judge here")


def sdk(vast: Vast, key: str | None = None):
    return vastai.VastAI(api_key=key or vast.key, server_url=vast.url, retry=6, raw=True, quiet=True)


def test_search_gives_the_sdk_and_loraflow_the_same_offers(vast: Vast) -> None:
    query = offer_query(spec(), engine_needs(spec()))
    filters = {k: v for k, v in query.items() if k not in ("order", "type", "allocated_storage", "limit")}
    official = sdk(vast).search_offers(filters, type="on-demand", order="dph_total", limit=200, storage=80,
                                       no_default=True)  # fmt: skip
    ours = VastClient().search_offers(query)
    assert official and [o["id"] for o in official] == [o["id"] for o in ours]
    # Its query language (numbers as strings, names with underscores, GB multiplied to MB) finds single
    # GPUs of 8-GPU servers: gpu_frac is the share of the machine.
    h100 = sdk(vast).search_offers("num_gpus=1 gpu_name=H100_SXM gpu_ram>=80 gpu_frac<1", order="dph_total")
    assert h100 and all(o["gpu_frac"] == 0.125 and o["num_gpus"] == 1 for o in h100)


def test_create_show_list_label_and_destroy(vast: Vast) -> None:
    official = sdk(vast)
    offer = official.search_offers("num_gpus=1 gpu_name=RTX_4090 reliability>0.99", order="dph_total")[0]
    made = official.create_instance(offer["id"], image="pytorch/pytorch:latest", disk=20, env={"LORAFLOW_JOB": "j1"},
                                    label=label_for("j1"), onstart_cmd="true", ssh=True, direct=True,
                                    cancel_unavail=True)  # fmt: skip
    inst = int(made["new_contract"])
    assert made["success"] is True
    row = official.show_instance(inst)  # the SDK turns extra_env pairs into a dict and needs start_date
    assert row["label"] == "loraflow:j1" and row["extra_env"] == {"LORAFLOW_JOB": "j1"}
    assert row["image_runtype"] == "ssh_direc ssh_proxy" and row["gpu_frac"] == offer["gpu_frac"]
    assert [r["id"] for r in official.show_instances()] == [inst]
    assert [r.id for r in VastProvider().owned()] == [inst]  # loraflow finds it by its label
    official.label_instance(inst, "loraflow:j2")
    assert VastClient().show_instance(inst)["label"] == "loraflow:j2"  # type: ignore[index]
    official.destroy_instance(inst)
    assert official.show_instance(inst) is None and VastClient().show_instance(inst) is None


def test_an_instance_created_without_label_or_onstart(vast: Vast) -> None:
    """The SDK sends `label: null` and `onstart: null` when none is given: no label, nothing run."""
    official = sdk(vast)
    inst = int(official.create_instance(official.search_offers(None, limit=1)[0]["id"], image="i")["new_contract"])
    row = official.show_instance(inst)
    assert row["label"] == "" and row["onstart"] == ""
    official.destroy_instance(inst)


def test_loraflows_create_request_reads_back_through_the_sdk(vast: Vast) -> None:
    provider = VastProvider(needs=engine_needs)
    inst, _ = provider.create(spec(), "jobsdk", provider.offers(spec()), max_hours=1)
    row = sdk(vast).show_instance(inst)
    assert row["label"] == label_for("jobsdk") and row["extra_env"]["LORAFLOW_JOB"] == "jobsdk"
    assert row["extra_env"]["LORAFLOW_VAST_API"] == vast.url and "loraflow-watch" in row["onstart"]
    provider.release(inst)


def test_self_destroy_stop_logs_and_execute_with_the_instance_key(vast: Vast) -> None:
    """What the instance's dead-man switch does with CONTAINER_API_KEY, done by the official client."""
    official = sdk(vast)
    offers = official.search_offers(None, order="dph_total", limit=2)
    made = official.create_instance(offers[0]["id"], image="i", onstart_cmd="echo hello-from-onstart")
    other = int(official.create_instance(offers[1]["id"], image="i")["new_contract"])
    inst, own = int(made["new_contract"]), sdk(vast, made["instance_api_key"])
    deadline = time.monotonic() + 20
    while "hello-from-onstart" not in (text := own.logs(inst, tail="50")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "hello-from-onstart" in text
    assert "root" in own.execute(inst, "ls /")
    own.stop_instance(inst)
    assert own.show_instance(inst)["intended_status"] == "stopped"
    with pytest.raises(Exception, match="403"):  # requests' HTTPError: not its own instance
        own.destroy_instance(other)
    own.destroy_instance(inst)
    assert official.show_instance(inst) is None and inst in vast.emulator.destroyed_by_instance
    official.destroy_instance(other)


def test_ssh_keys(vast: Vast) -> None:
    official = sdk(vast)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ7vH1wJ1m2F5qv0m0mQJ2b2q0k7X4o0lq9g0n5T1pQe test@sdk"
    official.create_ssh_key(key)
    assert key in VastClient().ssh_keys()
    VastProvider().ensure_ssh_key(key)  # already there: not added twice
    listed = official.show_ssh_keys()
    assert [k["public_key"] if "public_key" in k else k["key"] for k in listed].count(key) == 1
