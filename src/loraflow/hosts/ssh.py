"""SshHost: the one SSH host (hosts/ssh_async.py's AsyncSshHost) for code that blocks: the runner, the
lease's setup and transfers, remote captioning.

Each call runs the AsyncSshHost coroutine on a private event loop (one daemon thread per process), so a
runner and a worker's follower speak SSH the same way: asyncssh, one connection per host, SFTP for the
per-second questions, the lease's pinned host key. A connection unused for IDLE_CLOSE_S is closed (what
OpenSSH's ControlPersist did before); the next call opens a new one. bench/ssh_twins.py measured keeping
OpenSSH client processes beside it: no case where they were cheaper, so there is one implementation.

Secrets never travel as arguments: the launch script (with `export NAME=value` lines) is written to
the remote shell's *stdin*, so they are not in any process listing, file or log on either side.
Transfers resume from the remote `.partial` size after a dropped connection and are checked with
sha256 at the end before being renamed into place.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from loraflow.errors import LoraflowError, UserInputError
from loraflow.hosts.base import Handle, ProcessStatus, wrapper_script
from loraflow.hosts.ssh_shell import HostUnreachable, SshEndpoint

# What code that reaches a host over SSH needs, from one module.
__all__ = ["CHUNK", "HostUnreachable", "SshEndpoint", "SshHost", "sha256_file"]

if TYPE_CHECKING:
    from loraflow.hosts.ssh_async import AsyncSshHost

CHUNK = 4 << 20  # bytes per exec when transferring: a drop loses at most this much work
IDLE_CLOSE_S = 60.0

T = TypeVar("T")
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid = 0
_loop_lock = threading.Lock()
_shared: dict[tuple[Any, ...], AsyncSshHost] = {}


def _private_loop() -> asyncio.AbstractEventLoop:
    """The loop every SshHost of this process runs on; a forked child starts its own."""
    global _loop, _loop_pid
    with _loop_lock:
        if _loop is None or _loop_pid != os.getpid():
            _loop, _loop_pid = asyncio.new_event_loop(), os.getpid()
            _shared.clear()  # their connections belong to the parent's loop
            threading.Thread(target=_loop.run_forever, daemon=True, name="ssh-loop").start()
        return _loop


def _shared_host(key: tuple[Any, ...], make: Callable[[], AsyncSshHost]) -> AsyncSshHost:
    """One connection per endpoint and policy in a process, however many SshHost objects ask (what
    OpenSSH's ControlMaster gave before): a heartbeat or a check does not pay a handshake each time."""
    _private_loop()
    with _loop_lock:
        if key not in _shared:
            _shared[key] = make()
        return _shared[key]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        try:  # asyncssh is the `cloud` extra: without it this module still imports (HostUnreachable, SshEndpoint)
            from loraflow.hosts.ssh_async import AsyncSshHost
        except ImportError as exc:
            raise UserInputError("SSH hosts need asyncssh", fix="pip install 'loraflow[cloud]'") from exc
        self._host = _shared_host(
            (endpoint, retries, backoff_s, connect_timeout_s),
            lambda: AsyncSshHost(
                endpoint,
                retries=retries,
                backoff_s=backoff_s,
                timeout_s=120,
                connect_timeout_s=connect_timeout_s,
                idle_close_s=IDLE_CLOSE_S,
            ),
        )

    def _wait(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Block on one AsyncSshHost call; it bounds its own time (timeouts, retries)."""
        return asyncio.run_coroutine_threadsafe(coroutine, _private_loop()).result()

    # --- transport -------------------------------------------------------------------------------

    def exec(
        self, remote: str, stdin: bytes | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a remote shell command, reconnecting with backoff when the connection (not the command) fails."""
        code, out, err = self._wait(self._host.exec(remote, stdin, timeout))
        if check and code != 0:
            raise LoraflowError(f"remote command failed ({code}): {err.decode(errors='replace').strip()[-500:]}")
        return subprocess.CompletedProcess(remote, code, out, err)

    def close(self) -> None:
        """Close the connection now (the next call opens another); detached commands keep running."""
        self._wait(self._host.close())

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
        return self._wait(self._host.status(handle))

    def read(self, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        return self._wait(self._host.read(path, offset, limit))

    def signal(self, handle: Handle, sig: int) -> bool:
        return self._wait(self._host.signal(handle, sig))

    def gpu_stats(self) -> list[dict[str, Any]] | None:
        return self._wait(self._host.gpu_stats())

    # --- files -----------------------------------------------------------------------------------

    def size(self, path: str) -> int | None:
        text = self.exec(f"stat -c %s {shlex.quote(path)} 2>/dev/null", check=False).stdout.decode().strip()
        return int(text) if text.isdigit() else None

    def sha256(self, path: str) -> str | None:
        out = self.exec(f"sha256sum {shlex.quote(path)} 2>/dev/null", check=False).stdout.decode().split()
        return out[0] if out else None

    def listing(self, folder: str) -> dict[str, int]:
        """Relative path -> size of every file under folder (empty when it does not exist)."""
        return self._wait(self._host.listing(folder))

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
