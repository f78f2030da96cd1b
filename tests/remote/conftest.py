"""Vast.ai and RunPod emulators on loopback whose machines are real OpenSSH servers, and a plain sshd for `ssh`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from loraflow.testing.sshd import SSHD, start_sshd
from loraflow.testing.vast_emulator import Emulator, make_server

if TYPE_CHECKING:
    from loraflow.testing.runpod_emulator import RunPodEmulator


def need_sshd() -> None:
    """(A conftest's pytestmark does not reach the test modules, so the fixtures skip.)"""
    if not Path(SSHD).exists():
        pytest.skip("OpenSSH server not installed (make test installs it from Debian's packages when it can)")


@pytest.fixture(autouse=True)
def shared_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "shared-models"))


class EmulatorAdmin:
    """The emulators' own admin door (`/_emu/...`): how a test breaks a machine or reads its state."""

    url: str

    def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        method = "POST" if body is not None else "GET"
        resp = httpx.request(method, f"{self.url}/_emu/{path}", json=body, timeout=30)
        resp.raise_for_status()
        return resp.json()


@dataclass
class Vast(EmulatorAdmin):
    emulator: Emulator
    url: str
    key: str

    def instances(self) -> dict[str, Any]:
        return self.admin("state/")["instances"]


@pytest.fixture
def vast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Vast]:
    need_sshd()
    key = "emu-" + "k" * 20
    # The real show endpoint allows one call per 2 s per key: here one per 0.1 s, and instances are polled
    # at that pace (loraflow's default is Vast's documented 10 s).
    emulator = Emulator(key, tmp_path / "vast", sshd=SSHD, boot_s=0.4, rate_scale=0.05)
    server = make_server(emulator)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("VAST_URL", url)
    monkeypatch.setenv("VAST_API_KEY", key)
    monkeypatch.setenv("LORAFLOW_VAST_BACKOFF_S", "0.05")
    monkeypatch.setenv("LORAFLOW_VAST_POLL_S", "0.1")
    try:
        yield Vast(emulator, url, key)
        leftovers = [i for i in emulator.instances.values() if i.label.startswith("loraflow:")]
        assert not leftovers, f"instances left running: {[i.id for i in leftovers]}"
    finally:
        emulator.close()
        server.shutdown()


@dataclass
class RunPod(EmulatorAdmin):
    emulator: RunPodEmulator
    url: str
    key: str

    def pods(self) -> dict[str, Any]:
        return self.admin("state")["pods"]


@pytest.fixture
def runpod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunPod]:
    """The RunPod emulator on loopback, where the `runpod` SDK sends its GraphQL (RUNPOD_API_BASE_URL)."""
    need_sshd()
    pytest.importorskip("runpod", reason="RunPod's SDK is in the cloud extra")
    from loraflow.testing.runpod_emulator import RunPodEmulator
    from loraflow.testing.runpod_emulator import make_server as make_runpod_server

    key = "rpa_" + "k" * 24
    emulator = RunPodEmulator(key, tmp_path / "runpod", sshd=SSHD, boot_s=0.4)
    server = make_runpod_server(emulator)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("RUNPOD_API_BASE_URL", url)
    monkeypatch.setenv("RUNPOD_API_KEY", key)
    monkeypatch.setenv("LORAFLOW_RUNPOD_POLL_S", "0.1")
    try:
        yield RunPod(emulator, url, key)
        leftovers = [i for i, p in emulator.pods.items() if p.name.startswith("loraflow:")]
        assert not leftovers, f"pods left running: {leftovers}"
    finally:
        server.shutdown()  # first: a runner still alive after a failed test must not rent while pods end
        emulator.close()


@dataclass
class Sshd:
    port: int
    key: Path
    home: Path


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """A real OpenSSH server on 127.0.0.1 that accepts one client key."""
    need_sshd()
    server = start_sshd(tmp_path / "sshd")
    try:
        yield Sshd(server.port, server.key, server.home)
    finally:
        server.stop()


def ssh_compute(sshd: Sshd, root: str = "~/work") -> dict[str, Any]:
    """`compute:` for a job on the test sshd as its own machine (its Python is ours: nothing to install)."""
    import sys

    return {
        "provider": "ssh", "python": sys.executable, "setup": "",
        "ssh": {"host": "127.0.0.1", "port": sshd.port, "user": "root", "identity_file": str(sshd.key), "root": root},
    }  # fmt: skip


def events_of(store: Any, job_id: str, type_: str) -> list[dict[str, Any]]:
    return [e.data for e in store.events(job_id, types=[type_])]


def dump(obj: Any) -> str:
    return json.dumps(obj, default=str)[:3000]
