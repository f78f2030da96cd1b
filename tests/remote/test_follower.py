"""One worker process following remote trainers in one event loop (asyncssh), against a real sshd."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from loraflow.hosts.base import Handle, ProcessStatus
from loraflow.hosts.local import pid_alive
from loraflow.hosts.ssh import HostUnreachable, SshEndpoint, SshHost
from loraflow.hosts.ssh_async import AsyncSshHost
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.monitor.builtin_parser import BuiltinParser
from loraflow.running.control import request_stop
from loraflow.running.worker import Worker
from loraflow.spec import load_spec
from tests.integration.test_local_jobs import wait_for
from tests.publish.test_webhooks import Receiver
from tests.remote.conftest import Sshd, dump, events_of
from tests.remote.test_vast_jobs import remote_spec


def endpoint(sshd: Sshd, tmp_path: Path) -> SshEndpoint:
    return SshEndpoint("127.0.0.1", sshd.port, "root", str(sshd.key), str(tmp_path / "known_hosts"))


@pytest.mark.parametrize("sftp", [True, False], ids=["sftp", "commands"])
def test_async_host_answers_like_the_openssh_one(sshd: Sshd, tmp_path: Path, sftp: bool) -> None:
    """Same answers over SFTP (or shell commands where a server has no SFTP) as SshHost gives:
    offsets, liveness, exit codes, listings, signals; a changed host key refused."""
    ep = endpoint(sshd, tmp_path)
    sync = SshHost(ep)  # pins the host key, as a runner does before handing off
    root = sync.expand("~/f")
    sleeper = Handle.in_folder(f"{root}/run", "sleeper")
    sync.run([sys.executable, "-c", "print('hello', flush=True); import time; time.sleep(30)"], root, sleeper)
    sync.wait_started(sleeper)
    quick = Handle.in_folder(f"{root}/run", "quick")
    sync.run(["sh", "-c", "mkdir -p out/a && echo xyz > out/a/f.txt && exit 3"], root, quick)

    async def scenario() -> None:
        host = AsyncSshHost(ep, sftp=sftp)
        deadline = time.monotonic() + 10
        while b"hello" not in await host.read(sleeper.log_file) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await host.read(sleeper.log_file, 2) == b"llo\n"
        watch = host.watch(sleeper)  # the follower's way: handles kept open between rounds
        assert await watch.read(0) == b"hello\n" and await watch.read(6) == b""
        assert await watch.status() == (ProcessStatus.RUNNING, None)
        assert await host.read(f"{root}/missing.log") == b""
        assert await host.status(sleeper) == (ProcessStatus.RUNNING, None)
        while (await host.status(quick))[0] is ProcessStatus.RUNNING:
            await asyncio.sleep(0.05)
        assert await host.status(quick) == (ProcessStatus.EXITED, 3)
        assert await host.listing(f"{root}/out") == {"a/f.txt": 4}
        assert await host.listing(f"{root}/nothing") == {}
        assert await host.gpu_stats() is None  # no nvidia-smi here
        assert await host.signal(sleeper, signal.SIGKILL)
        while (await host.status(sleeper))[0] is ProcessStatus.RUNNING:
            await asyncio.sleep(0.05)
        assert (await host.status(sleeper))[0] is ProcessStatus.EXITED
        assert (await watch.status())[0] is ProcessStatus.EXITED
        await watch.close()
        await host.close()
        # A host key other than the pinned one is refused, never accepted.
        other = tmp_path / "other_known_hosts"
        text = (tmp_path / "known_hosts").read_text().split()
        fake = "AAAAC3NzaC1lZDI1NTE5AAAAIK" + "x" * 42  # a well-formed key that is not the server's
        other.write_text(f"{text[0]} ssh-ed25519 {fake}\n")
        bad = AsyncSshHost(SshEndpoint(ep.host, ep.port, ep.user, ep.identity_file, str(other)), retries=0)
        try:
            await bad.read(sleeper.log_file)
        except HostUnreachable as exc:
            assert "host key" in exc.message
        else:
            raise AssertionError("a changed host key was accepted")

    asyncio.run(scenario())


def ssh_spec(tmp_path: Path, sshd: Sshd, name: str, steps: int) -> Path:
    path = remote_spec(tmp_path / name, steps=steps, every=10)
    data = yaml.safe_load(path.read_text())
    data["name"] = name
    data["compute"] = {
        "provider": "ssh",
        "python": sys.executable,
        "setup": "",
        "ssh": {"host": "127.0.0.1", "port": sshd.port, "user": "root", "identity_file": str(sshd.key),
                "root": f"~/{name}"},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(data))
    return path


def test_worker_follows_remote_trainers_without_a_process_per_job(sshd: Sshd, tmp_path: Path) -> None:
    """Two jobs on one host: launched by their runners, followed by the worker's event loop (no runner
    process alive meanwhile), one finishes with its checkpoints copied back, the other is stopped
    through the follower and ends `stopped` with a checkpoint."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    receiver = Receiver()
    spec_a = ssh_spec(tmp_path, sshd, "a", steps=30)
    data = yaml.safe_load(spec_a.read_text())
    data["notifications"] = [{"type": "webhook", "url": receiver.url}]
    spec_a.write_text(yaml.safe_dump(data))
    store = Store()
    done = store.create_job(load_spec(spec_a))
    stopped = store.create_job(load_spec(ssh_spec(tmp_path, sshd, "b", steps=400)))
    # One slot: a followed job frees it, so the second job is claimed while the first is followed.
    worker = Worker(store, slots=1, lease_s=30).start(poll_s=0.3)
    try:
        followed = {done.id: False, stopped.id: False}

        def both_followed() -> bool:
            for job_id in followed:
                if not events_of(store, job_id, "follower.adopted"):
                    continue
                pid = (store.get(job_id).folder / "run" / "runner.pid").read_text().strip()
                if not pid_alive(int(pid)) and worker.follower.following(job_id):
                    followed[job_id] = True
            return all(followed.values())

        try:
            wait_for(both_followed, timeout=180, what="both jobs followed with no runner process alive")
        except AssertionError:
            for job_id in followed:
                print(job_id, store.get(job_id).state, [(e.type, e.data) for e in store.events(job_id)][-15:])
            raise
        wait_for(lambda: (store.get(stopped.id).step or 0) >= 12, timeout=120, what="job b past a checkpoint")
        request_stop(stopped.id)
        wait_for(lambda: store.get(stopped.id).state is JobState.STOPPED, timeout=120, what="job b stopped")
        wait_for(lambda: store.get(done.id).state is JobState.COMPLETED, timeout=180, what="job a completed")
        # Delivery follows the event (the runner flushes its notifier before it exits), not the state.
        wait_for(
            lambda: "job.completed" in [p["event"] for p, _, _ in receiver.received],
            timeout=120,
            what="the job.completed webhook",
        )
    finally:
        worker.stop()
        receiver.close()
    a = store.get(done.id)
    assert a.step == 30, dump(a.to_dict())
    assert [d["step"] for d in events_of(store, done.id, "checkpoint.synced")] == [10, 20, 30]
    assert len(events_of(store, done.id, "train.launched")) == 1  # followed, never relaunched
    assert len(events_of(store, done.id, "follower.adopted")) == 1
    assert events_of(store, done.id, "follower.released")[0]["reason"] == "trainer exited"
    steps = [d["step"] for d in events_of(store, done.id, "progress")]
    assert steps == sorted(steps) and steps[-1] == 30  # nothing read twice after the hand-offs
    # Webhooks kept flowing while the follower had the job (delivered from its event loop), once each.
    events = store.events(done.id)
    adopted = next(e.seq for e in events if e.type == "follower.adopted")
    released = next(e.seq for e in events if e.type == "follower.released")
    during = [e for e in events if e.type == "webhook.delivery" and adopted < e.data["seq"] < released]
    assert {e.data["event"] for e in during} >= {"checkpoint.saved"} and all(e.data["ok"] for e in during)
    ids = [p["id"] for p, _, _ in receiver.received]
    assert len(ids) == len(set(ids)) and "job.completed" in [p["event"] for p, _, _ in receiver.received]
    b = store.get(stopped.id)
    assert "stop requested: checkpointing" in [d.get("message") for d in events_of(store, stopped.id, "log")]
    assert events_of(store, stopped.id, "checkpoint.synced"), "the stopped job has a checkpoint to resume from"
    assert 10 <= b.step < 400
    assert not (b.folder / "run" / "handoff.json").exists()


def test_a_stall_seen_by_the_follower_is_acted_on_by_the_runner(sshd: Sshd, tmp_path: Path) -> None:
    """The trainer freezes mid-training while followed: the follower notices, hands the job back with
    the stall, and the runner applies monitor.on_stall (fail: kill it, job failed as `stalled`)."""
    (tmp_path / "s").mkdir()
    path = ssh_spec(tmp_path, sshd, "s", steps=2000)
    data = yaml.safe_load(path.read_text())
    data["monitor"] = {"stall_minutes": 0.2, "on_stall": "fail"}
    path.write_text(yaml.safe_dump(data))
    store = Store()
    job = store.create_job(load_spec(path))
    worker = Worker(store, slots=2, lease_s=30).start(poll_s=0.3)
    try:
        wait_for(lambda: bool(events_of(store, job.id, "follower.adopted")), timeout=120, what="follower adopted")
        wait_for(lambda: (store.get(job.id).step or 0) >= 3, timeout=120, what="training under way")
        pid = int((sshd.home / "s" / job.id / "run" / "train.pid").read_text())
        os.kill(pid, signal.SIGSTOP)  # alive, but making no progress
        wait_for(lambda: store.get(job.id).state is JobState.FAILED, timeout=120, what="the stall acted on")
    finally:
        worker.stop()
    assert events_of(store, job.id, "follower.released")[0]["reason"].startswith("stalled")
    assert [d["action"] for d in events_of(store, job.id, "stall.detected")] == ["fail"]
    assert events_of(store, job.id, "error")[-1]["code"] == "stalled"
    assert not pid_alive(pid)


def test_a_dead_workers_followed_job_is_adopted_by_the_next_worker(sshd: Sshd, tmp_path: Path) -> None:
    """`loraflow worker` is SIGKILLed while its follower follows a job: the trainer keeps going on the
    host, and another worker takes the job over and adopts it (no relaunch, nothing lost)."""
    (tmp_path / "t").mkdir()
    store = Store()
    job = store.create_job(load_spec(ssh_spec(tmp_path, sshd, "t", steps=150)))
    first = subprocess.Popen(
        [sys.executable, "-m", "loraflow.cli", "worker", "--slots", "2", "--lease", "3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: bool(events_of(store, job.id, "follower.adopted")), timeout=120, what="first adoption")
        wait_for(lambda: (store.get(job.id).step or 0) >= 5, timeout=120, what="training under way")
    finally:
        first.kill()
        first.wait()
    step_at_death = store.get(job.id).step
    second = Worker(store, slots=2, lease_s=3).start(poll_s=0.3)
    try:
        wait_for(lambda: store.get(job.id).state is JobState.COMPLETED, timeout=180, what="completed after takeover")
    finally:
        second.stop()
    done = store.get(job.id)
    assert done.step == 150 and step_at_death < 150
    assert len(events_of(store, job.id, "train.launched")) == 1  # the trainer was never started again
    assert len(events_of(store, job.id, "follower.adopted")) == 2
    assert len({d["worker"] for d in events_of(store, job.id, "worker.claimed")}) == 2


def test_budget_cap_reached_while_followed_stops_with_a_checkpoint(tmp_path: Path, vast) -> None:
    """On a rented (emulated Vast.ai) host with no SFTP subsystem: the follower meters the lease's real
    price from its loop, stops the trainer at the cap, and the runner ends the job `stopped_budget`
    with the checkpoint copied back and the instance destroyed."""
    spec = remote_spec(tmp_path, steps=400, every=5, budget={"max_usd": 0.004})
    data = yaml.safe_load(spec.read_text())
    data["compute"]["gpu"] = {"names": ["H100 SXM"]}  # $1.85/h: the cap is hit within seconds
    spec.write_text(yaml.safe_dump(data))
    store = Store()
    job = store.create_job(load_spec(spec))
    store.update_outputs(job.id, force_budget=True)  # what `train --force` records
    worker = Worker(store, slots=2, lease_s=30).start(poll_s=0.3)
    try:
        wait_for(lambda: store.get(job.id).state is JobState.STOPPED_BUDGET, timeout=180, what="budget stop")
    finally:
        worker.stop()
    done = store.get(job.id)
    types = [e.type for e in store.events(job.id)]
    assert "follower.adopted" in types and "budget.warning" in types and "job.stopped_budget" in types
    log = [d.get("message", "") for d in events_of(store, job.id, "log")]
    assert any(m.startswith("budget reached") for m in log) and "stop requested: checkpointing" in log
    assert done.cost_usd >= 0.004 and done.lease is None and vast.instances() == {}
    assert list((done.folder / "checkpoints").glob("step-*/meta.json")) and 0 < done.step < 400
    (end,) = events_of(store, job.id, "job.stopped_budget")
    assert end["step"] == done.step and (done.folder / end["checkpoint"] / "meta.json").exists()


def test_a_host_the_follower_cannot_follow_is_followed_by_its_runner(
    sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the follower's SSH fails while OpenSSH still reaches the host (the runner checks), the runner
    follows the job itself from then on: one adoption, no hand-off ping-pong, the job completes."""

    async def refused(self: AsyncSshHost, *args: object, **kwargs: object) -> bytes:
        raise HostUnreachable("simulated: the follower's connection is refused")

    monkeypatch.setattr("loraflow.hosts.ssh_async.TrainerWatch.read", refused)
    (tmp_path / "u").mkdir()
    store = Store()
    job = store.create_job(load_spec(ssh_spec(tmp_path, sshd, "u", steps=60)))
    worker = Worker(store, slots=2, lease_s=30).start(poll_s=0.3)
    try:
        wait_for(lambda: store.get(job.id).state is JobState.COMPLETED, timeout=180, what="completed")
    finally:
        worker.stop()
    assert len(events_of(store, job.id, "follower.adopted")) == 1
    assert events_of(store, job.id, "follower.released")[0]["reason"].startswith("host unreachable")
    assert (job.folder / "run" / "self-follow").exists()
    assert store.get(job.id).step == 60 and len(events_of(store, job.id, "train.launched")) == 1


def test_a_runner_taking_back_a_stopped_training_job_copies_the_last_save_first(sshd: Sshd, tmp_path: Path) -> None:
    """The race seen with CPU burners, made deterministic: the trainer on the host saved at its stop and exited
    while no runner was there (as when the follower hands the job back). The runner that takes the job back
    copies that save before it ends the stop and lets the host go; it never ends the stop at a stop point
    with an older checkpoint or none."""
    from loraflow.running.control import start_runner
    from loraflow.running.runner import JobRunner

    (tmp_path / "u").mkdir()
    store = Store()
    job = store.create_job(load_spec(ssh_spec(tmp_path, sshd, "u", steps=400)))
    start_runner(job.id)
    local = job.folder / "checkpoints"
    wait_for(lambda: any(local.glob("step-*/meta.json")), timeout=180, what="a checkpoint copied here")
    runner = Handle.in_folder(str(job.folder / "run"), "runner")
    os.kill(int(Path(runner.pid_file).read_text()), signal.SIGTERM)  # the runner leaves; the trainer trains on
    wait_for(lambda: bool(store.events(job.id, types=["runner.stopped"])), what="the runner to leave")
    root = Path(store.get(job.id).lease["root"])  # the host is this machine: its paths are ours
    trainer = Handle.in_folder(str(root / "run"), "train")
    copied = max(int(p.parent.name.split("-")[1]) for p in local.glob("step-*/meta.json"))

    def host_step() -> int:  # read on the host: no runner records progress now
        events = BuiltinParser().feed(Path(trainer.log_file).read_bytes())
        return max((int(e.data["step"]) for e in events if e.type == "progress"), default=0)

    wait_for(lambda: host_step() > copied, what="training past the copied checkpoint")
    (job.folder / "run" / "stop-request").touch()  # what a stop leaves for the runner
    os.kill(int(Path(trainer.pid_file).read_text()), signal.SIGTERM)
    wait_for(lambda: Path(trainer.exit_file).exists(), what="the trainer to save and exit")
    saved = max(int(p.parent.name.split("-")[1]) for p in root.rglob("checkpoints/step-*/meta.json"))
    assert saved > copied  # the host holds a save this machine has not seen yet

    assert JobRunner(store, job.id).run() is JobState.STOPPED
    (end,) = events_of(store, job.id, "job.stopped")
    assert end["step"] == saved and end["checkpoint"] == f"checkpoints/step-{saved:06d}", end
    assert (job.folder / end["checkpoint"] / "meta.json").exists() and store.get(job.id).lease is None
