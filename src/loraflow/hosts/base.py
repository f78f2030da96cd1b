"""The Host seam: run a command detached, ask how it is, read its log, signal it, move files.

A detached command is wrapped by a small POSIX shell script that writes its pid, sends its output to a
log file and writes its exit code to a file when it ends. Those three files are the whole contract,
so the same wrapper works on this machine and on a rented one over SSH, and a follower that was
killed can come back later and learn what happened from the files alone.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol


class ProcessStatus(StrEnum):
    RUNNING = "running"
    EXITED = "exited"
    GONE = "gone"  # no process, no wrapper, no exit code: killed with its wrapper, or the machine restarted


@dataclass(frozen=True)
class Handle:
    """Where a detached command's files live on its host (absolute paths on that host)."""

    name: str
    pid_file: str
    log_file: str
    exit_file: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @property
    def wrapper_file(self) -> str:
        """Pid of the wrapper shell: while it lives, an exit code is still to come."""
        return self.pid_file + ".wrapper"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Handle:
        return cls(**{k: data[k] for k in ("name", "pid_file", "log_file", "exit_file")})

    @classmethod
    def in_folder(cls, folder: str, name: str) -> Handle:
        return cls(name, f"{folder}/{name}.pid", f"{folder}/{name}.log", f"{folder}/{name}.exit")


def wrapper_script(argv: list[str], cwd: str, handle: Handle, env_names: list[str]) -> str:
    """A shell line that runs argv in the background and records pid, log and exit code.

    Environment variable *values* are never written into the script: the names listed are inherited
    from the process that starts the wrapper, so secrets stay out of files and process listings.
    """
    q = shlex.quote
    exported = " ".join(q(n) for n in env_names)
    export = f"export {exported}; " if env_names else ""
    return (
        f"cd {q(cwd)} && {export}rm -f {q(handle.exit_file)}; echo $$ > {q(handle.wrapper_file)}; "
        f"( {shlex.join(argv)} ) >> {q(handle.log_file)} 2>&1 < /dev/null & "
        f"child=$!; echo $child > {q(handle.pid_file)}.tmp && mv {q(handle.pid_file)}.tmp {q(handle.pid_file)}; "
        f"wait $child; code=$?; echo $code > {q(handle.exit_file)}.tmp && mv {q(handle.exit_file)}.tmp "
        f"{q(handle.exit_file)}"
    )


class Host(Protocol):
    """Where commands run and files live; nothing about training."""

    def run(self, argv: list[str], cwd: str, handle: Handle, env: dict[str, str] | None = None) -> Handle: ...

    def status(self, handle: Handle) -> tuple[ProcessStatus, int | None]: ...

    def read(self, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes: ...

    def signal(self, handle: Handle, sig: int) -> bool: ...

    def gpu_stats(self) -> list[dict[str, Any]] | None: ...
