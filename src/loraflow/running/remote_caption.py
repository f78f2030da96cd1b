"""Captioning as a stage on the rented host, before training.

The images are already there (uploaded for training), so the captioner runs beside them in its own
process on the GPU; only the captions travel: back into the job's dataset copy and manifest, and
the finished caption files (trigger placed, prefix/suffix, length cap) out to the host's copy. The
user's originals are never touched; a captioner that fails leaves the dataset as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraflow.errors import LoraflowError
from loraflow.files import tar_folder
from loraflow.hosts.base import ProcessStatus

if TYPE_CHECKING:
    from loraflow.running.remote import RemoteLease


def caption_on_host(lease: RemoteLease) -> str:
    """Caption the uploaded dataset where it already is (no second upload of the images), bring the
    captions back into the job's dataset copy and its manifest; returns the new dataset hash."""
    from loraflow.caption.run import CaptionCache
    from loraflow.dataset.captions import finish_caption
    from loraflow.dataset.manifest import ManifestFile, read_manifest, write_manifest

    policy, trigger = lease.spec.dataset.captions, lease.spec.dataset.trigger_word
    local = Path(lease.local.dataset)
    manifest = read_manifest(local)
    files = [ManifestFile(**f) for f in manifest["files"]]
    wanted = [f for f in files if policy.mode == "overwrite" or f.caption_source in ("trigger", "none")]
    if not wanted:
        return str(manifest["dataset_hash"])
    cache = CaptionCache(policy, trigger)
    produced = {f.name: text for f in wanted if (text := cache.get(local / f.name)) is not None}
    todo = [f for f in wanted if f.name not in produced]
    if todo:
        for name, text in _caption_there(lease, todo).items():
            produced[name] = text
            cache.put(local / name, text)
    ext = manifest["caption_extension"]
    for entry in wanted:
        text = finish_caption(produced[entry.name], trigger, policy)
        entry.caption, entry.caption_source = text, f"captioner:{policy.backend}"
        caption_file = local / Path(entry.name).with_suffix(f".{ext}").name
        caption_file.write_text(text + "\n", encoding="utf-8")
    digest = write_manifest(local, files, trigger, ext)
    # The host's copy gets the same caption files and manifest (small: text only).
    with tempfile.TemporaryDirectory(dir=lease.local.run) as tmp:
        bundle = Path(tmp, "captions.tar")
        with tarfile.open(bundle, "w") as tar:
            tar.add(local / "manifest.json", "manifest.json")
            for entry in wanted:
                name = Path(entry.name).with_suffix(f".{ext}").name
                tar.add(local / name, name)
        lease.ship(bundle, lease.layout().dataset)
    lease.store.update_outputs(lease.job_id, dataset_hash=digest)
    done = {"backend": policy.backend, "images": len(wanted), "cached": len(wanted) - len(todo), "where": "host"}
    lease.emit("caption.completed", done)
    return digest


def _caption_there(lease: RemoteLease, todo: list[Any]) -> dict[str, str]:
    """Run the captioner on the host over the uploaded images; raw captions by image name."""
    from loraflow.caption.run import captioner_options, worker_job
    from loraflow.hosts.base import Handle

    policy = lease.spec.dataset.captions
    host, remote = lease.host(), lease.layout()
    options = captioner_options(policy, lease.spec.dataset.trigger_word)
    model = Path(policy.model).expanduser() if policy.model else None
    if model is not None and model.is_dir():  # a local model folder travels with the job
        with tempfile.TemporaryDirectory(dir=lease.local.run) as tmp:
            lease.ship(tar_folder(model, Path(tmp, "captioner.tar")), f"{remote.root}/captioner")
        options["model"] = f"{remote.root}/captioner"
    output = f"{remote.run}/captions.json"
    request = worker_job(policy.backend, options, [f"{remote.dataset}/{f.name}" for f in todo], output)
    with tempfile.NamedTemporaryFile("w", delete=False, suffix=".json") as f:
        json.dump(request, f)
    try:
        host.put(Path(f.name), f"{remote.run}/caption-request.json")
    finally:
        Path(f.name).unlink()
    lease.emit("caption.started", {"backend": policy.backend, "images": len(todo), "where": "host"})
    handle = Handle.in_folder(remote.run, "caption")
    python = lease.spec.compute.python
    argv = [python, "-m", "loraflow.caption.worker", f"{remote.run}/caption-request.json"]
    env = {**lease.env(), **{k: os.environ[k] for k in ("HF_TOKEN",) if k in os.environ}}
    host.run(argv, remote.root, handle, env)
    host.wait_started(handle)
    code = _wait(lease, host, handle, len(todo))
    if code != 0 or host.size(output) is None:
        size = host.size(handle.log_file) or 0
        tail = host.read(handle.log_file, max(0, size - 2000)).decode(errors="replace").strip()
        last = tail.splitlines()[-1] if tail else "no output"
        raise LoraflowError(
            f"the {policy.backend} captioner failed on the host (exit {code}): {last}",
            fix="check dataset.captions.model and that compute.setup installs the captioner's packages; "
            "the dataset and its captions are unchanged",
        )
    with tempfile.TemporaryDirectory(dir=lease.local.run) as tmp:
        host.get(output, Path(tmp, "captions.json"))
        produced: dict[str, str] = json.loads(Path(tmp, "captions.json").read_text(encoding="utf-8"))
    return {f.name: produced[f"{remote.dataset}/{f.name}"] for f in todo}


def _wait(lease: RemoteLease, host: Any, handle: Any, total: int) -> int | None:
    """Until the captioner exits, with its progress as `caption.progress` events; a captioner whose log
    stops moving for `monitor.stall_minutes` is killed rather than left billing."""
    from loraflow.trainer.events import PREFIX

    offset, done, moved = 0, -1, time.monotonic()
    stall_s = lease.spec.monitor.stall_minutes * 60
    while True:
        status, code = host.status(handle)
        chunk = host.read(handle.log_file, offset)
        if chunk:
            offset += len(chunk)
            moved = time.monotonic()
            for line in chunk.decode(errors="replace").splitlines():
                if line.startswith(PREFIX):
                    with contextlib.suppress(ValueError):
                        data = json.loads(line[len(PREFIX) :])
                        if data.get("event") == "caption" and data.get("done", -1) > done:
                            done = int(data["done"])
                            lease.emit("caption.progress", {"done": done, "total": total})
        if status is not ProcessStatus.RUNNING:
            return code
        if time.monotonic() - moved > stall_s:
            host.signal(handle, signal.SIGKILL)
            raise LoraflowError(
                f"the captioner on the host made no progress for {stall_s / 60:.0f} minutes and was stopped",
                fix="raise monitor.stall_minutes for a slow captioner, or pick a smaller model",
            )
        time.sleep(1)
