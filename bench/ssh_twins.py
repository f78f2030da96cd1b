"""Does keeping two SSH hosts matter? The OpenSSH one (hosts/ssh.py) and the asyncssh one
(hosts/ssh_async.py), each doing the other's job, in one run against one loopback OpenSSH server.

- follow: J jobs, R rounds of the follower's question (the log's new bytes at an offset, is the trainer
  alive): the asyncssh host's TrainerWatch on one event loop, against the OpenSSH host asking the same
  with one thread per job (how a follower without asyncssh would have to do it). CPU of this process
  and its children (the ssh clients), and of the sshd server, per job-round.
- transfer: an upload and a download of M MiB: the OpenSSH host's resumable, checked put/get, against
  asyncssh moving the same bytes (SFTP write/read in 4 MiB blocks, the fastest way it has). Wall time
  and CPU of both ends.

Ratios are `openssh / asyncssh` (above 1: asyncssh is cheaper).

    .venv/bin/python bench/ssh_twins.py [--jobs 20] [--rounds 10] [--mib 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from loraflow.hosts.base import Handle  # noqa: E402
from loraflow.hosts.ssh import SshEndpoint, SshHost, sha256_file  # noqa: E402
from loraflow.hosts.ssh_async import AsyncSshHost  # noqa: E402
from loraflow.testing.sshd import start_sshd  # noqa: E402

BLOCK = 4 << 20


def cpu_here() -> float:
    """CPU seconds of this process and its waited-for children (the ssh clients)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def cpu_tree(pid: int) -> float:
    """CPU seconds of a process and every descendant alive now, plus what it reaped (sshd sessions)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_path.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(stat_path.parent.name)
        if child == pid or _descends(child, pid):
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def _descends(pid: int, ancestor: int) -> bool:
    for _ in range(8):
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return False
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


class Meter:
    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.wall, self.here, self.server = time.perf_counter(), cpu_here(), cpu_tree(server_pid)

    def done(self) -> dict[str, float]:
        return {
            "wall_s": round(time.perf_counter() - self.wall, 3),
            "client_cpu_s": round(cpu_here() - self.here, 3),
            "server_cpu_s": round(cpu_tree(self.server_pid) - self.server, 3),
        }


def follow_openssh(endpoints: list[SshEndpoint], handles: list[Handle], rounds: int) -> None:
    hosts = [SshHost(e) for e in endpoints]
    offsets = [0] * len(hosts)

    def one(i: int) -> None:
        offsets[i] += len(hosts[i].read(handles[i].log_file, offsets[i]))
        hosts[i].status(handles[i])

    with ThreadPoolExecutor(len(hosts)) as pool:
        list(pool.map(one, range(len(hosts))))  # connections (control masters) up before measuring
        meter = Meter(SERVER_PID)
        for _ in range(rounds):
            list(pool.map(one, range(len(hosts))))
        RESULT["follow_openssh"] = meter.done()
    for host in hosts:
        host.close()


async def follow_asyncssh(endpoints: list[SshEndpoint], handles: list[Handle], rounds: int) -> None:
    hosts = [AsyncSshHost(e) for e in endpoints]
    watches = [h.watch(handle) for h, handle in zip(hosts, handles, strict=True)]
    offsets = [0] * len(hosts)

    async def one(i: int) -> None:
        offsets[i] += len(await watches[i].read(offsets[i]))
        await watches[i].status()

    await asyncio.gather(*(one(i) for i in range(len(hosts))))  # connected before measuring
    meter = Meter(SERVER_PID)
    for _ in range(rounds):
        await asyncio.gather(*(one(i) for i in range(len(hosts))))
    RESULT["follow_asyncssh"] = meter.done()
    for w, h in zip(watches, hosts, strict=True):
        await w.close()
        await h.close()


async def transfer_asyncssh(endpoint: SshEndpoint, local: Path, remote: str, back: Path) -> None:
    host = AsyncSshHost(endpoint)
    await host.exec("true")  # connected before measuring
    sftp = host._sftp
    assert sftp is not None
    meter = Meter(SERVER_PID)
    async with sftp.open(remote, "wb") as f:
        with open(local, "rb") as src:
            offset = 0
            while block := src.read(BLOCK):
                await f.write(block, offset)
                offset += len(block)
    RESULT["upload_asyncssh"] = meter.done()
    meter = Meter(SERVER_PID)
    async with sftp.open(remote, "rb") as f:
        with open(back, "wb") as dst:
            offset = 0
            while block := await f.read(BLOCK, offset):
                dst.write(block)
                offset += len(block)
    RESULT["download_asyncssh"] = meter.done()
    await host.close()


SERVER_PID = 0
RESULT: dict[str, dict[str, float]] = {}


def main() -> None:
    global SERVER_PID
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="lf-ssh-twins-"))
    sshd = start_sshd(base / "sshd", "MaxStartups 500\n")
    SERVER_PID = sshd.proc.pid
    try:
        first = SshEndpoint("127.0.0.1", sshd.port, "root", str(sshd.key), str(base / "known_hosts"))
        SshHost(first).check()  # OpenSSH pins the key
        sleeper = subprocess.Popen(["sleep", "600"])
        endpoints, handles = [], []
        for i in range(args.jobs):  # one known_hosts per job, as leases have: one connection per job
            known = base / f"kh{i}"
            shutil.copy(base / "known_hosts", known)
            endpoints.append(SshEndpoint("127.0.0.1", sshd.port, "root", str(sshd.key), str(known)))
            handle = Handle.in_folder(str(base / f"job{i}"), "train")
            Path(handle.log_file).parent.mkdir(parents=True)
            Path(handle.log_file).write_text("LORAFLOW {}\n" * 100)
            Path(handle.pid_file).write_text(f"{sleeper.pid}\n")
            handles.append(handle)
        asyncio.run(follow_asyncssh(endpoints, handles, args.rounds))
        follow_openssh(endpoints, handles, args.rounds)
        sleeper.kill()

        local = base / "payload.bin"
        with open(local, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        host = SshHost(first)
        host.check()
        meter = Meter(SERVER_PID)
        host.put(local, str(base / "up" / "openssh.bin"))
        RESULT["upload_openssh"] = meter.done()
        meter = Meter(SERVER_PID)
        host.get(str(base / "up" / "openssh.bin"), base / "down" / "openssh.bin")
        RESULT["download_openssh"] = meter.done()
        host.close()
        asyncio.run(transfer_asyncssh(first, local, str(base / "up" / "asyncssh.bin"), base / "asyncssh.bin"))
        assert sha256_file(base / "asyncssh.bin") == sha256_file(local)
    finally:
        sshd.stop()
        shutil.rmtree(base, ignore_errors=True)

    job_rounds = args.jobs * args.rounds
    out: dict[str, object] = {"jobs": args.jobs, "rounds": args.rounds, "mib": args.mib, "cpus": os.cpu_count()}
    for kind in ("follow", "upload", "download"):
        a, b = RESULT[f"{kind}_openssh"], RESULT[f"{kind}_asyncssh"]
        per = job_rounds if kind == "follow" else args.mib
        unit = "per_job_round_ms" if kind == "follow" else "per_mib_ms"
        out[kind] = {
            name: {f"{k}_{unit}": round(v / per * 1000, 2) for k, v in row.items()}
            for name, row in (("openssh", a), ("asyncssh", b))
        }
        for key in ("wall_s", "client_cpu_s", "server_cpu_s"):
            out[kind][f"{key.removesuffix('_s')}_openssh_vs_asyncssh"] = round(a[key] / max(b[key], 1e-3), 2)  # type: ignore[index]
    (REPO / "bench" / "results" / "ssh_twins.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
