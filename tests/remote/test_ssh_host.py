"""SshHost against a real OpenSSH server on loopback: detached runs, logs, signals, resumable transfers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loraflow.errors import LoraflowError
from loraflow.hosts.base import Handle, ProcessStatus
from loraflow.hosts.ssh import HostUnreachable, SshEndpoint, SshHost, sha256_file
from loraflow.providers.vast_client import VastClient
from loraflow.providers.vastai import VastProvider
from tests.remote.conftest import Sshd, Vast
from tests.unit.test_local_host import wait_status


def host_for(sshd: Sshd, tmp_path: Path) -> SshHost:
    return SshHost(SshEndpoint("127.0.0.1", sshd.port, "root", str(sshd.key), str(tmp_path / "known_hosts")))


def test_detached_command_outlives_the_session_and_keeps_secrets_off_argv(sshd: Sshd, tmp_path: Path) -> None:
    host = host_for(sshd, tmp_path)
    root = host.expand("~/jobs/a")
    assert root == f"{sshd.home}/jobs/a"
    handle = Handle.in_folder(f"{root}/run", "train")
    secret = "hf_" + "zz" * 12
    script = "import os, sys, time; print('token', len(os.environ['HF_TOKEN'])); sys.stdout.flush(); time.sleep(30)"
    host.run([sys.executable, "-c", script], root, handle, {"HF_TOKEN": secret})
    pid = host.wait_started(handle)
    assert pid and host.status(handle) == (ProcessStatus.RUNNING, None)
    host.close()  # the connection goes; the command stays
    time.sleep(0.3)
    assert host.status(handle)[0] is ProcessStatus.RUNNING
    deadline = time.monotonic() + 10
    while b"token" not in host.read(handle.log_file) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert host.read(handle.log_file) == f"token {len(secret)}\n".encode()
    assert host.read(handle.log_file, 6) == f"{len(secret)}\n".encode()
    # The value is in no process's argument list and in no file on the remote side.
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert secret not in listing
    for path in sshd.home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes()
    assert host.signal(handle, signal.SIGTERM)
    assert wait_status(host, handle, ProcessStatus.EXITED) == 128 + signal.SIGTERM  # the shell's code for it


def test_exit_code_gone_process_and_gpu_stats(sshd: Sshd, tmp_path: Path) -> None:
    host = host_for(sshd, tmp_path)
    root = host.expand("~/j")
    done = Handle.in_folder(f"{root}/run", "quick")
    host.run(["sh", "-c", "echo hi; exit 3"], root, done)
    assert wait_status(host, done, ProcessStatus.EXITED) == 3
    killed = Handle.in_folder(f"{root}/run", "killed")
    host.run(["sleep", "30"], root, killed)
    host.wait_started(killed)
    wrapper = int(host.exec(f"cat {killed.wrapper_file}").stdout)
    pid = host.pid(killed)
    os.kill(wrapper, signal.SIGKILL)  # the wrapper and the command both die: no exit code will come
    os.kill(pid, signal.SIGKILL)
    assert wait_status(host, killed, ProcessStatus.GONE) is None
    assert host.gpu_stats() is None  # no nvidia-smi here


def test_transfers_resume_after_a_dropped_connection(vast: Vast, tmp_path: Path) -> None:
    """A Vast instance's SSH relay cuts the connection mid-upload; the upload resumes and arrives intact."""
    from loraflow.providers.keys import ensure_key

    provider = VastProvider()
    key, public = ensure_key()
    provider.ensure_ssh_key(public)
    offer = VastClient().search_offers({"limit": 1})[0]
    inst = VastClient().create_instance(offer["id"], {"image": "i", "disk": 10, "label": "loraflow:xfer"})[
        "new_contract"
    ]
    try:
        address = provider.wait_ready(inst, lambda h, p: None, timeout_s=30, poll_s=0.05)
        host = SshHost(SshEndpoint(*address, "root", str(key), str(tmp_path / "kh")), backoff_s=0.05)
        big = tmp_path / "dataset.tar"
        big.write_bytes(os.urandom(11 << 20))  # three chunks
        remote = host.expand("~/up/dataset.tar")
        vast.admin(f"instances/{inst}/drop", {"after_bytes": 6 << 20})
        host.close()  # the next connection goes through the relay that will drop
        progress: list[int] = []
        assert host.put(big, remote, lambda done, total: progress.append(done)) is True
        assert host.sha256(remote) == sha256_file(big)
        assert progress[-1] == big.stat().st_size
        assert host.put(big, remote) is False  # already there: nothing sent
        back = tmp_path / "back.tar"
        back.with_name("back.tar.partial").write_bytes(big.read_bytes()[: 5 << 20])  # a download cut short
        assert host.get(remote, back) is True and sha256_file(back) == sha256_file(big)
        # A host key that changes under a lease is refused, not silently accepted.
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
        pinned = (tmp_path / "kh").read_text().split()[0]
        other = (tmp_path / "other.pub").read_text().split()
        (tmp_path / "kh").write_text(f"{pinned} {other[0]} {other[1]}\n")
        host.close()
        with pytest.raises(HostUnreachable, match="different host key"):
            host.exec("true")
    finally:
        provider.release(inst)


def test_unreachable_host_fails_after_retries(tmp_path: Path) -> None:
    from loraflow.testing.vast_emulator import free_port

    host = SshHost(SshEndpoint("127.0.0.1", free_port(), "root", None, str(tmp_path / "kh")), retries=2, backoff_s=0.01)
    with pytest.raises(HostUnreachable, match="cannot reach"):
        host.check()
    with pytest.raises(LoraflowError):
        host.get("/nope", tmp_path / "x")


# A ProxyCommand as SkyPilot's websocket proxy is one: a process whose stdin/stdout is the SSH stream.
RELAY = (
    "import socket, sys, threading; s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); "
    "open(sys.argv[2], 'a').write('relayed\\n'); "
    "threading.Thread(target=lambda: [s.sendall(b) for b in iter(lambda: sys.stdin.buffer.read1(65536), b'')] "
    "and s.shutdown(socket.SHUT_WR), daemon=True).start(); "
    "[sys.stdout.buffer.write(b) or sys.stdout.buffer.flush() for b in iter(lambda: s.recv(65536), b'')]"
)


def test_a_host_reached_through_a_proxy_command_as_a_lease_records_it(sshd: Sshd, tmp_path: Path) -> None:
    """The endpoint's host:port only name the host (its pinned key): the bytes go through the proxy, which a
    lease records and a reopened endpoint (the follower's, a restarted runner's) uses again."""
    used = tmp_path / "proxy-used"
    proxy = (sys.executable, "-c", RELAY, str(sshd.port), str(used))
    endpoint = SshEndpoint("10.255.255.1", 2222, "root", str(sshd.key), str(tmp_path / "known_hosts"), proxy)
    again = SshEndpoint.from_dict(endpoint.to_dict())  # as a lease stores it (JSON: lists)
    assert again == endpoint and again.to_dict()["proxy_command"] == list(proxy)
    host = SshHost(again)
    assert host.expand("~/x") == f"{sshd.home}/x"  # 10.255.255.1 is never dialled: nothing listens there
    host.close()
    assert used.read_text().count("relayed") >= 1
    assert "[10.255.255.1]:2222" in (tmp_path / "known_hosts").read_text()  # pinned under the name it was given
    old = {k: v for k, v in endpoint.to_dict().items() if k != "proxy_command"}
    assert SshEndpoint.from_dict(old).proxy_command is None  # a lease recorded before proxies existed
