"""Where a spec's base model lives on disk: built (tiny), a local folder, or the Hugging Face cache."""

from __future__ import annotations

import os
from pathlib import Path

from loraflow import paths
from loraflow.errors import UserInputError
from loraflow.spec import TrainSpec


def resolve_model_path(spec: TrainSpec, models_root: Path | None = None) -> Path:
    entry_source = spec.catalog_entry.source if spec.base_model == spec.catalog_entry.id else None
    if entry_source is None:
        path = Path(spec.base_model)
        if not (path / "model_index.json").is_file():
            raise UserInputError(
                f"{path} is not a diffusers model folder (no model_index.json)",
                fix="point base_model at a folder saved with save_pretrained, or use a catalog id",
            )
        return path
    if entry_source.startswith("builtin:"):
        from loraflow.trainer.tiny import build_tiny_flux

        return build_tiny_flux((models_root or paths.models_root()) / entry_source.split(":", 1)[1])
    repo = entry_source.removeprefix("hf:")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    try:  # real FLUX.1 on a GPU host: from the local cache, downloading once with HF_TOKEN if needed
        return Path(
            snapshot_download(
                repo,
                token=os.environ.get("HF_TOKEN"),
                allow_patterns=[
                    "*.json",
                    "*.txt",
                    "*.model",
                    "*.safetensors",
                    "tokenizer*/*",
                    "*/*.json",
                    "*/*.safetensors",
                    "*/*.model",
                    "*/*.txt",
                ],
                ignore_patterns=["flux1-*.safetensors", "ae.safetensors"],
            )
        )
    except GatedRepoError as exc:
        raise UserInputError(f"{repo} is gated", fix="accept its license on huggingface.co, then set HF_TOKEN") from exc
    except (HfHubHTTPError, OSError) as exc:  # LocalEntryNotFoundError (offline) is an OSError
        raise UserInputError(
            f"could not fetch {repo}: {exc}",
            fix="check HF_TOKEN and the network, or point base_model at a local diffusers folder",
        ) from exc
