"""JoyCaption (LLaVA: SigLIP vision tower + Llama 3.1) through transformers' LlavaForConditionalGeneration,
as its README runs it: the model's own chat template with the system message "You are a helpful image
captioner.", a prompt chosen by caption type and length, sampling at temperature 0.6 / top-p 0.9, and
the prompt tokens trimmed from the output. Uncensored by design: nothing here softens or filters.

A hub id (default `fancyfeast/llama-joycaption-beta-one-hf-llava`) or a local folder; bf16 on a GPU
(about 17 GB), float32 on the CPU.
"""

from __future__ import annotations

from typing import Any

from loraflow.caption.florence2 import resolve_model
from loraflow.caption.memory import free_memory

DEFAULT_MODEL = "fancyfeast/llama-joycaption-beta-one-hf-llava"
SYSTEM = "You are a helpful image captioner."
PROMPTS = {
    "descriptive": "Write a {length} detailed description for this image.",
    "casual": "Write a {length} descriptive caption for this image in a casual tone.",
    "straightforward": "Write a {length} straightforward caption for this image.",
    "stable_diffusion": "Output a {length} stable diffusion prompt that is indistinguishable from a real "
    "stable diffusion prompt.",
    "booru": "Generate only comma-separated Danbooru tags (lowercase_underscores) for this image, {length}.",
}
LENGTHS = ("very short", "short", "medium-length", "long", "very long")


def build_prompt(caption_type: str, length: str | int, name: str | None = None, extra: str = "") -> str:
    """The user prompt in JoyCaption's own wording; a word count, or one of LENGTHS."""
    if caption_type not in PROMPTS:
        raise ValueError(f"caption_type must be one of {sorted(PROMPTS)}")
    if isinstance(length, int) or str(length).isdigit():
        size = f"{int(length)}-word" if caption_type != "booru" else f"at most {int(length)} tags"
    elif length in LENGTHS:
        size = length if caption_type != "booru" else f"{length} list"
    else:
        raise ValueError(f"caption_length must be a number of words or one of {LENGTHS}")
    prompt = PROMPTS[caption_type].format(length=size)
    if name:  # JoyCaption's extra option for naming the subject: the trigger word
        prompt += f" If there is a person/character in the image you must refer to them as {name}."
    return f"{prompt} {extra}".strip()


class JoyCaptioner:
    name = "joycaption"

    def __init__(
        self,
        model: str | None = None,
        caption_type: str = "descriptive",
        caption_length: str | int = "medium-length",
        name: str | None = None,
        extra: str = "",
        max_new_tokens: int = 300,
        temperature: float = 0.6,
        top_p: float = 0.9,
        seed: int | None = 0,
    ) -> None:
        self.model_id = model or DEFAULT_MODEL
        self.prompt = build_prompt(caption_type, caption_length, name, extra)
        self.max_new_tokens, self.temperature, self.top_p, self.seed = max_new_tokens, temperature, top_p, seed
        self.model: Any = None
        self.processor: Any = None

    def load(self) -> None:
        import torch
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        source, local = resolve_model(self.model_id)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.processor = AutoProcessor.from_pretrained(source, local_files_only=local)
        self.processor.tokenizer.padding_side = "left"  # generation continues each row from its end
        self.model = (
            LlavaForConditionalGeneration.from_pretrained(source, dtype=dtype, local_files_only=local)
            .to(self.device)
            .eval()
        )

    def caption(self, images: list[Any]) -> list[str]:
        import torch

        convo = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": self.prompt}]
        text = self.processor.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
        rgb = [im.convert("RGB") for im in images]
        inputs = self.processor(text=[text] * len(rgb), images=rgb, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        if self.seed is not None:
            torch.manual_seed(self.seed)
        with torch.no_grad():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=True,
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=None,
                suppress_tokens=None,
                use_cache=True,
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        texts = self.processor.tokenizer.batch_decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return [" ".join(t.split()) for t in texts]

    def unload(self) -> None:
        self.model = self.processor = None
        free_memory()
