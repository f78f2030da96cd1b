"""AsyncSshHost: the one SSH host, over asyncssh; hosts/ssh.py's SshHost is its blocking face.

Following is mostly asking the same small questions every second: what did the log gain since byte N,
is the trainer still alive, did it leave an exit code. Every question is an SFTP request on one
connection per host (read at an offset, read the exit-code file, read `/proc/<pid>/stat`), so one event
loop can follow hundreds of hosts and the remote side starts no process at all. Only rare actions (a
signal, nvidia-smi, a launch, a transfer block) run commands. A server without the SFTP subsystem gets
the same questions as shell commands (hosts/ssh_shell.py). bench/ssh_twins.py measured this against
OpenSSH client processes: about 10x less CPU per follow round, and transfers no slower.

Host keys are pinned per lease in the lease's known_hosts file (OpenSSH's format): the first connection
pins the key the server shows (trust on first use, like OpenSSH's `accept-new`), and from then on a
different key is refused. The user's ssh config (~/.ssh/config) and agent are honoured as OpenSSH would.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from typing import Any

import asyncssh

from loraflow.hosts.base import Handle, ProcessStatus
from loraflow.hosts.ssh_shell import (
    GPU_QUERY,
    HostUnreachable,
    SshEndpoint,
    destination,
    is_pinned,
    listing_command,
    parse_listing,
    parse_status,
    pin,
    read_command,
    signal_command,
    status_script,
)
from loraflow.nvidia_smi import parse_nvidia_smi

# OpenSSH's default MaxSessions is 10: stay under it when many jobs share one host.
MAX_CHANNELS = 8


class AsyncSshHost:
    def __init__(
        self,
        endpoint: SshEndpoint,
        retries: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 20,
        sftp: bool = True,
        connect_gate: asyncio.Semaphore | None = None,
        connect_timeout_s: float | None = None,
        idle_close_s: float | None = None,
    ) -> None:
        """timeout_s bounds each question; idle_close_s closes a connection nobody used for that long."""
        self.endpoint = endpoint
        # SSH handshakes cost CPU on both ends: a follower adopting hundreds of jobs at once opens their
        # connections a few at a time instead of all together.
        self._gate = connect_gate
        self.use_sftp = sftp
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.connect_timeout_s = timeout_s if connect_timeout_s is None else connect_timeout_s
        self.idle_close_s = idle_close_s
        self._busy = 0
        self._idle: asyncio.TimerHandle | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._connecting = asyncio.Lock()
        self._channels = asyncio.Semaphore(MAX_CHANNELS)

    # --- transport -------------------------------------------------------------------------------

    async def _connect(self) -> None:
        async with self._connecting:
            if self._conn is not None:
                return
            e = self.endpoint
            destination(e.user, e.host)  # plain names only, before they reach the ssh config's matching
            first = not is_pinned(e.known_hosts, e.host, e.port)
            options: dict[str, Any] = {
                "port": e.port,
                "username": e.user,
                "known_hosts": None if first else e.known_hosts,  # None: any key, pinned just below
                "connect_timeout": self.connect_timeout_s,
                "keepalive_interval": 15,
                "keepalive_count_max": 3,
            }
            if e.identity_file:
                options["client_keys"] = [e.identity_file]
            if e.proxy_command:
                options["proxy_command"] = list(e.proxy_command)  # run as given, no shell
            if self._gate is not None:
                async with self._gate:
                    conn = await asyncssh.connect(e.host, **options)
            else:
                conn = await asyncssh.connect(e.host, **options)
            if first:
                key = conn.get_server_host_key()
                if key is None:
                    conn.abort()
                    raise HostUnreachable(f"{e.host}:{e.port} showed no host key to pin")
                pin(e.known_hosts, e.host, e.port, " ".join(key.export_public_key("openssh").decode().split()[:2]))
            self._conn = conn
            if self.use_sftp:
                try:
                    self._sftp = await self._conn.start_sftp_client()
                except asyncssh.ChannelOpenError:  # no SFTP subsystem on this server: commands instead
                    self.use_sftp = False

    def _drop(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._conn is not None:
            self._conn.abort()
        self._conn, self._sftp = None, None

    async def _call(self, action: Any, timeout_s: float | None = None) -> Any:
        """Run `action(sftp, conn)` with reconnects; HostUnreachable once the retries are spent.
        `sftp` is None on a server without the SFTP subsystem: the action asks with a command then."""
        self._busy += 1
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            return await self._attempts(action, timeout_s or self.timeout_s)
        finally:
            self._busy -= 1
            if self.idle_close_s is not None and self._busy == 0 and self._conn is not None:
                self._idle = asyncio.get_running_loop().call_later(self.idle_close_s, self._drop)

    async def _attempts(self, action: Any, timeout_s: float) -> Any:
        last = ""
        for attempt in range(self.retries + 1):
            try:
                await self._connect()
                async with self._channels:
                    return await asyncio.wait_for(action(self._sftp, self._conn), timeout_s)
            except asyncssh.HostKeyNotVerifiable as exc:
                self._drop()
                raise HostUnreachable(
                    f"{self.endpoint.host}:{self.endpoint.port} presented a different host key than the one "
                    f"pinned for this lease ({exc.reason})",
                    fix="the machine was replaced; lease a new one",
                ) from exc
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                self._drop()
            if attempt < self.retries:
                await asyncio.sleep(min(self.backoff_s * 2**attempt, 10))
        raise HostUnreachable(
            f"cannot reach {self.endpoint.user}@{self.endpoint.host}:{self.endpoint.port} over SSH: {last[-300:]}",
            fix="check that the machine is up and the key is authorised",
        )

    async def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
        self._conn, self._sftp = None, None

    # --- questions asked every second (SFTP; commands without it) ------------------------------

    @staticmethod
    async def _read(sftp: asyncssh.SFTPClient, path: str, offset: int, limit: int) -> bytes:
        try:
            async with sftp.open(path, "rb") as f:
                return await f.read(limit, offset)
        except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPFailure):
            return b""

    async def read(self, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        async def ask(sftp: asyncssh.SFTPClient | None, conn: Any) -> bytes:
            if sftp is None:
                return (await _run(conn, read_command(path, offset, limit)))[1]
            return await self._read(sftp, path, offset, limit)

        return await self._call(ask)

    async def status(self, handle: Handle) -> tuple[ProcessStatus, int | None]:
        """The same answer as SshHost.status: the exit file first, then whether pid or wrapper is alive."""

        async def ask(sftp: asyncssh.SFTPClient | None, conn: Any) -> tuple[ProcessStatus, int | None]:
            if sftp is None:
                return parse_status((await _run(conn, status_script(handle)))[1])
            code = _int(await self._read(sftp, handle.exit_file, 0, 64))
            if code is not None:
                return ProcessStatus.EXITED, code
            for file in (handle.pid_file, handle.wrapper_file):
                pid = _int(await self._read(sftp, file, 0, 64))
                if pid is not None and _alive(await self._read(sftp, f"/proc/{pid}/stat", 0, 4096)):
                    return ProcessStatus.RUNNING, None
            code = _int(await self._read(sftp, handle.exit_file, 0, 64))  # it may have ended meanwhile
            return (ProcessStatus.EXITED, code) if code is not None else (ProcessStatus.GONE, None)

        return await self._call(ask)

    async def listing(self, folder: str) -> dict[str, int]:
        """Relative path -> size of every file under folder (empty when it does not exist)."""

        async def walk(sftp: asyncssh.SFTPClient | None, conn: Any) -> dict[str, int]:
            if sftp is None:
                return parse_listing((await _run(conn, listing_command(folder)))[1])
            files: dict[str, int] = {}
            pending = [""]
            while pending:
                rel = pending.pop()
                try:
                    entries = await sftp.readdir(posixpath.join(folder, rel) if rel else folder)
                except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPFailure):
                    continue
                for entry in entries:
                    name = entry.filename if isinstance(entry.filename, str) else entry.filename.decode()
                    if name in (".", ".."):
                        continue
                    path = posixpath.join(rel, name) if rel else name
                    if entry.attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
                        pending.append(path)
                    elif entry.attrs.type == asyncssh.FILEXFER_TYPE_REGULAR:
                        files[path] = int(entry.attrs.size or 0)
            return files

        return await self._call(walk)

    def watch(self, handle: Handle) -> TrainerWatch:
        return TrainerWatch(self, handle)

    # --- rare actions (commands) -----------------------------------------------------------------

    async def exec(
        self, command: str, stdin: bytes | None = None, timeout_s: float | None = None
    ) -> tuple[int, bytes, bytes]:
        """A shell command: (exit code, or minus the signal that ended it; stdout; stderr)."""
        return await self._call(lambda _sftp, conn: _run(conn, command, stdin), timeout_s)

    async def signal(self, handle: Handle, sig: int) -> bool:
        return (await self.exec(signal_command(handle, sig)))[0] == 0

    async def gpu_stats(self) -> list[dict[str, Any]] | None:
        code, out, _ = await self.exec(GPU_QUERY)
        return parse_nvidia_smi(out.decode()) if code == 0 else None


async def _run(
    conn: asyncssh.SSHClientConnection, command: str, stdin: bytes | None = None
) -> tuple[int, bytes, bytes]:
    result = await conn.run(command, input=stdin, check=False, encoding=None)
    if result.exit_status is None and result.exit_signal is None:  # no answer at all: the connection went
        raise ConnectionResetError("the connection closed before the command ended")
    code = result.returncode if result.returncode is not None else -1
    out, err = result.stdout, result.stderr
    return int(code), out if isinstance(out, bytes) else b"", err if isinstance(err, bytes) else b""


def _int(data: bytes) -> int | None:
    text = data.decode(errors="replace").strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _alive(stat: bytes) -> bool:
    """A /proc/<pid>/stat line of a live process (a zombie has exited; an empty read means no process)."""
    text = stat.decode(errors="replace")
    _, _, rest = text.rpartition(")")
    fields = rest.split()
    return bool(fields) and fields[0] != "Z"


class TrainerWatch:
    """The per-second questions about one trainer with open SFTP handles: the log and the trainer's
    /proc stat file stay open, so a round is two reads instead of a dozen requests. Handles are opened
    again after a reconnect; anything unusual (no pid yet, the process gone) asks the full question."""

    def __init__(self, host: AsyncSshHost, handle: Handle) -> None:
        self.host = host
        self.handle = handle
        self._sftp: Any = None
        self._log: Any = None
        self._proc: Any = None

    async def _handles(self, sftp: asyncssh.SFTPClient) -> None:
        if sftp is not self._sftp:  # a new connection: the old handles are gone with the old one
            self._sftp, self._log, self._proc = sftp, None, None
        if self._log is None:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile, asyncssh.SFTPFailure):
                self._log = await sftp.open(self.handle.log_file, "rb")
        if self._proc is None:
            pid = _int(await AsyncSshHost._read(sftp, self.handle.pid_file, 0, 64))
            if pid is not None:
                with contextlib.suppress(asyncssh.SFTPNoSuchFile, asyncssh.SFTPFailure):
                    self._proc = await sftp.open(f"/proc/{pid}/stat", "rb")

    async def read(self, offset: int, limit: int = 1 << 20) -> bytes:
        async def ask(sftp: asyncssh.SFTPClient | None, conn: Any) -> bytes:
            if sftp is None:
                return (await _run(conn, read_command(self.handle.log_file, offset, limit)))[1]
            await self._handles(sftp)
            return b"" if self._log is None else await self._log.read(limit, offset)

        return await self.host._call(ask)

    async def status(self) -> tuple[ProcessStatus, int | None]:
        async def alive(sftp: asyncssh.SFTPClient | None, _conn: Any) -> bool:
            if sftp is None:
                return False  # no handles to keep: the full question, as a command
            await self._handles(sftp)
            if self._proc is None:
                return False
            try:
                return _alive(await self._proc.read(4096, 0))
            except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPFailure):  # the process is gone
                self._proc = None
                return False

        if await self.host._call(alive):
            return ProcessStatus.RUNNING, None
        return await self.host.status(self.handle)

    async def close(self) -> None:
        for f in (self._log, self._proc):
            if f is not None:
                with contextlib.suppress(Exception):
                    await f.close()
        self._log = self._proc = None
