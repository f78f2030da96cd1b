"""An edit model's pairs through `/api/uploads` (issue 30): control images as their own field or in an
archive's `control/` folder land in the upload's control folder, the report counts the pairs and names a
missing control, and a job made from the upload is checked as pairs."""

from __future__ import annotations

import io
import zipfile

from PIL import Image

from loraflow.server import uploads
from tests.server.test_trust_uploads import Api, api  # noqa: F401 - the fixture


def png(color: tuple[int, int, int], size: tuple[int, int] = (320, 320)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def targets() -> list[tuple[str, bytes]]:
    files = []
    for i, stem in enumerate("abcde"):
        files += [(f"{stem}.png", png((40 * i, 90, 200 - 30 * i))), (f"{stem}.txt", b"make the square red\n")]
    return files


def test_controls_field_and_archive_folder_become_the_uploads_pairs(api: Api) -> None:  # noqa: F811
    controls = [("controls", (f"{s}.png", png((10, 20 * i, 30)))) for i, s in enumerate("abcd")]  # e has none
    answer = api("POST", "/api/uploads", files=[("files", f) for f in targets()] + controls)
    assert answer.status_code == 201, answer.text
    report = answer.json()["report"]
    assert report["pairs"] == 4
    missing = [f for f in report["findings"] if f["code"] == "missing_control"]
    assert [f["file"] for f in missing] == ["e.png"]
    folder = uploads.folder("alice", answer.json()["upload_id"])
    assert sorted(p.name for p in (folder / "control").iterdir()) == ["a.png", "b.png", "c.png", "d.png"]
    assert uploads.controls(folder)["a.png"] == ["a.png"] and uploads.controls(folder)["e.png"] == []
    uploads.remove(folder, "a.png")  # the grid's Remove takes the pair out whole
    assert not (folder / "control" / "a.png").exists()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in targets():
            zf.writestr(name, data)
        for i, stem in enumerate("abcde"):
            zf.writestr(f"control/{stem}_0.png", png((5, 5, 40 * i)))
            zf.writestr(f"control/{stem}_1.png", png((5, 40 * i, 5)))
    answer = api("POST", "/api/uploads", files=[("files", ("pairs.zip", archive.getvalue()))])
    assert answer.status_code == 201, answer.text
    assert answer.json()["report"]["pairs"] == 5 and answer.json()["report"]["ok"]
    folder = uploads.folder("alice", answer.json()["upload_id"])
    assert uploads.controls(folder)["c.png"] == ["c_0.png", "c_1.png"]  # several, in musubi's order
