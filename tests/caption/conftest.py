"""The sample dataset with two captions removed: what every captioner test starts from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    shutil.copytree(EXAMPLES / "sample_dataset", folder)
    for cap in ("mascot_01.txt", "mascot_02.txt"):
        (folder / cap).unlink()
    return folder
