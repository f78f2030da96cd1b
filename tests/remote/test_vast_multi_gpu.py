"""compute.gpus on Vast.ai (issue 31): offers are whole machines with exactly N GPUs, and the estimate prices
the job on the machine's full price with the documented scaling efficiency. (Issue 28: N GPUs of a bigger
server count too; gpu_frac is the share of the machine, not a slice of a GPU.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from loraflow.engines import engine_needs
from loraflow.providers.estimate import estimate, scaling_efficiency
from loraflow.providers.vast_client import VastClient
from loraflow.providers.vastai import VastProvider, offer_query
from loraflow.spec import TrainSpec
from tests.conftest import EXAMPLES
from tests.remote.conftest import Vast


def spec(gpus: int) -> TrainSpec:
    return TrainSpec.model_validate(
        {
            "name": "x",
            "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"},
            "base_model": "flux-dev",
            "engine": {"name": "builtin"},
            "compute": {"provider": "vastai", "gpus": gpus},
        }
    )


def test_offers_have_exactly_the_gpus_asked_for(vast: Vast) -> None:
    two = VastClient().search_offers(offer_query(spec(2), engine_needs(spec(2))))
    assert two and all(r["num_gpus"] == 2 for r in two)
    # gpu_frac is the offer's share of its machine: two GPUs of an 8-GPU server are two GPUs in one machine
    assert any(float(r["gpu_frac"]) < 1.0 for r in two)
    one = VastClient().search_offers(offer_query(spec(1), engine_needs(spec(1))))
    assert one and all(r["num_gpus"] == 1 for r in one)
    ranked = VastProvider(needs=engine_needs).offers(spec(2))
    assert {r.offer["num_gpus"] for r in ranked} == {2}


def test_job_is_priced_on_the_whole_machine_with_the_scaling_efficiency() -> None:
    one = estimate(spec(1), "RTX 3090", 0.30, images=10)
    two = estimate(spec(2), "RTX 3090", 0.60, images=10)
    assert scaling_efficiency(1) == 1.0 and 0.85 <= scaling_efficiency(8) < scaling_efficiency(2) < 1.0
    assert scaling_efficiency(3) == pytest.approx((scaling_efficiency(2) + scaling_efficiency(4)) / 2)
    # each GPU trains batch_size a step: the same step count takes one GPU's time over the efficiency
    assert two.steps_s == pytest.approx(one.steps_s / scaling_efficiency(2))
    assert (two.caching_s, two.samples_s) == (one.caching_s, one.samples_s)  # rank 0 alone
    assert two.cost_usd == pytest.approx(0.60 * two.total_s / 3600, abs=1e-3)
    assert two.to_dict()["gpus"] == 2 and two.to_dict()["scaling_efficiency"] == scaling_efficiency(2)


def test_estimate_cli_names_the_gpu_count(tmp_path: Path, cli, vast: Vast) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(2).model_dump(mode="json", exclude_defaults=True)))
    out = cli("estimate", path, "--json")
    assert out.code == 0, out.err
    rows = json.loads(out.out)["estimates"]
    assert rows and all(r["gpus"] == 2 for r in rows)
    assert "2x RTX" in cli("estimate", path).out  # the GPU column may wrap the name
