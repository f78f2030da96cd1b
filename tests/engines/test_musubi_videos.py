"""A musubi spec's video clips are read from their container headers (no decoder) and checked before
anything is rented: too few frames for target_frames, too small, too long, unreadable. The clips in
fixtures/videos were encoded with FFmpeg's libraries (mpeg4 in MP4/MOV/Matroska, VP8 in WebM) at the frame
counts their names give."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loraflow.dataset.pipeline import DatasetRun
from loraflow.engines.musubi import video_needs
from loraflow.errors import SpecError
from loraflow.media.video import VideoError, VideoNeeds, probe
from loraflow.running.submit import check_dataset
from loraflow.spec import DatasetChecks, parse_spec

CLIPS = Path(__file__).parent / "fixtures" / "videos"


@pytest.mark.parametrize(
    ("name", "size", "frames", "fps"),
    [
        ("walk_37f_16fps.mp4", (320, 256), 37, 16.0),
        ("jump_45f_30fps.mov", (320, 256), 45, 30.0),
        ("spin_49f_24fps.mkv", (320, 256), 49, 24.0),
        ("wave_81f_16fps.webm", (320, 256), 81, 16.0),  # no DefaultDuration: frames counted from the blocks
        ("tiny_37f_16fps.mp4", (128, 96), 37, 16.0),
    ],
)
def test_headers_give_size_frames_and_rate(name: str, size: tuple[int, int], frames: int, fps: float) -> None:
    with (CLIPS / name).open("rb") as f:
        info = probe(f, name)
    assert ((info.width, info.height), info.frames, info.fps) == (size, frames, fps)


def test_a_cut_short_or_foreign_file_is_unreadable_not_guessed(tmp_path: Path) -> None:
    data = (CLIPS / "walk_37f_16fps.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:200])
    with pytest.raises(VideoError), cut.open("rb") as f:
        probe(f, "cut.mp4")


def clips(tmp_path: Path, names: list[str], caption: bool = True) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in names:
        shutil.copyfile(CLIPS / name, folder / name)
        if caption:
            (folder / name).with_suffix(".txt").write_text("a person moving")
    return folder


def findings(report) -> dict[str, tuple[str, str]]:
    return {f"{f.code}:{f.file}": (f.severity.value, f.fix) for f in report.findings}


def test_clips_are_judged_against_target_frames_size_and_length(tmp_path: Path) -> None:
    folder = clips(tmp_path, ["walk_37f_16fps.mp4", "blink_9f_16fps.mp4", "tiny_37f_16fps.mp4",
                              "wave_81f_16fps.webm", "jump_45f_30fps.mov"])
    needs = VideoNeeds(min_frames=17, max_frames=45, targets=(17, 45))
    checks = DatasetChecks(min_images=1, max_video_seconds=2.5)
    report = DatasetRun(folder, checks, video=needs).check()
    found = findings(report)
    assert found["video_too_short:blink_9f_16fps.mp4"][0] == "error"
    assert "engine.options.target_frames" in found["video_too_short:blink_9f_16fps.mp4"][1]
    assert found["too_small:tiny_37f_16fps.mp4"][0] == "error"
    assert found["video_too_long:wave_81f_16fps.webm"][0] == "error"  # 5.1 s
    assert "max_video_seconds" in found["video_too_long:wave_81f_16fps.webm"][1]
    assert found["video_short:walk_37f_16fps.mp4"][0] == "warning"  # 37 < 45: trains the 17-frame length only
    short = next(f for f in report.findings if f.code == "video_short")
    assert short.message == "has 37 frames: only target_frames 17 fit, not 45"
    assert not any(k.endswith("jump_45f_30fps.mov") for k in found)
    assert (report.videos, report.usable_videos) == (5, 2)
    # at 30 fps resampled to Wan's 16, the 45-frame clip has 24 frames: too few for 45, enough for 17
    resampled = DatasetRun(folder, checks, video=VideoNeeds(17, 45, source_fps=30.0)).check()
    assert "video_short:jump_45f_30fps.mov" in findings(resampled)


def test_engines_that_train_on_images_ignore_clips(tmp_path: Path) -> None:
    report = DatasetRun(clips(tmp_path, ["walk_37f_16fps.mp4"], caption=False), DatasetChecks(min_images=1)).check()
    assert [(f.code, f.severity.value) for f in report.findings if f.file] == [("not_an_image", "info")]
    assert report.videos == 0


def test_prepared_dataset_carries_clips_and_captions_into_musubis_video_dataset(tmp_path: Path) -> None:
    folder = clips(tmp_path, ["walk_37f_16fps.mp4", "jump_45f_30fps.mov"])
    shutil.copyfile(Path(__file__).parents[2] / "examples" / "sample_dataset" / "mascot_00.jpg", folder / "m.jpg")
    out = tmp_path / "prepared"
    report = DatasetRun(folder, DatasetChecks(min_images=2), trigger="dnc", video=VideoNeeds(1, 33)).prepare(out)
    assert report.output, [f.line() for f in report.errors]
    manifest = json.loads((out / "manifest.json").read_text())
    names = sorted(f["name"] for f in manifest["files"])
    assert names == ["jump_45f_30fps.mov", "m.jpg", "walk_37f_16fps.mp4"]
    assert (out / "walk_37f_16fps.mp4").read_bytes() == (CLIPS / "walk_37f_16fps.mp4").read_bytes()
    assert (out / "walk_37f_16fps.txt").read_text() == "dnc, a person moving\n"  # trigger placed as for images
    clip = next(f for f in manifest["files"] if f["name"] == "walk_37f_16fps.mp4")
    assert (clip["width"], clip["height"], clip["reencoded"]) == (320, 256, False)


def wan_spec(folder: Path, **options: object) -> object:
    return parse_spec({
        "name": "dancer",
        "dataset": {"path": str(folder), "trigger_word": "dnc", "checks": {"min_images": 2}},
        "base_model": "wan2.1-t2v-1.3b",
        "engine": {"name": "musubi", "options": options},
    })


def test_a_musubi_spec_is_checked_at_the_submit_door_before_renting(tmp_path: Path) -> None:
    folder = clips(tmp_path, ["walk_37f_16fps.mp4", "blink_9f_16fps.mp4"])
    spec = wan_spec(folder, target_frames=[17, 33])
    assert video_needs(spec) == VideoNeeds(17, 33, None, (17, 33))
    with pytest.raises(Exception) as err:  # DatasetUnfit: the service answers 422, the CLI exits 2
        check_dataset(spec, None)
    report = err.value.report
    assert [f.file for f in report.errors if f.code == "video_too_short"] == ["blink_9f_16fps.mp4"]
    assert video_needs(wan_spec(folder, frame_extraction="full")) == VideoNeeds(1, 1, None)
    with pytest.raises(SpecError):
        parse_spec({"name": "x", "dataset": {"path": "/d"}, "base_model": "flux-dev", "engine": "musubi"})


def test_clips_inside_a_zip_are_read_the_same(tmp_path: Path) -> None:
    import zipfile

    folder = clips(tmp_path, ["walk_37f_16fps.mp4", "blink_9f_16fps.mp4"])
    archive = tmp_path / "clips.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in folder.iterdir():
            zf.write(path, f"set/{path.name}")
    report = DatasetRun(archive, DatasetChecks(min_images=1), video=VideoNeeds(17, 33, None, (17, 33))).check()
    assert [(f.code, f.file) for f in report.errors] == [("video_too_short", "blink_9f_16fps.mp4")]
    assert report.usable_videos == 1


def test_hostile_headers_are_unreadable_findings_not_crashes(tmp_path: Path) -> None:
    import os
    import struct

    inner = b""
    for _ in range(5000):  # boxes nested far deeper than any real file
        inner = struct.pack(">I4s", 8 + len(inner), b"trak") + inner
    (tmp_path / "deep.mp4").write_bytes(struct.pack(">I4s", 8 + len(inner), b"moov") + inner)
    (tmp_path / "noise.webm").write_bytes(os.urandom(4096))
    (tmp_path / "zeros.mov").write_bytes(bytes(100))
    report = DatasetRun(tmp_path, DatasetChecks(min_images=1), video=VideoNeeds(1, 33, None, (1, 33))).check()
    assert sorted((f.code, f.file) for f in report.errors if f.file) == [
        ("video_unreadable", "deep.mp4"), ("video_unreadable", "noise.webm"), ("video_unreadable", "zeros.mov")
    ]
    assert all("re-encode it as MP4" in f.fix for f in report.errors if f.file)


def test_the_api_refuses_a_wan_job_whose_clip_is_too_short_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import zipfile

    import yaml
    from fastapi.testclient import TestClient

    from loraflow.jobs.store import Store
    from loraflow.running.trust import Grants
    from loraflow.server.app import ServiceConfig, create_app
    from loraflow.server.tokens import create_token

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in ("walk_37f_16fps.mp4", "blink_9f_16fps.mp4", "jump_45f_30fps.mov"):
            zf.write(CLIPS / name, f"clips/{name}")
            zf.writestr(f"clips/{Path(name).stem}.txt", "dnc walking")
    spec = {"name": "dancer", "dataset": {"trigger_word": "dnc", "checks": {"min_images": 2}},
            "base_model": "wan2.1-t2v-1.3b", "engine": {"name": "musubi", "options": {"target_frames": [17, 33]}}}
    musubi = tmp_path / "musubi"  # the operator installed musubi (the door checks that before the dataset)
    (musubi / "src" / "musubi_tuner").mkdir(parents=True)
    (musubi / "src" / "musubi_tuner" / "wan_train_network.py").write_text("")
    monkeypatch.setenv("LORAFLOW_MUSUBI_DIR", str(musubi))
    store = Store()
    token = create_token(store, "alice")
    grants = Grants(engine_options=frozenset({"target_frames"}))  # the operator's LORAFLOW_SERVICE_ENGINE_OPTIONS
    with TestClient(create_app(store, ServiceConfig(grants=grants))) as client:
        r = client.post("/api/jobs", headers={"Authorization": f"Bearer {token}"},
                        data={"spec": yaml.safe_dump(spec)}, files={"dataset": ("clips.zip", buf.getvalue())})
    assert r.status_code == 422 and r.json()["title"] == "dataset not fit to train", r.text
    errors = [f for f in r.json()["findings"] if f["severity"] == "error"]
    assert [(f["code"], f["file"]) for f in errors] == [("video_too_short", "blink_9f_16fps.mp4")]
    assert "engine.options.target_frames" in errors[0]["fix"]
    assert store.list_jobs() == []  # nothing started, nothing rented


@pytest.mark.parametrize("engine", ["musubi", "ai-toolkit"])
def test_image_to_video_clips_go_through_the_same_checks_and_need_one_usable_clip(tmp_path: Path, engine: str) -> None:
    """Wan I2V (first-frame control) on either engine: the t2v clip checks, and no usable clip is an error."""
    names = ["walk_37f_16fps.mp4", "blink_9f_16fps.mp4", "tiny_37f_16fps.mp4"]
    t2v = parse_spec({"name": "m", "base_model": "wan2.1-t2v-14b", "dataset": {"path": "/d"}})
    i2v = parse_spec({"name": "m", "base_model": "wan2.1-i2v-14b", "engine": engine, "dataset": {"path": "/d"}})
    assert video_needs(i2v).first_frame and not video_needs(t2v).first_frame
    checks = DatasetChecks(min_images=1)
    for sub in "abc":
        (tmp_path / sub).mkdir()
    folder = clips(tmp_path / "a", names)
    same = [sorted(findings(DatasetRun(folder, checks, video=video_needs(s)).check())) for s in (t2v, i2v)]
    assert same[0] == same[1] and {"video_short:blink_9f_16fps.mp4", "too_small:tiny_37f_16fps.mp4"} <= set(same[1])
    bad = DatasetRun(clips(tmp_path / "b", names[2:]), checks, video=video_needs(i2v)).check()
    assert "no_clips_for_i2v" in [f.code for f in bad.errors]
    assert "no_clips_for_i2v" not in [f.code for f in DatasetRun(clips(tmp_path / "c", names[2:]), checks,
                                                                   video=video_needs(t2v)).check().findings]
