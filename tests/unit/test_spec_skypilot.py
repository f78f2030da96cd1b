"""`compute.provider: skypilot` and `compute.infra` in the spec: accepted as SkyPilot writes them, refused
with the field's name when they are not SkyPilot's (the value reaches SkyPilot as data, never an option)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_cli_guidance import write


@pytest.mark.parametrize(
    ("provider", "infra"),
    [("skypilot", "aws"), ("skypilot", "gcp/us-central1"), ("skypilot", "lambda"), ("skypilot", "azure/eastus"),
     ("vastai", "aws")],  # another provider's spec: where SkyPilot is priced beside it in `loraflow estimate`
)
def test_skypilot_and_its_infra_are_accepted(tmp_path: Path, cli, provider: str, infra: str) -> None:
    spec = write(tmp_path, base_model="tiny-flux", compute={"provider": provider, "infra": infra})
    result = cli("spec", "validate", spec)
    assert result.code == 0, result.out + result.err


@pytest.mark.parametrize(
    ("compute", "says"),
    [
        ({"provider": "skypilot", "infra": "-oProxyCommand=x"}, "give SkyPilot's infra"),
        ({"provider": "skypilot", "infra": "aws; rm -rf ~"}, "give SkyPilot's infra"),
        ({"provider": "skypilot", "infra": "/etc/passwd"}, "give SkyPilot's infra"),
    ],
)
def test_an_infra_that_is_not_skypilots_is_refused_by_name(tmp_path: Path, cli, compute: dict, says: str) -> None:
    result = cli("spec", "validate", write(tmp_path, base_model="tiny-flux", compute=compute))
    assert result.code == 2
    assert says in " ".join((result.out + result.err).split())
