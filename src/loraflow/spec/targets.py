"""Where a finished LoRA goes (publish targets) and who hears about a job (notification targets)."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from loraflow.spec.strict import Strict


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
