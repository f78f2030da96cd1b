"""Tiny randomly initialised captioning models of the real architectures, saved as normal local folders,
so each backend's loading, preprocessing, generation and post-processing run for real (captions are nonsense)."""

from __future__ import annotations

from pathlib import Path


def build_tiny_florence2(dest: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (
        BartConfig,
        BartTokenizer,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )
    from transformers.models.florence2.configuration_florence2 import Florence2VisionConfig

    if (dest / "config.json").exists():
        return dest
    torch.manual_seed(seed)
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", *sorted(ByteLevel.alphabet())])}
    tokenizer = BartTokenizer(vocab=vocab, merges=[], extra_special_tokens={"image_token": "<image>"})
    images = CLIPImageProcessor(
        size={"height": 64, "width": 64},
        crop_size={"height": 64, "width": 64},
        do_center_crop=False,
        image_seq_length=5,
    )
    processor = Florence2Processor(image_processor=images, tokenizer=tokenizer)
    vision = Florence2VisionConfig(
        depths=(1, 1, 1, 1),
        embed_dim=(8, 16, 32, 64),
        num_heads=(1, 2, 4, 8),
        num_groups=(1, 2, 4, 8),
        window_size=2,
        projection_dim=32,
        drop_path_rate=0.0,
    )
    text = BartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        max_position_embeddings=72,  # short captions keep the tests fast
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )
    model = Florence2ForConditionalGeneration(
        Florence2Config(vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id)
    ).eval()
    tmp = dest.with_name(dest.name + ".partial")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.replace(dest)
    return dest
