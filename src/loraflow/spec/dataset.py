"""The dataset section: where the images are, how they are captioned and the gates they must pass."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from loraflow.spec.strict import Strict


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


CAPTION_EXTENSIONS = ("txt", "caption", "captions", "text", "tags", "cap")


class DatasetSpec(Strict):
    path: str = Field(description="A folder, .zip or .tar of images with optional caption files.")
    trigger_word: str | None = Field(None, description="Word that calls up the trained concept.")
    caption_extension: str = Field(
        "txt", description="Extension of caption files paired by stem: txt, caption, captions, text, tags or cap."
    )
    repeats: int = Field(1, ge=1, description="How many times each image is seen per epoch.")
    nsfw: bool = Field(False, description="Labels the job and the model; never filters images or captions.")
    control: str | None = Field(
        None,
        description="Edit models (Kontext, Qwen-Image-Edit; FLUX.2 optionally): the subfolder of dataset.path holding "
        "the control images, paired with the targets by name: control/a.png for a.jpg, or control/a_0.png, "
        "control/a_1.png... for several. Each target's caption is its instruction.",
    )
    captions: CaptionPolicy = Field(default_factory=CaptionPolicy)
    checks: DatasetChecks = Field(default_factory=DatasetChecks)

    @field_validator("control")
    @classmethod
    def _control(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = value.strip().strip("/").split("/")
        if value.startswith(("/", "~", "\\")) or any(p in ("", ".", "..") for p in parts):
            raise ValueError("give the control folder's name inside dataset.path, e.g. 'control'")
        return "/".join(parts)

    @field_validator("caption_extension")
    @classmethod
    def _strip_dot(cls, value: str) -> str:
        """From a short list: a caption is text, and an extension such as html once made a caption a page
        that the job's files route served on the service's own origin."""
        value = value.lstrip(".").lower()
        if value not in CAPTION_EXTENSIONS:
            raise ValueError(f"give one of: {', '.join(CAPTION_EXTENSIONS)}")
        return value

    @field_validator("trigger_word")
    @classmethod
    def _trigger(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("the trigger word is empty; remove the key or give a word")
        return value.strip() if value else value
