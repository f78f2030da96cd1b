"""The SkyPilot task loraflow builds for `compute.provider: skypilot`, judged offline by SkyPilot's own
classes: `sky.Resources`/`sky.Task` validate it as they are built, its YAML passes SkyPilot's task schema
and reads back through `Task.from_yaml_config`, and offers are priced by SkyPilot's catalog code reading a
small catalog file (a manually placed catalog is never re-fetched, so nothing is downloaded).

SkyPilot pins click<8.2 and uvicorn<0.36, older than loraflow's tree, so it lives in its own virtual
environment: `make test` runs this file there (.venv-sky); in .venv it is skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from loraflow.engines import engine_needs
from loraflow.errors import LoraflowError, UserInputError
from loraflow.providers.base import RankedOffer
from loraflow.providers.estimate import Estimate
from loraflow.providers.skypilot import SkyPilotProvider
from loraflow.providers.skypilot_api import SkyApi
from loraflow.providers.skypilot_task import KEY_REMOTE, TaskPlan, build_task, cluster_name, task_config
from loraflow.spec import TrainSpec, load_spec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0loraflowtestkey loraflow@test"


def _lambda_row(instance: str, gpu: str, mib: int, price: float, region: str, spot: float | None = None) -> str:
    info = {"Gpus": [{"Name": gpu, "Manufacturer": "NVIDIA", "Count": 1.0, "MemoryInfo": {"SizeInMiB": mib}}],
            "TotalGpuMemoryInMiB": mib}
    return f'{instance},{gpu},1.0,30.0,200.0,{price},{region},"{info}",{"" if spot is None else spot}'


# A few instance types in SkyPilot's Lambda catalog format (the columns its fetcher writes).
LAMBDA_CSV = "\n".join(
    [
        "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,Region,GpuInfo,SpotPrice",
        _lambda_row("gpu_1x_a10", "A10", 24576, 0.75, "us-east-1", spot=0.40),
        _lambda_row("gpu_1x_h100_pcie", "H100", 81920, 2.49, "us-east-1"),
        _lambda_row("gpu_1x_h100_pcie", "H100", 81920, 2.99, "us-west-1", spot=1.10),
        _lambda_row("gpu_1x_a100_sxm4", "A100", 40960, 1.29, "us-east-1"),
        _lambda_row("gpu_1x_t4", "T4", 16384, 0.30, "us-east-1"),  # too small for flux-dev: left out
    ]
) + "\n"


# SkyPilot's list of accelerator names (common/accelerators.csv: name, the clouds that have it).
ACCELERATORS_CSV = "AcceleratorName,Clouds\n" + "".join(
    f'{name},"[\'AWS\', \'GCP\', \'Lambda\', \'Kubernetes\']"\n'
    for name in ("A10", "A100", "A100-80GB", "H100", "L4", "RTX4090", "T4")
)


def _place_catalogs() -> None:
    """SkyPilot reads its catalogs under SKY_RUNTIME_DIR, fixed when it is imported, and fetches a missing one
    from GitHub: every catalog it needs is placed first (a placed catalog counts as the user's and is never
    fetched again), and any other request would go to a proxy that is not there."""
    if "sky" in sys.modules:
        pytest.skip("SkyPilot was imported before its catalogs could be placed", allow_module_level=True)
    root = Path(tempfile.mkdtemp(prefix="loraflow-sky-"))
    catalogs = root / ".sky" / "catalogs" / "v8"
    for name, text in (("common/accelerators.csv", ACCELERATORS_CSV), ("lambda/vms.csv", LAMBDA_CSV)):
        (catalogs / name).parent.mkdir(parents=True, exist_ok=True)
        (catalogs / name).write_text(text)
    os.environ["SKY_RUNTIME_DIR"] = str(root)
    os.environ["HOME"] = str(root)  # SkyPilot's other files (its API server's state, locks) go there too
    os.environ["SKYPILOT_DISABLE_USAGE_COLLECTION"] = "1"
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        os.environ[var] = "http://127.0.0.1:9"  # nothing listens: no request leaves this machine
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


if importlib.util.find_spec("sky") is None:  # before anything below changes this process's environment
    pytest.skip("SkyPilot is checked in its own venv: make test runs this file in .venv-sky", allow_module_level=True)
_place_catalogs()
import sky  # noqa: E402


def sky_spec(tmp_path: Path, **compute: object) -> TrainSpec:
    """A flux-dev spec on SkyPilot. (The schema refuses provider skypilot until the runner rents through it;
    the compute section is set here as the provider will read it.)"""
    data = tmp_path / "photos"
    data.mkdir(exist_ok=True)
    (tmp_path / "spec.yaml").write_text(
        f"name: skycat\ndataset: {{path: {data}, trigger_word: m1cat}}\nbase_model: flux-dev\n"
        "engine: {name: ai-toolkit}\ntraining: {steps: 1000}\n"
    )
    spec = load_spec(tmp_path / "spec.yaml")
    fields = {"provider": "skypilot", **compute}
    return spec.model_copy(update={"compute": spec.compute.model_copy(update=fields)})


def offer(accelerator: str, price: float = 2.49, cloud: str = "lambda") -> RankedOffer:
    """An offer as `offers` makes them."""
    row = {"id": f"{cloud}/-/{accelerator}", "accelerator": accelerator, "cloud": cloud, "region": None,
           "instance_type": None, "price": price, "vram_gb": 80.0}
    return RankedOffer(row, Estimate("H100 SXM", price, 0, 0, 3600, 0, 0), "skypilot")


def provider() -> SkyPilotProvider:
    p = SkyPilotProvider(needs=engine_needs)
    p.ensure_ssh_key(KEY)
    return p


def test_the_task_is_built_and_validated_by_skypilot_and_reads_back_from_its_yaml(tmp_path: Path) -> None:
    spec = sky_spec(tmp_path, infra="lambda", gpus=2)
    spec = spec.model_copy(update={"compute": spec.compute.model_copy(update={"gpu": spec.compute.gpu.model_copy(
        update={"names": ["H100"], "disk_gb": 120})})})
    plan = provider().plan(spec, "abc123def456", offer("H100"))
    task = build_task(plan)
    assert isinstance(task, sky.Task)
    config = task_config(task)

    from sky.utils import common_utils, schemas

    common_utils.validate_schema(config, schemas.get_task_schema(), "invalid task: ")  # SkyPilot's own schema
    again = sky.Task.from_yaml_config(config)
    (resources,) = again.resources
    assert resources.accelerators == {"H100": 2}  # compute.gpus of the chosen GPU, one machine
    assert str(resources.cloud).lower() == "lambda"
    assert resources.disk_size == 120
    assert resources.image_id == {None: "docker:" + engine_needs(spec).image.removeprefix("docker:")}
    assert resources.ports == ["10022"]  # the container's sshd, which loraflow reaches directly
    assert resources.autostop_config.down is True  # SkyPilot tears the cluster down once the watcher ends
    assert resources.autostop_config.wait_for.value == "jobs"
    assert again.name == cluster_name("abc123def456") == "loraflow-abc123def456"
    assert again.envs["LORAFLOW_JOB"] == "abc123def456"
    key_file = again.file_mounts[KEY_REMOTE]  # loraflow's own key, mounted, added to authorized_keys
    assert Path(key_file).read_text().strip() == KEY and "authorized_keys" in again.setup
    assert "loraflow-watch" in again.run and again.run.rstrip().endswith("wait")  # the job lives with the watcher


def test_several_allowed_gpus_become_one_choice_each_and_skypilot_refuses_a_name_it_does_not_know(
    tmp_path: Path,
) -> None:
    spec = sky_spec(tmp_path, infra="lambda")
    plan = provider().plan(spec, "job1", offer("H100"))
    task = build_task(type(plan)(**{**plan.__dict__, "accelerators": ["H100", "A100-80GB"]}))
    assert {tuple(r.accelerators.items()) for r in task.resources} == {(("H100", 1),), (("A100-80GB", 1),)}
    with pytest.raises(UserInputError, match="SkyPilot refuses"):
        build_task(type(plan)(**{**plan.__dict__, "infra": "nocloud"}))


def test_spot_offers_are_priced_at_the_catalogs_spot_price_in_its_cheapest_region(tmp_path: Path) -> None:
    spec = sky_spec(tmp_path, infra="lambda")
    spec = spec.model_copy(update={"compute": spec.compute.model_copy(update={
        "skypilot": spec.compute.skypilot.model_copy(update={"use_spot": True})})})
    offers = provider().offers(spec)
    # Only the types with a spot price; the H100's is in us-west-1, not its cheapest on-demand region.
    assert {(o.offer["accelerator"], o.offer["region"], o.usd_per_hour) for o in offers} == {
        ("A10", "us-east-1", 0.40), ("H100", "us-west-1", 1.10)}
    h100 = next(o for o in offers if o.offer["accelerator"] == "H100")
    assert h100.gpu == "1x H100 spot (lambda/us-west-1)"
    (resources,) = build_task(provider().plan(spec, "job6", h100)).resources
    assert resources.use_spot is True and resources.region == "us-west-1"


@pytest.mark.parametrize("infra", ["k8s", "k8s/my-context"])
def test_kubernetes_is_refused_before_anything_is_rented(tmp_path: Path, infra: str) -> None:
    """SkyPilot reaches its pods through a port-forward loraflow's SSH does not take (Slurm's route it does)."""
    spec = sky_spec(tmp_path, infra=infra)
    with pytest.raises(UserInputError, match="cannot reach SkyPilot's"):
        provider().offers(spec)


def test_a_job_id_that_is_no_cluster_name_is_refused() -> None:
    with pytest.raises(UserInputError, match="cluster name"):
        cluster_name("Bad/Id")


def test_offers_are_priced_from_skypilots_catalog_cheapest_job_first(tmp_path: Path) -> None:
    spec = sky_spec(tmp_path, infra="lambda")
    offers = provider().offers(spec)
    assert all(o.provider == "skypilot" for o in offers)
    # flux-dev with ai-toolkit needs 24 GB a GPU: the T4 is left out; the H100 at its cheapest region only.
    assert {o.offer["accelerator"] for o in offers} == {"A10", "A100", "H100"}
    h100 = next(o for o in offers if o.offer["accelerator"] == "H100")
    assert (h100.offer["region"], h100.usd_per_hour, h100.offer["vram_gb"]) == ("us-east-1", 2.49, 80.0)
    assert h100.gpu == "1x H100 (lambda/us-east-1)"  # as the estimate table shows it
    costs = [o.estimate.cost_usd for o in offers]
    assert costs == sorted(costs)  # by what the whole job costs, not the hour
    # The chosen offer's task names its region, so SkyPilot rents where the price was quoted.
    plan = provider().plan(spec, "job2", h100)
    assert plan.infra == "lambda/us-east-1"
    capped = spec.model_copy(update={"compute": spec.compute.model_copy(update={
        "gpu": spec.compute.gpu.model_copy(update={"max_usd_per_hour": 1.0})})})
    assert {o.offer["accelerator"] for o in provider().offers(capped)} == {"A10"}


class FakeSky(SkyApi):
    """SkyPilot's answers about clusters as the provider reads them: a launch request that runs, then a
    cluster UP whose handle has an address. The task is still built (and validated) by SkyPilot and the
    catalog is still SkyPilot's; the cluster calls (launch, status, queue, down) are not run against a real
    SkyPilot anywhere in the tests."""

    def __init__(self, port: int, launch_states: list[str]) -> None:
        super().__init__()
        self.port, self.states = port, list(launch_states)
        self.launched: dict[str, object] = {}
        self.downed: list[str] = []
        self.cancelled: list[str] = []
        self.jobs = [{"job_id": 1, "job_name": "watch", "status": "RUNNING"}]
        self.error: Exception | None = None

    def launch(self, plan: TaskPlan, cluster: str) -> str:
        self.launched[cluster] = build_task(plan)
        return "req-1"

    def request_state(self, request_id: str) -> str:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def result(self, request_id: str) -> object:
        if self.error:
            raise self.error
        return (1, None)

    def cancel(self, request_id: str) -> None:
        self.cancelled.append(request_id)

    def status(self, cluster: str) -> dict | None:
        if cluster not in self.launched or cluster in self.downed:
            return None
        handle = SimpleNamespace(
            cached_external_ips=["127.0.0.1"], cached_external_ssh_ports=[self.port], ssh_user="ubuntu",
            docker_user=None, get_hourly_price=lambda: 2.49,
        )
        return {"name": cluster, "status": "UP", "handle": handle, "launched_at": 1000, "resources_str": "1x H100"}

    def queue(self, cluster: str) -> list[dict]:
        return self.jobs

    def down(self, cluster: str) -> None:
        self.downed.append(cluster)

    def clusters(self, prefix: str) -> list[dict]:
        return [r for c in self.launched if c.startswith(prefix) and (r := self.status(c))]


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on (the head node's SSH port, as far as the wait can tell)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_rent_wait_and_release_through_the_provider_verbs(tmp_path: Path, listening: int) -> None:
    fake = FakeSky(listening, ["PENDING", "RUNNING", "SUCCEEDED"])
    p = SkyPilotProvider(api=fake, needs=engine_needs)
    p.ensure_ssh_key(KEY)
    spec = sky_spec(tmp_path, infra="lambda")
    cluster, chosen = p.create(spec, "job3", p.offers(spec))
    assert cluster.startswith("loraflow-job3--") and chosen.offer["accelerator"] == "A100"  # cheapest job, not hour
    assert isinstance(fake.launched[cluster], sky.Task)
    logins: list[tuple[str, int, str]] = []
    stages: list[str] = []
    address = p.wait_ready(cluster, lambda h, port: logins.append((h, port, p.ssh_user)), poll_s=0.01,
                           on_stage=stages.append)
    assert address == ("127.0.0.1", listening)
    assert logins == [("127.0.0.1", listening, "ubuntu")]  # the login SkyPilot's handle names
    assert stages[0].startswith(f"SkyPilot is provisioning {cluster}") and stages[-1] == "checking SSH login"
    assert p.dead_reason(cluster) is None  # UP, its watcher job running
    (rented,) = p.owned()
    assert (rented.id, rented.label, rented.job_id, rented.usd_per_hour) == (cluster, "loraflow:job3", "job3", 2.49)
    fake.jobs = [{"job_id": 1, "job_name": "watch", "status": "SUCCEEDED"}]
    assert "watcher job ended" in (p.dead_reason(cluster) or "")
    again, _ = p.create(spec, "job3", p.offers(spec))  # the job's next machine, after a lost one
    assert again != cluster and again.startswith("loraflow-job3--")  # its own name: its own pinned host key
    p.release(again)
    p.release(cluster)
    p.release(cluster)  # idempotent
    assert fake.downed[1] == cluster and p.dead_reason(cluster) == "the SkyPilot cluster is gone (torn down)"
    assert fake.cancelled == []  # the launch had finished


def test_a_failed_launch_says_skypilots_reason_and_a_launch_under_way_is_cancelled(
    tmp_path: Path, listening: int
) -> None:
    fake = FakeSky(listening, ["FAILED"])
    fake.error = RuntimeError("ResourcesUnavailableError: no H100 in us-east-1")
    p = SkyPilotProvider(api=fake, needs=engine_needs)
    p.ensure_ssh_key(KEY)
    spec = sky_spec(tmp_path, infra="lambda")
    cluster, _ = p.create(spec, "job4", p.offers(spec))
    with pytest.raises(LoraflowError, match="no H100 in us-east-1"):
        p.wait_ready(cluster, lambda h, port: None, poll_s=0.01)
    fake.states = ["RUNNING"]
    cluster, _ = p.create(spec, "job5", p.offers(spec))
    p.release(cluster)  # released while SkyPilot still provisions: the request is cancelled, then down
    assert fake.cancelled == ["req-1"] and cluster in fake.downed


@pytest.mark.skipif(
    not os.environ.get("LORAFLOW_SKYPILOT_SERVER"),
    reason="opt-in (LORAFLOW_SKYPILOT_SERVER=1): starts SkyPilot's own API server on 127.0.0.1:46580, minutes",
)
@pytest.mark.timeout(900)
def test_skyapi_against_skypilots_own_api_server(tmp_path: Path) -> None:
    """SkyApi's calls through SkyPilot's client to its API server (on loopback; no cloud is set up, and every
    other address goes to a proxy that is not there): the table of clusters, a launch whose request fails
    with SkyPilot's own reason, which wait_ready reports, and a down of a cluster that never came up."""
    api = SkyApi()
    try:
        assert api.clusters("loraflow-") == []
        p = SkyPilotProvider(api=api, needs=engine_needs)
        p.ensure_ssh_key(KEY)
        spec = sky_spec(tmp_path, infra="lambda")
        cluster, _ = p.create(spec, "probe1", p.offers(spec))
        with pytest.raises(LoraflowError, match=r"SkyPilot could not launch loraflow-probe1--.*sky check"):
            p.wait_ready(cluster, lambda h, port: None, timeout_s=600, poll_s=1)
        assert api.status(cluster) is None
        p.release(cluster)  # idempotent on a cluster SkyPilot never made
        assert p.owned() == []
    finally:
        api.sky.api_stop()


class SlurmSky(FakeSky):
    """A Slurm cluster as SkyPilot answers for it: its catalog is the cluster's nodes (a partition, no price
    unless configured), and the head node's handle names the login node, which SSH does not dial directly."""

    def accelerators(self, cloud: str, names: list[str], region: str | None, count: int, spot: bool = False):
        self.asked = (cloud, names, region)
        return [{"accelerator": "H100", "cloud": "slurm", "region": "gpu", "instance_type": None, "price": 0.0,
                 "vram_gb": 0.0}]

    def status(self, cluster: str) -> dict | None:
        row = super().status(cluster)
        if row:
            row["handle"].launched_resources = SimpleNamespace(cloud=sky.clouds.Slurm())
            row["handle"].ssh_user = None  # a Slurm handle names no login of its own: its provider config does
            login = {"hostname": "127.0.0.1", "port": self.port, "user": "alice"}
            row["handle"].cached_cluster_info = SimpleNamespace(provider_config={"ssh": login})
        return row


def test_a_slurm_allocation_is_rented_and_reached_through_skypilots_own_ssh_route(tmp_path: Path) -> None:
    """No port to probe and no address of its own: the wait logs in through SkyPilot's ProxyCommand for the
    cluster (its websocket proxy to the API server's `srun ... sshd -i`), which the runner's SSH then uses."""
    with socket.socket() as closed:  # the login node's port, as far as the wait could tell: nothing listens
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    fake = SlurmSky(port, ["SUCCEEDED"])
    # SkyPilot knows Slurm clusters from ~/.slurm/config (and refuses a name it does not find there)
    config = Path(os.environ["HOME"]) / ".slurm" / "config"
    config.parent.mkdir(exist_ok=True)
    config.write_text(f"Host mycluster\n    HostName 127.0.0.1\n    Port {port}\n    User alice\n")
    p = SkyPilotProvider(api=fake, needs=engine_needs)
    p.ensure_ssh_key(KEY)
    spec = sky_spec(tmp_path, infra="slurm/mycluster")
    (only,) = p.offers(spec)
    assert fake.asked == ("slurm", [], "mycluster")  # the catalog asked about that Slurm cluster
    assert only.gpu == "1x H100 (slurm/gpu)" and only.usd_per_hour == 0.0
    cluster, _ = p.create(spec, "job7", [only])
    task = fake.launched[cluster]
    (resources,) = task.resources
    assert str(resources.cloud) == "Slurm" and resources.image_id is None  # runs in the allocation itself
    assert 'getent passwd "${USER:-$(id -un)}"' in task.setup  # the key where the route's sshd reads it
    logins: list[tuple[str, int, str, list[str] | None]] = []
    p.wait_ready(cluster, lambda h, port_: logins.append((h, port_, p.ssh_user, p.ssh_proxy)), poll_s=0.01)
    ((host, at, user, proxy),) = logins
    assert (host, at, user) == ("127.0.0.1", port, "alice")
    assert proxy is not None and proxy[0] == sys.executable and Path(proxy[1]).is_file()  # SkyPilot's own proxy
    assert proxy[2].startswith("http://127.0.0.1:") and proxy[3:] == [cluster, "slurm-job-ssh-proxy", "0"]


def test_a_cloud_task_adds_the_key_to_home_only(tmp_path: Path) -> None:
    plan = provider().plan(sky_spec(tmp_path, infra="lambda"), "job8", offer("H100"))
    assert "getent" not in plan.setup() and plan.image  # a cloud VM: $HOME is the login's home; the image kept
