"""Which captioners this machine offers, and the progress a long captioning run reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow.caption.available import captioner_status, why_not
from loraflow.caption.run import caption_folder
from loraflow.spec import CaptionPolicy
from loraflow.testing.tiny_wd14 import build_tiny_wd14


def test_a_model_captioner_is_offered_only_with_its_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached; the fixture keeps the hub offline
    assert why_not("template") is None
    assert "not downloaded and HF_HUB_OFFLINE is set" in (why_not("florence2") or "")
    assert "not a captioner" in (why_not("nonsense") or "")
    monkeypatch.setenv("LORAFLOW_CAPTIONER_MODELS", f"wd14={tmp_path / 'missing'}")
    assert "which is not a folder" in (why_not("wd14") or "")
    monkeypatch.setenv("LORAFLOW_CAPTIONER_MODELS", f"wd14={build_tiny_wd14(tmp_path / 'wd14')}")
    status = captioner_status()
    assert status["wd14"] is None and status["template"] is None and status["florence2"] is not None


def test_captioning_reports_progress_as_it_goes(photos: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    policy = CaptionPolicy(backend="wd14", model=str(build_tiny_wd14(tmp_path / "wd14")))
    counts = caption_folder(photos, policy, on_progress=lambda done, total: seen.append((done, total)))
    assert counts == {"images": 8, "captioned": 2, "kept": 6}
    assert seen and seen[-1] == (2, 2)
