"""Judge loraflow's rendered musubi-tuner files with musubi-tuner's own code (run with its checkout's `src` on
PYTHONPATH): each script's argparse parser (setup_parser_common + the family's setup_parser) parses the
training arguments, and its dataset-config code (ConfigSanitizer's voluptuous schema and BlueprintGenerator,
which builds the dataset parameter dataclasses) reads the dataset TOML.

    python -m loraflow.testing.musubi_check ARGS_JSON DATASET_TOML ARCHITECTURE

Prints one JSON line with what musubi understood; exits 2 with musubi's own message when it refuses.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
from pathlib import Path
from typing import Any

from loraflow.testing.engine_imports import install

# Packages musubi imports at module level that this machine lacks or that would start GPU work.
STUBBED = ["torchvision", "cv2", "einops", "av", "bitsandbytes", "prodigyopt", "schedulefree", "ftfy", "easydict",
           "lycoris", "matplotlib", "timm", "open_clip", "decord", "imageio", "tensorboard", "wandb", "xformers",
           "flash_attn", "sageattention", "triton", "pyarrow", "optimum", "torchao", "gguf", "transformers",
           "diffusers", "accelerate", "peft", "huggingface_hub"]
PARSERS = {  # script module -> its family's parser function
    "wan_train_network": "wan_setup_parser",
    "qwen_image_train_network": "qwen_image_setup_parser",
    "flux_2_train_network": "flux2_setup_parser",
    "flux_kontext_train_network": "flux_kontext_setup_parser",
}


def parse(script: str, args: list[str]) -> argparse.Namespace:
    import torch

    torch.cuda.current_device = lambda: 0  # type: ignore[assignment]  # a default argument evaluated at import
    install(STUBBED)
    module = importlib.import_module(f"musubi_tuner.{script.removesuffix('.py')}")
    common = importlib.import_module("musubi_tuner.hv_train_network").setup_parser_common
    parser = getattr(module, PARSERS[script.removesuffix(".py")])(common())
    return parser.parse_args(args)


def datasets(toml_path: str, namespace: argparse.Namespace, architecture: str) -> list[dict[str, Any]]:
    config_utils = importlib.import_module("musubi_tuner.dataset.config_utils")
    user = config_utils.load_user_config(toml_path)
    sanitizer = config_utils.ConfigSanitizer()
    blueprint = config_utils.BlueprintGenerator(sanitizer).generate(user, namespace, architecture=architecture)
    out = []
    for dataset in blueprint.dataset_group.datasets:
        params = vars(dataset.params)
        out.append({k: v for k, v in params.items() if v is not None and not callable(v)})
    return out


def main() -> None:
    args_file, toml_path, architecture = sys.argv[1:4]
    rendered = json.loads(Path(args_file).read_text(encoding="utf-8"))
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet):
            namespace = parse(rendered["script"], rendered["args"])
            found = datasets(toml_path, namespace, architecture)
    except SystemExit as exc:  # argparse's refusal
        sys.exit(2 if exc.code else 0)
    except Exception as exc:  # voluptuous' or a dataclass's refusal
        print(f"musubi refused: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)
    understood = {k: v for k, v in vars(namespace).items() if isinstance(v, str | int | float | bool | list | None)}
    print(json.dumps({"args": understood, "datasets": found}, default=str))


if __name__ == "__main__":
    main()
