"""A real OpenSSH server on 127.0.0.1 that accepts one generated client key: for the tests and benches
that need a remote host without leaving this machine."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from loraflow.testing.vast_emulator import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class LoopbackSshd:
    proc: subprocess.Popen[bytes]
    port: int
    key: Path  # the client's private key
    home: Path  # HOME of sessions: a clean one, so no login scripts of this machine run per command

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def start_sshd(root: Path, extra_config: str = "") -> LoopbackSshd:
    home = root / "home"
    home.mkdir(parents=True)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    keys = root / "authorized_keys"
    shutil.copy(root / "client_key.pub", keys)
    keys.chmod(0o600)
    port = free_port()
    (root / "config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {root / 'host_key'}\nAuthorizedKeysFile {keys}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PermitRootLogin prohibit-password\nPidFile none\nMaxSessions 64\nSetEnv HOME={home}\n"
        f"Subsystem sftp internal-sftp\n{extra_config}"
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "config")], stderr=subprocess.DEVNULL)
    for _ in range(100):
        if subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode == 0:
            break
        time.sleep(0.05)
    return LoopbackSshd(proc, port, root / "client_key", home)
