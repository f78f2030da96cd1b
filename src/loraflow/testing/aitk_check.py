"""Judge loraflow's rendered ai-toolkit job config with ai-toolkit's own code (run with its checkout as the working
folder): every key of each block must be one its config class reads (`kwargs.get('key'...)`, `kwargs['key']`,
`'key' in kwargs` in toolkit/config_modules.py; the process keys `get_conf('key'...)` in jobs/process), the
classes are built from the blocks as BaseSDTrainProcess builds them (their own validation runs), and the
model's `arch` is one a model class declares (`arch = "..."`).

    python -m loraflow.testing.aitk_check CONFIG_YAML

Prints one JSON line with what ai-toolkit understood; exits 2 naming each unread key or refusal.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from loraflow.testing.engine_imports import install

STUBBED = ["av", "torchaudio", "torchao", "diffusers", "transformers", "accelerate", "peft", "huggingface_hub",
           "optimum", "bitsandbytes", "lycoris", "einops", "cv2", "torchvision", "k_diffusion", "open_clip", "timm",
           "lpips",
           "prodigyopt", "kornia", "invisible_watermark", "imwatermark", "mutagen", "PIL.ImageCms", "albumentations",
           "controlnet_aux", "oyaml", "safetensors.torch"]
READS = r"kwargs\.get\(\s*['\"](\w+)['\"]|kwargs\[\s*['\"](\w+)['\"]\s*\]|['\"](\w+)['\"] in kwargs"
BLOCKS = {"train": "TrainConfig", "model": "ModelConfig", "save": "SaveConfig", "sample": "SampleConfig",
          "network": "NetworkConfig", "logging": "LoggingConfig"}


def keys_read(source: str) -> dict[str, set[str]]:
    """Per class of config_modules.py, the kwargs keys its code reads."""
    out: dict[str, set[str]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            text = ast.get_source_segment(source, node) or ""
            found = re.findall(READS, text)
            out[node.name] = {next(k for k in keys if k) for keys in found}
    return out


def process_keys(root: Path) -> set[str]:
    text = "".join(p.read_text(encoding="utf-8") for p in (root / "jobs" / "process").glob("*.py"))
    return set(re.findall(r"get_conf\(\s*['\"](\w+)['\"]", text))


def arches(root: Path) -> set[str]:
    found: set[str] = set()
    for path in [*(root / "extensions_built_in").rglob("*.py"), *(root / "toolkit" / "models").rglob("*.py")]:
        found |= set(re.findall(r"^\s+arch\s*=\s*['\"]([\w.\-]+)['\"]", path.read_text(encoding="utf-8"), re.M))
    return found | {"flux", "sdxl", "sd1", "sd2", "sd3", "pixart", "auraflow", "lumina2", "flex1", "flex2"}


def unread(config: dict[str, Any], root: Path) -> list[str]:
    read = keys_read((root / "toolkit" / "config_modules.py").read_text(encoding="utf-8"))
    proc = config["config"]["process"][0]
    problems = [f"process.{k}" for k in proc if k not in process_keys(root) | {"type", *BLOCKS, "datasets"}]
    for block, cls in BLOCKS.items():
        problems += [f"{block}.{k}" for k in proc.get(block) or {} if k not in read[cls]]
    for i, item in enumerate(proc["sample"].get("samples") or []):
        problems += [f"sample.samples[{i}].{k}" for k in item if k not in read["SampleItem"]]
    for i, ds in enumerate(proc["datasets"]):
        problems += [f"datasets[{i}].{k}" for k in ds if k not in read["DatasetConfig"]]
    if proc["model"]["arch"] not in arches(root):
        problems.append(f"model.arch: no model class declares arch = '{proc['model']['arch']}'")
    return problems


def build(config: dict[str, Any]) -> dict[str, Any]:
    """The classes built from the blocks, as BaseSDTrainProcess does (their own validation runs)."""
    import torch

    torch.cuda.current_device = lambda: 0  # type: ignore[assignment]
    install(STUBBED)
    import toolkit.config_modules as cm  # type: ignore[import-not-found]

    proc = config["config"]["process"][0]
    built = {block: getattr(cm, cls)(**(proc.get(block) or {})) for block, cls in BLOCKS.items()}
    datasets = [cm.DatasetConfig(**ds) for ds in cm.preprocess_dataset_raw_config(proc["datasets"])]
    return {"arch": built["model"].arch, "steps": built["train"].steps, "control_path": datasets[0].control_path,
            "samples": [{"prompt": s.prompt, "ctrl_img": s.ctrl_img} for s in built["sample"].samples]}


def main() -> None:
    config = yaml.safe_load(Path(sys.argv[1]).read_text(encoding="utf-8"))
    problems = unread(config, Path.cwd())
    if problems:
        print("ai-toolkit reads none of: " + "; ".join(problems), file=sys.stderr)
        sys.exit(2)
    try:
        print(json.dumps(build(config), default=str))
    except Exception as exc:
        print(f"ai-toolkit refused: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
