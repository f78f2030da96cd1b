"""What every SSH conversation shares: the endpoint, the checks on its names, the host key pinned per
lease (OpenSSH's known_hosts format) and the shell side of each question asked of a detached command.

A server without the SFTP subsystem, and every rare action (a signal, nvidia-smi, a transfer block),
gets these commands; their answers are parsed here too, so each question has one wording and one parser.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loraflow.errors import LoraflowError
from loraflow.hosts.base import Handle, ProcessStatus


class HostUnreachable(LoraflowError):
    """The host did not answer over SSH after the retries: it is dead, destroyed or cut off."""


@dataclass(frozen=True)
class SshEndpoint:
    host: str
    port: int
    user: str
    identity_file: str | None
    known_hosts: str  # one file per lease: the key is pinned for that lease only
    # The command SSH talks through instead of a TCP connection to host:port (OpenSSH's ProxyCommand), as
    # the provider gives it: SkyPilot reaches a Slurm allocation through its API server and `srun sshd -i`.
    # host:port then only name the host for its pinned key. None: a direct connection.
    proxy_command: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["proxy_command"] = list(self.proxy_command) if self.proxy_command else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SshEndpoint:
        proxy = data.get("proxy_command")  # absent in leases recorded before it existed
        return cls(
            **{k: data[k] for k in ("host", "port", "user", "identity_file", "known_hosts")},
            proxy_command=tuple(proxy) if proxy else None,
        )


_SAFE_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_SAFE_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")


def destination(user: str, host: str) -> str:
    """`user@host`, refused unless both are plain names: they reach the matching of the user's ssh config
    and any ProxyCommand in it (`%h`, `%r`), where `-o...` or `a;b` would be read as more than a name."""
    if not _SAFE_USER.fullmatch(user) or not _SAFE_HOST.fullmatch(host):
        raise LoraflowError(f"refusing the SSH destination {user!r}@{host!r}: not a plain user and host name")
    return f"{user}@{host}"


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


def host_pattern(host: str, port: int) -> str:
    """How OpenSSH's known_hosts names a host: `[host]:port` unless the port is 22."""
    return host if port == 22 else f"[{host}]:{port}"


def is_pinned(known_hosts: str, host: str, port: int) -> bool:
    """Whether a key is already pinned for this host in the lease's known_hosts file."""
    path = Path(known_hosts)
    if not path.exists():
        return False
    pattern = host_pattern(host, port)
    for line in path.read_text().splitlines():
        names = line.split(maxsplit=1)[0].split(",") if line.strip() and not line.startswith("#") else []
        if pattern in names:
            return True
    return False


def pin(known_hosts: str, host: str, port: int, key_line: str) -> None:
    """Pin `key_line` (`<type> <base64>`) for this host: trust on first use, for this lease only."""
    path = Path(known_hosts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(f"{host_pattern(host, port)} {key_line}\n")
