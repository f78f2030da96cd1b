"""Does keeping two SSH hosts matter? There were two: OpenSSH client processes (one multiplexed master
per host, one `ssh` exec per question or transfer block) for the runner, asyncssh for the follower.
This bench has each do the other's job, in one run against one loopback OpenSSH server; the OpenSSH
side is `OpenSsh` below, the way the old hosts/ssh.py asked (same argv, same shell commands).

- follow: J jobs, R rounds of the follower's question (the log's new bytes at an offset, is the trainer
  alive): AsyncSshHost's TrainerWatch on one event loop, against OpenSSH asking the same with one
  thread per job. CPU of this process and its children (the ssh clients), and of the sshd server, per
  job-round.
- transfer: an upload and a download of M MiB in 4 MiB blocks (`dd` at an offset, fed on stdin / `tail
  -c | head -c`), sha256-checked at the end, over OpenSSH and over SshHost.put/get (asyncssh).

Ratios are `openssh / asyncssh` (above 1: asyncssh is cheaper). The OpenSSH master runs detached, so
its CPU is not in `client_cpu` (it is in neither column's client side): the client ratios understate.

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
from loraflow.hosts.ssh_shell import read_command, status_script  # noqa: E402
from loraflow.testing.sshd import start_sshd  # noqa: E402

BLOCK = 4 << 20


class OpenSsh:
    """The OpenSSH client the old SshHost drove: a ControlMaster per host, one `ssh` process per exec."""

    def __init__(self, e: SshEndpoint, control: Path) -> None:
        self.control = control
        self.argv = [
            "ssh", "-p", str(e.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={e.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "ControlMaster=auto", "-o", f"ControlPath={control}", "-o", "ControlPersist=60",
            "-o", "LogLevel=ERROR", "-i", str(e.identity_file), "-o", "IdentitiesOnly=yes", "--", f"{e.user}@{e.host}",
        ]  # fmt: skip

    def exec(self, command: str, stdin: bytes | None = None) -> bytes:
        return subprocess.run([*self.argv, command], input=stdin, capture_output=True, check=True).stdout

    def close(self) -> None:
        subprocess.run(["ssh", "-o", f"ControlPath={self.control}", "-O", "exit", "x"], capture_output=True)

    def put(self, local: Path, remote: str) -> None:
        with open(local, "rb") as f:
            done = 0
            while block := f.read(BLOCK):
                self.exec(f"dd of={remote} bs=1M seek={done} oflag=seek_bytes iflag=fullblock conv=notrunc "
                          "status=none", block)  # fmt: skip
                done += len(block)
        assert self.exec(f"sha256sum {remote}").split()[0].decode() == sha256_file(local)

    def get(self, remote: str, local: Path) -> None:
        size = int(self.exec(f"stat -c %s {remote}"))
        with open(local, "wb") as f:
            while f.tell() < size:
                f.write(self.exec(f"tail -c +{f.tell() + 1} {remote} | head -c {BLOCK}"))
        assert self.exec(f"sha256sum {remote}").split()[0].decode() == sha256_file(local)


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


def follow_openssh(endpoints: list[SshEndpoint], handles: list[Handle], rounds: int, base: Path) -> None:
    hosts = [OpenSsh(e, base / f"cm{i}") for i, e in enumerate(endpoints)]
    offsets = [0] * len(hosts)

    def one(i: int) -> None:
        offsets[i] += len(hosts[i].exec(read_command(handles[i].log_file, offsets[i], 1 << 20)))
        hosts[i].exec(status_script(handles[i]))

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
        follow_openssh(endpoints, handles, args.rounds, base)
        sleeper.kill()

        local = base / "payload.bin"
        with open(local, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        openssh = OpenSsh(first, base / "cm")
        openssh.exec("mkdir -p " + str(base / "up"))
        for name, client in (("openssh", openssh), ("asyncssh", SshHost(first))):
            client.exec("true")  # connected before measuring
            meter = Meter(SERVER_PID)
            client.put(local, str(base / "up" / f"{name}.bin"))
            RESULT[f"upload_{name}"] = meter.done()
            meter = Meter(SERVER_PID)
            client.get(str(base / "up" / f"{name}.bin"), base / f"{name}.bin")
            RESULT[f"download_{name}"] = meter.done()
            client.close()
        assert sha256_file(base / "asyncssh.bin") == sha256_file(local) == sha256_file(base / "openssh.bin")
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
