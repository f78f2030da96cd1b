"""The RunPod emulator judged by RunPod's own SDK: every call loraflow makes goes through `runpod` 1.11's
functions (or its GraphQL transport), and the emulator validates what they send against RunPod's schema.
Where the SDK and the emulator disagree, the emulator is wrong."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import httpx
import pytest

from loraflow.errors import UserInputError
from loraflow.providers.runpod import SELF_DESTROY, RunPodProvider, spot_mutation
from loraflow.spec import TrainSpec, parse_spec
from tests.integration.test_local_jobs import wait_for
from tests.remote.conftest import RunPod


def needs(_spec: TrainSpec) -> SimpleNamespace:
    return SimpleNamespace(min_vram_gb=20, cuda=None, image="img/loraflow:1")


def spec(**compute: object) -> TrainSpec:
    data = {"name": "rp", "dataset": {"path": "."}, "base_model": "tiny-flux", "compute": {"provider": "runpod"}}
    data["compute"].update(compute)  # type: ignore[attr-defined]
    return parse_spec(data, "rp")


def test_the_sdk_reads_gpu_types_and_prices(runpod: RunPod) -> None:
    import runpod as sdk

    sdk.api_key = runpod.key
    types = sdk.get_gpus()
    assert {"id", "displayName", "memoryInGb"} <= set(types[0])
    detail = sdk.get_gpu("NVIDIA GeForce RTX 4090", 2)
    assert detail["securePrice"] == 0.69 and detail["communitySpotPrice"] == 0.20
    assert detail["lowestPrice"] == {"minimumBidPrice": 0.20, "uninterruptablePrice": 0.34}
    with pytest.raises(ValueError, match="No GPU found"):
        sdk.get_gpu("NVIDIA No Such GPU")
    with pytest.raises(sdk.error.QueryError):  # malformed queries fail as on a GraphQL server
        sdk.api.graphql.run_graphql_query("query { gpuTypes { id noSuchField } }")
    sdk.api_key = "wrong"
    with pytest.raises(sdk.error.AuthenticationError):
        sdk.get_gpus()


def test_offers_are_priced_per_job_on_each_cloud(runpod: RunPod) -> None:
    ranked = RunPodProvider(needs=needs).offers(spec(gpus=2, gpu={"names": ["RTX 4090", "RTX 3090"]}))
    assert {(r.offer["cloud"], r.gpu) for r in ranked} == {
        (c, g) for c in ("SECURE", "COMMUNITY") for g in ("RTX 4090", "RTX 3090")
    }
    assert [r.estimate.cost_usd for r in ranked] == sorted(r.estimate.cost_usd for r in ranked)
    best = ranked[0]  # two GPUs: the price is the pod's, both GPUs and its disk
    assert best.offer["usd_per_hour"] == pytest.approx(2 * best.offer["usd_per_gpu_hour"] + 80 * 0.10 / 720)
    secure = RunPodProvider(needs=needs).offers(spec(runpod={"cloud": "secure"}))
    assert {r.offer["cloud"] for r in secure} == {"SECURE"}
    with pytest.raises(UserInputError, match="no RunPod GPU type fits"):
        RunPodProvider(needs=needs).offers(spec(gpu={"names": ["RTX 4090"], "max_usd_per_hour": 0.05}))


def test_rent_read_list_and_terminate_through_the_sdk(runpod: RunPod) -> None:
    import runpod as sdk

    provider = RunPodProvider(needs=needs)
    provider.ensure_ssh_key("ssh-ed25519 AAAAC3Nza loraflow")
    runpod.admin("faults", {"no_capacity": 1})  # the cheapest type has no machine left: the next one is rented
    tried: list[str] = []
    pod_id, chosen = provider.create(spec(), "j1", provider.offers(spec()), on_attempt=tried.append, max_hours=1)
    assert len(tried) == 1 and "no RTX 3090 left" in tried[0]
    pod = sdk.get_pod(pod_id)  # the SDK reads what loraflow's create (the SDK's create_pod) asked for
    assert pod["name"] == "loraflow:j1" and pod["imageName"] == "img/loraflow:1" and pod["ports"] == "22/tcp"
    env = dict(e.split("=", 1) for e in pod["env"])
    assert env["PUBLIC_KEY"] == "ssh-ed25519 AAAAC3Nza loraflow" and env["LORAFLOW_JOB"] == "j1"
    watcher = base64.b64decode(env["LORAFLOW_WATCH_B64"]).decode()  # base64 crossed the SDK's unescaped GraphQL
    assert SELF_DESTROY in watcher and '"' not in pod["dockerArgs"]
    state = runpod.pods()[pod_id]
    assert state["cloud"] == chosen.offer["cloud"] and state["gpu"] == chosen.gpu
    wait_for(lambda: provider.status(pod_id)["runtime"] is not None, what="the pod's container")  # type: ignore[index]
    ports = sdk.get_pod(pod_id)["runtime"]["ports"]
    assert [(p["privatePort"], p["isIpPublic"]) for p in ports] == [(22, True)]
    assert [(r.id, r.job_id) for r in provider.owned()] == [(pod_id, "j1")]
    assert provider.dead_reason(pod_id) is None
    sdk.terminate_pod(pod_id)
    assert sdk.get_pod(pod_id) is None and provider.dead_reason(pod_id) == "the pod is gone (terminated)"
    assert provider.release(pod_id) is None  # already gone: still fine, and no time of ours to end its lease at
    assert provider.owned() == []


def test_spot_pods_are_rented_at_a_bid(runpod: RunPod) -> None:
    import runpod as sdk

    provider = RunPodProvider(needs=needs)
    low = spec(runpod={"interruptible": True, "bid_usd_per_gpu": 0.01, "cloud": "community"})
    with pytest.raises(UserInputError):  # a bid under every floor leaves no offer
        provider.offers(low)
    ranked = provider.offers(spec(runpod={"interruptible": True, "cloud": "community"}))
    assert ranked[0].offer["bid_usd_per_gpu"] == 0.12 and ranked[0].gpu == "RTX 3090"  # the minimum bid
    pod_id, _ = provider.create(spec(), "j2", ranked, max_hours=1)
    assert runpod.pods()[pod_id]["interruptible"] and runpod.pods()[pod_id]["cost_per_hr"] == 0.12
    assert sdk.get_pod(pod_id)["podType"] == "INTERRUPTABLE"
    # The bid mutation escapes its strings: a value the SDK's own create_pod would break on is fine here.
    fields = {k: "" for k in ("name", "imageName", "volumeMountPath", "ports", "dockerArgs")}
    text = spot_mutation(
        {**fields, "gpuTypeId": "NVIDIA GeForce RTX 3090", "cloudType": "COMMUNITY", "gpuCount": 1,
         "containerDiskInGb": 10, "volumeInGb": 0, "env": {"A": 'say "hi"\n'}, "supportPublicIp": True,
         "startSsh": True, "minVcpuCount": 1, "minMemoryInGb": 1, "name": "loraflow:j3", "imageName": "x"},
        0.5,
    )  # fmt: skip
    sdk.api_key = runpod.key
    made = sdk.api.graphql.run_graphql_query(text)["data"]["podRentInterruptable"]
    assert 'A=say "hi"\n' in made["env"]
    with pytest.raises(sdk.error.QueryError, match="below the current minimum"):
        sdk.api.graphql.run_graphql_query(text.replace("bidPerGpu: 0.5", "bidPerGpu: 0.05"))
    provider.release(pod_id)
    provider.release(made["id"])


def test_the_pod_key_acts_on_its_own_pod_only(runpod: RunPod) -> None:
    provider = RunPodProvider(needs=needs)
    ranked = provider.offers(spec())
    mine, _ = provider.create(spec(), "j4", ranked, max_hours=1)
    other, _ = provider.create(spec(), "j5", ranked, max_hours=1)
    pod_key = runpod.emulator.pods[str(mine)].api_key
    url, headers = f"{runpod.url}/graphql", {"Authorization": f"Bearer {pod_key}"}

    def ask(query: str) -> dict:
        return httpx.post(url, json={"query": query}, headers=headers, timeout=30).json()

    assert "errors" in ask(f'mutation {{ podTerminate(input: {{podId: "{other}"}}) }}')
    assert "errors" in ask("query { myself { pods { id } } }")
    assert "errors" not in ask(f'mutation {{ podTerminate(input: {{podId: "{mine}"}}) }}')
    assert runpod.emulator.terminated_by_pod == {mine} and list(runpod.pods()) == [other]
    provider.release(other)


def test_runpods_gpu_names_find_their_throughput_row() -> None:
    from loraflow.providers.estimate import seconds_per_step, table_row

    assert [table_row(g) for g in ("A100 PCIe", "A100 SXM", "RTX 6000 Ada", "RTX 3090")] == [
        "A100 PCIE", "A100 SXM4", "RTX 6000Ada", "RTX 3090"
    ]  # fmt: skip
    assert seconds_per_step(spec(), "A100 PCIe") == seconds_per_step(spec(), "A100 PCIE")
    assert seconds_per_step(spec(), "A100 PCIe") < seconds_per_step(spec(), "RTX 4090")
