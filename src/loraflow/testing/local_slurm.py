"""A one-node Slurm cluster on this machine, for the opt-in end-to-end test of SkyPilot's Slurm route
(tests/remote/test_skypilot_slurm.py): Debian's munge and Slurm daemons and an OpenSSH login node, all on
loopback, everything in one temporary folder, stopped and removed by `stop`.

What SkyPilot 0.14 needs of a Slurm cluster's login account, and how this one gives it offline:
- an SSH login (the "login node": an sshd on 127.0.0.1 with SLURM_CONF in every session) named in the
  client's ~/.slurm/config, and sbatch/srun/squeue/scancel/sinfo on its PATH;
- `uv` at $HOME/.local/bin, which SkyPilot installs with `curl https://astral.sh/uv/install.sh | sh`: a
  `curl` first on the login's PATH answers that one address with a script that copies a local uv (from PyPI's
  uv package) and fails every other address as an offline machine would;
- a python3.10 on the PATH (`uv venv --python 3.10` would download one otherwise): pyenv's, where the
  machine has it; SkyPilot's runtime packages come from PyPI through uv (the system's CA store: UV_SYSTEM_CERTS);
- a GPU to ask for: the node declares one fake `gpu:h100` (GRES on /dev/null), so the job's accelerator
  request goes through SkyPilot's Slurm catalog and `sbatch --gres` as on a real GPU node; SkyPilot's list
  of accelerator names (a catalog file it downloads once) is placed with that one name.

The login account is a second name for root (uid 0, `-o`) whose home is in the temporary folder: SkyPilot
writes its keys into the login's home (`~user/.ssh`) and the trainer runs with this machine's Python (under
/root), so the account must be root without touching root's own home. It is deleted by `stop`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loraflow.testing.containers import free_port, kill_marked

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "srun", "sinfo", "sshd", "rsync", "useradd", "userdel")
LOGIN = "lfslurm"
CLUSTER = "lfslurm"  # the Slurm cluster's name, and its Host in ~/.slurm/config: infra slurm/lfslurm
CURL = """#!/bin/sh
# The offline machine's curl for SkyPilot's runtime: uv's installer copies a local uv; nothing else is fetched.
case "$*" in
  *astral.sh/uv/install.sh*) printf '%s\\n' 'mkdir -p "$UV_INSTALL_DIR" && cp {uv} "$UV_INSTALL_DIR/uv"' ;;
  *) echo "curl: (6) offline test machine: $*" >&2; exit 6 ;;
esac
"""


def python310() -> str | None:
    """A Python 3.10 for SkyPilot's runtime, the interpreter itself: one on PATH (not a pyenv shim, which
    runs whatever version is active), else pyenv's."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which("python3.10"), *map(str, sorted(pyenv.glob("3.10.*/bin/python3.10"), reverse=True))]
    for candidate in filter(None, candidates):
        real = os.path.realpath(candidate)
        probe = subprocess.run([real, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True)
        if "shims" not in real and probe.stdout.strip() == b"(3, 10)":
            return real
    return None


def uv_binary() -> str | None:
    """uv from PyPI's package (installed beside this Python by `make test-slurm`), or one on PATH."""
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.exists() else shutil.which("uv")


def missing() -> str | None:
    """Why this machine cannot run the cluster (None when it can)."""
    if os.geteuid() != 0:
        return "the Slurm daemons and the login account need root"
    absent = [d for d in DAEMONS if not shutil.which(d) and not Path("/usr/sbin", d).exists()]
    if absent:
        return f"{', '.join(absent)} not installed (make slurm-deps installs Debian's slurm and munge packages)"
    if python310() is None:
        return "no python3.10 for SkyPilot's runtime (on PATH or pyenv's)"
    if uv_binary() is None:
        return "no uv binary (pip install uv; make test-slurm does)"
    return None


@dataclass
class LocalSlurm:
    root: Path
    ssh_port: int = 0
    client_home: Path = field(init=False)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client_home = self.root / "client"

    @property
    def env(self) -> dict[str, str]:
        """What a Slurm command on this machine needs to find the cluster (none of loraflow's variables: the
        daemons must not look like the test's own processes, which the test ends by LORAFLOW_HOME)."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLOW")}
        return {**clean, "SLURM_CONF": str(self.root / "slurm.conf")}

    def _daemon(self, args: list[str], log: str, env: dict[str, str] | None = None) -> None:
        out = open(self.root / "log" / log, "ab")  # noqa: SIM115 - the daemon's own stderr, for a failing test
        self.procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env or self.env))

    def start(self) -> LocalSlurm:
        self.root.chmod(0o755)  # munged refuses a socket under a folder others cannot enter
        for sub in ("log", "state", "spool", "bin", "key", "login", "home", "client/.slurm", "client/.ssh"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "run").mkdir(mode=0o755)
        (self.root / "key").chmod(0o700)
        self._munge()
        self._slurm()
        self._login()
        return self

    def _munge(self) -> None:
        key = self.root / "key" / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
        self._daemon(
            ["munged", "--foreground", f"--socket={self.root / 'run' / 'munge.sock'}", f"--key-file={key}",
             f"--log-file={self.root / 'log' / 'munged.log'}", f"--pid-file={self.root / 'key' / 'pid'}",
             f"--seed-file={self.root / 'key' / 'seed'}"],
            "munged.out",
        )
        wait_until(lambda: (self.root / "run" / "munge.sock").exists(), "munged's socket")

    def _slurm(self) -> None:
        node = socket.gethostname().split(".")[0]
        r = self.root
        (r / "slurm.conf").write_text(
            f"ClusterName={CLUSTER}\nSlurmctldHost={node}(127.0.0.1)\nSlurmctldPort={free_port()}\n"
            f"SlurmdPort={free_port()}\nAuthType=auth/munge\nAuthInfo=socket={r / 'run' / 'munge.sock'}\n"
            "CredType=cred/munge\nSlurmUser=root\nSlurmdUser=root\n"
            f"StateSaveLocation={r / 'state'}\nSlurmdSpoolDir={r / 'spool'}\n"
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}\nSlurmdPidFile={r / 'run' / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}\nSlurmdLogFile={r / 'log' / 'slurmd.log'}\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n"
            "AccountingStorageType=accounting_storage/none\nSchedulerType=sched/backfill\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nMpiDefault=none\nReturnToService=2\n"
            # SkyPilot asks 4 CPUs with each GPU: the node says it has at least that many (config_overrides)
            "GresTypes=gpu\nSlurmdParameters=config_overrides\n"
            f"NodeName={node} NodeAddr=127.0.0.1 CPUs={max(4, os.cpu_count() or 1)} Gres=gpu:h100:1 State=UNKNOWN\n"
            f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP\n"
        )
        (r / "gres.conf").write_text(f"NodeName={node} Name=gpu Type=h100 File=/dev/null\n")
        self._daemon(["slurmctld", "-D"], "slurmctld.out")
        self._daemon(["slurmd", "-D", "-N", node], "slurmd.out")

        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
            return out.stdout.strip() == "idle"

        wait_until(idle, "the Slurm node to be idle", timeout=60)

    def _login(self) -> None:
        r = self.root
        home = r / "home"
        subprocess.run(
            ["useradd", "-o", "-u", "0", "-g", "0", "-M", "-p", "*", "-d", str(home), "-s", "/bin/bash", LOGIN],
            check=True, capture_output=True,
        )
        uv = r / "bin" / "uv-local"
        shutil.copy(uv_binary() or "", uv)
        (r / "bin" / "curl").write_text(CURL.format(uv=uv))
        (r / "bin" / "curl").chmod(0o755)
        (r / "bin" / "python3.10").symlink_to(python310() or "")
        # bash --login (SkyPilot's every command) resets PATH from /etc/profile, then reads this
        (home / ".bash_profile").write_text(f"export PATH={r / 'bin'}:$PATH\nexport UV_SYSTEM_CERTS=1\n")
        client_key = self.client_home / ".ssh" / "slurm_key"
        for key in (r / "login" / "host_key", client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        shutil.copy(f"{client_key}.pub", r / "login" / "authorized_keys")
        self.ssh_port = free_port()
        (r / "login" / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nPort {self.ssh_port}\nHostKey {r / 'login' / 'host_key'}\n"
            f"AuthorizedKeysFile {r / 'login' / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
            f"PidFile none\nMaxSessions 64\nMaxStartups 64\nSetEnv SLURM_CONF={r / 'slurm.conf'}\n"
        )
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        self._daemon(["/usr/sbin/sshd", "-D", "-e", "-f", str(r / "login" / "sshd_config")], "sshd.out")
        wait_until(lambda: _listens(self.ssh_port), "the login node's sshd")
        # SkyPilot spells accelerator names from a catalog it downloads once; offline, the one name is placed
        # (a placed catalog counts as the user's and is never fetched)
        common = self.client_home / ".sky" / "catalogs" / "v8" / "common" / "accelerators.csv"
        common.parent.mkdir(parents=True)
        common.write_text("AcceleratorName,Clouds\nH100,\"['Slurm']\"\n")
        # the node's runtime folder (SkyPilot's default: /tmp/<cluster>) inside this cluster's folder too
        (self.client_home / ".sky" / "config.yaml").write_text(
            f"slurm:\n  cluster_configs:\n    {CLUSTER}:\n      tmpdir: {r / 'node-tmp'}\n"
        )
        (r / "node-tmp").mkdir()
        (r / "tmp").mkdir()  # TMPDIR of SkyPilot's client and API server (the fixture sets it)
        (self.client_home / ".slurm" / "config").write_text(
            f"Host {CLUSTER}\n    HostName 127.0.0.1\n    Port {self.ssh_port}\n    User {LOGIN}\n"
            f"    IdentityFile {client_key}\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n"
        )

    def jobs(self) -> str:
        """squeue's table: what the cluster still runs (empty once SkyPilot has cancelled its allocation)."""
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i %j %T"], env=self.env, capture_output=True, text=True, timeout=30
        )
        return out.stdout.strip()

    def stop(self) -> None:
        """Everything started, in reverse; the login account removed; the folder deleted. Processes of the
        jobs (slurmstepd's children outlive slurmd) carry this cluster's SLURM_CONF in their environment."""
        with contextlib.suppress(Exception):
            subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True, timeout=30)
            wait_until(lambda: self.jobs() == "", "the jobs to be cancelled", timeout=30)
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        kill_marked(f"SLURM_CONF={self.root / 'slurm.conf'}")
        kill_marked(f"HOME={self.client_home}")  # SkyPilot's API server, if it is still up
        _kill_connected(self.ssh_port)  # the login's sessions, and SkyPilot's ssh ControlMaster kept open to it
        subprocess.run(["userdel", "-f", LOGIN], capture_output=True)  # -f: uid 0 is always "in use"
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(f"/tmp/torchinductor_{LOGIN}", ignore_errors=True)  # torch's cache, named for the login


def _kill_connected(port: int) -> None:
    """Every process with a TCP connection to or from the login node's port: its sshd sessions outlive the
    listener, and SkyPilot keeps an ssh ControlMaster open to it."""
    if not port:
        return
    out = subprocess.run(
        ["ss", "-Htnp", f"( sport = :{port} or dport = :{port} )"], capture_output=True, text=True
    ).stdout
    for pid in {int(p) for p in re.findall(r"pid=(\d+)", out)} - {os.getpid()}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def start_local_slurm() -> LocalSlurm:
    """The cluster in a new folder under /tmp (short: munge's socket path has a length limit); what started
    is stopped again when the start fails."""
    cluster = LocalSlurm(Path(tempfile.mkdtemp(prefix="lfslurm-", dir="/tmp")))
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise
