"""Bundles, model cards, and (with the publishing extras) Hugging Face and S3 uploads."""
