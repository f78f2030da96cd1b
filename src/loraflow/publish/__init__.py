"""Publishing: the bundle (LoRA, samples, card, checksums), the model card, and uploads to Hugging Face,
S3/R2 and ComfyUI Deploy."""
