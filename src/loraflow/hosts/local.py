"""LocalHost: detached processes on this machine that outlive the terminal, notebook or server."""

from __future__ import annotations

import os
import signal as signals
import subprocess
import time
from pathlib import Path
from typing import Any

from loraflow.hosts.base import Handle, ProcessStatus, wrapper_script
from loraflow.nvidia_smi import gpu_stats


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not running.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


# What every trainer may see of this machine's environment besides the names its engine asks for:
# where things are, how to run, which GPU. Never the orchestrator's keys, database URL or secrets.
BASE_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "SHELL",
    "PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONHASHSEED", "VIRTUAL_ENV",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
    "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_ENDPOINT", "TRANSFORMERS_OFFLINE",
    "TORCH_HOME", "XDG_CACHE_HOME", "LD_LIBRARY_PATH", "LORAFLOW_HOME", "LORAFLOW_MODELS_DIR",
})
BASE_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "PYTORCH_", "TORCH_", "NCCL_", "ROCR_", "HIP_", "AITK_STANDIN_",
                 "KOHYA_STANDIN_", "MUSUBI_STANDIN_")


def child_environment(extra: dict[str, str] | None, inherit: bool = False) -> dict[str, str]:
    """The environment of a started command: the base names plus what the caller passes (`inherit`:
    everything, for loraflow's own runner, which needs the keys to rent and publish)."""
    base = dict(os.environ) if inherit else {
        k: v for k, v in os.environ.items() if k in BASE_NAMES or k.startswith(BASE_PREFIXES)
    }
    return {**base, **(extra or {})}


class LocalHost:
    name = "local"

    def run(
        self, argv: list[str], cwd: str, handle: Handle, env: dict[str, str] | None = None, inherit: bool = False
    ) -> Handle:
        """Start argv detached in its own session: closing the terminal or killing the caller leaves it running.

        It sees only `child_environment`: a trainer gets the names its engine lists, not the server's keys."""
        Path(handle.log_file).parent.mkdir(parents=True, exist_ok=True)
        # A previous wrapper still finishing (its command was just killed) would write its exit code
        # over the new run's files: let it finish first.
        old = _read_int(handle.wrapper_file)
        deadline = time.monotonic() + 10
        while old is not None and pid_alive(old) and time.monotonic() < deadline:
            time.sleep(0.02)
        for stale in (handle.pid_file, handle.exit_file, handle.wrapper_file):
            Path(stale).unlink(missing_ok=True)
        child_env = child_environment(env, inherit)
        script = wrapper_script(argv, cwd, handle, sorted((env or {}).keys()))
        subprocess.Popen(
            ["/bin/sh", "-c", script],
            cwd=cwd,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        return handle

    def wait_started(self, handle: Handle, timeout: float = 60.0) -> int | None:
        """The command's pid once its wrapper has written it (None if it ended before we looked)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = _read_int(handle.pid_file)
            if pid is not None or _read_int(handle.exit_file) is not None:
                return pid
            time.sleep(0.02)
        from loraflow.errors import LoraflowError

        raise LoraflowError(f"{handle.name} did not start within {timeout:.0f} s", fix="check the machine's load")

    def pid(self, handle: Handle) -> int | None:
        return _read_int(handle.pid_file)

    def status(self, handle: Handle) -> tuple[ProcessStatus, int | None]:
        code = _read_int(handle.exit_file)
        if code is not None:
            return ProcessStatus.EXITED, code
        for pid_file in (handle.pid_file, handle.wrapper_file):
            # The command, or its wrapper between the command's end and writing the exit code.
            pid = _read_int(pid_file)
            if pid is not None and pid_alive(pid):
                return ProcessStatus.RUNNING, None
        code = _read_int(handle.exit_file)  # it may have finished between the reads
        if code is not None:
            return ProcessStatus.EXITED, code
        return ProcessStatus.GONE, None

    def read(self, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(limit)
        except FileNotFoundError:
            return b""

    def signal(self, handle: Handle, sig: int = signals.SIGTERM) -> bool:
        pid = _read_int(handle.pid_file)
        if pid is None or not pid_alive(pid):
            return False
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False

    def gpu_stats(self) -> list[dict[str, Any]] | None:
        """Per-GPU utilisation and memory from nvidia-smi, or None where there is no NVIDIA GPU."""
        return gpu_stats()
