"""SshHost: the same detached-process contract as LocalHost, on a machine reached over OpenSSH.

OpenSSH's own client is used (one multiplexed master connection per host, so each operation is a
cheap exec on an open channel) because it is what every rented box speaks, honours the user's ssh
config, and pins host keys in a known_hosts file we choose: `accept-new` on the first connection of a
lease, refused if the key changes afterwards.

Secrets never travel as arguments: the launch script (with `export NAME=value` lines) is written to
the remote shell's *stdin*, so they are not in any process listing, file or log on either side.
Transfers resume from the remote `.partial` size after a dropped connection and are checked with
sha256 at the end before being renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loraflow.errors import LoraflowError
from loraflow.hosts.base import Handle, ProcessStatus, wrapper_script
from loraflow.hosts.local import parse_nvidia_smi

CHUNK = 4 << 20  # bytes per exec when transferring: a drop loses at most this much work
SSH_FAILED = 255  # what ssh exits with when the connection, not the remote command, failed


class HostUnreachable(LoraflowError):
    """The host did not answer over SSH after the retries: it is dead, destroyed or cut off."""


@dataclass(frozen=True)
class SshEndpoint:
    host: str
    port: int
    user: str
    identity_file: str | None
    known_hosts: str  # one file per lease: the key is pinned for that lease only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SshEndpoint:
        return cls(**{k: data[k] for k in ("host", "port", "user", "identity_file", "known_hosts")})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_SAFE_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_SAFE_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")


def destination(user: str, host: str) -> str:
    """`user@host` for ssh, refused unless both are plain names: ssh reads `-o...` as an option and a
    host such as `a b` as a command, so nothing a spec sends may reach its argv unchecked."""
    if not _SAFE_USER.fullmatch(user) or not _SAFE_HOST.fullmatch(host):
        raise LoraflowError(f"refusing the SSH destination {user!r}@{host!r}: not a plain user and host name")
    return f"{user}@{host}"


# --- the shell side of each question, shared with the async follower's command fallback ---------------

GPU_QUERY = (
    "command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,utilization.gpu,"
    "memory.used,memory.total --format=csv,noheader,nounits"
)


def status_script(handle: Handle) -> str:
    q = shlex.quote
    return (
        f"if [ -f {q(handle.exit_file)} ]; then echo exited $(cat {q(handle.exit_file)}); exit 0; fi; "
        f"for f in {q(handle.pid_file)} {q(handle.wrapper_file)}; do "
        '[ -f "$f" ] && p=$(cat "$f") && kill -0 "$p" 2>/dev/null && '
        '[ "$(cut -d" " -f3 /proc/$p/stat 2>/dev/null)" != Z ] && { echo running; exit 0; }; done; '
        f"if [ -f {q(handle.exit_file)} ]; then echo exited $(cat {q(handle.exit_file)}); else echo gone; fi"
    )


def parse_status(out: bytes) -> tuple[ProcessStatus, int | None]:
    words = out.decode(errors="replace").split()
    if words and words[0] == "exited" and len(words) > 1 and words[1].lstrip("-").isdigit():
        return ProcessStatus.EXITED, int(words[1])
    if words and words[0] == "running":
        return ProcessStatus.RUNNING, None
    return ProcessStatus.GONE, None


def read_command(path: str, offset: int, limit: int) -> str:
    q = shlex.quote
    return f"[ -f {q(path)} ] && tail -c +{offset + 1} {q(path)} | head -c {limit}"


def signal_command(handle: Handle, sig: int) -> str:
    return f'p=$(cat {shlex.quote(handle.pid_file)} 2>/dev/null) && kill -{int(sig)} "$p" 2>/dev/null'


def listing_command(folder: str) -> str:
    q = shlex.quote(folder)
    return f"[ -d {q} ] && cd {q} && find . -type f -printf '%s %P\\n'"


def parse_listing(out: bytes) -> dict[str, int]:
    files: dict[str, int] = {}
    for line in out.decode(errors="replace").splitlines():
        size, _, name = line.partition(" ")
        if size.isdigit() and name:
            files[name] = int(size)
    return files


class SshHost:
    name = "ssh"

    def __init__(
        self,
        endpoint: SshEndpoint,
        retries: int = 4,
        backoff_s: float = 0.5,
        connect_timeout_s: int = 10,
    ) -> None:
        self.endpoint = endpoint
        self.retries = retries
        self.backoff_s = backoff_s
        self.connect_timeout_s = connect_timeout_s
        key = hashlib.sha1(repr(endpoint).encode()).hexdigest()[:12]
        # Unix socket paths are limited to ~100 bytes, so the control socket lives in the temp folder.
        self._control = os.path.join(tempfile.gettempdir(), f"lf-ssh-{os.getuid()}-{key}")

    # --- transport -------------------------------------------------------------------------------

    def _argv(self, remote: str) -> list[str]:
        e = self.endpoint
        Path(e.known_hosts).parent.mkdir(parents=True, exist_ok=True)
        argv = [
            "ssh",
            "-p",
            str(e.port),
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={e.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"ConnectTimeout={self.connect_timeout_s}",
            "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self._control}",
            "-o", "ControlPersist=60",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        if e.identity_file:
            argv += ["-i", e.identity_file, "-o", "IdentitiesOnly=yes"]
        # `--`: nothing after it is an option, whatever a user or host name looks like.
        return [*argv, "--", destination(e.user, e.host), remote]

    def exec(
        self, remote: str, stdin: bytes | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a remote shell command, reconnecting with backoff when the connection (not the command) fails."""
        last = ""
        for attempt in range(self.retries + 1):
            try:
                proc = subprocess.run(
                    self._argv(remote), input=stdin, capture_output=True, timeout=timeout, check=False
                )
            except subprocess.TimeoutExpired:
                last = f"no answer within {timeout:.0f} s"
                self._drop_master()
            else:
                if proc.returncode != SSH_FAILED:
                    if check and proc.returncode != 0:
                        err = proc.stderr.decode(errors="replace").strip()
                        raise LoraflowError(f"remote command failed ({proc.returncode}): {err[-500:]}")
                    return proc
                last = proc.stderr.decode(errors="replace").strip()
                if "REMOTE HOST IDENTIFICATION HAS CHANGED" in last or "Host key verification failed" in last:
                    raise HostUnreachable(
                        f"{self.endpoint.host}:{self.endpoint.port} presented a different host key than "
                        "the one pinned for this lease",
                        fix="the machine was replaced; lease a new one",
                    )
                self._drop_master()
            if attempt < self.retries:
                time.sleep(min(self.backoff_s * 2**attempt, 10))
        raise HostUnreachable(
            f"cannot reach {self.endpoint.user}@{self.endpoint.host}:{self.endpoint.port} over SSH: {last[-300:]}",
            fix="check that the machine is up and the key is authorised",
        )

    def _drop_master(self) -> None:
        subprocess.run(
            ["ssh", "-o", f"ControlPath={self._control}", "-O", "exit", "x"], capture_output=True, check=False
        )

    def close(self) -> None:
        self._drop_master()

    def check(self) -> None:
        """Raises HostUnreachable unless a command runs there now (auth included)."""
        self.exec("true", timeout=30)

    def expand(self, path: str) -> str:
        """An absolute path for `~/...` on the remote side (its HOME, not ours)."""
        if not path.startswith("~"):
            return path
        home = self.exec('printf %s "$HOME"').stdout.decode().strip()
        return home + path[1:]

    # --- detached processes ----------------------------------------------------------------------

    def run(self, argv: list[str], cwd: str, handle: Handle, env: dict[str, str] | None = None) -> Handle:
        q = shlex.quote
        env = env or {}
        folder = str(Path(handle.log_file).parent)
        lines = [f"export {name}={q(value)}" for name, value in env.items()]
        lines += [
            f"mkdir -p {q(folder)} {q(cwd)}",
            f"rm -f {q(handle.pid_file)} {q(handle.exit_file)} {q(handle.wrapper_file)}",
            # setsid + no inherited fds: the command outlives this SSH session and any dropped connection.
            f"setsid /bin/sh -c {q(wrapper_script(argv, cwd, handle, sorted(env)))} > /dev/null 2>&1 < /dev/null &",
        ]
        self.exec("/bin/sh -s", stdin=("\n".join(lines) + "\n").encode())
        return handle

    def wait_started(self, handle: Handle, timeout: float = 60.0) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.exec(
                f"cat {shlex.quote(handle.pid_file)} 2>/dev/null || cat {shlex.quote(handle.exit_file)} "
                "2>/dev/null | sed 's/^/exit:/'",
                check=False,
            ).stdout.decode()
            text = out.strip()
            if text.startswith("exit:"):
                return None
            if text.isdigit():
                return int(text)
            time.sleep(0.1)
        raise LoraflowError(f"{handle.name} did not start within {timeout:.0f} s on {self.endpoint.host}")

    def pid(self, handle: Handle) -> int | None:
        text = self.exec(f"cat {shlex.quote(handle.pid_file)} 2>/dev/null", check=False).stdout.decode().strip()
        return int(text) if text.isdigit() else None

    def status(self, handle: Handle) -> tuple[ProcessStatus, int | None]:
        return parse_status(self.exec(status_script(handle)).stdout)

    def read(self, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        return self.exec(read_command(path, offset, limit), check=False).stdout

    def signal(self, handle: Handle, sig: int) -> bool:
        return self.exec(signal_command(handle, sig), check=False).returncode == 0

    def gpu_stats(self) -> list[dict[str, Any]] | None:
        proc = self.exec(GPU_QUERY, check=False)
        return parse_nvidia_smi(proc.stdout.decode()) if proc.returncode == 0 else None

    # --- files -----------------------------------------------------------------------------------

    def size(self, path: str) -> int | None:
        text = self.exec(f"stat -c %s {shlex.quote(path)} 2>/dev/null", check=False).stdout.decode().strip()
        return int(text) if text.isdigit() else None

    def sha256(self, path: str) -> str | None:
        out = self.exec(f"sha256sum {shlex.quote(path)} 2>/dev/null", check=False).stdout.decode().split()
        return out[0] if out else None

    def listing(self, folder: str) -> dict[str, int]:
        """Relative path -> size of every file under folder (empty when it does not exist)."""
        return parse_listing(self.exec(listing_command(folder), check=False).stdout)

    def mkdir(self, path: str) -> None:
        self.exec(f"mkdir -p {shlex.quote(path)}")

    def remove(self, path: str) -> None:
        self.exec(f"rm -rf {shlex.quote(path)}")

    def put(self, local: Path, remote: str, progress: Callable[[int, int], None] | None = None) -> bool:
        """Upload a file; resumes a `.partial` left by a dropped connection. False when already there."""
        q = shlex.quote
        total = local.stat().st_size
        digest = sha256_file(local)
        if self.size(remote) == total and self.sha256(remote) == digest:
            return False
        partial = remote + ".partial"
        self.mkdir(str(Path(remote).parent))
        while True:
            done = self.size(partial) or 0
            if done > total:  # not ours: start over
                self.remove(partial)
                done = 0
            if done == total:
                break
            with open(local, "rb") as f:
                f.seek(done)
                block = f.read(CHUNK)
            # Written at its offset, not appended: a chunk re-sent after a drop overwrites, never duplicates.
            self.exec(
                f"dd of={q(partial)} bs=1M seek={done} oflag=seek_bytes iflag=fullblock conv=notrunc status=none",
                stdin=block,
                timeout=600,
            )
            if progress:
                progress(done + len(block), total)
        if self.sha256(partial) != digest:
            self.remove(partial)
            raise LoraflowError(f"upload of {local.name} arrived damaged (checksum mismatch); it will be sent again")
        self.exec(f"mv -f {q(partial)} {q(remote)}")
        return True

    def get(self, remote: str, local: Path) -> bool:
        """Download a file; resumes a local `.partial`. False when the local copy already matches."""
        total = self.size(remote)
        if total is None:
            raise LoraflowError(f"{remote} is not on {self.endpoint.host}")
        digest = self.sha256(remote)
        if local.exists() and local.stat().st_size == total and sha256_file(local) == digest:
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(local.name + ".partial")
        while True:
            done = partial.stat().st_size if partial.exists() else 0
            if done > total:
                partial.unlink()
                done = 0
            if done == total:
                break
            block = self.read(remote, done, CHUNK)
            if not block:
                raise LoraflowError(f"{remote} shrank while it was being copied")
            with open(partial, "ab") as f:
                f.write(block)
        if sha256_file(partial) != digest:
            partial.unlink()
            raise LoraflowError(f"download of {remote} arrived damaged (checksum mismatch)")
        partial.replace(local)
        return True
