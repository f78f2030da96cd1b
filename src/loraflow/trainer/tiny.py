"""A complete Flux-architecture pipeline with random weights, built offline and saved as a normal
diffusers folder, so tests and the demo load it through exactly the code path real FLUX.1 takes.

The geometry is real Flux's (8x VAE, 16 latent channels, 2x2 packing to 64, guidance embedder for
"dev"), just tiny: about 200k parameters, a few milliseconds per step on a CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

MARKER = "loraflow_tiny.json"
T5_PIECES = "abcdefghijklmnopqrstuvwxyz0123456789"
PUNCT = ",.;:!?'\"()[]-_/"
CLIP_PREFIX = "text_model."


def _clip_tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    alphabet = sorted(ByteLevel.alphabet())
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_clip_text(tokenizer) -> dict:
    """The tiny CLIP text tower's geometry: one for the tiny Flux's text encoder and the tiny scorecard
    encoders, so both read the same tokenizer the same way."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_clip_tokenizer():
    """The byte-level CLIP tokenizer of the tiny models (built from an in-memory vocabulary, nothing fetched)."""
    return _clip_tokenizer()


def _t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + c, -1.0) for c in T5_PIECES]
    pieces += [(c, -2.0) for c in T5_PIECES + PUNCT]
    pieces += [("▁", -3.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def clip_in_prefixed_layout(folder: Path) -> bool:
    """Store the CLIP text encoder with its `text_model.` key prefix, as real CLIP checkpoints are.

    transformers 5.23 saves CLIPTextModel without it, and older versions (every 4.x, ai-toolkit's 5.5.3)
    load none of such a file's tensors: a silently random encoder. Current versions load both layouts.
    Returns whether the file had to be rewritten (also done for a tiny model built before this fix).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = folder / "text_encoder" / "model.safetensors"
    if not path.exists():
        return False
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        if all(k.startswith(CLIP_PREFIX) for k in keys):
            return False
        tensors = {(k if k.startswith(CLIP_PREFIX) else CLIP_PREFIX + k): f.get_tensor(k) for k in keys}
        metadata = f.metadata() or {"format": "pt"}
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return True


def build_tiny_flux(dest: str | Path, *, variant: str = "dev", seed: int = 0) -> Path:
    """Write a tiny random FLUX pipeline folder at `dest` (idempotent: an existing one is kept)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    dest = Path(dest)
    if (dest / MARKER).exists():
        clip_in_prefixed_layout(dest)
        return dest
    torch.manual_seed(seed)
    tok1, tok2 = _clip_tokenizer(), _t5_tokenizer()
    clip = CLIPTextModel(CLIPTextConfig(**tiny_clip_text(tok1), projection_dim=32)).eval()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tok2),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            pad_token_id=tok2.pad_token_id,
            eos_token_id=tok2.eos_token_id,
        )
    ).eval()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=variant == "dev",
        axes_dims_rope=(4, 4, 8),
    ).eval()
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=tok1,
        text_encoder_2=t5,
        tokenizer_2=tok2,
        transformer=transformer,
    )
    # Jobs started together may build it at once: each writes its own folder, the first rename wins.
    tmp = dest.with_name(f"{dest.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    pipe.save_pretrained(tmp)
    clip_in_prefixed_layout(tmp)
    (tmp / MARKER).write_text(json.dumps({"variant": variant, "seed": seed}) + "\n")
    try:
        tmp.replace(dest)
    except OSError:
        if not (dest / MARKER).exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another build won: the same seed made the same weights
    return dest
