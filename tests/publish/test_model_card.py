"""The bundle's README.md: front matter the Hugging Face Hub reads back as it was meant, and a card a person can use."""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCard

from loraflow.publish.model_card import render_card
from loraflow.spec import TrainSpec
from tests.conftest import EXAMPLES

SAMPLES = [{"prompt": "a photo of lfx, café", "file": "step_000020_0.png"}]


def spec(base_model: str = "flux-dev", **dataset: Any) -> TrainSpec:
    return TrainSpec.model_validate(
        {
            "name": "mascot",
            "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx", **dataset},
            "base_model": base_model,
            "engine": {"name": "ai-toolkit"},
            "sampling": {"prompts": ["a photo of [trigger] in a garden"]},
        }
    )


def card(train: TrainSpec, samples: list[dict[str, Any]] = SAMPLES) -> str:
    return render_card(
        train,
        lora_file="mascot.safetensors",
        steps=20,
        final_loss=0.1234,
        samples=samples,
        grid="samples/grid.png",
        job_id="abc123",
        dataset_hash="f" * 64,
    )


def test_the_hub_reads_the_front_matter_back() -> None:
    text = card(spec(nsfw=True))
    data = ModelCard(text).data.to_dict()
    assert data["base_model"] == "black-forest-labs/FLUX.1-dev"
    assert data["license"] == "other"
    assert data["license_name"] == "flux-1-dev-non-commercial-license"
    assert data["license_link"].startswith("https://huggingface.co/black-forest-labs/FLUX.1-dev/")
    assert data["instance_prompt"] == "lfx"
    assert data["widget"] == [{"text": "a photo of lfx, café", "output": {"url": "samples/step_000020_0.png"}}]
    assert {"lora", "text-to-image", "diffusers", "template:sd-lora", "not-for-all-audiences"} <= set(data["tags"])
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "text-to-image"
    assert str(ModelCard(text)) == text  # a round trip through the Hub's parser changes nothing


def test_an_open_licence_is_named_by_its_hub_id_and_no_trigger_means_no_instance_prompt() -> None:
    data = ModelCard(card(spec("flux-schnell", trigger_word=None), samples=[])).data.to_dict()
    assert data["license"] == "apache-2.0"
    assert "license_name" not in data and "license_link" not in data and "instance_prompt" not in data
    assert "not-for-all-audiences" not in data["tags"]


def test_the_card_says_how_to_use_the_lora() -> None:
    text = card(spec())
    body = ModelCard(text).text
    assert body.lstrip().startswith("# mascot")
    assert "Trigger word: `lfx`" in body and "![samples](samples/grid.png)" in body
    assert "LoraLoaderModelOnly" in body and 'weight_name="mascot.safetensors"' in body
    assert 'pipe("a photo of lfx in a garden"' in body
    assert "| final loss | 0.1234 |" in body and "| job | abc123 |" in body
    assert f"| dataset hash | {'f' * 16} |" in body
