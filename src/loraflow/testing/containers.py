"""An emulated rented machine's container on this machine: its own OpenSSH server (own HOME, own keys, the
provider's environment in every session) and the end of everything started in it, found by a marker in
each process's environment. The Vast.ai and RunPod emulators both rent these."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sshd(
    root: Path, host_key: Path, authorized_keys: list[str], session_env: dict[str, str], sshd_bin: str
) -> tuple[subprocess.Popen[bytes], int]:
    """An sshd on a free loopback port that accepts `authorized_keys`, with `session_env` set in every
    session (values without spaces: sshd's SetEnv splits on them); waits until it listens."""
    keys = root / "authorized_keys"
    keys.write_text("".join(k + "\n" for k in authorized_keys))
    keys.chmod(0o600)
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {keys}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "PidFile none",
                "MaxSessions 64",
                "MaxStartups 64",
                "SetEnv " + " ".join(f"{k}={v}" for k, v in session_env.items()),
                "",
            ]
        )
    )
    proc = subprocess.Popen(
        [sshd_bin, "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "sshd.log", "ab"),  # noqa: SIM115
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, port


def kill_marked(marker: str) -> None:
    """SIGKILL every process of this machine whose environment holds `marker` (NAME=value)."""
    needle = marker.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue
