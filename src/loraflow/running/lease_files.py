"""Files between this machine and a leased host: the parcels training needs (dataset, model, loraflow
itself, the checkpoint to resume from, the rendered config), the host's set-up script, and the
checkpoints and samples brought back while it trains (only what is newer than our newest copy).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from loraflow.engines import get_engine
from loraflow.engines.base import host_outputs, resume_files
from loraflow.errors import LoraflowError
from loraflow.files import tar_folder, tar_paths
from loraflow.hosts.ssh import HostUnreachable, SshHost
from loraflow.layout import JobLayout
from loraflow.monitor import events as ev
from loraflow.monitor.events import EngineEvent
from loraflow.providers.vast_watch import RESCUE_PUT_MAX_BYTES
from loraflow.running.remote import RemoteLease
from loraflow.running.remote_caption import caption_on_host


def model_ref(lease: RemoteLease) -> tuple[str, Path | None]:
    """What the remote trainer loads, and the local folder to ship when there is one."""
    spec = lease.spec
    entry = spec.catalog_entry
    if spec.base_model == entry.id and entry.source.startswith("builtin:"):
        from loraflow.trainer.model_source import resolve_model_path

        return f"{lease.layout().root}/model", resolve_model_path(spec)
    if spec.base_model == entry.id and entry.hub_id:
        return entry.hub_id, None  # the host downloads it at its own bandwidth, with HF_TOKEN
    return f"{lease.layout().root}/model", Path(spec.base_model).expanduser()


def upload(lease: RemoteLease, dataset_hash: str | None) -> None:
    record = lease.lease
    if not record or record.get("uploaded"):
        return
    host, remote = lease.host(), lease.layout()
    engine = get_engine(lease.spec.engine.name)
    started = time.time()
    sent = 0
    with tempfile.TemporaryDirectory(dir=lease.local.run) as tmp:
        parcels: list[tuple[Path, str]] = [
            (tar_folder(Path(lease.local.dataset), Path(tmp, "dataset.tar")), "dataset")
        ]
        model, folder = model_ref(lease)
        if folder is not None:
            parcels.append((tar_folder(folder, Path(tmp, "model.tar")), "model"))
        if engine.name == "builtin" or lease.captions_here():
            import loraflow

            package = Path(loraflow.__file__).parent
            parcels.append((tar_folder(package, Path(tmp, "lib.tar"), "loraflow"), "lib"))
        if engine.name == "builtin" and Path(lease.local.holdout).is_dir():
            # the builtin trainer runs the result check after training (evaluation/after_training.py):
            # its reference images go with it (the trainer reads only dataset/, never these)
            parcels.append((tar_folder(Path(lease.local.holdout), Path(tmp, "holdout.tar")), "evaluation/holdout"))
        checkpoint = None if host_outputs(engine, lease.spec, remote) else latest_local_checkpoint(lease.local)
        carry_on = [Path(p) for p in resume_files(engine, lease.spec, lease.local)]
        if carry_on:  # an engine that resumes from its own outputs: those, where it put them on the lost host
            parcels.append((tar_paths(Path(lease.local.root), carry_on, Path(tmp, "outputs.tar")), "."))
            lease.emit(ev.LOG, {"message": f"sending {', '.join(p.name for p in carry_on)} to carry on from"})
        if checkpoint is not None:
            parcels.append(
                (tar_folder(checkpoint, Path(tmp, "checkpoint.tar"), f"{checkpoint.name}"), "checkpoints")
            )
            lease.emit(ev.LOG, {"message": f"sending {checkpoint.name} to resume from it"})
        for local_tar, folder_name in parcels:
            lease.ship(local_tar, f"{remote.root}/{folder_name}")
            sent += local_tar.stat().st_size
    if lease.captions_here():
        dataset_hash = caption_on_host(lease)
    files = engine.render(lease.spec, remote, lease.job_id, model, dataset_hash)
    for name, text in files.items():
        with tempfile.NamedTemporaryFile("w", delete=False, suffix=".render") as f:
            f.write(text)
        try:
            host.put(Path(f.name), f"{remote.engine}/{name}")
        finally:
            Path(f.name).unlink()
    _setup(lease, host, remote)
    record = lease.lease or record
    record["uploaded"] = True
    lease.save(record)
    lease.emit(ev.LOG, {"message": f"uploaded {sent / 1e6:.1f} MB in {time.time() - started:.1f} s"})


def _setup(lease: RemoteLease, host: SshHost, remote: JobLayout) -> None:
    script = lease.spec.compute.setup
    if script is None:
        script = get_engine(lease.spec.engine.name).requirements(lease.spec).setup_script or ""
    if not script.strip():
        return
    from loraflow.hosts.base import Handle

    handle = Handle.in_folder(remote.run, "setup")
    lease.emit(ev.LOG, {"message": "setting the host up"})
    host.run(["/bin/sh", "-c", script], remote.root, handle)
    while True:
        status, code = host.status(handle)
        if status.value != "running":
            break
        time.sleep(2)
    if code != 0:
        tail = host.read(handle.log_file, max(0, (host.size(handle.log_file) or 0) - 2000)).decode(errors="replace")
        raise LoraflowError(f"host set-up failed (exit {code}): {tail.strip()[-800:]}")


def latest_local_checkpoint(local: JobLayout) -> Path | None:
    from loraflow.trainer.checkpoint import verify

    folder = Path(local.checkpoints)
    for path in sorted(folder.glob("step-*"), reverse=True) if folder.is_dir() else []:
        if path.is_dir() and not path.name.endswith(".partial") and verify(path)[0]:
            return path
    return None


def sync(lease: RemoteLease, patient: bool = True) -> list[EngineEvent]:
    """Copy finished checkpoints and new samples off the host; one event per checkpoint.
    Not patient: one try per operation, for a host already believed dead."""
    from loraflow.trainer.checkpoint import verify

    host, remote = lease.host(), lease.layout()
    if not patient:
        host = SshHost(host.endpoint, retries=0, connect_timeout_s=5)
    events: list[EngineEvent] = []
    listing = host.listing(remote.checkpoints)
    steps: dict[str, dict[str, int]] = {}
    for rel, size in listing.items():
        top, _, rest = rel.partition("/")
        if rest and not top.endswith(".partial"):
            steps.setdefault(top, {})[rest] = size
    local_root = Path(lease.local.checkpoints)
    have = [p.name for p in local_root.glob("step-*") if (p / "meta.json").exists()]
    newest = max(have, default="")
    # Newest first: it is the one keep_last prunes last, so a trainer that saves faster than we copy
    # still leaves us its latest state (oldest first, every copy could lose the race to the pruning).
    for name, files in sorted(steps.items(), reverse=True):
        if "meta.json" not in files or name <= newest:
            continue  # only what is newer than our newest copy: older ones may be pruned under us
        staging = local_root / (name + ".partial")
        try:
            for rel in sorted(files):
                host.get(f"{remote.checkpoints}/{name}/{rel}", staging / rel)
        except HostUnreachable:
            raise
        except LoraflowError:  # pruned by keep_last while we copied it: a newer one exists
            shutil.rmtree(staging, ignore_errors=True)
            continue
        ok, reason = verify(staging)
        if not ok:
            shutil.rmtree(staging, ignore_errors=True)
            lease.emit(ev.WARNING, {"message": f"copy of {name} was damaged ({reason}); retrying later"})
            continue
        staging.replace(local_root / name)
        step = int(name.split("-")[1])
        events.append(
            EngineEvent(ev.CHECKPOINT_SYNCED, {"step": step, "path": f"checkpoints/{name}", "synced": True})
        )
    events.sort(key=lambda e: e.data["step"])
    for rel, size in host.listing(remote.samples).items():
        local = Path(lease.local.samples) / rel
        if ".partial" not in rel and not (local.exists() and local.stat().st_size == size):
            try:
                host.get(f"{remote.samples}/{rel}", local)
            except HostUnreachable:
                raise
            except LoraflowError:  # replaced while we copied it: the next round takes it
                continue
    engine = get_engine(lease.spec.engine.name)
    theirs = host_outputs(engine, lease.spec, remote)
    if theirs is not None:  # the engine's own outputs: mirrored, then taken in as on this machine
        mirror(host, theirs, Path(host_outputs(engine, lease.spec, lease.local) or ""))
        events += engine.collect(lease.spec, lease.local)
    return events


def mirror(host: SshHost, theirs: str, mine: Path) -> None:
    """Copy each file under the host's folder that is new here or whose size changed (a file copied while it
    was being written is copied again once it grows) to the same place under `mine`. What the engine reads
    back decides whether a copy is whole (a LoRA's header, a state's last file), as it does on its own host."""
    for rel, size in sorted(host.listing(theirs).items()):
        local = mine / rel
        if ".partial" in rel or (local.exists() and local.stat().st_size == size):
            continue
        try:
            host.get(f"{theirs}/{rel}", local)
        except HostUnreachable:
            raise
        except LoraflowError:  # pruned or rewritten while we copied it: the next round takes what is there
            continue


# What the host's watcher can push in its one presigned PUT (5 GiB); anything bigger is refused as a bomb.
RESCUE_MAX_BYTES = RESCUE_PUT_MAX_BYTES


def take_back_rescue(lease: RemoteLease) -> None:
    """The checkpoint the last lost host's watcher pushed to the job's bucket on its way out (its dead-man
    switch), copied into the job's checkpoints when it is newer than our newest: the resume starts there
    instead of at the last one copied before the orchestrator died. Only that lease's own object is read
    (each host can write only its own key). It came from a rented machine: a plain tar within a size
    bound, unpacked with tarfile's `data` filter, one checkpoint folder named as the trainer names them,
    whose files match its meta.json; anything else is a warning and the resume starts from ours."""
    import tarfile

    from loraflow.trainer.checkpoint import NAME, verify

    leases = lease.store.get(lease.job_id).outputs.leases
    place = lease.rescue_object(leases[-1]) if leases else None
    if place is None:
        return
    target, key = place
    where = f"s3://{target.bucket}/{key}"
    local_root = Path(lease.local.checkpoints)
    newest = latest_local_checkpoint(lease.local)
    Path(lease.local.run).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lease.local.run) as tmp:
        try:
            from botocore.exceptions import ClientError

            from loraflow.publish.s3 import client

            s3 = client(target.endpoint_url)
            try:
                size = int(s3.head_object(Bucket=target.bucket, Key=key)["ContentLength"])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return  # the host pushed nothing (it had no checkpoint, or was not lost that way)
                raise
            if size > min(RESCUE_MAX_BYTES, shutil.disk_usage(tmp).free // 2):
                raise LoraflowError(f"{size} bytes is more than a checkpoint needs or this disk can spare")
            s3.download_file(target.bucket, key, str(Path(tmp, "rescue.tar")))
            with tarfile.open(Path(tmp, "rescue.tar"), mode="r:") as tar:  # plain: the watcher never compresses
                tops = {m.name.split("/")[0] for m in tar.getmembers()}
                tar.extractall(Path(tmp, "x"), filter="data")
        except Exception as exc:  # storage unreachable, no credentials, a damaged or hostile tar: use ours
            lease.emit(ev.WARNING, {"message": f"could not take back {where} ({type(exc).__name__}: {exc})"})
            return
        name = next(iter(tops)) if len(tops) == 1 else ""
        folder, match = Path(tmp, "x", name), NAME.match(name)
        ok, reason = verify(folder) if match and folder.is_dir() else (False, "not one step-NNNNNN folder")
        if match is None or not ok:
            lease.emit(ev.WARNING, {"message": f"the host's rescue checkpoint {where} is unusable ({reason})"})
            return
        step = int(match.group(1))
        newest_match = NAME.match(newest.name) if newest is not None else None
        if newest_match is None or int(newest_match.group(1)) < step:
            local_root.mkdir(parents=True, exist_ok=True)
            shutil.move(folder, local_root / name)
            lease.emit(ev.CHECKPOINT_SYNCED, {"step": step, "path": f"checkpoints/{name}", "synced": True,
                                              "rescued": True})
            lease.emit(ev.LOG, {"message": f"took back {name}, saved by the lost host on its way out, from {where}"})
    with contextlib.suppress(Exception):  # taken, or older than ours: either way it has served
        s3.delete_object(Bucket=target.bucket, Key=key)


def fetch(lease: RemoteLease, remote_path: str, local_path: str) -> None:
    lease.host().get(remote_path, Path(local_path))
