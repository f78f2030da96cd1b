"""TrainSpec: the one description of a training job that every front door builds.

A minimal spec is three lines (name, dataset, base_model); everything else comes from the base-model
catalog, the engine's overrides and an optional VRAM preset, merged *under* what the user wrote.
Secrets never live here: they come from the environment (HF_TOKEN, VAST_API_KEY, ...).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loraflow import catalog
from loraflow.errors import SpecError, UserInputError
from loraflow.field_map import ENGINES, prodigy_default, refusals, unwrap_models

EngineName = Literal["builtin", "ai-toolkit", "kohya", "musubi", "fal"]
TRIGGER_PLACEHOLDER = "[trigger]"


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetChecks(Strict):
    """Quality gates run before anything is rented. Errors block; warnings inform."""

    min_images: int = Field(4, ge=1, description="Fewer usable images than this is an error.")
    max_images: int = Field(1000, ge=1, description="More images than this is an error.")
    min_resolution: int = Field(256, ge=1, description="Shorter side in pixels below which an image is an error.")
    max_aspect_ratio: float = Field(4.0, ge=1.0, description="Long/short side ratio above which a warning is given.")
    near_duplicate_distance: int = Field(
        4, ge=0, le=64, description="Perceptual-hash Hamming distance at or below which two images are near duplicates."
    )
    max_pixels: int = Field(
        80_000_000, ge=1, description="Images with more pixels are refused as possible decompression bombs."
    )
    max_archive_bytes: int = Field(
        4 * 1024**3, ge=1, description="Largest total uncompressed size accepted from a zip or tar."
    )
    max_archive_files: int = Field(20_000, ge=1, description="Most members accepted from a zip or tar.")
    require_captions: bool = Field(False, description="Make an image without a caption an error instead of a warning.")
    max_video_seconds: float = Field(
        60.0, gt=0, description="Video clips (engine musubi) longer than this are an error: trim them to the motion."
    )


class CaptionPolicy(Strict):
    """How captions are produced and finished; the user's own caption files always win by default."""

    backend: Literal["existing", "template", "florence2", "joycaption", "wd14", "qwen-vl"] = Field(
        "existing", description="Captioner for images without a caption file."
    )
    mode: Literal["fill_missing", "overwrite"] = Field(
        "fill_missing", description="fill_missing never touches existing caption files; overwrite replaces them."
    )
    template: str = Field("a photo of [trigger]", description="Caption used by the `template` backend.")
    model: str | None = Field(None, description="Hub id or local folder of the captioning model.")
    trigger_placement: Literal["prepend", "placeholder", "none"] = Field(
        "prepend",
        description="prepend: put the trigger word first unless present; placeholder: replace [trigger]; none.",
    )
    prefix: str = Field("", description="Text put before every caption.")
    suffix: str = Field("", description="Text put after every caption.")
    max_length: int | None = Field(None, ge=1, description="Captions are cut to this many characters.")
    dropout_rate: float = Field(0.05, ge=0.0, le=1.0, description="Chance a caption is dropped during training.")
    shuffle_tags: bool = Field(False, description="Shuffle comma-separated tags each step (tag captions).")
    general_threshold: float = Field(0.35, ge=0, le=1, description="wd14: probability for a general tag.")
    character_threshold: float = Field(0.85, ge=0, le=1, description="wd14: probability for a character tag.")
    max_tags: int | None = Field(None, ge=1, description="wd14: keep at most this many tags.")
    keep_rating: bool = Field(False, description="wd14: put the rating tag (general, sensitive, ...) first.")
    task: str | None = Field(
        None, description="florence2: <CAPTION>, <DETAILED_CAPTION> (default) or <MORE_DETAILED_CAPTION>."
    )
    keep_tokens: int = Field(1, ge=0, description="Leading tags kept in place when shuffling.")
    caption_type: Literal["descriptive", "casual", "straightforward", "stable_diffusion", "booru"] = Field(
        "descriptive", description="joycaption: the kind of caption (booru gives a tag list)."
    )
    caption_length: str = Field(
        "medium-length",
        description="joycaption: a word count, or very short, short, medium-length, long, very long.",
    )
    refer_by_trigger: bool = Field(
        False, description="joycaption: tell the model to call the person or character by the trigger word."
    )
    prompt: str | None = Field(
        None,
        description="qwen-vl: the instruction (a default asks for one detailed paragraph); joycaption: "
        "extra instructions appended to its prompt.",
    )
    max_new_tokens: int = Field(300, ge=1, le=2048, description="joycaption, qwen-vl: longest caption in tokens.")

    @field_validator("caption_length")
    @classmethod
    def _length(cls, value: str) -> str:
        sizes = ("very short", "short", "medium-length", "long", "very long")
        if not (value.isdigit() and 0 < int(value) <= 500) and value not in sizes:
            raise ValueError(f"give a number of words (1-500) or one of: {', '.join(sizes)}")
        return value

    max_pixels: int = Field(
        512 * 512, ge=3136, description="qwen-vl: images are scaled to at most this many pixels (VRAM and speed)."
    )


class DatasetSpec(Strict):
    path: str = Field(description="A folder, .zip or .tar of images with optional caption files.")
    trigger_word: str | None = Field(None, description="Word that calls up the trained concept.")
    caption_extension: str = Field("txt", description="Extension of caption files paired by stem.")
    repeats: int = Field(1, ge=1, description="How many times each image is seen per epoch.")
    nsfw: bool = Field(False, description="Labels the job and the model; never filters images or captions.")
    captions: CaptionPolicy = Field(default_factory=CaptionPolicy)
    checks: DatasetChecks = Field(default_factory=DatasetChecks)

    @field_validator("caption_extension")
    @classmethod
    def _strip_dot(cls, value: str) -> str:
        value = value.lstrip(".")
        if not value or "/" in value:
            raise ValueError("give an extension such as 'txt'")
        return value

    @field_validator("trigger_word")
    @classmethod
    def _trigger(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("the trigger word is empty; remove the key or give a word")
        return value.strip() if value else value


class EngineSpec(Strict):
    name: EngineName = Field(
        description="builtin, ai-toolkit, kohya, musubi (Wan video LoRAs) or fal (hosted: fal.ai's Flux LoRA trainer)."
    )
    version: str | None = Field(None, description="Engine pin (git commit or image tag); the tested pin if unset.")
    options: dict[str, Any] = Field(default_factory=dict, description="Engine-specific keys passed through.")


class NetworkSpec(Strict):
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank (dim).")
    alpha: float = Field(16, gt=0, description="LoRA alpha; strength scale is alpha/rank.")
    targets: list[str] | Literal["attention", "default", "all"] = Field(
        "default",
        description="Module names (suffixes) to train, or a preset: attention, default (attention + MLP), all.",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class TrainingSpec(Strict):
    steps: int | None = Field(1000, ge=1, description="Optimizer steps; set null to train by epochs.")
    epochs: int | None = Field(None, ge=1, description="Epochs, used when steps is null.")
    batch_size: int = Field(1, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler: Literal["constant", "linear", "cosine", "cosine_with_restarts"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    optimizer: Literal["adamw", "adamw8bit", "prodigy", "adafactor"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    resolution: list[int] = Field(default_factory=lambda: [1024], description="Bucket base sizes in pixels.")
    seed: int = 42
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    gradient_checkpointing: bool = True
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile of the transformer's repeated blocks (builtin engine); auto: where measured faster.",
    )
    cache_latents: bool = True
    cache_text_embeddings: bool = True
    timestep_sampling: Literal["uniform", "sigmoid", "logit_normal", "shift"] = "sigmoid"
    timestep_shift: float = Field(3.0, gt=0, description="Shift for `shift` timestep sampling.")
    guidance_scale: float = Field(1.0, ge=0, description="Guidance embedding value during training (dev).")
    quantize: Literal["none", "fp8", "nf4", "qfloat8"] = "none"
    low_vram: bool = False
    blocks_to_swap: int = Field(0, ge=0, le=35)
    vram_preset: Literal[12, 16, 24, 48, 80] | None = Field(
        None, description="Apply the catalog's settings for a card of this many GB."
    )

    @field_validator("resolution")
    @classmethod
    def _resolutions(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("give at least one resolution, e.g. [1024]")
        for res in value:
            if res < 16 or res % 16:
                raise ValueError(f"{res} is not a multiple of 16 of at least 16")
        return sorted(set(value))

    @model_validator(mode="after")
    def _length(self) -> TrainingSpec:
        if self.steps is None and self.epochs is None:
            raise ValueError("set training.steps or training.epochs")
        return self


class SamplingSpec(Strict):
    prompts: list[str] = Field(
        default_factory=lambda: ["a photo of [trigger]"],
        description="Prompts rendered at each sample point; [trigger] becomes the trigger word. Empty: the "
        "dataset's first two captions.",
    )
    every_n_steps: int = Field(250, ge=0, description="0 samples only at the end.")
    at_end: bool = True
    width: int = Field(1024, ge=16)
    height: int = Field(1024, ge=16)
    seed: int = 42
    guidance_scale: float = Field(3.5, ge=0)
    steps: int = Field(20, ge=1, le=1000)


class CheckpointSpec(Strict):
    every_n_steps: int = Field(250, ge=1)
    keep_last: int = Field(4, ge=1)


class OutputSpec(Strict):
    lora_format: Literal["kohya", "diffusers"] = Field(
        "kohya", description="Key layout of the LoRA file: kohya/ComfyUI (default) or diffusers/peft."
    )
    dtype: Literal["fp16", "bf16", "fp32"] = "bf16"


class SshTarget(Strict):
    host: str = Field(description="Host name or IP address.")
    port: int = Field(22, ge=1, le=65535)
    user: str = "root"
    identity_file: str | None = Field(None, description="Private key path (0600); never the key itself.")
    root: str = Field("~/loraflow", description="Folder on the host under which jobs live.")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        # A name or address only: ssh would read '-oProxyCommand=...' or 'a b' as options or commands.
        if not (_HOST_NAME.fullmatch(value) or _HOST_V6.fullmatch(value)):
            raise ValueError("give a host name or IP address (letters, digits, '.', '-', ':'; not starting with '-')")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not _USER_NAME.fullmatch(value):
            raise ValueError("give a login name (letters, digits, '_', '.', '-'; not starting with '-')")
        return value


_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")
_HOST_V6 = re.compile(r"[0-9A-Fa-f:]{2,39}")
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_PROGRAM = re.compile(r"[A-Za-z0-9_./+-]+")


class GpuRequirements(Strict):
    min_vram_gb: int | None = Field(None, ge=1, description="Defaults to the VRAM preset or the model's need.")
    names: list[str] = Field(default_factory=list, description="Allowed GPU names, e.g. ['RTX 4090', 'A6000'].")
    count: int = Field(1, ge=1)
    max_usd_per_hour: float | None = Field(None, gt=0)
    region: str | None = None
    disk_gb: int = Field(80, ge=10)
    min_reliability: float = Field(0.98, ge=0, le=1)
    verified_only: bool = True


class ComputeSpec(Strict):
    provider: Literal["local", "ssh", "vastai", "runpod", "skypilot"] = "local"
    gpu: GpuRequirements = Field(default_factory=GpuRequirements)
    ssh: SshTarget | None = None
    target: str | None = Field(
        None, description="Name of an SSH host the operator registered (LORAFLOW_SSH_HOSTS); instead of ssh."
    )
    max_retries: int = Field(2, ge=0, description="New hosts leased after a dead or stalled one.")
    python: str = Field("python3", description="Python on a remote host (ssh, vastai) that runs the engine.")
    setup: str | None = Field(
        None, description="Shell run once per remote lease before training; default: the engine's set-up."
    )
    ready_timeout_s: int = Field(900, ge=10, description="A rented host not ready by then is destroyed.")
    heartbeat_minutes: float = Field(
        10,
        gt=0,
        description="A rented host that hears nothing from the orchestrator for this long saves a checkpoint, "
        "pushes it to storage when it can, and destroys itself.",
    )

    @field_validator("python")
    @classmethod
    def _python(cls, value: str) -> str:
        if not _PROGRAM.fullmatch(value) or value.startswith("-"):
            raise ValueError("give one program name or path, such as python3 or /opt/conda/bin/python")
        return value

    @model_validator(mode="after")
    def _ssh_needs_target(self) -> ComputeSpec:
        if self.provider == "ssh" and self.ssh is None and self.target is None:
            raise ValueError("provider 'ssh' needs compute.ssh with at least a host, or compute.target")
        if self.ssh is not None and self.target is not None:
            raise ValueError("give compute.ssh or compute.target, not both")
        return self


class MonitorSpec(Strict):
    stall_minutes: float = Field(15, gt=0, description="No progress for this long (outside loading) is a stall.")
    gpu_idle_minutes: float = Field(5, gt=0)
    on_stall: Literal["notify", "restart", "fail"] = "restart"
    max_restarts: int = Field(2, ge=0)


class BudgetSpec(Strict):
    max_usd: float | None = Field(None, gt=0, description="Refuse or stop the job above this cost.")
    max_hours: float | None = Field(None, gt=0)
    warn_fraction: float = Field(0.8, gt=0, lt=1)


class HuggingFaceTarget(Strict):
    type: Literal["huggingface"]
    repo_id: str = Field(description="owner/name of the model repo; created if missing.")
    private: bool = True


class S3Target(Strict):
    type: Literal["s3"]
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = Field(None, description="R2 or other S3-compatible endpoint.")
    public: bool = False


class ComfyDeployTarget(Strict):
    """Register the published LoRA with a ComfyUI Deploy workspace's model volume (the workspace is the one
    COMFY_DEPLOY_API_KEY belongs to). ComfyDeploy downloads the file itself, from the Hugging Face repo or
    a signed S3 link that an earlier target in publish.targets produced."""

    type: Literal["comfydeploy"]
    folder_path: str = Field("loras", description="Folder in the workspace's model volume (ComfyUI's loras).")
    filename: str | None = Field(None, description="File name in the volume; default <name>.safetensors.")
    wait_s: int = Field(300, ge=0, description="How long to wait for ComfyDeploy to finish downloading it.")

    @field_validator("folder_path")
    @classmethod
    def _folder(cls, value: str) -> str:
        value = value.strip().strip("/")
        if not value or any(p in ("", ".", "..") for p in value.split("/")) or not re.fullmatch(r"[\w./-]+", value):
            raise ValueError("give a folder inside the volume such as 'loras' or 'loras/flux' (no '..')")
        return value

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.-]+\.safetensors", value):
            raise ValueError("give a file name of letters, digits, '_', '-', '.' ending in .safetensors")
        return value


_Targets = Union[HuggingFaceTarget, S3Target, ComfyDeployTarget]  # noqa: UP007
PublishTarget = Annotated[_Targets, Field(discriminator="type")]


class PublishSpec(Strict):
    targets: list[PublishTarget] = Field(default_factory=list)
    approval_required: bool = Field(False, description="Hold the job in awaiting_approval to pick a checkpoint.")

    @model_validator(mode="after")
    def _comfydeploy_has_a_source(self) -> PublishSpec:
        kinds = [t.type for t in self.targets]
        if "comfydeploy" in kinds and not {"huggingface", "s3"} & set(kinds[: kinds.index("comfydeploy")]):
            raise ValueError(
                "a comfydeploy target downloads the LoRA from a URL: put a huggingface or s3 target before it"
            )
        return self


class NotificationTarget(Strict):
    type: Literal["webhook", "discord", "slack", "telegram"]
    url: str | None = Field(None, description="Receiver URL (no credentials in it; use url_env for those).")
    url_env: str | None = Field(None, description="Environment variable holding a URL that is itself a secret.")
    chat_id: str | None = Field(None, description="Telegram chat id.")
    events: list[str] = Field(default_factory=lambda: ["*"])

    @model_validator(mode="after")
    def _one_url(self) -> NotificationTarget:
        if not (self.url or self.url_env):
            raise ValueError("give url or url_env")
        return self


class WandbSpec(Strict):
    enabled: bool = False
    project: str = "loraflow"
    entity: str | None = None


class TrainSpec(Strict):
    name: str = Field(description="Job and output name: letters, digits, dash, underscore, dot.")
    dataset: DatasetSpec
    base_model: str = Field(
        description="Catalog id (tiny-flux, flux-dev, flux-schnell, sdxl, qwen-image, wan2.1-t2v-1.3b, "
        "wan2.1-t2v-14b, wan2.2-t2v-a14b) or a local folder."
    )
    model_family: str | None = Field(
        None, description="For a local base-model folder: the catalog id whose defaults apply (default flux-dev)."
    )
    engine: EngineSpec
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    checkpointing: CheckpointSpec = Field(default_factory=CheckpointSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    monitor: MonitorSpec = Field(default_factory=MonitorSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    publish: PublishSpec = Field(default_factory=PublishSpec)
    notifications: list[NotificationTarget] = Field(default_factory=list)
    wandb: WandbSpec = Field(default_factory=WandbSpec)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
            raise ValueError("use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @property
    def catalog_entry(self) -> catalog.BaseModel:
        return catalog.get_base_model(self.model_family or _catalog_id(self.base_model))

    def substitute_trigger(self, text: str) -> str:
        return text.replace(TRIGGER_PLACEHOLDER, self.dataset.trigger_word or "").strip()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def _catalog_id(base_model: str) -> str:
    return base_model if base_model in catalog.base_models() else "flux-dev"


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or "/" in value or "\\" in value


# --- loading -------------------------------------------------------------------------------------

_SECRET_PATTERNS = [
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}"), "HF_TOKEN"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "AWS_ACCESS_KEY_ID"),
    # An AWS secret access key: 40 base64 characters mixing cases and digits (a word never does).
    (
        re.compile(r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[0-9])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])"
                   r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
        "AWS_SECRET_ACCESS_KEY",
    ),
    (re.compile(r"(?<![0-9A-Fa-f])[0-9a-f]{64}(?![0-9A-Fa-f])"), "VAST_API_KEY"),  # Vast.ai keys are 64 hex
    # fal.ai keys are '<key id (a UUID)>:<secret (32 hex)>'
    (re.compile(r"\b[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}:[0-9a-f]{32}\b"), "FAL_KEY"),
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})"), "GITHUB_TOKEN"),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), "SLACK_TOKEN"),
    (re.compile(r"\b[MNO][A-Za-z0-9_-]{23,25}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,}"), "DISCORD_TOKEN"),
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"), "url_env (a URL with a password in it)"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a key file referenced by path"),
    (re.compile(r"https://discord(?:app)?\.com/api/webhooks/\d+/[\w-]{20,}"), "url_env"),
    (re.compile(r"https://hooks\.slack\.com/services/[\w/]{20,}"), "url_env"),
    (re.compile(r"api\.telegram\.org/bot\d+:[\w-]{20,}"), "url_env"),
]


def _find_secrets(value: Any, path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        for key, sub in value.items():
            found += _find_secrets(sub, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            found += _find_secrets(sub, f"{path}[{i}]")
    elif isinstance(value, str):
        for pattern, where in _SECRET_PATTERNS:
            if pattern.search(value):
                found.append(
                    f"{path}: looks like a secret; secrets never go in a spec. Fix: remove it and set {where}"
                    " in the environment instead."
                )
    return found


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at the parent of `loc`, for close-match suggestions."""
    models: list[type[BaseModel]] = [TrainSpec]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        nxt: list[type[BaseModel]] = []
        for model in models:
            field = model.model_fields.get(str(part))
            if field is not None:
                nxt += unwrap_models(field.annotation)
        if nxt:
            models = nxt
    names: list[str] = []
    for model in models:
        names += [n for n in model.model_fields if n not in names]
    return names


def _format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("huggingface", "s3", "comfydeploy"):
            continue  # discriminator tags pydantic inserts into the path
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def explain(error: ValidationError) -> list[str]:
    """One line per problem: the key's path, what is wrong and, for typos, the closest valid key."""
    lines: list[str] = []
    for err in error.errors():
        loc = tuple(err["loc"])
        path = _format_loc(loc)
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            close = difflib.get_close_matches(key, _fields_at(loc), n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            lines.append(f"{path}: unknown key.{hint}")
        elif err["type"] == "missing":
            lines.append(f"{path}: required key is missing.")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
            lines.append(f"{path}: {msg}{shown}.")
    return lines


def _engine_name(raw: dict[str, Any], default: str) -> str:
    engine = raw.get("engine")
    if isinstance(engine, str):
        return engine
    if isinstance(engine, dict) and isinstance(engine.get("name"), str):
        return engine["name"]
    return default


def resolve(raw: dict[str, Any]) -> dict[str, Any]:
    """Merge catalog defaults, engine overrides and the VRAM preset under the user's own values."""
    raw = dict(raw)
    if isinstance(raw.get("engine"), str):
        raw["engine"] = {"name": raw["engine"]}
    base = raw.get("base_model")
    if not isinstance(base, str):
        return raw  # pydantic reports the missing or mistyped key
    family = raw.get("model_family")
    if base not in catalog.base_models() and not _looks_like_path(base):
        catalog.get_base_model(base)  # raises with the closest catalog id
    model_id = family if isinstance(family, str) else _catalog_id(base)
    model = catalog.get_base_model(model_id)
    engine = _engine_name(raw, model.default_engine)
    raw["engine"] = {**(raw.get("engine") or {}), "name": engine}
    training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    preset = training.get("vram_preset")
    defaults = catalog.defaults_for(model, engine, preset if isinstance(preset, int) else None)
    return prodigy_default(raw, catalog.deep_merge(defaults, raw))


def parse_spec(raw: Any, source: str = "spec") -> TrainSpec:
    if not isinstance(raw, dict):
        raise SpecError(source, ["the spec must be a mapping of keys (name, dataset, base_model, ...)."])
    problems = _find_secrets(raw)
    try:
        resolved = resolve(raw)
    except UserInputError as exc:
        # An unknown base model must not hide the other mistakes: check the rest under flux-dev's defaults.
        problems.append(f"base_model: {exc.render()}" if exc.where is None else exc.render())
        rest = {k: v for k, v in raw.items() if k not in ("base_model", "model_family")}
        try:
            resolved = resolve({**rest, "base_model": "flux-dev"})
        except UserInputError:  # the engine does not train flux-dev either: that one problem is the answer
            raise SpecError(source, problems) from None
    try:
        spec = TrainSpec.model_validate(resolved)
    except ValidationError as exc:
        raise SpecError(source, [*problems, *explain(exc)]) from None
    # values the chosen engine cannot honour: a hosted one by its API's keys, the others by the field map
    problems += refusals(spec) if spec.engine.name in ENGINES else refused_fields(spec)
    if problems:
        raise SpecError(source, problems)
    return spec


def _leaf_diffs(path: str, mine: Any, theirs: Any) -> list[str]:
    if isinstance(mine, dict) and isinstance(theirs, dict):
        out: list[str] = []
        for key in mine:
            out += _leaf_diffs(f"{path}.{key}", mine[key], theirs.get(key))
        return out
    return [] if mine == theirs else [path]


def _at(tree: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def refused_fields(spec: TrainSpec) -> list[str]:
    """The keys a hosted engine's API cannot honour, set to anything but what that engine does.

    A hosted trainer (catalog/hosted.yaml) takes a few parameters; any other key that differs from the
    engine's own defaults would be silently ignored, so it is refused here, by name, with the fix."""
    rules = catalog.hosted_engines().get(spec.engine.name)
    if not rules:
        return []
    name = spec.engine.name
    out: list[str] = []
    allowed = rules.get("base_models") or []
    if spec.base_model not in allowed:
        return [
            f"base_model: engine {name} trains only {', '.join(allowed)} (got {spec.base_model!r}). "
            f"Fix: use base_model: {allowed[0]}, or another engine for this model"
        ]
    for key, value in spec.engine.options.items():
        kind = (rules.get("options") or {}).get(key)
        if kind is None:
            keys = ", ".join(rules.get("options") or {}) or "none"
            out.append(f"engine.options.{key}: engine {name} has no such option (it takes: {keys}). Fix: remove it")
        elif kind == "bool" and not isinstance(value, bool):
            out.append(f"engine.options.{key}: give true or false (got {value!r})")
    base = {"name": spec.name, "dataset": {"path": spec.dataset.path}, "base_model": spec.base_model}
    baseline = TrainSpec.model_validate(resolve({**base, "engine": {"name": name}})).to_dict()
    mine = spec.to_dict()
    takes = ", ".join(rules.get("honours") or {})
    for path in rules.get("refuses") or []:
        for leaf in _leaf_diffs(path, _at(mine, path), _at(baseline, path)):
            out.append(
                f"{leaf}: engine {name} cannot honour it ({rules['app']} takes only {takes}"
                f"{' and engine.options ' + ', '.join(rules.get('options') or {}) if rules.get('options') else ''}). "
                f"Fix: remove it, or train with engine ai-toolkit or kohya to set it"
            )
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; a spec with `steps:` twice is a mistake to
    name, not a guess to make. Every repeat is recorded so all of them are reported at once."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in first:
                self.duplicates.append(
                    f"line {line}: key '{key_node.value}' is given twice (first on line {first[key_node.value]});"
                    " only one would count. Fix: keep one of them."
                )
            first.setdefault(key_node.value, line)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str) -> tuple[Any, list[str]]:
    """The YAML document and one problem line per duplicated key (raises yaml.YAMLError when not YAML)."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()


def _local_problems(raw: dict[str, Any], folder: Path, check_dataset: bool) -> list[str]:
    """Paths in a spec file that must exist on this machine: a base-model folder, and (for validate) the dataset."""
    problems: list[str] = []
    base = raw.get("base_model")
    local_model = isinstance(base, str) and base not in catalog.base_models() and _looks_like_path(base)
    if local_model and not (folder / Path(str(base)).expanduser()).is_dir():
        problems.append(
            f"base_model: '{base}' is neither a catalog id ({', '.join(catalog.base_models())})"
            " nor an existing model folder."
        )
    data = raw.get("dataset")
    path = data.get("path") if isinstance(data, dict) else None
    if check_dataset and isinstance(path, str) and path.strip():
        target = (folder / Path(path).expanduser()).resolve()
        if not target.exists():
            problems.append(
                f"dataset.path: '{path}' does not exist (looked for {target}). Fix: give the folder, .zip or .tar"
                " of your images, relative to the spec file or absolute."
            )
    return problems


def load_spec(path: str | Path, check_dataset: bool = False, engine: str | None = None) -> TrainSpec:
    """A spec file, every problem named at once; check_dataset also requires dataset.path to exist here.

    `engine` replaces the spec's engine before the catalog is applied, exactly as writing `engine: X` there
    would (another engine's options and version are dropped: they are that engine's)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"no spec file at {path}", fix="run `loraflow spec init` to write a starter spec")
    try:
        raw, problems = read_yaml(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError(where, [f"not valid YAML: {getattr(exc, 'problem', exc)}."]) from None
    except UnicodeDecodeError:
        raise SpecError(str(path), ["the file is not UTF-8 text."]) from None
    if engine and isinstance(raw, dict) and engine != _engine_name(raw, ""):
        raw = {**raw, "engine": engine}
    if isinstance(raw, dict):
        problems += _local_problems(raw, path.parent, check_dataset)
    try:
        spec = parse_spec(raw, str(path))
    except SpecError as exc:
        raise SpecError(str(path), [*problems, *exc.problems]) from None
    if problems:
        raise SpecError(str(path), problems)
    # A relative dataset path is relative to the spec file, not to wherever the command runs.
    data_path = Path(spec.dataset.path).expanduser()
    if not data_path.is_absolute():
        spec.dataset.path = str((path.parent / data_path).resolve())
    if spec.base_model not in catalog.base_models():
        spec.base_model = str((path.parent / Path(spec.base_model).expanduser()).resolve())
    return spec


STARTER_SPEC = """\
# loraflow training spec. Only name, dataset and base_model are required; every other key has a
# default from the base-model catalog. `loraflow spec validate FILE` explains any mistake.
name: my-lora                      # job and output name
dataset:
  path: ./photos                   # folder, .zip or .tar of images (+ optional .txt captions)
  trigger_word: ohwx               # the word that calls up your concept in prompts
  # captions: {backend: existing, trigger_placement: prepend}
  # checks: {min_images: 4, min_resolution: 256}
base_model: flux-dev               # tiny-flux | flux-dev | flux-schnell | sdxl | qwen-image | /path/to/folder
# engine: ai-toolkit               # builtin | ai-toolkit | kohya (default from the catalog)
# network: {rank: 16, alpha: 16}
# training:
#   steps: 2000
#   learning_rate: 1.0e-4
#   resolution: [512, 768, 1024]
#   vram_preset: 24                # 12 | 16 | 24 | 48 | 80: settings that fit a card of that size
# sampling:
#   prompts: ["a photo of [trigger] in a garden"]
#   every_n_steps: 250
# checkpointing: {every_n_steps: 250, keep_last: 4}
# compute:
#   provider: local                # local | ssh | vastai
#   gpu: {min_vram_gb: 24, max_usd_per_hour: 1.0}
# budget: {max_usd: 5, max_hours: 3}
# publish:
#   targets:
#     - {type: huggingface, repo_id: you/my-lora, private: true}   # token from HF_TOKEN
# notifications:
#   - {type: webhook, url: "https://example.com/hook"}             # signed with LORAFLOW_WEBHOOK_SECRET
"""
