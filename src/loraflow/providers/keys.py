"""loraflow's own SSH key pair (LORAFLOW_HOME/ssh/id_ed25519, mode 0600), used for every lease."""

from __future__ import annotations

import subprocess
from pathlib import Path

from loraflow import paths


def ensure_key() -> tuple[Path, str]:
    """The private key's path and the public key's text; created on first use."""
    folder = paths.home() / "ssh"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = folder / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "loraflow", "-f", str(key)], check=True)
    key.chmod(0o600)
    return key, key.with_suffix(".pub").read_text().strip()
