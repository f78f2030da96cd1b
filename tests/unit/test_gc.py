"""Retention: `loraflow gc` and the service's periodic duty on real job folders (the layout of jobs/layout.py),
with file times set back by os.utime."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from loraflow import paths
from loraflow.jobs.store import Store
from loraflow.platform.gc import GcPolicy, collect
from loraflow.spec import parse_spec

DAY = 86400
PATHS = {  # relative path: bytes
    "spec.yaml": 10,
    "dataset/manifest.json": 20,
    "dataset/a.png": 300,
    "dataset/a_1024x1024_flux.npz": 1000,  # kohya's latent cache next to the image
    "dataset/a_flux_te.npz": 500,
    "dataset/_latent_cache/a_x.safetensors": 700,  # ai-toolkit's
    "cache/latents/0a.safetensors": 4000,  # builtin's
    "checkpoints/step-000010/lora.safetensors": 100,
    "checkpoints/step-000010/meta.json": 5,
    "checkpoints/step-000020/lora.safetensors": 100,
    "checkpoints/step-000020/meta.json": 5,
    "checkpoints/step-000030/lora.safetensors": 100,
    "checkpoints/step-000030/meta.json": 5,
    "aitk/g/g_000000010.safetensors": 100,
    "aitk/g/optimizer.pt": 200,
    "g.safetensors": 100,
    "bundle/loraflow-g-x.zip": 400,
    "run/runner.pid": 3,
    "run/train.exit": 1,
    "run/follow.json": 30,
    "run/train.log": 50,
    "run/runner.log": 50,
}
NO_BUNDLE = {k: v for k, v in PATHS.items() if not k.startswith("bundle/")}
CACHES = ["cache", "dataset/_latent_cache", "dataset/a_1024x1024_flux.npz", "dataset/a_flux_te.npz"]
STEPS_TO = {
    "completed": ["preparing", "provisioning", "training", "finishing", "completed"],
    "awaiting_approval": ["preparing", "provisioning", "training", "finishing", "awaiting_approval"],
    "stopped": ["preparing", "stopped"],
    "failed": ["preparing", "failed"],
    "cancelled": ["cancelled"],
    "training": ["preparing", "provisioning", "training"],
    "pending": [],
}


def set_age(path: Path, days: float) -> None:
    t = time.time() - days * DAY
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (t, t), follow_symlinks=False)


def job(store: Store, state: str, days: float, files: dict[str, int] | None = None, **artifacts) -> Path:
    spec = parse_spec({"name": "g", "dataset": {"path": "/tmp/x"}, "base_model": "tiny-flux"})
    j = store.create_job(spec)
    store.update(j.id, stages_done=["prepare", "render"])
    for s in STEPS_TO[state]:
        store.transition(j.id, s)
    if artifacts:
        store.update_outputs(j.id, **artifacts)
    folder = paths.job_dir(j.id)
    for rel, size in (PATHS if files is None else files).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x" * size)
    set_age(folder, days)
    return folder


def present(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def size(folder: Path, rel: str) -> int:
    p = folder / rel
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


def gc_events(store: Store, folder: Path) -> list[dict]:
    return [e.data for e in store.events(folder.name, types=["gc.removed"])]


@pytest.fixture
def store() -> Store:
    return Store()


def test_completed_job_gives_back_caches_checkpoints_and_run_state(store: Store) -> None:
    published = [{"repo": "me/g", "checkpoint_step": 30}]
    folder = job(store, "completed", 20, approved_checkpoint=20, published=published)
    policy = GcPolicy(older_than_days=14)
    expected = {
        *CACHES,
        "checkpoints/step-000010",
        "aitk/g/g_000000010.safetensors",
        "aitk/g/optimizer.pt",
        "run/runner.pid",
        "run/train.exit",
        "run/follow.json",
    }
    freed = sum(size(folder, rel) for rel in expected)
    before = present(folder)

    [plan] = collect(store, policy, dry_run=True)
    assert plan.job_id == folder.name and plan.bytes == freed
    assert set(plan.to_dict(folder)["paths"]) == expected
    assert present(folder) == before and gc_events(store, folder) == []  # a dry run removes and records nothing

    [done] = collect(store, policy)
    assert done.bytes == freed
    left = present(folder)
    assert {"g.safetensors", "bundle/loraflow-g-x.zip", "spec.yaml", "dataset/manifest.json", "dataset/a.png"} <= left
    assert {"checkpoints/step-000020/lora.safetensors", "checkpoints/step-000030/lora.safetensors"} <= left
    assert {"run/train.log", "run/runner.log"} <= left  # the logs stay
    assert not any(rel == e or rel.startswith(e + "/") for rel in left for e in expected)
    [event] = gc_events(store, folder)
    assert event["bytes"] == freed and set(event["paths"]) == expected
    assert set(event["kinds"]) == {"cache", "checkpoint", "run_state"}
    assert collect(store, policy) == []  # nothing left to give back


def test_young_files_stay_until_their_days(store: Store, cli) -> None:
    folder = job(store, "completed", 3)
    assert collect(store, GcPolicy(older_than_days=14)) == []
    out = cli("gc", "--older-than-days", "2", "--json")
    assert out.code == 0
    report = json.loads(out.out)
    assert report["dry_run"] is False and report["bytes"] > 0 and report["jobs"][0]["job_id"] == folder.name
    assert not (folder / "cache").exists() and (folder / "g.safetensors").exists()


def test_failed_and_cancelled_folders_after_their_own_days(store: Store) -> None:
    old_failed = job(store, "failed", 40, NO_BUNDLE)
    recent_failed = job(store, "failed", 20)  # past older_than_days, not yet failed_days
    cancelled_with_bundle = job(store, "cancelled", 40)  # a cancelled approval keeps its bundle
    cancelled_plain = job(store, "cancelled", 40, files={"spec.yaml": 10, "dataset/a.png": 30})
    plans = {p.job_id: p for p in collect(store, GcPolicy(older_than_days=14, failed_days=30))}
    assert set(plans) == {old_failed.name, cancelled_with_bundle.name, cancelled_plain.name}
    assert not old_failed.exists() and not cancelled_plain.exists()
    assert store.get(old_failed.name).stages_done == []  # a resume prepares again instead of missing files
    assert plans[cancelled_plain.name].bytes == 40
    assert present(recent_failed) == set(PATHS)
    assert present(cancelled_with_bundle) == {"bundle/loraflow-g-x.zip"}
    collect(store, GcPolicy(failed_days=30, include_bundles=True))
    assert not cancelled_with_bundle.exists()


def test_active_and_awaiting_approval_are_never_touched(store: Store) -> None:
    folders = [job(store, s, 400) for s in ("pending", "training", "awaiting_approval")]
    policy = GcPolicy(older_than_days=0, failed_days=0, include_bundles=True)
    assert collect(store, policy) == []
    for folder in folders:
        assert present(folder) == set(PATHS)


def test_include_bundles_takes_the_outputs_too(store: Store) -> None:
    folder = job(store, "completed", 20, approved_checkpoint=20)
    collect(store, GcPolicy(older_than_days=14))
    assert (folder / "bundle").exists() and (folder / "checkpoints/step-000020").exists()
    collect(store, GcPolicy(older_than_days=14, include_bundles=True))
    left = present(folder)
    assert not any(p.startswith(("bundle/", "checkpoints/")) or p.endswith(".safetensors") for p in left), left
    assert [sorted(e["kinds"]) for e in gc_events(store, folder)][-1] == ["bundle", "checkpoint", "lora"]


def test_stopped_job_keeps_what_it_resumes_from(store: Store) -> None:
    folder = job(store, "stopped", 20)
    [plan] = collect(store, GcPolicy(older_than_days=14))
    assert {r.kind for r in plan.removals} == {"cache"}
    assert present(folder) == set(PATHS) - {p for p in PATHS if any(p == c or p.startswith(c + "/") for c in CACHES)}


def test_uploads_no_job_uses(store: Store) -> None:
    root = paths.home() / "uploads"
    used, abandoned, fresh = root / "web-alice-used", root / "web-alice-gone", root / "web-bob-new"
    for up in (used, abandoned, fresh):
        (up / "dataset").mkdir(parents=True)
        (up / "dataset" / "a.png").write_bytes(b"x" * 64)
    spec = parse_spec({"name": "u", "dataset": {"path": str(used / "dataset")}, "base_model": "tiny-flux"})
    store.create_job(spec)
    set_age(used, 30)
    set_age(abandoned, 30)
    [plan] = collect(store, GcPolicy(uploads_days=7))
    assert plan.job_id is None and plan.bytes == 64 and [r.path for r in plan.removals] == [abandoned]
    assert used.exists() and fresh.exists() and not abandoned.exists()


def test_cli_dry_run_and_bad_input(store: Store, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = job(store, "failed", 40, NO_BUNDLE)
    out = cli("gc", "--dry-run")
    assert out.code == 0 and "would free" in out.out and folder.name in out.out
    assert folder.exists()
    bad = cli("gc", "--failed-days", "-1")
    assert bad.code == 2 and "--failed-days" in bad.err and "Traceback" not in bad.err
    monkeypatch.setenv("LORAFLOW_GC_OLDER_THAN_DAYS", "two weeks")
    env = cli("gc")
    monkeypatch.delenv("LORAFLOW_GC_OLDER_THAN_DAYS")
    assert env.code == 2 and "LORAFLOW_GC_OLDER_THAN_DAYS" in env.err and folder.exists()
    done = cli("gc")
    assert done.code == 0 and "freed" in done.out and not folder.exists()


def test_the_sweep_collects_once_per_period(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from loraflow.platform.config import PlatformConfig
    from loraflow.running.duties import sweep

    monkeypatch.setenv("LORAFLOW_GC_EVERY_S", "3600")
    folder = job(store, "failed", 40, NO_BUNDLE)
    first = sweep(store, PlatformConfig())
    assert first["gc"] == {"jobs": [folder.name], "bytes": sum(NO_BUNDLE.values())} and not folder.exists()
    again = job(store, "failed", 40, NO_BUNDLE)
    assert "gc" not in sweep(store, PlatformConfig())  # not due for another hour
    assert again.exists()
    monkeypatch.setenv("LORAFLOW_GC_EVERY_S", "0")  # off
    os.utime(paths.home() / "gc.last", (0, 0))
    assert "gc" not in sweep(store, PlatformConfig()) and again.exists()


def test_admin_api_dry_run_then_collect(store: Store) -> None:
    from fastapi.testclient import TestClient

    from loraflow.server.app import create_app
    from loraflow.server.tokens import create_token

    folder = job(store, "failed", 40, NO_BUNDLE)
    admin, user = create_token(store, "root", admin=True), create_token(store, "alice")
    with TestClient(create_app(store, sweep_every_s=None)) as client:
        def post(token: str, **params: object):
            return client.post("/api/admin/gc", params=params, headers={"Authorization": f"Bearer {token}"})

        assert post(user).status_code == 403
        dry = post(admin).json()
        assert dry["dry_run"] is True and dry["bytes"] == sum(NO_BUNDLE.values()) and folder.exists()
        assert [p["job_id"] for p in dry["plans"]] == [folder.name]
        done = post(admin, dry_run=False).json()
        assert done["dry_run"] is False and done["bytes"] == dry["bytes"] and not folder.exists()
        assert [e.type for e in store.events(folder.name)][-1] == "gc.removed"
