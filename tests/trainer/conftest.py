"""Fixtures for trainer tests: one tiny Flux model per session, a prepared sample dataset, a config."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow.dataset import DatasetRun
from loraflow.spec import DatasetChecks
from loraflow.trainer.config import TrainerConfig
from tests.conftest import EXAMPLES


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from loraflow.trainer.tiny import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("models") / "tiny-flux")


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "prepared"
    report = DatasetRun(EXAMPLES / "sample_dataset", DatasetChecks(min_resolution=64), trigger="lfx").prepare(out)
    assert report.ok
    return out


@pytest.fixture
def make_config(tiny_model: Path, sample_data: Path, tmp_path: Path):
    def make(out: str = "run", **overrides: object) -> TrainerConfig:
        base = dict(
            name="t",
            job_id="j",
            model_path=str(tiny_model),
            dataset_dir=str(sample_data),
            output_dir=str(tmp_path / out),
            trigger_word="lfx",
            rank=4,
            alpha=8,
            targets="default",
            steps=20,
            batch_size=2,
            learning_rate=1e-3,
            resolutions=[64],
            precision="fp32",
            gradient_checkpointing=False,
            sample_prompts=[],
            sample_width=64,
            sample_height=64,
            sample_steps=2,
            checkpoint_every=5,
            keep_last=10,
            max_sequence_length=32,
            caption_dropout=0.2,
        )
        base.update(overrides)
        return TrainerConfig(**base)

    return make
