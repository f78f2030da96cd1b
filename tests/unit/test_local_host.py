"""LocalHost: detached commands with pid, log and exit-code files that tell the truth."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from loraflow.hosts.base import Handle, ProcessStatus
from loraflow.hosts.local import LocalHost


def wait_status(host: Any, handle: Handle, want: ProcessStatus, timeout: float = 30) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, code = host.status(handle)
        if status is want:
            return code
        time.sleep(0.05)
    raise AssertionError(f"never reached {want}")


def test_exit_code_log_and_env_without_secrets_in_args(tmp_path: Path) -> None:
    host = LocalHost()
    handle = Handle.in_folder(str(tmp_path / "run"), "job")
    script = "import os,sys; print('token', os.environ['HF_TOKEN'][:3]); sys.exit(3)"
    host.run([sys.executable, "-c", script], str(tmp_path), handle, env={"HF_TOKEN": "hf_secretvalue"})
    assert wait_status(host, handle, ProcessStatus.EXITED) == 3
    assert host.read(handle.log_file) == b"token hf_\n"
    assert host.read(handle.log_file, offset=6) == b"hf_\n"
    for name in (handle.pid_file, handle.exit_file, handle.wrapper_file, handle.log_file):
        assert "secretvalue" not in Path(name).read_text()


def test_detached_process_survives_its_starter_and_stops_on_signal(tmp_path: Path) -> None:
    host = LocalHost()
    handle = Handle.in_folder(str(tmp_path / "run"), "job")
    script = "import signal,sys,time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(75)); time.sleep(60)"
    host.run([sys.executable, "-c", script], str(tmp_path), handle)
    pid = host.wait_started(handle)
    assert pid is not None
    assert os.getsid(pid) != os.getsid(0)  # its own session: a closing terminal does not reach it
    assert host.status(handle) == (ProcessStatus.RUNNING, None)
    time.sleep(0.5)
    assert host.signal(handle, signal.SIGTERM)
    assert wait_status(host, handle, ProcessStatus.EXITED) == 75
    assert not host.signal(handle, signal.SIGTERM)


def test_gone_when_process_and_wrapper_vanish(tmp_path: Path) -> None:
    host = LocalHost()
    handle = Handle.in_folder(str(tmp_path / "run"), "job")
    host.run([sys.executable, "-c", "import time; time.sleep(60)"], str(tmp_path), handle)
    pid = host.wait_started(handle)
    wrapper = int(Path(handle.wrapper_file).read_text())
    os.kill(wrapper, signal.SIGKILL)  # e.g. the machine rebooted: nobody will write an exit code
    os.kill(pid, signal.SIGKILL)
    assert wait_status(host, handle, ProcessStatus.GONE) is None
