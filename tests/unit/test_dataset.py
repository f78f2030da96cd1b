"""The dataset pipeline on broken datasets built on the fly: exact findings, exit codes, no stray writes."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loraflow.dataset import DatasetRun
from loraflow.dataset.captions import decode_caption, finish_caption
from loraflow.dataset.manifest import pack, read_manifest
from loraflow.spec import CaptionPolicy, DatasetChecks
from tests.conftest import EXAMPLES
from tests.unit.imagekit import bomb_png, jpeg_bytes, noise_image, png_bytes, snapshot, write_dataset

CHECKS = DatasetChecks(min_images=2, min_resolution=64)


def codes(report, severity: str | None = None) -> list[str]:
    return [f.code for f in report.findings if severity is None or f.severity.value == severity]


def finding(report, code: str):
    return next(f for f in report.findings if f.code == code)


def test_sample_dataset_passes(cli) -> None:
    result = cli("dataset", "check", EXAMPLES / "sample_dataset", "--trigger", "lfx")
    assert result.code == 0, result.out + result.err
    assert "fit to train" in result.out


def test_traversal_zip_refused_and_nothing_written(tmp_path: Path, cli) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"ok{i}.png", png_bytes(noise_image(i)))
        zf.writestr("../../escape.txt", "pwned")
        zf.writestr("/abs/path.png", png_bytes(noise_image(9)))
    before = snapshot(tmp_path)
    result = cli("dataset", "check", archive, "--min-images", "2", "--json")
    assert result.code == 2
    report = json.loads(result.out)
    bad = {f["file"]: f for f in report["findings"] if f["code"] == "unsafe_archive_member"}
    assert set(bad) == {"../../escape.txt", "/abs/path.png"}
    assert "climbs out" in bad["../../escape.txt"]["message"]
    assert "absolute" in bad["/abs/path.png"]["message"]
    assert snapshot(tmp_path) == before
    assert not (tmp_path.parent / "escape.txt").exists()


def test_tar_links_and_devices_refused(tmp_path: Path) -> None:
    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as tar:
        for i in range(2):
            data = png_bytes(noise_image(i))
            info = tarfile.TarInfo(f"img{i}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("passwd.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        dev = tarfile.TarInfo("dev.png")
        dev.type = tarfile.CHRTYPE
        tar.addfile(dev)
    report = DatasetRun(archive, CHECKS).check()
    unsafe = {f.file: f.message for f in report.findings if f.code == "unsafe_archive_member"}
    assert "link" in unsafe["passwd.png"]
    assert "device" in unsafe["dev.png"]
    assert report.usable_images == 2
    assert not report.ok


def test_zip_junk_skipped_and_wrapper_folder_descended(tmp_path: Path) -> None:
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"photos/a{i}.jpg", jpeg_bytes(noise_image(i)))
            zf.writestr(f"photos/a{i}.txt", f"caption {i}")
        zf.writestr("__MACOSX/photos/._a0.jpg", b"junk")
        zf.writestr("photos/.DS_Store", b"junk")
        zf.writestr("photos/Thumbs.db", b"junk")
    out = tmp_path / "out"
    report = DatasetRun(archive, CHECKS, trigger="zx").prepare(out)
    assert report.ok, [f.line() for f in report.findings]
    assert sorted(p.name for p in out.iterdir()) == [
        "a0.jpg",
        "a0.txt",
        "a1.jpg",
        "a1.txt",
        "a2.jpg",
        "a2.txt",
        "manifest.json",
    ]
    assert (out / "a1.txt").read_text() == "zx, caption 1\n"


def test_archive_caps(tmp_path: Path) -> None:
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.png", b"\x00" * 2_000_000)
    checks = DatasetChecks(max_archive_bytes=1_000_000)
    report = DatasetRun(archive, checks).check()
    assert "archive_too_large" in codes(report, "error")
    checks = DatasetChecks(max_archive_files=0 + 1)
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("second.png", b"x")
    assert "archive_too_many_files" in codes(DatasetRun(archive, checks).check(), "error")


def test_decompression_bomb(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", 2)
    (folder / "bomb.png").write_bytes(bomb_png())
    report = DatasetRun(folder, CHECKS).check()
    f = finding(report, "decompression_bomb")
    assert f.file == "bomb.png" and f.severity.value == "error"
    assert "10000000000 pixels" in f.message


def test_truncated_jpeg(tmp_path: Path, cli) -> None:
    folder = write_dataset(tmp_path / "d", 3)
    data = jpeg_bytes(noise_image(42, (400, 400)))
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    result = cli("dataset", "check", folder, "--min-images", "2")
    assert result.code == 2
    line = next(line for line in result.out.splitlines() if "cut.jpg" in line)
    assert "truncated" in line and "Fix:" in line


def test_not_an_image_with_image_extension(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", 2)
    (folder / "fake.png").write_text("hello, not a png")
    (folder / "notes.md").write_text("readme")
    report = DatasetRun(folder, CHECKS).check()
    assert finding(report, "unreadable_image").file == "fake.png"
    assert finding(report, "not_an_image").file == "notes.md"


def test_image_found_by_content_not_extension(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", 2)
    (folder / "mislabelled.txt.bin").write_bytes(png_bytes(noise_image(77)))
    report = DatasetRun(folder, CHECKS).check()
    assert report.usable_images == 3


def test_heic_without_decoder_is_clear(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", 2)
    (folder / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    report = DatasetRun(folder, CHECKS).check()
    f = finding(report, "unsupported_format")
    assert f.file == "phone.heic" and "pillow-heif" in f.fix


def test_cmyk_16bit_palette_alpha_become_rgb(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "cmyk.jpg").write_bytes(jpeg_bytes(noise_image(1).convert("CMYK")))
    grey16 = np.full((300, 300), 65535 // 2, dtype=np.uint16)
    Image.fromarray(grey16).save(folder / "deep.png")
    assert Image.open(folder / "deep.png").mode.startswith("I")
    noise_image(3).convert("P", palette=Image.ADAPTIVE).save(folder / "pal.png")
    rgba = noise_image(4).convert("RGBA")
    rgba.putalpha(0)
    rgba.save(folder / "clear.png")
    out = tmp_path / "out"
    report = DatasetRun(folder, CHECKS).prepare(out)
    assert report.ok, [f.line() for f in report.findings]
    files = {f["source"]: f for f in read_manifest(out)["files"]}
    for src in ("cmyk.jpg", "deep.png", "pal.png", "clear.png"):
        img = Image.open(out / files[src]["name"])
        assert img.mode == "RGB", src
        assert files[src]["reencoded"]
    deep = np.asarray(Image.open(out / files["deep.png"]["name"]))
    assert abs(int(deep.mean()) - 127) <= 1  # scaled from 16 bits, not clipped to white
    clear = np.asarray(Image.open(out / files["clear.png"]["name"]))
    assert clear.min() == 255  # fully transparent pixels land on white
    assert "converted from CMYK to RGB" in [f.message for f in report.findings if f.file == "cmyk.jpg"]


def test_exif_rotation_applied(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", 2)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    (folder / "phone.jpg").write_bytes(jpeg_bytes(noise_image(5, (400, 200)), exif=exif))
    out = tmp_path / "out"
    DatasetRun(folder, CHECKS).prepare(out)
    entry = next(f for f in read_manifest(out)["files"] if f["source"] == "phone.jpg")
    assert (entry["width"], entry["height"]) == (200, 400)
    assert Image.open(out / entry["name"]).size == (200, 400)
    assert entry["reencoded"]
    plain = next(f for f in read_manifest(out)["files"] if f["source"] == "img00.jpg")
    assert not plain["reencoded"]  # already fine: shipped byte for byte
    assert (out / plain["name"]).read_bytes() == (folder / "img00.jpg").read_bytes()


@pytest.mark.parametrize(
    ("raw", "expected", "note"),
    [
        ("a dog on grass".encode("utf-16"), "a dog on grass", None),
        (b"\xef\xbb\xbfcaf\xc3\xa9 au lait", "café au lait", None),
        (b"line one\r\nline two\r\n", "line one line two", None),
        ("caf\xe9".encode("cp1252"), "café", "not UTF-8; read as Windows-1252"),
        ("héllo".encode("utf-16-le"), "héllo", "read as UTF-16 without a byte-order mark"),
    ],
)
def test_caption_encodings(raw: bytes, expected: str, note: str | None) -> None:
    assert decode_caption(raw) == (expected, note)


def test_utf16_caption_in_dataset(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", 2, captions=False)
    (folder / "img00.txt").write_bytes("ein Hund, größer".encode("utf-16"))
    out = tmp_path / "out"
    DatasetRun(folder, CHECKS, trigger="tok").prepare(out)
    assert (out / "img00.txt").read_text(encoding="utf-8") == "tok, ein Hund, größer\n"
    assert (out / "img01.txt").read_text() == "tok\n"  # no caption: trigger only
    manifest = read_manifest(out)
    assert {f["source"]: f["caption_source"] for f in manifest["files"]} == {
        "img00.jpg": "file",
        "img01.jpg": "trigger",
    }


def test_orphan_missing_and_empty_captions(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", 3)
    (folder / "img01.txt").unlink()
    (folder / "img02.txt").write_text("   \n")
    (folder / "ghost.txt").write_text("no image")
    report = DatasetRun(folder, CHECKS).check()
    assert finding(report, "orphan_caption").file == "ghost.txt"
    assert finding(report, "missing_caption").file == "img01.jpg"
    assert finding(report, "empty_caption").file == "img02.txt"
    assert report.ok  # warnings only
    strict = DatasetRun(folder, CHECKS.model_copy(update={"require_captions": True})).check()
    assert "missing_caption" in codes(strict, "error")


def test_exact_and_near_duplicates(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", 3)
    (folder / "copy.jpg").write_bytes((folder / "img00.jpg").read_bytes())
    noise_image(1).resize((280, 280)).save(folder / "resized.png")
    report = DatasetRun(folder, CHECKS).check()
    dup = finding(report, "duplicate")
    assert dup.file == "img00.jpg" and "copy.jpg" in dup.message  # sorted order: copy.jpg seen first
    near = finding(report, "near_duplicate")
    assert {near.file, near.message.split()[5]} == {"resized.png", "img01.jpg"}
    assert report.usable_images == 5


def test_too_few_and_too_small(tmp_path: Path, cli) -> None:
    folder = write_dataset(tmp_path / "d", 2, size=(40, 300))
    result = cli("dataset", "check", folder, "--json")
    assert result.code == 2
    report = json.loads(result.out)
    found = {(f["code"], f["file"]) for f in report["findings"] if f["severity"] == "error"}
    assert found == {("too_small", "img00.jpg"), ("too_small", "img01.jpg"), ("too_few_images", None)}
    lines = [f for f in report["findings"] if f["code"] == "too_few_images"]
    assert "0 usable" in lines[0]["message"] and lines[0]["fix"]


def test_extreme_aspect_is_warning(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", 2)
    noise_image(8, (1500, 300)).save(folder / "banner.png")
    report = DatasetRun(folder, CHECKS).check()
    assert finding(report, "extreme_aspect_ratio").file == "banner.png"
    assert report.ok


def test_prepare_never_touches_source_and_never_overwrites(tmp_path: Path, cli) -> None:
    folder = write_dataset(tmp_path / "d", 4)
    before = snapshot(folder)
    out = tmp_path / "out"
    result = cli("dataset", "prepare", folder, "--out", out, "--trigger", "zz", "--pack", tmp_path / "ds.tar")
    assert result.code == 0, result.out + result.err
    assert snapshot(folder) == before
    manifest = read_manifest(out)
    assert manifest["count"] == 4 and len(manifest["dataset_hash"]) == 64
    for f in manifest["files"]:
        assert (out / f["name"]).stat().st_size == f["size"]
    with tarfile.open(tmp_path / "ds.tar") as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json" and len(names) == 9
    # a second prepare into the same folder is refused, the first output is kept
    again = cli("dataset", "prepare", folder, "--out", out)
    assert again.code == 2 and "not empty" in again.err
    assert read_manifest(out) == manifest
    inside = cli("dataset", "prepare", folder, "--out", folder / "norm")
    assert inside.code == 2 and "inside the source" in inside.err


def test_prepare_refuses_bad_dataset_unless_drop_bad(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", 3)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    report = DatasetRun(folder, CHECKS).prepare(out)
    assert report.output is None and not out.exists()
    report = DatasetRun(folder, CHECKS).prepare(out, drop_bad=True)
    assert report.output == str(out)
    assert read_manifest(out)["count"] == 3


def test_dataset_hash_and_pack_are_reproducible(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", 3)
    a, b = tmp_path / "a", tmp_path / "b"
    ra = DatasetRun(folder, CHECKS, trigger="t").prepare(a)
    rb = DatasetRun(folder, CHECKS, trigger="t").prepare(b)
    assert ra.dataset_hash == rb.dataset_hash
    assert pack(a, tmp_path / "a.tar") == pack(b, tmp_path / "b.tar")
    rc = DatasetRun(folder, CHECKS, trigger="other").prepare(tmp_path / "c")
    assert rc.dataset_hash != ra.dataset_hash  # captions are part of what is trained


def test_subfolders_flattened_without_collisions(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    write_dataset(folder / "set a", 2)
    write_dataset(folder / "set b", 2, seed=10)
    out = tmp_path / "out"
    DatasetRun(folder, CHECKS).prepare(out)
    names = sorted(f["name"] for f in read_manifest(out)["files"])
    assert names == ["set_a__img00.jpg", "set_a__img01.jpg", "set_b__img00.jpg", "set_b__img01.jpg"]


@pytest.mark.parametrize(
    ("caption", "placement", "expected"),
    [
        ("a man", "prepend", "ohwx, a man"),
        ("photo of ohwx man", "prepend", "photo of ohwx man"),
        ("photo of [trigger] man", "prepend", "photo of ohwx man"),
        ("photo of [trigger] man", "placeholder", "photo of ohwx man"),
        ("a man", "placeholder", "a man"),
        ("a man", "none", "a man"),
        ("", "prepend", "ohwx"),
    ],
)
def test_trigger_placement(caption: str, placement: str, expected: str) -> None:
    policy = CaptionPolicy(trigger_placement=placement)
    assert finish_caption(caption, "ohwx", policy) == expected


def test_prefix_suffix_and_length() -> None:
    policy = CaptionPolicy(prefix="style: ", suffix=", 4k", max_length=20)
    assert finish_caption("a very long caption indeed", "tk", policy) == "style: tk, a very lo"


def test_missing_source_is_clear(cli) -> None:
    result = cli("dataset", "check", "/nonexistent/photos")
    assert result.code == 2 and "no such file or folder" in result.err


def test_template_captions_fill_only_missing_unless_overwrite(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "d", 3)
    (folder / "img01.txt").unlink()
    policy = CaptionPolicy(backend="template", template="a photo of [trigger], studio light")
    DatasetRun(folder, CHECKS, policy, trigger="zk").prepare(tmp_path / "fill")
    files = {f["source"]: f for f in read_manifest(tmp_path / "fill")["files"]}
    assert files["img00.jpg"]["caption"] == "zk, picture number 0" and files["img00.jpg"]["caption_source"] == "file"
    assert files["img01.jpg"]["caption"] == "a photo of zk, studio light"
    assert files["img01.jpg"]["caption_source"] == "captioner:template"
    over = CaptionPolicy(backend="template", mode="overwrite", template="[trigger] style")
    DatasetRun(folder, CHECKS, over, trigger="zk").prepare(tmp_path / "over")
    assert {f["caption"] for f in read_manifest(tmp_path / "over")["files"]} == {"zk style"}
    assert (folder / "img00.txt").read_text() == "picture number 0"  # the user's files are never touched
